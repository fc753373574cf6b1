"""The book's semantics for models (README, section "model"), checked on the real code.

Every model is built with `runner.engine.builders.build_model` from the real YAML configs, composed with Hydra,
and checked on tiny tensors against the book's equations computed by hand.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import compose_cfg
from torch import nn

from models.blocks import Bottleneck, ConcatSkip
from models.networks import FlattenChannelsLast
from runner.engine import builders

IN_SHAPE = (1, 6, 6)  # C, H, W of the tiny inputs
NUM_CLASSES = 3


def build(*overrides: str, in_shape=IN_SHAPE):
    cfg = compose_cfg(*overrides)
    return builders.build_model(cfg.model, cfg.activation, in_shape, NUM_CLASSES)


def modules_of(model: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


def leaf_types(model: nn.Module) -> list[type]:
    """The types of the leaf modules, in forward order (every family is built from Sequentials)."""
    return [type(m) for m in model.modules() if not list(m.children())]


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


# --- Plain CNN: the book's one-hidden-layer network ---------------------------------------------

SEED_NETWORK = ("model=plain", "model.channels=[4]", "model.pool=null", "model.hidden=[]", "activation=tanh")


def test_one_conv_tanh_plain_network_has_the_seed_structure():
    model = build(*SEED_NETWORK)
    assert leaf_types(model) == [nn.Conv2d, nn.Tanh, FlattenChannelsLast, nn.Linear]
    (conv,) = modules_of(model, nn.Conv2d)
    assert conv.in_channels == 1 and conv.out_channels == 4
    assert conv.kernel_size == (3, 3) and conv.padding == (1, 1)
    assert conv.bias is not None
    (linear,) = modules_of(model, nn.Linear)
    assert linear.in_features == 4 * 6 * 6 and linear.out_features == NUM_CLASSES


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_one_conv_tanh_plain_network_is_the_seed_equation(kernel_size):
    """f(x) = tanh(x (*) W1 + b1) -> flatten -> W_out x + b_out, from the model's own parameters."""
    model = build(*SEED_NETWORK, f"model.kernel_size={kernel_size}")
    (conv,) = modules_of(model, nn.Conv2d)
    (linear,) = modules_of(model, nn.Linear)
    x = torch.randn(2, *IN_SHAPE)

    hidden = torch.tanh(F.conv2d(x, conv.weight, conv.bias, padding=kernel_size // 2))
    flat = hidden.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # each position's channels together
    expected = flat @ linear.weight.T + linear.bias

    torch.testing.assert_close(model(x), expected)


def test_the_flatten_is_one_order_in_either_layout_and_a_view_of_channels_last_features():
    x = torch.randn(3, 5, 4, 6)
    last = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    flat = FlattenChannelsLast()
    assert torch.equal(flat(x), flat(last))
    assert flat(last).data_ptr() == last.data_ptr()  # no copy forward
    flat(last).sum().backward()
    assert last.grad.is_contiguous(memory_format=torch.channels_last)  # nor a gradient in the other layout


# --- Activations --------------------------------------------------------------------------------

X = torch.tensor([-3.0, -1.0, -0.25, 0.0, 0.5, 2.0])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["activation=tanh"], torch.tanh(X)),
        (["activation=sigmoid"], 1 / (1 + torch.exp(-X))),
        (["activation=relu"], torch.maximum(torch.zeros_like(X), X)),
        (["activation=leaky_relu"], torch.maximum(0.1 * X, X)),  # default alpha = 0.1
        (["activation=leaky_relu", "activation.alpha=0.2"], torch.maximum(0.2 * X, X)),
    ],
    ids=["tanh", "sigmoid", "relu_is_max_0_x", "leaky_relu_default_alpha", "leaky_relu_alpha_override"],
)
def test_activation_matches_its_formula(overrides, expected):
    """The activation module inside a built model, applied to negative and positive values."""
    model = build("model.channels=[2]", "model.pool=null", "model.hidden=[]", *overrides)
    conv, activation = model.features[0]
    assert isinstance(conv, nn.Conv2d)
    torch.testing.assert_close(activation(X), expected)


def test_every_activation_in_the_model_is_the_configured_one():
    model = build("model=plain", "model.channels=[2,2]", "model.hidden=[4]", "activation=sigmoid", "model.pool=null")
    assert len(modules_of(model, nn.Sigmoid)) == 3
    assert not modules_of(model, nn.ReLU)


# --- Batch norm ---------------------------------------------------------------------------------

BN_NET = ("model=bn", "model.channels=[4]", "model.pool=null", "model.hidden=[5]", "activation=relu")


def test_bn_sits_after_conv_and_before_activation_by_default():
    model = build(*BN_NET)
    assert leaf_types(model) == [
        nn.Conv2d,
        nn.BatchNorm2d,
        nn.ReLU,  # conv block
        FlattenChannelsLast,
        nn.Linear,
        nn.BatchNorm1d,
        nn.ReLU,  # hidden FC layer
        nn.Linear,
    ]


def test_bn_position_after_puts_bn_after_the_activation():
    model = build(*BN_NET, "model.bn_position=after")
    assert leaf_types(model) == [
        nn.Conv2d,
        nn.ReLU,
        nn.BatchNorm2d,
        FlattenChannelsLast,
        nn.Linear,
        nn.ReLU,
        nn.BatchNorm1d,
        nn.Linear,
    ]


def test_hidden_fc_layers_use_batchnorm1d_and_convs_batchnorm2d():
    model = build(*BN_NET, "model.hidden=[5,6]")
    assert [m.num_features for m in modules_of(model, nn.BatchNorm2d)] == [4]
    assert [m.num_features for m in modules_of(model, nn.BatchNorm1d)] == [5, 6]
    assert all(isinstance(m, nn.BatchNorm1d) for m in modules_of(model.head, nn.modules.batchnorm._BatchNorm))


@pytest.mark.parametrize("position", ["before", "after"])
def test_bn_gamma_starts_at_one_and_beta_at_zero(position):
    model = build(*BN_NET, f"model.bn_position={position}")
    norms = modules_of(model, nn.modules.batchnorm._BatchNorm)
    assert len(norms) == 2
    for bn in norms:
        torch.testing.assert_close(bn.weight, torch.ones_like(bn.weight), rtol=0, atol=0)
        torch.testing.assert_close(bn.bias, torch.zeros_like(bn.bias), rtol=0, atol=0)


def test_bn2d_in_train_mode_normalizes_over_batch_and_spatial_positions():
    model = build(*BN_NET)
    (bn,) = modules_of(model, nn.BatchNorm2d)
    assert bn.training
    with torch.no_grad():  # non-trivial gamma and beta so they are checked too
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        bn.bias.copy_(torch.tensor([0.0, 1.0, -2.0, 3.0]))
    h = torch.randn(3, 4, 5, 5) * 4 + 2

    mean = h.mean(dim=(0, 2, 3), keepdim=True)
    var = h.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    gamma, beta = bn.weight.view(1, -1, 1, 1), bn.bias.view(1, -1, 1, 1)
    expected = (h - mean) / torch.sqrt(var + bn.eps) * gamma + beta

    torch.testing.assert_close(bn(h), expected)


def test_bn1d_in_train_mode_normalizes_over_the_batch():
    model = build(*BN_NET)
    (bn,) = modules_of(model, nn.BatchNorm1d)
    h = torch.randn(8, 5) * 3 - 1
    expected = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + bn.eps)
    torch.testing.assert_close(bn(h), expected)


def test_conv_block_bn_output_is_normalized_per_channel():
    """conv -> BN (gamma=1, beta=0): every channel has mean 0 and (biased) variance ~1 over B, H, W."""
    model = build(*BN_NET)
    conv_bn = nn.Sequential(*list(model.features[0])[:2])
    out = conv_bn(torch.randn(4, *IN_SHAPE))
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(dim=(0, 2, 3), unbiased=False), torch.ones(4), atol=1e-3, rtol=0)


# --- Concatenation skip -------------------------------------------------------------------------


def test_concat_skip_output_is_input_then_new_channels():
    in_shape = (2, 6, 6)
    model = build("model=skip", "model.channels=[3,4]", "model.pool=null", "model.hidden=[]", in_shape=in_shape)
    blocks = modules_of(model, ConcatSkip)
    assert len(blocks) == 2
    h = torch.randn(2, *in_shape)
    for block, width in zip(blocks, [3, 4]):
        out = block(h)
        assert out.shape == (2, h.shape[1] + width, 6, 6)
        torch.testing.assert_close(out[:, : h.shape[1]], h, rtol=0, atol=0)
        h = out
    assert h.shape[1] == 2 + 3 + 4


def test_concat_skip_next_layer_takes_both_and_head_sees_all_channels():
    in_shape = (2, 6, 6)
    model = build("model=skip", "model.channels=[3,4]", "model.pool=null", "model.hidden=[]", in_shape=in_shape)
    convs = modules_of(model, nn.Conv2d)
    assert [c.in_channels for c in convs] == [2, 2 + 3]
    (linear,) = modules_of(model, nn.Linear)
    assert linear.in_features == (2 + 3 + 4) * 6 * 6
    assert model(torch.randn(2, *in_shape)).shape == (2, NUM_CLASSES)


# --- 1x1 convolution ----------------------------------------------------------------------------


def test_1x1_conv_changes_channels_without_looking_at_neighbours():
    model = build(
        "model=plain",
        "model.channels=[5]",
        "model.kernel_size=1",
        "model.pool=null",
        "model.hidden=[]",
        in_shape=(3, 6, 6),
    )
    (conv,) = modules_of(model, nn.Conv2d)
    assert conv.kernel_size == (1, 1) and conv.padding == (0, 0)

    x = torch.randn(1, 3, 6, 6)
    out = conv(x)
    assert out.shape == (1, 5, 6, 6)

    x2 = x.clone()
    x2[0, :, 2, 3] += 10.0
    changed = (conv(x2) - out).abs().amax(dim=1)[0] > 0  # (H, W) map of changed output positions
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[2, 3] = True
    assert torch.equal(changed, expected)


# --- Residual bottleneck ------------------------------------------------------------------------


def _randomize_bn(module: nn.Module) -> None:
    with torch.no_grad():
        for bn in modules_of(module, nn.BatchNorm2d):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)


def test_bottleneck_subnetwork_shrinks_to_c_over_r_and_expands_to_c_prime():
    block = Bottleneck(8, 12, 4, nn.ReLU)
    convs = modules_of(block.subnetwork, nn.Conv2d)
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (8, 2, (1, 1)),
        (2, 2, (3, 3)),
        (2, 12, (1, 1)),
    ]
    assert [type(m) for m in block.subnetwork] == [
        nn.Conv2d,
        nn.BatchNorm2d,
        nn.ReLU,
        nn.Conv2d,
        nn.BatchNorm2d,
        nn.ReLU,
        nn.Conv2d,
        nn.BatchNorm2d,
    ]


def test_bottleneck_shortcut_is_identity_when_channels_match():
    block = Bottleneck(8, 8, 2, nn.ReLU)
    assert isinstance(block.shortcut, nn.Identity)


def test_bottleneck_shortcut_is_1x1_conv_and_bn_without_activation_when_channels_differ():
    block = Bottleneck(8, 12, 2, nn.ReLU)
    assert [type(m) for m in block.shortcut.modules() if not list(m.children())] == [nn.Conv2d, nn.BatchNorm2d]
    conv = block.shortcut[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (8, 12, (1, 1))


@pytest.mark.parametrize(("c_in", "c_out"), [(8, 8), (8, 12)])
def test_bottleneck_forward_is_act_of_subnetwork_plus_shortcut(c_in, c_out):
    block = Bottleneck(c_in, c_out, 4, nn.Tanh)
    _randomize_bn(block)
    x = torch.randn(2, c_in, 5, 5)

    sub = block.subnetwork
    h = torch.tanh(sub[1](F.conv2d(x, sub[0].weight)))
    h = torch.tanh(sub[4](F.conv2d(h, sub[3].weight, padding=1)))
    h = sub[7](F.conv2d(h, sub[6].weight))
    if c_in == c_out:
        short = x
    else:
        short = block.shortcut[1](F.conv2d(x, block.shortcut[0].weight))
    expected = torch.tanh(h + short)

    torch.testing.assert_close(block(x), expected)


def test_residual_model_with_overridden_ratio_builds_and_classifies():
    model = build(
        "model=residual", "model.channels=[8,12]", "model.blocks=1", "model.bottleneck_ratio=2", "model.hidden=[6]"
    )
    blocks = modules_of(model, Bottleneck)
    assert len(blocks) == 2
    assert [b.subnetwork[0].out_channels for b in blocks] == [8 // 2, 8 // 2]
    assert isinstance(blocks[0].shortcut, nn.Identity)  # 8 -> 8
    assert not isinstance(blocks[1].shortcut, nn.Identity)  # 8 -> 12
    assert model(torch.randn(2, *IN_SHAPE)).shape == (2, NUM_CLASSES)


# --- Pooling and init ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["plain", "skip", "residual"])
def test_pooling_closes_each_stage_of_equal_widths(family):
    blocks = ["model.blocks=1"] if family == "residual" else []
    model = build(f"model={family}", "model.channels=[4,4,8]", "model.pool=max", *blocks, in_shape=(1, 8, 8))
    kinds = [type(m).__name__ for m in model.features]
    assert kinds.count("MaxPool2d") == 2  # after the two 4-wide blocks, and after the 8-wide one
    assert kinds[-1] == "MaxPool2d" and kinds[-2] != "MaxPool2d" and kinds[-3] == "MaxPool2d"


def test_pool_after_conv_pools_before_bn_and_the_activation_of_the_stage_end():
    model = build("model=bn", "model.channels=[4,4,8]", "model.pool_position=after_conv", in_shape=(1, 8, 8))
    assert leaf_types(model.features) == [
        nn.Conv2d, nn.BatchNorm2d, nn.ReLU,  # the first 4-wide block: no pooling inside a stage
        nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.ReLU,
        nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.ReLU,
    ]  # fmt: skip
    after_block = build("model=bn", "model.channels=[4,4,8]", in_shape=(1, 8, 8))
    assert [p.shape for p in model.parameters()] == [p.shape for p in after_block.parameters()]
    x = torch.randn(5, 1, 8, 8)
    block = model.features[1].eval()  # conv -> pool -> BN -> ReLU, by hand
    h = block[0](torch.randn(5, 4, 8, 8))
    assert model(x).shape == (5, NUM_CLASSES)
    expected = F.relu(
        F.batch_norm(F.max_pool2d(h, 2), block[2].running_mean, block[2].running_var, block[2].weight, block[2].bias)
    )
    assert torch.allclose(block[3](block[2](block[1](h))), expected)


def test_pool_after_conv_needs_ablates_conv_block():
    block = "model.block={_target_:models.blocks.ConvBlock,_partial_:true,kernel_size:3}"
    with pytest.raises(
        ValueError, match=r"model.pool_position=after_conv needs ablate's conv block \(model.block=null\)"
    ):
        build("model=bn", "model.pool_position=after_conv", block)


@pytest.mark.parametrize("activation, gain", [("sigmoid", 1.0), ("tanh", 5 / 3), ("relu", 2**0.5)])
def test_scaled_init_draws_weights_with_the_activations_gain(activation, gain):
    model = build(
        "model=plain", "model.channels=[64]", "model.init=scaled", f"activation={activation}", in_shape=(3, 6, 6)
    )
    conv = model.features[0][0]
    fan_in = 3 * 3 * 3
    assert abs(conv.weight.std().item() - gain / fan_in**0.5) < 0.08 * gain / fan_in**0.5
    assert torch.count_nonzero(conv.bias) == 0
    default = build("model=plain", "model.channels=[64]", f"activation={activation}", in_shape=(3, 6, 6))
    assert torch.count_nonzero(default.features[0][0].bias) > 0  # torch's default init is left alone
