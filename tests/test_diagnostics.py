"""Gradient-flow and dead-unit diagnostics, on small models whose answers are known."""

import pytest
import torch
from torch import nn

from runner.engine.diagnostics import Diagnostics


def test_dead_units_count_units_off_for_every_sample_of_the_batch():
    layer = nn.Linear(2, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]))
        layer.bias.zero_()
    for act, expected in ((nn.ReLU(), 0.25), (nn.LeakyReLU(0.1), 0.25)):
        model = nn.Sequential(layer, act)
        diagnostics = Diagnostics(model)
        x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])  # unit 2 (-x0) is negative for both samples, unit 3 for one
        model(x)
        assert diagnostics.read() == {}  # inactive: nothing recorded (and no gradients yet)
        diagnostics.active = True
        model(x)
        assert diagnostics.read()["probe/dead_units/1"] == pytest.approx(expected)


def test_dead_units_of_conv_features_are_the_same_in_either_memory_format():
    conv = nn.Conv2d(1, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:2, 0, 1, 1] = 1.0  # channels 0 and 1 pass the pixel: off only where it is not positive
        conv.bias.copy_(torch.tensor([0.0, 0.0, -1.0, 1.0]))  # channel 2 off everywhere, channel 3 on everywhere
    x = torch.randn(8, 1, 5, 5)
    x[:, :, 0, 0] = -1.0  # channels 0 and 1 are off at position (0, 0) for every sample
    expected = (25 + 2) / (4 * 25)  # channel 2's 25 positions, and (0, 0) of channels 0 and 1
    for layout in (torch.contiguous_format, torch.channels_last):
        model = nn.Sequential(conv, nn.ReLU()).to(memory_format=layout)
        diagnostics = Diagnostics(model)
        diagnostics.active = True
        model(x.contiguous(memory_format=layout))
        assert diagnostics.read()["probe/dead_units/1"] == pytest.approx(expected)


def test_grad_norms_per_layer_and_first_to_last_ratio():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    diagnostics = Diagnostics(model)
    model(torch.randn(5, 3)).square().sum().backward()
    values = diagnostics.read()
    first = torch.cat([model[0].weight.grad.flatten(), model[0].bias.grad]).norm().item()
    last = torch.cat([model[2].weight.grad.flatten(), model[2].bias.grad]).norm().item()
    assert abs(values["probe/grad_norm/0"] - first) < 1e-5 and abs(values["probe/grad_norm/2"] - last) < 1e-5
    assert abs(values["probe/grad_norm/first_to_last"] - first / last) < 1e-5
    assert not any(k.startswith("probe/dead_units") for k in values)  # tanh has no dead units to count
