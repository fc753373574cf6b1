"""Models: building blocks and the families that `model=` chooses from, plain nn.Module classes
with keyword arguments (configs/model/*.yaml name them with `_target_`)."""

import torch

from models.activations import LeakyReLU
from models.blocks import Bottleneck, ConcatSkip, ConvBlock
from models.networks import ConvNet, PlainNet, ResidualNet, SkipNet

__all__ = [
    "Bottleneck",
    "ConcatSkip",
    "ConvBlock",
    "ConvNet",
    "LeakyReLU",
    "PlainNet",
    "ResidualNet",
    "SkipNet",
    "num_params",
]


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
