"""The book's semantics for optimizers and schedules.

Optimizers come from `runner.engine.builders.build_optimizer(cfg.optimizer, params)` and schedules from
`builders.build_schedule(cfg.sched, optimizer, steps_per_epoch, epochs)`, with `cfg` composed
by Hydra from the real YAML files; each is compared with the book's update rule run by hand.
"""

import math
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, compose_cfg

from runner.engine import builders


def param(*values: float) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor(values, dtype=torch.float64))


def step_with(optimizer: torch.optim.Optimizer, p: torch.nn.Parameter, grad: torch.Tensor) -> None:
    p.grad = grad.clone()
    optimizer.step()


GRADS = [
    torch.tensor([0.5, -1.0], dtype=torch.float64),
    torch.tensor([2.0, 0.0], dtype=torch.float64),
    torch.tensor([-1.5, 0.25], dtype=torch.float64),
    torch.tensor([0.1, 3.0], dtype=torch.float64),
    torch.tensor([-0.7, -0.2], dtype=torch.float64),
]


# --- SGD ----------------------------------------------------------------------------------------


def test_sgd_is_theta_minus_eta_g():
    cfg = compose_cfg("optimizer=sgd", "optimizer.lr=0.1")
    p = param(1.0, 2.0)
    opt = builders.build_optimizer(cfg.optimizer, [p])
    assert isinstance(opt, torch.optim.SGD)

    step_with(opt, p, GRADS[0])  # [1, 2] - 0.1 [0.5, -1]
    torch.testing.assert_close(p.data, torch.tensor([0.95, 2.1], dtype=torch.float64))
    step_with(opt, p, GRADS[1])  # [0.95, 2.1] - 0.1 [2, 0]
    torch.testing.assert_close(p.data, torch.tensor([0.75, 2.1], dtype=torch.float64))


# --- Momentum -----------------------------------------------------------------------------------


def seed_momentum(theta: torch.Tensor, grads, lrs, mu: float) -> list[torch.Tensor]:
    """v <- mu v + eta g; theta <- theta - v. Returns theta after each step."""
    v = torch.zeros_like(theta)
    thetas = []
    for g, eta in zip(grads, lrs):
        v = mu * v + eta * g
        theta = theta - v
        thetas.append(theta)
    return thetas


def test_momentum_equals_seed_form_while_lr_is_constant():
    cfg = compose_cfg("optimizer=momentum", "optimizer.lr=0.1", "optimizer.momentum=0.9")
    p = param(1.0, 2.0)
    opt = builders.build_optimizer(cfg.optimizer, [p])
    expected = seed_momentum(p.detach().clone(), GRADS, [0.1] * len(GRADS), 0.9)

    for g, theta in zip(GRADS, expected):
        step_with(opt, p, g)
        torch.testing.assert_close(p.data, theta)


def test_momentum_differs_from_seed_form_once_lr_changes():
    """torch: v <- mu v + g; theta -= eta v. Seed: v <- mu v + eta g; theta -= v.

    After eta changes from eta1 to eta2, the two differ by mu g1 (eta1 - eta2) at the second step.
    """
    cfg = compose_cfg("optimizer=momentum", "optimizer.lr=0.1", "optimizer.momentum=0.9")
    p = param(1.0, 2.0)
    opt = builders.build_optimizer(cfg.optimizer, [p])
    lrs = [0.1, 0.01]
    expected = seed_momentum(p.detach().clone(), GRADS[:2], lrs, 0.9)

    step_with(opt, p, GRADS[0])
    torch.testing.assert_close(p.data, expected[0])  # the first step is the same
    opt.param_groups[0]["lr"] = lrs[1]
    step_with(opt, p, GRADS[1])

    assert not torch.allclose(p.data, expected[1])
    torch_form = expected[0] - lrs[1] * (0.9 * GRADS[0] + GRADS[1])
    torch.testing.assert_close(p.data, torch_form)
    torch.testing.assert_close(p.data - expected[1], 0.9 * GRADS[0] * (lrs[0] - lrs[1]))


# --- Nesterov -----------------------------------------------------------------------------------

A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)  # f(theta) = 0.5 theta^T A theta


def quadratic(theta: torch.Tensor) -> torch.Tensor:
    return 0.5 * theta @ A @ theta


def test_nesterov_is_the_seed_look_ahead_form_after_a_change_of_variables():
    """Seed: theta' = theta - mu v; v <- mu v + eta grad f(theta'); theta <- theta - v.

    torch (nesterov=True, buffer b): b <- mu b + grad f(p); p <- p - eta (grad f(p) + mu b).
    With p = theta - mu v (the look-ahead point) and v = eta b, both start at p = theta_0,
    v = b = 0, and
        p_{t+1} = theta_{t+1} - mu v_{t+1} = p_t + mu v_t - (1 + mu) v_{t+1}
                = p_t - mu^2 v_t - (1 + mu) eta grad f(p_t),
    which is exactly torch's update, since eta (grad f(p) + mu (mu b + grad f(p)))
    = (1 + mu) eta grad f(p) + mu^2 eta b. So torch's parameter is the book's look-ahead point
    (at constant eta).
    """
    mu, eta = 0.9, 0.05
    cfg = compose_cfg("optimizer=nesterov", f"optimizer.lr={eta}", f"optimizer.momentum={mu}")
    p = param(1.0, -2.0)
    opt = builders.build_optimizer(cfg.optimizer, [p])
    assert opt.param_groups[0]["nesterov"] is True

    theta, v = p.detach().clone(), torch.zeros(2, dtype=torch.float64)
    for _ in range(8):
        look_ahead = theta - mu * v
        v = mu * v + eta * (A @ look_ahead)
        theta = theta - v

        opt.zero_grad()
        quadratic(p).backward()
        opt.step()

        torch.testing.assert_close(p.data, theta - mu * v)
    assert not torch.allclose(p.data, theta)  # torch stores the look-ahead point, not theta


def test_nesterov_differs_from_plain_momentum():
    """The gradient at the look-ahead point makes a different trajectory from momentum's."""
    trajectories = []
    for name in ("momentum", "nesterov"):
        cfg = compose_cfg(f"optimizer={name}", "optimizer.lr=0.05", "optimizer.momentum=0.9")
        p = param(1.0, -2.0)
        opt = builders.build_optimizer(cfg.optimizer, [p])
        for _ in range(3):
            opt.zero_grad()
            quadratic(p).backward()
            opt.step()
        trajectories.append(p.detach().clone())
    assert not torch.allclose(*trajectories)


# --- Adam ---------------------------------------------------------------------------------------


def test_adam_is_bias_corrected_m_over_sqrt_v():
    cfg = compose_cfg("optimizer=adam", "optimizer.lr=0.01", "optimizer.betas=[0.8,0.99]", "optimizer.eps=1e-3")
    p = param(1.0, 2.0)
    opt = builders.build_optimizer(cfg.optimizer, [p])
    assert isinstance(opt, torch.optim.Adam)
    eta, b1, b2, eps = 0.01, 0.8, 0.99, 1e-3

    theta = p.detach().clone()
    m = torch.zeros(2, dtype=torch.float64)
    v = torch.zeros(2, dtype=torch.float64)
    for t, g in enumerate(GRADS, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        theta = theta - eta * m_hat / (torch.sqrt(v_hat) + eps)

        step_with(opt, p, g)
        torch.testing.assert_close(p.data, theta)


def test_adam_default_config_first_step_moves_each_weight_by_about_eta():
    """With the default betas, step 1 is eta g / (|g| + eps): about eta per nonzero coordinate."""
    cfg = compose_cfg("optimizer=adam")
    p = param(1.0, 2.0, 3.0)
    opt = builders.build_optimizer(cfg.optimizer, [p])
    step_with(opt, p, torch.tensor([0.5, -4.0, 0.0], dtype=torch.float64))
    eta = cfg.optimizer.lr
    torch.testing.assert_close(
        p.data, torch.tensor([1.0 - eta, 2.0 + eta, 3.0], dtype=torch.float64), rtol=0, atol=1e-7
    )


# --- Schedules ----------------------------------------------------------------------------------


def cosine(t: float, t_max: float, eta_0: float, eta_min: float) -> float:
    return eta_min + (eta_0 - eta_min) * (1 + math.cos(math.pi * t / t_max)) / 2


def scheduled(*overrides: str, lr: float = 1.0, steps_per_epoch: int = 4, epochs: int = 3):
    cfg = compose_cfg(f"optimizer.lr={lr}", *overrides)
    opt = builders.build_optimizer(cfg.optimizer, [param(0.0)])
    schedule = builders.build_schedule(cfg.sched, opt, steps_per_epoch, epochs)
    opt.step()  # as in training, the optimizer steps before the schedule (no gradient: nothing moves)
    return opt, schedule


def lr_of(opt: torch.optim.Optimizer) -> float:
    return opt.param_groups[0]["lr"]


def test_cosine_by_steps_goes_from_eta_0_through_midpoint_to_eta_min_over_the_whole_training():
    eta_0, eta_min = 1.0, 0.2
    opt, schedule = scheduled("sched=cosine", f"sched.eta_min={eta_min}", lr=eta_0, steps_per_epoch=4, epochs=3)
    t_max = 3 * 4  # T_max defaults to epochs * steps_per_epoch

    lrs = [lr_of(opt)]
    for _ in range(t_max):
        schedule.after_step()
        lrs.append(lr_of(opt))

    assert lrs[0] == pytest.approx(eta_0)
    assert lrs[t_max // 2] == pytest.approx((eta_0 + eta_min) / 2)
    assert lrs[t_max] == pytest.approx(eta_min)
    assert lrs == pytest.approx([cosine(t, t_max, eta_0, eta_min) for t in range(t_max + 1)])


def test_cosine_by_steps_ignores_epoch_ends():
    opt, schedule = scheduled("sched=cosine", "sched.eta_min=0.1")
    schedule.after_epoch(val_loss=1.0)
    assert lr_of(opt) == pytest.approx(1.0)


def test_cosine_by_epochs_counts_epochs():
    eta_0, eta_min, steps_per_epoch, epochs = 0.5, 0.05, 4, 4
    opt, schedule = scheduled(
        "sched=cosine",
        "sched.interval=epoch",
        f"sched.eta_min={eta_min}",
        lr=eta_0,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
    )
    for epoch in range(1, epochs + 1):
        for _ in range(steps_per_epoch):
            schedule.after_step()
            assert lr_of(opt) == pytest.approx(cosine(epoch - 1, epochs, eta_0, eta_min))  # steps do not move it
        schedule.after_epoch(val_loss=1.0)
        assert lr_of(opt) == pytest.approx(cosine(epoch, epochs, eta_0, eta_min))
    assert lr_of(opt) == pytest.approx(eta_min)


def test_cosine_t_max_override_counts_epochs():
    opt, schedule = scheduled("sched=cosine", "sched.t_max=1", "sched.eta_min=0.0", steps_per_epoch=4, epochs=3)
    for _ in range(2):
        schedule.after_step()
    assert lr_of(opt) == pytest.approx(0.5)  # half of one epoch of 4 steps
    for _ in range(2):
        schedule.after_step()
    assert lr_of(opt) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_cosine_restarts_returns_to_eta_0_after_t_0_epochs(interval):
    eta_0, eta_min, steps_per_epoch = 1.0, 0.1, 3
    opt, schedule = scheduled(
        "sched=cosine_restarts",
        "sched.t_0=2",
        f"sched.eta_min={eta_min}",
        f"sched.interval={interval}",
        lr=eta_0,
        steps_per_epoch=steps_per_epoch,
        epochs=6,
    )
    ticks_per_epoch = steps_per_epoch if interval == "step" else 1
    t_0 = 2 * ticks_per_epoch

    lrs = [lr_of(opt)]
    for _ in range(6):  # epochs
        for _ in range(steps_per_epoch):
            schedule.after_step()
            if interval == "step":
                lrs.append(lr_of(opt))
        schedule.after_epoch(val_loss=1.0)
        if interval == "epoch":
            lrs.append(lr_of(opt))

    one_cycle = [cosine(t, t_0, eta_0, eta_min) for t in range(t_0)]
    assert lrs == pytest.approx(one_cycle * 3 + [eta_0])
    assert lrs[t_0 // 2] == pytest.approx((eta_0 + eta_min) / 2)
    assert lrs[t_0] == pytest.approx(eta_0)  # the warm restart
    assert min(lrs) > eta_min  # eta_min itself is only reached at the instant of the restart


def test_constant_schedule_keeps_the_rate():
    opt, schedule = scheduled("sched=constant", lr=0.3)
    for _ in range(10):
        schedule.after_step()
    schedule.after_epoch(val_loss=1.0)
    assert lr_of(opt) == pytest.approx(0.3)


def test_step_schedule_multiplies_by_gamma_every_step_size_epochs():
    opt, schedule = scheduled("sched=step", "sched.step_size=2", "sched.gamma=0.5", lr=0.8, steps_per_epoch=4, epochs=6)
    lrs = []
    for _ in range(6):
        for _ in range(4):
            schedule.after_step()
        schedule.after_epoch(val_loss=1.0)
        lrs.append(lr_of(opt))
    assert lrs == pytest.approx([0.8, 0.4, 0.4, 0.2, 0.2, 0.1])


# --- torch.optim without torch._dynamo (optim.eager) ---------------------------------------------

EAGER_SCRIPT = """
import sys, torch
import optim
from optim import eager

def train(build):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = build(model.parameters())
    for _ in range(5):
        opt.zero_grad(set_to_none=True)
        model(torch.randn(8, 4)).square().mean().backward()
        opt.step()
    opt.load_state_dict(opt.state_dict())
    return torch.cat([p.detach().flatten() for p in model.parameters()])

eager.mark_not_compiled()
ablates = {
    "nesterov": train(lambda p: optim.nesterov(p, lr=0.1, weight_decay=1e-3)),
    "adam": train(lambda p: optim.adam(p, lr=0.01)),
    "adamw": train(lambda p: optim.adamw(p, lr=0.01)),
}
assert "torch._dynamo" not in sys.modules
torchs = {  # on the CPU, ablate takes torch's fused update
    "nesterov": train(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3, fused=True)),
    "adam": train(lambda p: torch.optim.Adam(p, lr=0.01, fused=True)),
    "adamw": train(lambda p: torch.optim.AdamW(p, lr=0.01, fused=True)),
}
assert "torch._dynamo" in sys.modules  # torch.optim's own step imports it
loops = {  # torch's per-parameter loop: the same arithmetic, up to rounding
    "nesterov": train(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3, foreach=False)),
    "adam": train(lambda p: torch.optim.Adam(p, lr=0.01, foreach=False)),
    "adamw": train(lambda p: torch.optim.AdamW(p, lr=0.01, foreach=False)),
}
for name in ablates:
    assert torch.equal(ablates[name], torchs[name]), name
    torch.testing.assert_close(ablates[name], loops[name])
print("ok")
"""


def test_ablates_torch_optimizers_run_torchs_update_without_importing_torch_dynamo():
    """torch._dynamo's import (about 2 s) is skipped, and the parameters are torch.optim's, bit for bit."""
    result = subprocess.run([sys.executable, "-c", EAGER_SCRIPT], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
