"""Gradient-flow and dead-unit diagnostics, on small models whose answers are known."""

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
        assert diagnostics.read()["probe/dead_units/1"] == expected


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
