"""`optimizer.impl=textbook`: the book's update equations (optim/textbook.py) against torch.optim.

They must give the same parameters where the math says the two forms are the same method
(SGD and Adam/AdamW always; momentum and Nesterov while the learning rate is constant), and
different ones, by the predicted amount, where it says they are not (momentum under a schedule).
Configs are composed by Hydra from the real YAML files.
"""

import copy
import math

import pytest
import torch
from helpers import compose_cfg

import optim
from optim import textbook
from runner.config import schema
from runner.engine import builders

A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)  # f(theta) = 0.5 theta^T A theta
B = torch.tensor([1.0, -0.5], dtype=torch.float64)  # ... - B^T theta: the minimum is not at 0


def quadratic(p: torch.Tensor) -> torch.Tensor:
    return 0.5 * p @ A.to(p.dtype) @ p - B.to(p.dtype) @ p


def param(*values: float, dtype=torch.float64) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor(values, dtype=dtype))


def build(name: str, impl: str, p: torch.nn.Parameter, *overrides: str) -> torch.optim.Optimizer:
    cfg = compose_cfg(f"optimizer={name}", f"optimizer.impl={impl}", *overrides)
    return builders.build_optimizer(cfg.optimizer, [p])


def descend(opt: torch.optim.Optimizer, p: torch.nn.Parameter) -> None:
    """One step on the quadratic: the gradient at the point p holds."""
    opt.zero_grad()
    quadratic(p).backward()
    opt.step()


def cosine_schedule(opt: torch.optim.Optimizer, steps: int):
    """sched=cosine from the real config: eta falls from optimizer.lr to 0 over `steps` steps."""
    return builders.build_schedule(compose_cfg("sched=cosine").sched, opt, steps_per_epoch=steps, epochs=1)


# --- Building -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("sgd", textbook.TextbookSGD),
        ("momentum", textbook.TextbookMomentum),
        ("nesterov", textbook.TextbookNesterov),
        ("adam", textbook.TextbookAdam),
        ("adamw", textbook.TextbookAdamW),
    ],
)
def test_impl_textbook_builds_the_seed_equations(name, cls):
    opt = build(name, "textbook", param(1.0))
    assert type(opt) is cls
    assert isinstance(opt, torch.optim.Optimizer)
    torch_impl = type(build(name, "torch", param(1.0)))  # torch.optim's class, its step without the graph break
    assert torch_impl.__module__ == "optim.eager" and torch_impl.__bases__[0].__module__.startswith("torch.optim")


def test_impl_defaults_to_torch_and_configs_without_it_still_build():
    assert compose_cfg().optimizer.impl == "torch"
    cfg = compose_cfg("optimizer=momentum", "~optimizer.impl")  # a config that leaves impl out
    schema.validate(cfg)
    assert type(builders.build_optimizer(cfg.optimizer, [param(1.0)])) is optim.eager.SGD
    assert issubclass(optim.eager.SGD, torch.optim.SGD)


# --- Where the two forms are the same method ----------------------------------------------------


def equal_under_cosine(book, ref, p_book, p_torch, steps: int) -> None:
    """Step both optimizers under the same cosine schedule; the parameters agree after every step."""
    schedules = [cosine_schedule(book, steps), cosine_schedule(ref, steps)]
    for _ in range(steps):
        descend(book, p_book)
        descend(ref, p_torch)
        for schedule in schedules:
            schedule.after_step()
        torch.testing.assert_close(p_book.data, p_torch.data)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_sgd_matches_torch_under_a_schedule(weight_decay):
    """theta <- theta - eta_t (g + wd theta) in both forms, whatever eta_t is."""
    p_book, p_torch = param(1.0, -2.0), param(1.0, -2.0)
    overrides = ("optimizer.lr=0.1", f"optimizer.weight_decay={weight_decay}")
    book, ref = build("sgd", "textbook", p_book, *overrides), build("sgd", "torch", p_torch, *overrides)
    equal_under_cosine(book, ref, p_book, p_torch, steps=10)
    assert not torch.allclose(p_book.data, torch.tensor([1.0, -2.0], dtype=torch.float64))


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_momentum_matches_torch_while_lr_is_constant(weight_decay):
    """Seed v = mu v + eta g is eta times torch's buffer b = mu b + g, so theta - v = theta - eta b."""
    p_book, p_torch = param(1.0, -2.0), param(1.0, -2.0)
    overrides = ("optimizer.lr=0.05", "optimizer.momentum=0.9", f"optimizer.weight_decay={weight_decay}")
    book, ref = build("momentum", "textbook", p_book, *overrides), build("momentum", "torch", p_torch, *overrides)
    for _ in range(10):
        descend(book, p_book)
        descend(ref, p_torch)
        torch.testing.assert_close(p_book.data, p_torch.data)
    torch.testing.assert_close(book.state[p_book]["velocity"], 0.05 * ref.state[p_torch]["momentum_buffer"])


def seed_nesterov(theta: torch.Tensor, steps: int, eta: float, mu: float, weight_decay: float):
    """The book's method by hand: theta' = theta - mu v; v <- mu v + eta grad f(theta'); theta <- theta - v.

    Yields (theta, v) after each step; the L2 term is the penalty's gradient at theta'."""
    v = torch.zeros_like(theta)
    for _ in range(steps):
        look_ahead = theta - mu * v
        v = mu * v + eta * (A @ look_ahead - B + weight_decay * look_ahead)
        theta = theta - v
        yield theta, v


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_nesterov_holds_the_look_ahead_point_and_matches_torch_while_lr_is_constant(weight_decay):
    """Both optimizers hold the look-ahead point p = theta - mu v, so at constant eta they are equal.

    Seed, written in p (v_new = mu v + eta g(p), theta_new = theta - v_new, p_new = theta_new - mu v_new):
        p_new = p + mu v - (1 + mu) v_new = p - mu^2 v - (1 + mu) eta g(p).
    torch (nesterov=True, buffer b_new = mu b + g(p)): p_new = p - eta (g(p) + mu b_new)
        = p - (1 + mu) eta g(p) - mu^2 eta b.
    Both start at p = theta_0 with v = b = 0; with v = eta b (true while eta is constant) the two
    updates are the same, so the parameters are equal (no transform between them), and the book's
    theta is p + mu v.
    """
    eta, mu = 0.05, 0.9
    p_book, p_torch = param(1.0, -2.0), param(1.0, -2.0)
    overrides = (f"optimizer.lr={eta}", f"optimizer.momentum={mu}", f"optimizer.weight_decay={weight_decay}")
    book, ref = build("nesterov", "textbook", p_book, *overrides), build("nesterov", "torch", p_torch, *overrides)
    assert ref.param_groups[0]["nesterov"] is True

    for theta, v in seed_nesterov(p_book.detach().clone(), 10, eta, mu, weight_decay):
        descend(book, p_book)
        descend(ref, p_torch)
        torch.testing.assert_close(p_book.data, theta - mu * v)  # the model holds the look-ahead point
        torch.testing.assert_close(p_book.data + mu * book.state[p_book]["velocity"], theta)
        torch.testing.assert_close(p_book.data, p_torch.data)
    assert not torch.allclose(p_book.data, theta)  # the look-ahead point is not theta itself


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_and_adamw_match_torch_under_a_schedule(name, weight_decay):
    """Both forms use eta_t only in the last line, theta -= eta_t m^ / (sqrt(v^) + eps): equal for any eta_t."""
    p_book, p_torch = param(1.0, -2.0, dtype=torch.float32), param(1.0, -2.0, dtype=torch.float32)
    overrides = (
        "optimizer.lr=0.1",
        "optimizer.betas=[0.8,0.99]",
        "optimizer.eps=1e-6",
        f"optimizer.weight_decay={weight_decay}",
    )
    book, ref = build(name, "textbook", p_book, *overrides), build(name, "torch", p_torch, *overrides)
    equal_under_cosine(book, ref, p_book, p_torch, steps=12)
    assert book.state[p_book]["step"].item() == 12


def test_adamw_decay_is_decoupled_and_adam_decay_is_l2():
    """With a zero gradient Adam's L2 term still moves theta by about eta (it is normalized);
    AdamW's decay multiplies theta by exactly 1 - eta wd and the normalized step is 0."""
    moved = {}
    for name in ("adam", "adamw"):
        p = param(2.0)
        opt = build(name, "textbook", p, "optimizer.lr=0.01", "optimizer.weight_decay=0.1")
        p.grad = torch.zeros_like(p)
        opt.step()
        moved[name] = p.item()
    assert moved["adamw"] == pytest.approx(2.0 * (1 - 0.01 * 0.1))
    assert moved["adam"] == pytest.approx(2.0 - 0.01, rel=1e-6)


# --- Where they differ --------------------------------------------------------------------------


def test_momentum_differs_from_torch_under_a_schedule_by_the_predicted_amount():
    """Fixed gradients g_1..g_T and rates eta_1..eta_T (a cosine schedule driving both):

        seed:  v_t = mu v_{t-1} + eta_t g_t, theta_T = theta_0 - sum_t sum_{s<=t} mu^(t-s) eta_s g_s
        torch: b_t = mu b_{t-1} + g_t,       theta_T = theta_0 - sum_t eta_t sum_{s<=t} mu^(t-s) g_s

    so torch - seed = sum_t sum_{s<=t} mu^(t-s) (eta_s - eta_t) g_s, zero only while eta is constant.
    """
    steps, eta_0, mu = 10, 0.1, 0.9
    grads = torch.randn(steps, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    theta_0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    p_book, p_torch = param(*theta_0), param(*theta_0)
    overrides = (f"optimizer.lr={eta_0}", f"optimizer.momentum={mu}")
    book, ref = build("momentum", "textbook", p_book, *overrides), build("momentum", "torch", p_torch, *overrides)
    schedules = [cosine_schedule(book, steps), cosine_schedule(ref, steps)]

    lrs = []
    for g in grads:
        assert book.param_groups[0]["lr"] == ref.param_groups[0]["lr"]
        lrs.append(book.param_groups[0]["lr"])
        for opt, p in ((book, p_book), (ref, p_torch)):
            p.grad = g.clone()
            opt.step()
        for schedule in schedules:
            schedule.after_step()
    assert lrs[0] == eta_0 and lrs[-1] < eta_0 / 10  # the schedule did change eta

    pairs = [(t, s) for t in range(steps) for s in range(t + 1)]
    seed = theta_0 - sum(mu ** (t - s) * lrs[s] * grads[s] for t, s in pairs)
    torch_form = theta_0 - sum(lrs[t] * mu ** (t - s) * grads[s] for t, s in pairs)
    predicted = sum(mu ** (t - s) * (lrs[s] - lrs[t]) * grads[s] for t, s in pairs)

    torch.testing.assert_close(p_book.data, seed)
    torch.testing.assert_close(p_torch.data, torch_form)
    torch.testing.assert_close(p_torch.data - p_book.data, predicted)
    assert predicted.abs().max() > 0.05  # a real difference, not rounding


# --- Optimizer plumbing -------------------------------------------------------------------------


def test_build_scheduler_drives_a_textbook_optimizer():
    """sched=cosine changes the textbook optimizer's lr, and each step uses the lr of its param group."""
    steps, eta_0 = 8, 0.2
    p = param(1.0, -2.0)
    opt = build("sgd", "textbook", p, f"optimizer.lr={eta_0}")
    schedule = cosine_schedule(opt, steps)
    g = torch.tensor([1.0, 0.5], dtype=torch.float64)
    expected = p.detach().clone()
    for t in range(steps):
        eta_t = 0.5 * eta_0 * (1 + math.cos(math.pi * t / steps))
        assert opt.param_groups[0]["lr"] == pytest.approx(eta_t)
        p.grad = g.clone()
        opt.step()
        schedule.after_step()
        expected -= eta_t * g
        torch.testing.assert_close(p.data, expected)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam", "adamw"])
def test_state_dict_round_trip_continues_the_same_run(name):
    overrides = ("optimizer.lr=0.05", "optimizer.weight_decay=0.01")
    p = param(1.0, -2.0)
    opt = build(name, "textbook", p, *overrides)
    for _ in range(3):
        descend(opt, p)
    saved_p, saved_opt = p.detach().clone(), copy.deepcopy(opt.state_dict())
    for _ in range(4):
        descend(opt, p)

    resumed_p = torch.nn.Parameter(saved_p.clone())
    resumed = build(name, "textbook", resumed_p, *overrides)
    resumed.load_state_dict(saved_opt)
    for _ in range(4):
        descend(resumed, resumed_p)
    assert torch.equal(resumed_p.data, p.data)

    if name != "sgd":  # the state matters: starting afresh from the same weights goes elsewhere
        assert saved_opt["state"]
        fresh_p = torch.nn.Parameter(saved_p.clone())
        fresh = build(name, "textbook", fresh_p, *overrides)
        for _ in range(4):
            descend(fresh, fresh_p)
        assert not torch.allclose(fresh_p.data, p.data)


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam", "adamw"])
def test_params_without_grad_are_skipped(name):
    """A parameter with no gradient does not move and gets no state (weight decay included)."""
    used, unused = param(1.0, -2.0), param(3.0)
    cfg = compose_cfg(f"optimizer={name}", "optimizer.impl=textbook", "optimizer.weight_decay=0.1")
    opt = builders.build_optimizer(cfg.optimizer, [used, unused])
    for _ in range(3):
        descend(opt, used)  # only `used` gets a gradient
    assert unused.item() == 3.0 and len(opt.state[unused]) == 0
    assert not torch.equal(used.data, torch.tensor([1.0, -2.0], dtype=torch.float64))


def test_adam_counts_steps_per_parameter_as_torch_does():
    """A parameter that first gets a gradient at step 3 starts its own bias correction at t = 1."""
    late_grads = [None, None, torch.tensor([0.5]), torch.tensor([-1.0]), torch.tensor([2.0])]
    results = []
    for impl in ("textbook", "torch"):
        early, late = param(1.0, -2.0, dtype=torch.float32), param(3.0, dtype=torch.float32)
        cfg = compose_cfg("optimizer=adam", f"optimizer.impl={impl}", "optimizer.lr=0.1")
        opt = builders.build_optimizer(cfg.optimizer, [early, late])
        for g in late_grads:
            opt.zero_grad(set_to_none=True)
            quadratic(early).backward()
            late.grad = g
            opt.step()
        assert opt.state[late]["step"].item() == 3 and opt.state[early]["step"].item() == 5
        results.append((early.detach().clone(), late.detach().clone()))
    (book_early, book_late), (torch_early, torch_late) = results
    torch.testing.assert_close(book_early, torch_early)
    torch.testing.assert_close(book_late, torch_late)
