"""Models: building blocks and the families that `model=` chooses from."""

import math

import torch

from models.activations import build_activation
from models.networks import FAMILIES, ConvNet, head
from runner import schema


def build(model_cfg, activation_cfg, in_shape: tuple[int, int, int], num_classes: int) -> ConvNet:
    """The network `model_cfg` describes, with `activation_cfg` as every activation."""
    schema.check("model", model_cfg)  # the rules `run` checks before anything runs
    schema.check("activation", activation_cfg)

    def activation():
        return build_activation(activation_cfg)

    features = FAMILIES[model_cfg.arch](model_cfg, activation, in_shape[0])
    try:
        with torch.no_grad():
            out_shape = features.eval()(torch.zeros(1, *in_shape)).shape[1:]
    except RuntimeError as e:
        raise ValueError(
            f"model.channels={list(model_cfg.channels)} with model.pool={model_cfg.pool} does not fit a "
            f"{in_shape[1]}x{in_shape[2]} input ({str(e).splitlines()[0]}); allowed: fewer pooled layers"
        ) from None
    model = ConvNet(features.train(), head(math.prod(out_shape), model_cfg, activation, num_classes))
    init_weights(model, model_cfg.get("init", "torch"), activation_cfg)
    return model


INITS = ("torch", "scaled")


def init_weights(model: torch.nn.Module, init: str, activation_cfg) -> None:
    """`torch` keeps PyTorch's default init; `scaled` draws every conv and linear weight from
    N(0, gain^2 / fan_in) with the gain of the activation (torch.nn.init.calculate_gain: sigmoid 1,
    tanh 5/3, relu sqrt(2), leaky_relu sqrt(2 / (1 + alpha^2))) and zeroes the biases, so that
    every activation starts with signals of the same scale and only its derivative differs."""
    if init not in INITS:
        raise ValueError(f"model.init={init!r} is not known; allowed: {', '.join(INITS)}")
    if init == "torch":
        return
    alpha = activation_cfg.get("alpha", 0.01)
    gain = torch.nn.init.calculate_gain(activation_cfg.name, alpha if activation_cfg.name == "leaky_relu" else None)
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            fan_in = module.weight[0].numel()
            torch.nn.init.normal_(module.weight, std=gain / math.sqrt(fan_in))
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
