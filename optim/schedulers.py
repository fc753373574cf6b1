"""The learning-rate schedules that `sched=` chooses from: constant, cosine, cosine_restarts, step
decay and plateau, on torch.optim.lr_scheduler; and LrSchedule, which steps any scheduler (these or
a user's) after each step or each epoch, as `sched.interval` says.

configs/sched/*.yaml name these functions with `_target_` and `_partial_: true`; ablate calls them
with the optimizer and, as their signatures ask, `interval`, `steps_per_epoch` and `max_epochs`.
Durations (`t_max`, `t_0`, `step_size`, `warmup`) count epochs, as the book does.
Cosine annealing: eta_t = eta_min + (eta_0 - eta_min) (1 + cos(pi t / T_max)) / 2.
"""

from typing import Literal

import torch
from torch.optim import lr_scheduler

Interval = Literal["step", "epoch"]


class LrSchedule:
    """A torch scheduler and when to step it: after each step, or after each epoch."""

    def __init__(self, scheduler, interval: Interval):
        self.scheduler = scheduler
        self.interval = interval

    def after_step(self) -> None:
        if self.interval == "step":
            self.scheduler.step()

    def after_epoch(self, val_loss: float) -> None:
        if isinstance(self.scheduler, lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(val_loss)
        elif self.interval == "epoch":
            self.scheduler.step()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


class Ticks:
    """Epochs counted in the scheduler's ticks: steps (interval step) or epochs (interval epoch)."""

    def __init__(self, interval: Interval, steps_per_epoch: int, max_epochs: int):
        self.per_epoch = steps_per_epoch if interval == "step" else 1
        self.total = max_epochs * self.per_epoch

    def __call__(self, epochs: float, at_least: int = 1) -> int:
        return max(at_least, round(epochs * self.per_epoch))


def warmed_up(
    optimizer: torch.optim.Optimizer, main_after: int, warmup_ticks: int, start_factor: float, make_main
) -> lr_scheduler.LRScheduler:
    """`make_main(remaining_ticks)` after `warmup_ticks` of linear warmup from start_factor x lr."""
    main = make_main(max(1, main_after - warmup_ticks))
    if not warmup_ticks:
        return main
    ramp = lr_scheduler.LinearLR(optimizer, start_factor=start_factor, total_iters=warmup_ticks)
    return lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup_ticks])


def constant(
    optimizer, interval: Interval, steps_per_epoch: int, max_epochs: int,
    warmup: float = 0, warmup_start_factor: float = 0.1,
) -> lr_scheduler.LRScheduler:  # fmt: skip
    """The learning rate stays at optimizer.lr (after the optional warmup)."""
    ticks = Ticks(interval, steps_per_epoch, max_epochs)
    return warmed_up(
        optimizer,
        ticks.total,
        ticks(warmup, 0),
        warmup_start_factor,
        lambda _: lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
    )


def cosine(
    optimizer, interval: Interval, steps_per_epoch: int, max_epochs: int,
    eta_min: float = 0.0, t_max: float | None = None, warmup: float = 0, warmup_start_factor: float = 0.1,
) -> lr_scheduler.LRScheduler:  # fmt: skip
    """Cosine annealing over `t_max` epochs, or one half-cycle over the training after the warmup."""
    ticks = Ticks(interval, steps_per_epoch, max_epochs)

    def anneal(remaining: int) -> lr_scheduler.LRScheduler:
        t = ticks(t_max) if t_max is not None else remaining
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=t, eta_min=eta_min)

    return warmed_up(optimizer, ticks.total, ticks(warmup, 0), warmup_start_factor, anneal)


def cosine_restarts(
    optimizer, interval: Interval, steps_per_epoch: int, max_epochs: int,
    eta_min: float = 0.0, t_0: float = 2, t_mult: int = 1, warmup: float = 0, warmup_start_factor: float = 0.1,
) -> lr_scheduler.LRScheduler:  # fmt: skip
    """Warm restarts: cycles of t_0 epochs, each t_mult times longer than the one before."""
    ticks = Ticks(interval, steps_per_epoch, max_epochs)
    return warmed_up(
        optimizer, ticks.total, ticks(warmup, 0), warmup_start_factor,
        lambda _: lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=ticks(t_0), T_mult=t_mult, eta_min=eta_min),
    )  # fmt: skip


def step_decay(
    optimizer, interval: Interval, steps_per_epoch: int, max_epochs: int,
    step_size: float = 3, gamma: float = 0.1, warmup: float = 0, warmup_start_factor: float = 0.1,
) -> lr_scheduler.LRScheduler:  # fmt: skip
    """The rate multiplied by gamma every step_size epochs."""
    ticks = Ticks(interval, steps_per_epoch, max_epochs)
    return warmed_up(
        optimizer, ticks.total, ticks(warmup, 0), warmup_start_factor,
        lambda _: lr_scheduler.StepLR(optimizer, step_size=ticks(step_size), gamma=gamma),
    )  # fmt: skip


def plateau(optimizer, factor: float = 0.1, patience: int = 2, eta_min: float = 0.0) -> lr_scheduler.ReduceLROnPlateau:
    """The rate multiplied by factor when the validation loss has not improved for `patience` epochs."""
    return lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience, min_lr=eta_min)
