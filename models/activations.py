"""Activation functions of the seed: tanh, sigmoid, ReLU and LeakyReLU."""

from torch import nn

ACTIVATIONS = ("tanh", "sigmoid", "relu", "leaky_relu")


def build_activation(cfg) -> nn.Module:
    """A fresh activation module for `cfg.name` (LeakyReLU takes `cfg.alpha`)."""
    name = cfg.name
    if name == "tanh":
        return nn.Tanh()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        # LeakyReLU(x) = max(alpha x, x) for 0 < alpha < 1.
        return nn.LeakyReLU(negative_slope=float(cfg.alpha))
    raise ValueError(f"activation.name={name!r} is not known; allowed: {', '.join(ACTIVATIONS)}")
