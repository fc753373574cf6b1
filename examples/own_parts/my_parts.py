"""A user's own parts for ablate, kept outside it: a model and a block.

ablate imports this file from the current directory (run from this folder) when a YAML in
configs/ names one of its classes with `_target_`.
"""

import torch
from torch import nn


class TinyNet(nn.Module):
    """A 3x3 conv of `width` channels, ReLU, 4x4 average pooling, a linear layer to the classes.

    ablate passes the data's `in_shape` (C, H, W) and `num_classes`; `width` comes from the YAML."""

    def __init__(self, in_shape, num_classes, width=8):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_shape[0], width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.head = nn.Linear(width * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class SeparableBlock(nn.Module):
    """A depthwise K x K conv, then a 1x1 conv to `out_channels`, BN and the activation: a block
    that can stand in for ablate's conv block (model=plain, bn, skip) or bottleneck (model=residual).

    ablate's models call a block as `block(in_channels, out_channels, activation=act)`, `act()`
    making a fresh activation module; `kernel_size` comes from the YAML."""

    def __init__(self, in_channels, out_channels, activation, kernel_size=3):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, padding=kernel_size // 2, groups=in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.activation = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.pointwise(self.depthwise(x))))


class SimpleDenseNet(nn.Module):
    """A dense net as another project wrote it, copied unchanged: it names its sizes its own way
    (`input_size`, `output_size`) and flattens with `view`. Its YAML (configs/model/dense.yaml) writes
    the data's facts under those names: `input_size: ${data:flat_size}`, `output_size: ${data:num_classes}`."""

    def __init__(
        self,
        input_size: int = 784,
        lin1_size: int = 256,
        lin2_size: int = 256,
        lin3_size: int = 256,
        output_size: int = 10,
    ) -> None:
        super().__init__()

        self.model = nn.Sequential(
            nn.Linear(input_size, lin1_size),
            nn.BatchNorm1d(lin1_size),
            nn.ReLU(),
            nn.Linear(lin1_size, lin2_size),
            nn.BatchNorm1d(lin2_size),
            nn.ReLU(),
            nn.Linear(lin2_size, lin3_size),
            nn.BatchNorm1d(lin3_size),
            nn.ReLU(),
            nn.Linear(lin3_size, output_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_size, channels, width, height = x.size()

        # (batch, 1, width, height) -> (batch, 1*width*height)
        x = x.view(batch_size, -1)

        return self.model(x)
