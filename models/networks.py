"""The model families: plain CNN (with or without batch norm), concatenation skip, residual bottleneck.

Every family is features -> flatten -> hidden FC layers -> linear head. With one conv layer,
no pooling, no hidden layer and tanh, `plain` is the seed's network
f(x) = tanh(x (*) W1 + b1) -> flatten -> W_out x + b_out.
"""

from collections.abc import Callable

import torch
from torch import nn

from models.blocks import Bottleneck, ConcatSkip, ConvBlock

POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


class ConvNet(nn.Module):
    """Convolutional features followed by a fully connected head."""

    def __init__(self, features: nn.Sequential, head: nn.Sequential):
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _pool(cfg) -> list[nn.Module]:
    if cfg.pool is None:
        return []
    if cfg.pool not in POOLS:
        raise ValueError(f"model.pool={cfg.pool!r} is not known; allowed: max, avg, null")
    return [POOLS[cfg.pool](2)]


def stage_ends(channels) -> set[int]:
    """Indices of the last entry of each stage, a run of equal widths: [16, 16, 32] ends at 1 and 2."""
    return {i for i in range(len(channels)) if i == len(channels) - 1 or channels[i] != channels[i + 1]}


def plain_features(cfg, activation: Callable[[], nn.Module], in_channels: int) -> nn.Sequential:
    """Conv blocks; the optional 2x2 pooling closes each stage (run of equal widths)."""
    layers: list[nn.Module] = []
    ends = stage_ends(cfg.channels)
    for i, width in enumerate(cfg.channels):
        layers += [ConvBlock(in_channels, width, cfg.kernel_size, activation, cfg.batch_norm, cfg.bn_position)]
        layers += _pool(cfg) if i in ends else []
        in_channels = width
    return nn.Sequential(*layers)


def skip_features(cfg, activation: Callable[[], nn.Module], in_channels: int) -> nn.Sequential:
    """Conv blocks whose output is [x, h]: each block adds `width` channels to what it got;
    the optional 2x2 pooling closes each stage (run of equal widths)."""
    layers: list[nn.Module] = []
    ends = stage_ends(cfg.channels)
    for i, width in enumerate(cfg.channels):
        block = ConvBlock(in_channels, width, cfg.kernel_size, activation, cfg.batch_norm, cfg.bn_position)
        layers += [ConcatSkip(block)]
        layers += _pool(cfg) if i in ends else []
        in_channels += width
    return nn.Sequential(*layers)


def residual_features(cfg, activation: Callable[[], nn.Module], in_channels: int) -> nn.Sequential:
    """A conv + BN stem to channels[0], then `blocks` bottlenecks per width; the optional 2x2
    pooling closes each stage (run of equal widths)."""
    if cfg.blocks < 1:
        raise ValueError(f"model.blocks={cfg.blocks} is not allowed; allowed: an integer >= 1")
    layers: list[nn.Module] = [ConvBlock(in_channels, cfg.channels[0], cfg.kernel_size, activation, batch_norm=True)]
    in_channels = cfg.channels[0]
    ends = stage_ends(cfg.channels)
    for i, width in enumerate(cfg.channels):
        for _ in range(cfg.blocks):
            layers += [Bottleneck(in_channels, width, cfg.bottleneck_ratio, activation)]
            in_channels = width
        layers += _pool(cfg) if i in ends else []
    return nn.Sequential(*layers)


FAMILIES = {"plain": plain_features, "skip": skip_features, "residual": residual_features}


def head(in_features: int, cfg, activation: Callable[[], nn.Module], num_classes: int) -> nn.Sequential:
    """Flatten -> (Linear -> [BatchNorm1d] -> activation) per hidden width -> Linear to the classes."""
    layers: list[nn.Module] = [nn.Flatten()]
    for width in cfg.hidden:
        bn_before = cfg.batch_norm and cfg.bn_position == "before"
        layers += [nn.Linear(in_features, width, bias=not bn_before)]
        if bn_before:
            layers += [nn.BatchNorm1d(width), activation()]
        elif cfg.batch_norm:
            layers += [activation(), nn.BatchNorm1d(width)]
        else:
            layers += [activation()]
        in_features = width
    layers += [nn.Linear(in_features, num_classes)]
    return nn.Sequential(*layers)
