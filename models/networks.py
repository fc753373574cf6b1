"""The model families: plain CNN (with or without batch norm), concatenation skip, residual bottleneck.

Each family is an nn.Module whose keyword arguments are the keys of its YAML in configs/model/;
ablate passes the data's `in_shape` (C, H, W) and `num_classes`, and `activation`, a callable
that makes a fresh activation module. Every family is features -> flatten -> hidden FC layers ->
linear head. With one conv layer, no pooling, no hidden layer and tanh, `PlainNet` is the book's
network f(x) = tanh(x (*) W1 + b1) -> flatten -> W_out x + b_out.

`block` replaces the family's own block (ConvBlock, Bottleneck): a callable taking
(in_channels, out_channels, activation=...) that returns a module keeping the spatial size.
"""

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Literal

import torch
from torch import nn

from models import kernels
from models.activations import gain
from models.blocks import Bottleneck, ConcatSkip, ConvBlock

Activation = Callable[[], nn.Module]
Block = Callable[..., nn.Module]
Pool = Literal["max", "avg"] | None
POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


class FlattenChannelsLast(nn.Module):
    """(N, C, H, W) -> (N, H * W * C), the features of each position together: a view of a channels_last
    tensor, so that neither the forward pass nor the backward pass converts the layout (nn.Flatten's
    C, H, W order copies it forward and leaves the gradient in the other layout, which the layer
    before then takes several times as long to go through). The order is the same for either layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).flatten(1) if x.dim() == 4 else x.flatten(1)


class Stages(nn.Sequential):
    """A plain network's conv blocks and the pooling that closes each stage, in order. Where
    trainer.fused turns it on, a conv block ending in ReLU and the 2x2 max pooling after it run as one
    (models.kernels.stages); its modules, their names and its state are those of an nn.Sequential."""

    fused_stages = True  # what models.kernels.kind knows it by

    def __init__(self, *layers: nn.Module):
        super().__init__(*layers)
        self.fused = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and kernels.takes(self, x):
            return kernels.forward(self, x)
        return super().forward(x)


class ConvNet(nn.Module):
    """Convolutional `features`, then flatten -> (Linear -> [BatchNorm1d] -> activation) per
    `hidden` width -> Linear to the classes; weights initialized as `init` says."""

    def __init__(
        self,
        features: nn.Sequential,
        in_shape: Sequence[int],
        num_classes: int,
        activation: Activation,
        hidden: Sequence[int],
        batch_norm: bool,
        bn_position: Literal["before", "after"],
        init: Literal["torch", "scaled"],
    ):
        super().__init__()
        self.features = features
        with torch.no_grad():
            out_shape = features.eval()(torch.zeros(1, *in_shape)).shape[1:]
        features.train()
        layers: list[nn.Module] = [FlattenChannelsLast()]
        in_features = math.prod(out_shape)
        for width in hidden:
            bn_before = batch_norm and bn_position == "before"
            layers += [nn.Linear(in_features, width, bias=not bn_before)]
            if bn_before:
                layers += [nn.BatchNorm1d(width), activation()]
            elif batch_norm:
                layers += [activation(), nn.BatchNorm1d(width)]
            else:
                layers += [activation()]
            in_features = width
        layers += [nn.Linear(in_features, num_classes)]
        self.head = nn.Sequential(*layers)
        if init == "scaled":
            scale_weights(self, gain(activation()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def scale_weights(model: nn.Module, gain: float) -> None:
    """`init: scaled`: every conv and linear weight drawn from N(0, gain^2 / fan_in) with the
    activation's gain, biases zero, so that every activation starts with signals of the same scale
    and only its derivative differs."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            nn.init.normal_(module.weight, std=gain / math.sqrt(fan_in))
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def stage_ends(channels: Sequence[int]) -> set[int]:
    """Indices of the last entry of each stage, a run of equal widths: [16, 16, 32] ends at 1 and 2."""
    return {i for i in range(len(channels)) if i == len(channels) - 1 or channels[i] != channels[i + 1]}


def pooling(pool: Pool) -> list[nn.Module]:
    return [POOLS[pool](2)] if pool else []


class PlainNet(ConvNet):
    """A conv block per width of `channels` (K x K conv with padding K//2 -> [BN] -> activation);
    the optional 2x2 pooling closes each stage (run of equal widths): after its last block, or with
    `pool_position: after_conv` right after that block's conv, before its BN and activation, which
    then see a quarter of the pixels (max pooling commutes with a rising activation; BN's statistics
    become those of the pooled pixels)."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        activation: Activation = nn.ReLU,
        channels: list[int] = (32, 64),
        kernel_size: int = 3,
        pool: Pool = "max",
        hidden: list[int] = (128,),
        batch_norm: bool = False,
        bn_position: Literal["before", "after"] = "before",
        init: Literal["torch", "scaled"] = "torch",
        block: Block | None = None,
        pool_position: Literal["after_block", "after_conv"] = "after_block",
    ):
        if block is not None and pool and pool_position == "after_conv":
            raise ValueError("model.pool_position=after_conv needs ablate's conv block (model.block=null)")
        block = block or partial(ConvBlock, kernel_size=kernel_size, batch_norm=batch_norm, bn_position=bn_position)
        layers: list[nn.Module] = []
        in_channels, ends = in_shape[0], stage_ends(channels)
        for i, width in enumerate(channels):
            stage_pool = pooling(pool) if i in ends else []
            if stage_pool and pool_position == "after_conv":
                layers += [block(in_channels, width, activation=activation, pool=stage_pool[0])]
            else:
                layers += [block(in_channels, width, activation=activation), *stage_pool]
            in_channels = width
        super().__init__(Stages(*layers), in_shape, num_classes, activation, hidden, batch_norm, bn_position, init)


class SkipNet(ConvNet):
    """Conv blocks whose output is [x, h]: each block adds `width` channels to what it got; the
    optional 2x2 pooling closes each stage (run of equal widths)."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        activation: Activation = nn.ReLU,
        channels: list[int] = (16, 32),
        kernel_size: int = 3,
        pool: Pool = "max",
        hidden: list[int] = (128,),
        batch_norm: bool = False,
        bn_position: Literal["before", "after"] = "before",
        init: Literal["torch", "scaled"] = "torch",
        block: Block | None = None,
    ):
        block = block or partial(ConvBlock, kernel_size=kernel_size, batch_norm=batch_norm, bn_position=bn_position)
        layers: list[nn.Module] = []
        in_channels, ends = in_shape[0], stage_ends(channels)
        for i, width in enumerate(channels):
            layers += [ConcatSkip(block(in_channels, width, activation=activation))]
            layers += pooling(pool) if i in ends else []
            in_channels += width
        super().__init__(
            nn.Sequential(*layers), in_shape, num_classes, activation, hidden, batch_norm, bn_position, init
        )


class ResidualNet(ConvNet):
    """A K x K conv + BN stem to channels[0], then `blocks` bottlenecks per width (ratio
    `bottleneck_ratio`); the optional 2x2 pooling closes each stage (run of equal widths).
    `batch_norm` and `bn_position` are those of the hidden FC layers."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        activation: Activation = nn.ReLU,
        channels: list[int] = (32, 64),
        kernel_size: int = 3,
        blocks: int = 2,
        bottleneck_ratio: int = 4,
        pool: Pool = "max",
        hidden: list[int] = (128,),
        batch_norm: bool = True,
        bn_position: Literal["before", "after"] = "before",
        init: Literal["torch", "scaled"] = "torch",
        block: Block | None = None,
    ):
        block = block or partial(Bottleneck, ratio=bottleneck_ratio)
        layers: list[nn.Module] = [ConvBlock(in_shape[0], channels[0], kernel_size, activation, batch_norm=True)]
        in_channels, ends = channels[0], stage_ends(channels)
        for i, width in enumerate(channels):
            for _ in range(blocks):
                layers += [block(in_channels, width, activation=activation)]
                in_channels = width
            layers += pooling(pool) if i in ends else []
        super().__init__(
            nn.Sequential(*layers), in_shape, num_classes, activation, hidden, batch_norm, bn_position, init
        )
