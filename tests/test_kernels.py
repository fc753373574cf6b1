"""trainer.fused: ablate's fused CPU kernels (models/kernels.py, compiled from models/kernels.cpp
with this machine's compiler) compute what torch's ops compute for a conv -> max pool -> BN -> ReLU
block, and for batch norm -> ReLU (conv blocks, residual bottlenecks), forward and backward, repeat
bit for bit whatever the threads, and train a real run."""

import json
import signal

import pytest
import torch
from fixtures import compose_cfg
from helpers import assert_bitwise_equal, outcome, run_cli, start_cli, wait_for_checkpoint_at_step
from torch import nn

from models import kernels
from models.blocks import Bottleneck, ConvBlock
from models.networks import PlainNet
from runner.data import cache
from runner.engine import builders
from runner.engine.diagnostics import Diagnostics

pytestmark = pytest.mark.skipif(kernels.compiler() is None, reason="no C++ compiler")
CL = torch.channels_last
BF16 = torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def lanes(tmp_path_factory) -> int:
    """The kernels, built once for all of pytest-xdist's workers (in the folder their temporary ones share)."""
    return kernels.library(tmp_path_factory.getbasetemp().parent / "kernels").lanes()


def block(cin: int, cout: int, k: int = 3, seed: int = 0) -> ConvBlock:
    torch.manual_seed(seed)
    b = ConvBlock(cin, cout, k, nn.ReLU, batch_norm=True, pool=nn.MaxPool2d(2)).to(memory_format=CL)
    with torch.no_grad():  # away from BN's initial gamma 1, beta 0, so that both matter
        b[2].weight.uniform_(0.5, 1.5)
        b[2].bias.uniform_(-0.3, 0.3)
    return b


def step(b: ConvBlock, x: torch.Tensor, grad: torch.Tensor) -> dict[str, torch.Tensor]:
    """One training forward and backward: the output, every gradient, the running statistics."""
    x = x.detach().clone().requires_grad_(x.requires_grad)
    with BF16:
        y = b(x)
    y.backward(grad)
    got = {"out": y.detach().float()} | {name: p.grad.clone() for name, p in b.named_parameters()}
    got |= {"running_mean": b[2].running_mean.clone(), "running_var": b[2].running_var.clone()}
    return got | ({"input": x.grad.float()} if x.requires_grad else {})


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / a.float().norm()).item()


# (input channels, output channels, kernel, size, input needs a gradient): one channel and no
# gradient take the stem kernel (the convolution inside), the others the block kernel after torch's conv
CASES = [
    (1, 16, 3, 28, False),
    (3, 16, 3, 32, False),
    (1, 16, 5, 12, False),
    (16, 48, 3, 14, True),
    (1, 32, 3, 8, True),
]


@pytest.mark.parametrize(("cin", "cout", "k", "size", "needs"), CASES)
def test_the_kernels_compute_what_torchs_ops_compute_forward_and_backward(lanes, cin, cout, k, size, needs):
    if cout % lanes:
        pytest.skip(f"{cout} channels on a CPU that takes {lanes} at a time")
    eager, fused = block(cin, cout, k), block(cin, cout, k)
    fused.fused = True
    torch.manual_seed(1)
    x = torch.randn(32, cin, size, size).contiguous(memory_format=CL).requires_grad_(needs)
    grad = torch.randn(32, cout, size // 2, size // 2).to(torch.bfloat16).contiguous(memory_format=CL)
    with BF16:
        assert kernels.takes(fused, x)  # not torch's ops on both sides
    want, got = step(eager, x, grad), step(fused, x, grad)
    assert got["out"].dtype == torch.float32 and got.keys() == want.keys()
    # bf16 values: the output and the input's gradient to bf16's rounding; the sums far closer
    assert relative(want["out"], got["out"]) < 2e-3
    assert (want["out"] == 0).float().mean() == pytest.approx((got["out"] == 0).float().mean().item(), abs=2e-3)
    if needs:
        assert relative(want["input"], got["input"]) < 1e-2
    assert relative(want["0.weight"], got["0.weight"]) < 1e-2  # eager's is the gradient of the bf16 weight
    for name in ("2.weight", "2.bias", "running_mean", "running_var"):
        assert relative(want[name], got[name]) < 1e-4, name


@pytest.mark.parametrize(("cin", "cout", "k", "size", "needs"), CASES)
def test_in_evaluation_the_kernels_normalize_with_the_running_statistics_as_torch_does(
    lanes, cin, cout, k, size, needs
):
    if cout % lanes:
        pytest.skip(f"{cout} channels on a CPU that takes {lanes} at a time")
    eager, fused = block(cin, cout, k), block(cin, cout, k)
    fused.fused = True
    torch.manual_seed(1)
    x = torch.randn(32, cin, size, size).contiguous(memory_format=CL)
    for b in (eager, fused):  # running statistics of their own, from a training step each
        step(b, x.requires_grad_(needs), torch.ones(32, cout, size // 2, size // 2, dtype=torch.bfloat16))
        b.eval()
    with torch.inference_mode(), BF16:
        assert kernels.takes(fused, x.detach())
        want, got = eager(x.detach() * 1.5), fused(x.detach() * 1.5)
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=CL)
    assert relative(want, got) < 2e-3


@pytest.mark.parametrize(("cin", "needs"), [(1, False), (16, True)])  # the stem kernel, the block kernel
def test_the_kernels_repeat_bit_for_bit_whatever_the_number_of_threads(lanes, cin, needs):
    results = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        try:
            b = block(cin, 16)
            b.fused = True
            torch.manual_seed(1)
            x = torch.randn(16, cin, 14, 14).contiguous(memory_format=CL).requires_grad_(needs)
            grad = torch.randn(16, 16, 7, 7).to(torch.bfloat16).contiguous(memory_format=CL)
            results.append(step(b, x, grad))
        finally:
            torch.set_num_threads(2)
    ours = [name for name in results[0] if needs is False or name not in ("0.weight", "input")]  # not torch's conv's
    for got in results[1:]:
        assert [name for name in ours if not torch.equal(results[0][name], got[name])] == []


def test_only_the_blocks_the_kernels_compute_take_them(tmp_path, lanes):
    assert kernels.why_not(block(1, 16)) is None
    assert kernels.why_not(ConvBlock(1, 16, 3, nn.ReLU, batch_norm=True)) is None  # batch norm -> ReLU
    assert kernels.why_not(Bottleneck(32, 64, 4, nn.ReLU)) is None
    assert kernels.why_not(Bottleneck(32, 64, 4, nn.LeakyReLU)) is not None
    assert kernels.why_not(ConvBlock(1, 16, 3, nn.ReLU, batch_norm=True, bn_position="after")) is not None
    after_block = ConvBlock(1, 16, 3, nn.ReLU)  # no batch norm
    assert "a block of Conv2d, MaxPool2d, BatchNorm2d and ReLU" in kernels.why_not(after_block)
    assert "or batch norm followed by ReLU" in kernels.why_not(after_block)
    leaky = ConvBlock(1, 16, 3, nn.LeakyReLU, batch_norm=True, pool=nn.MaxPool2d(2))
    assert kernels.why_not(leaky) is not None
    assert kernels.why_not(ConvBlock(1, 16, 3, nn.ReLU, batch_norm=True, pool=nn.AvgPool2d(2))) is not None
    assert kernels.why_not(block(1, 12), lanes=8) == "a convolution with no bias, to a multiple of 8 channels"

    model = nn.Sequential(block(1, 16), block(16, 32), after_block)
    assert kernels.switch_on(model, "auto", torch.device("cpu"), torch.bfloat16, False, tmp_path) == ["0", "1"]
    assert [m.fused for m in model] == [True, True, False]
    fp32 = kernels.switch_on(model, "auto", torch.device("cpu"), None, False, tmp_path)
    assert fp32 == [] and not any(m.fused for m in model)
    with pytest.raises(ValueError, match=r"^trainer.fused=true needs bf16 autocast .*; allowed here: auto, false$"):
        kernels.switch_on(model, True, torch.device("cpu"), None, False, tmp_path)
    with pytest.raises(ValueError, match=r"^trainer.fused=true needs a CPU \(this run trains on cuda\)"):
        kernels.switch_on(model, True, torch.device("cuda"), torch.bfloat16, False, tmp_path)

    fused = block(1, 16)
    fused.fused = True
    x = torch.randn(8, 1, 12, 12).contiguous(memory_format=CL)
    with BF16:
        assert kernels.takes(fused, x)
        assert not kernels.takes(fused, x[:, :, :11, :11])  # an odd size: torch's pooling drops the edge
        fused.eval()
        assert not kernels.takes(fused, x)  # evaluation with gradients: torch's ops
        with torch.no_grad():
            assert kernels.takes(fused, x)
        fused.train()
        handle = fused[3].register_forward_hook(lambda *_: None)  # the diagnostics' dead units
        assert not kernels.takes(fused, x)
        handle.remove()
    assert not kernels.takes(fused, x)  # fp32: outside bf16 autocast


def test_a_run_records_its_fused_blocks_and_trains_as_closely_as_torchs_ops_do(tmp_path, quick):
    small = [*quick, "model=bn", "model.pool_position=after_conv", "model.channels=[16,32]"]
    outcomes = {}
    for fused in ("auto", "false"):  # auto in a fresh process: it builds the kernels in its cache
        result = run_cli(*small, f"trainer.fused={fused}", f"hydra.run.dir={tmp_path / fused}", process=fused == "auto")
        assert result.returncode == 0, result.stderr
        said = "threads, fused kernels in 2 blocks)" in result.stdout + result.stderr  # the run's first line
        assert said == (fused == "auto"), result.stdout + result.stderr
        outcomes[fused] = json.loads((tmp_path / fused / "metrics.json").read_text())
    assert outcomes["auto"]["fused"] == ["features.0", "features.1"] and outcomes["false"]["fused"] == []
    assert outcomes["auto"]["precision"] == "bf16" or pytest.skip("fp32 here: the kernels are bf16 only")
    assert outcomes["auto"]["test_acc"] > 0.8
    assert outcomes["auto"]["test_acc"] == pytest.approx(outcomes["false"]["test_acc"], abs=0.03)
    assert list((cache.cache_dir() / "kernels").glob("kernels-*.so"))  # built in the run's cache, once


def test_trainer_fused_true_where_no_block_has_the_kernels_is_one_line(tmp_path, quick):
    result = run_cli(*quick, "activation=tanh", "trainer.fused=true", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(
        "error: trainer.fused=true needs a block of Conv2d, MaxPool2d, BatchNorm2d and ReLU"
    )
    assert result.stderr.endswith("; allowed here: auto, false\n")


def test_without_a_compiler_auto_runs_torchs_ops_and_says_so(tmp_path, quick, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(kernels, "_library", [])  # as in a fresh process
    small = [*quick, "model=bn", "model.pool_position=after_conv", "model.channels=[16,32]"]
    result = run_cli(*small, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr
    assert (
        "trainer.fused=auto: torch's ops instead of ablate's kernels: no C++ compiler" in result.stdout + result.stderr
    )
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["fused"] == []
    refused = run_cli(*small, "trainer.fused=true", f"hydra.run.dir={tmp_path / 'refused'}")
    assert (
        refused.returncode == 2 and "trainer.fused=true needs its kernels built here (no C++ compiler" in refused.stderr
    )


@pytest.mark.slow
def test_a_run_with_the_kernels_stopped_mid_epoch_resumes_bitwise_equal(tmp_path, quick):
    resumable = [*quick, "model=bn", "model.pool_position=after_conv", "model.channels=[16,32]",
                 "trainer.max_epochs=2", "trainer.checkpoint_every_minutes=0.0001"]  # fmt: skip
    whole = run_cli(*resumable, f"hydra.run.dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr
    assert json.loads((tmp_path / "whole" / "metrics.json").read_text())["fused"] == ["features.0", "features.1"]
    process = start_cli(*resumable, f"hydra.run.dir={tmp_path / 'stopped'}")
    wait_for_checkpoint_at_step(tmp_path / "stopped", 20)  # an epoch has 78 steps
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, output
    again = run_cli(*resumable, f"hydra.run.dir={tmp_path / 'stopped'}")
    assert again.returncode == 0 and "resuming from" in again.stdout + again.stderr, again.stderr
    assert_bitwise_equal(outcome(tmp_path / "stopped"), outcome(tmp_path / "whole"))


@pytest.mark.slow
def test_under_torchrun_each_process_takes_the_kernels_and_ddp_gets_gradients_in_its_layout(tmp_path, quick):
    small = [*quick, "model=bn", "model.pool_position=after_conv", "model.channels=[16,32]"]
    result = run_cli(*small, f"hydra.run.dir={tmp_path}", nproc=2)
    assert result.returncode == 0, result.stderr
    assert "Grad strides do not match" not in result.stdout + result.stderr  # the stem's weight gradient
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["fused"] == ["features.0", "features.1"]
    assert metrics["test_acc"] > 0.8


def bn_relu_block(kind: str, channels: int, seed: int = 0) -> nn.Module:
    """A conv block whose batch norm precedes ReLU (no pooling inside), or a residual bottleneck
    (its middle width channels // 4), its batch norms away from their initial gamma 1 and beta 0."""
    torch.manual_seed(seed)
    b = (
        ConvBlock(channels, channels, 3, nn.ReLU, batch_norm=True)
        if kind == "conv"
        else Bottleneck(32, channels, 4, nn.ReLU)
    )
    with torch.no_grad():
        for m in b.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return b.to(memory_format=CL)


def trained(b: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> dict[str, torch.Tensor]:
    """One training forward and backward: the output, the input's and every parameter's gradient, the
    running statistics."""
    x = x.detach().clone().requires_grad_()
    with BF16:
        y = b(x)
    y.backward(grad)
    got = {"out": y.detach().float(), "input": x.grad.float()}
    got |= {name: p.grad.clone() for name, p in b.named_parameters()}
    return got | {name: t.clone() for name, t in b.named_buffers() if "running" in name}


# (block, channels, size): a bottleneck of 32 -> 8 -> 32 channels (8 channels: two pixels in each
# AVX-512 register) and of 32 -> 16 -> 64, conv blocks of 48 channels on 7x7 and 32 on 28x28
BN_RELU_CASES = [("bottleneck", 32, 28), ("bottleneck", 64, 16), ("conv", 48, 7), ("conv", 32, 28)]


@pytest.mark.parametrize(("kind", "channels", "size"), BN_RELU_CASES)
def test_batch_norm_then_relu_computes_what_torchs_ops_compute(lanes, kind, channels, size):
    eager, fused = bn_relu_block(kind, channels), bn_relu_block(kind, channels)
    fused.fused = True
    torch.manual_seed(1)
    cin = channels if kind == "conv" else 32
    x = torch.randn(16, cin, size, size).contiguous(memory_format=CL)
    grad = torch.randn(16, channels, size, size).to(torch.bfloat16).contiguous(memory_format=CL)
    with BF16:
        assert kernels.takes(fused, x)
    want, got = trained(eager, x, grad), trained(fused, x, grad)
    assert got.keys() == want.keys()
    assert relative(want["out"], got["out"]) < 2e-3
    assert relative(want["input"], got["input"]) < 1e-2
    for name in want.keys() - {"out", "input"}:  # parameters' gradients (through bf16 convs); running statistics
        assert relative(want[name], got[name]) < (1e-4 if "running" in name else 1e-2), name
    for b in (eager, fused):
        b.eval()
    with torch.inference_mode(), BF16:
        assert kernels.takes(fused, x)
        assert relative(eager(x * 1.5), fused(x * 1.5)) < 2e-3  # the running statistics


def test_batch_norm_then_relu_repeats_bit_for_bit_whatever_the_number_of_threads(lanes):
    results = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        try:
            torch.manual_seed(1)
            x = torch.randn(8, 8, 14, 14).to(torch.bfloat16).contiguous(memory_format=CL).requires_grad_()
            grad = torch.randn(8, 8, 14, 14).to(torch.bfloat16).contiguous(memory_format=CL)
            bn = nn.BatchNorm2d(8)
            with BF16:
                y = kernels.bn_relu(bn, x)
            y.backward(grad)
            results.append([y, x.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var])
        finally:
            torch.set_num_threads(2)
    for got in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], got, strict=True))


def test_a_residual_run_takes_the_kernels_in_its_bottlenecks_and_learns(tmp_path, quick):
    result = run_cli(*quick, "model=residual", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    if metrics["precision"] != "bf16":
        pytest.skip("fp32 here: the kernels are bf16 only")
    assert [name for name in metrics["fused"] if "features" in name] == metrics["fused"] != []
    assert metrics["test_acc"] > 0.5


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_a_plain_network_with_relu_then_pooling_fused_computes_torchs_bits(lanes, shape):
    """model=plain (pool_position=after_block): each conv's ReLU and the 2x2 max pooling after it in
    one pass; max and ReLU are exact, so output and gradients are torch's, bit for bit."""
    torch.manual_seed(0)
    eager = PlainNet(shape, 10, channels=[16, 32]).to(memory_format=CL)
    fused = PlainNet(shape, 10, channels=[16, 32]).to(memory_format=CL)
    fused.load_state_dict(eager.state_dict())
    assert kernels.switch_on(fused, "auto", torch.device("cpu"), torch.bfloat16, False, cache.cache_dir()) == [
        "features"
    ]
    x, y = torch.randn(32, *shape).contiguous(memory_format=CL), torch.randint(0, 10, (32,))
    results = []
    for model in (eager, fused):
        with BF16:
            out = model(x)
            torch.nn.functional.cross_entropy(out, y).backward()
        results.append([out, *(p.grad for p in model.parameters())])
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))
    for model in (eager, fused):
        model.eval()
    with torch.inference_mode(), BF16:
        assert torch.equal(eager(x), fused(x))


def test_a_batch_norm_network_fuses_each_block_and_its_pooling_and_learns_as_torch_does(tmp_path, quick):
    """model=bn on Fashion-MNIST-sized digits: batch norm -> ReLU in each block, ReLU -> pooling after
    it; trained side by side with torch's ops, the same accuracy within a point or two."""
    small = [*quick, "model=bn", "model.channels=[16,32]"]
    outcomes = {}
    for fused in ("auto", "false"):
        result = run_cli(*small, f"trainer.fused={fused}", f"hydra.run.dir={tmp_path / fused}")
        assert result.returncode == 0, result.stderr
        outcomes[fused] = json.loads((tmp_path / fused / "metrics.json").read_text())
    if outcomes["auto"]["precision"] != "bf16":
        pytest.skip("fp32 here: the kernels are bf16 only")
    assert outcomes["auto"]["fused"] == ["features", "features.0", "features.2"]
    assert outcomes["auto"]["test_acc"] == pytest.approx(outcomes["false"]["test_acc"], abs=0.03)


def test_batch_norm_then_relu_where_an_image_does_not_fill_the_vectors_runs_torchs_ops(lanes):
    """12 channels on 7x7 pixels: 588 values an image, not a whole number of periods (lcm(12, lanes)
    values: 48 with AVX-512, 24 without); the block computes with torch's ops, bit for bit."""
    eager, fused = bn_relu_block("conv", 12), bn_relu_block("conv", 12)
    fused.fused = True
    torch.manual_seed(1)
    x = torch.randn(4, 12, 7, 7).contiguous(memory_format=CL)
    grad = torch.randn(4, 12, 7, 7).to(torch.bfloat16).contiguous(memory_format=CL)
    with BF16:
        assert kernels.takes(fused, x)
    want, got = trained(eager, x, grad), trained(fused, x, grad)
    assert all(torch.equal(want[name], got[name]) for name in want)


@pytest.mark.parametrize("model", ["bn", "residual"])
def test_a_logging_step_counts_dead_units_from_the_kernels_output_and_changes_no_bit(lanes, model):
    """The diagnostics' dead-unit hooks read only the output: the kernels call them with the ReLU
    output they make, so a logging step computes what any other step does, bit for bit."""
    cfg = compose_cfg(f"model={model}", "model.channels=[16,32]")
    results, dead = [], None
    for logging_step in (False, True):
        torch.manual_seed(0)
        net = builders.build_model(cfg.model, cfg.activation, (1, 28, 28), 10).to(memory_format=CL)
        assert kernels.switch_on(net, "auto", torch.device("cpu"), torch.bfloat16, False, cache.cache_dir())
        diagnostics = Diagnostics(net)
        diagnostics.active = logging_step
        x, y = torch.randn(16, 1, 28, 28).contiguous(memory_format=CL), torch.randint(0, 10, (16,))
        with BF16:
            out = net(x)
            torch.nn.functional.cross_entropy(out, y).backward()
        diagnostics.active = False
        results.append([out, *(p.grad for p in net.parameters())])
        dead = diagnostics.read() if logging_step else dead
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))
    counted = [tag for tag in dead if tag.startswith("probe/dead_units/")]
    assert len(counted) == len(diagnostics.rectifiers) and all(0 <= dead[tag] <= 1 for tag in counted)
