"""Models: building blocks and the families that `model=` chooses from."""

import math

import torch

from models.activations import build_activation
from models.networks import FAMILIES, ConvNet, head


def _check(cfg) -> None:
    if cfg.arch not in FAMILIES:
        raise ValueError(f"model.arch={cfg.arch!r} is not known; allowed: {', '.join(FAMILIES)}")
    channels = list(cfg.channels)
    if not channels or not all(isinstance(c, int) and c >= 1 for c in channels):
        raise ValueError(f"model.channels={channels} is not allowed; allowed: a non-empty list of positive integers")
    if not (isinstance(cfg.kernel_size, int) and cfg.kernel_size >= 1):
        raise ValueError(f"model.kernel_size={cfg.kernel_size!r} is not allowed; allowed: an integer >= 1")
    if not all(isinstance(h, int) and h >= 1 for h in cfg.hidden):
        raise ValueError(f"model.hidden={list(cfg.hidden)} is not allowed; allowed: a list of positive integers")


def build(model_cfg, activation_cfg, in_shape: tuple[int, int, int], num_classes: int) -> ConvNet:
    """The network `model_cfg` describes, with `activation_cfg` as every activation."""
    _check(model_cfg)
    build_activation(activation_cfg)  # a bad activation fails here, before any layer is made

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
    return ConvNet(features.train(), head(math.prod(out_shape), model_cfg, activation, num_classes))


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
