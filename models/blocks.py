"""Building blocks: the conv block, the concatenation skip and the residual bottleneck.

Each block is a small module whose `forward` reads like the book's diagram. The model families
call a block as `block(in_channels, out_channels, activation=act)`, `act()` making a fresh
activation module; a user's block that takes the same arguments can replace ConvBlock or
Bottleneck (`model.block`).
"""

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from models import kernels


class ConvBlock(nn.Sequential):
    """Conv (kernel K, padding K//2) -> [pool] -> [BN] -> activation, or conv -> [pool] -> activation -> BN.

    With batch norm before the activation the conv has no bias: BN's beta replaces it. `pool`, right
    after the conv, leaves a quarter of the pixels to BN and the activation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        activation: Callable[[], nn.Module],
        batch_norm: bool = False,
        bn_position: Literal["before", "after"] = "before",
        pool: nn.Module | None = None,
    ):
        bias = not (batch_norm and bn_position == "before")
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)]
        layers += [pool] if pool is not None else []
        if batch_norm and bn_position == "before":
            layers += [nn.BatchNorm2d(out_channels), activation()]
        elif batch_norm:
            layers += [activation(), nn.BatchNorm2d(out_channels)]
        else:
            layers += [activation()]
        super().__init__(*layers)
        self.fused = False  # models.kernels where they apply (trainer.fused turns it on)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and kernels.takes(self, x):
            return kernels.forward(self, x)
        return super().forward(x)


class ConcatSkip(nn.Module):
    """Concatenation skip: the output is [x, block(x)] stacked on the channel axis (C + H channels)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.block(x)], dim=1)


class Bottleneck(nn.Module):
    """Residual bottleneck: act(subnetwork(x) + shortcut(x)).

    subnetwork: 1x1 conv C -> C/r, BN, act, 3x3 conv, BN, act, 1x1 conv -> C', BN.
    shortcut: identity when C == C', else 1x1 conv + BN, with no activation.
    """

    def __init__(self, in_channels: int, out_channels: int, ratio: int, activation: Callable[[], nn.Module]):
        super().__init__()
        mid = in_channels // ratio
        self.subnetwork = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            activation(),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            activation(),
            nn.Conv2d(mid, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = nn.Identity()
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.activation = activation()
        self.fused = False  # models.kernels for its batch norms and ReLUs, where they apply (trainer.fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and kernels.takes(self, x):
            return kernels.forward(self, x)
        return self.activation(self.subnetwork(x) + self.shortcut(x))
