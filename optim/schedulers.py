"""Learning-rate schedules on torch.optim.lr_scheduler: constant, cosine, cosine_restarts, step, plateau.

Durations in the configs (`t_max`, `t_0`, `step_size`, `warmup`) count epochs, as the seed
does; `interval` says whether the rate changes after every step or after every epoch.
Cosine annealing: eta_t = eta_min + (eta_0 - eta_min) (1 + cos(pi t / T_max)) / 2.
"""

import torch
from torch.optim import lr_scheduler

from optim.optimizers import is_number

SCHEDULES = ("constant", "cosine", "cosine_restarts", "step", "plateau")
INTERVALS = ("step", "epoch")


class LrSchedule:
    """A torch scheduler and when to step it: after each step, or after each epoch."""

    def __init__(self, scheduler, interval: str):
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


def _check(cfg) -> None:
    if cfg.name not in SCHEDULES:
        raise ValueError(f"sched.name={cfg.name!r} is not known; allowed: {', '.join(SCHEDULES)}")
    if cfg.interval not in INTERVALS:
        raise ValueError(f"sched.interval={cfg.interval!r} is not known; allowed: step, epoch")
    if cfg.name == "plateau" and cfg.interval != "epoch":
        raise ValueError("sched.interval='step' is not allowed for sched=plateau; allowed: epoch")
    warmup = cfg.get("warmup", 0)
    if not (is_number(warmup) and warmup >= 0):
        raise ValueError(f"sched.warmup={warmup} is not allowed; allowed: a number of epochs >= 0")
    if cfg.name == "plateau" and warmup:
        raise ValueError(f"sched.warmup={warmup} is not allowed for sched=plateau; allowed: 0")
    for key in ("t_max", "t_0", "step_size"):
        if cfg.get(key) is not None and not (is_number(cfg[key]) and cfg[key] > 0):
            raise ValueError(f"sched.{key}={cfg[key]} is not allowed; allowed: a number of epochs > 0")
    if cfg.get("eta_min") is not None and not (is_number(cfg.eta_min) and cfg.eta_min >= 0):
        raise ValueError(f"sched.eta_min={cfg.eta_min} is not allowed; allowed: a number >= 0")


def build_scheduler(cfg, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int) -> LrSchedule:
    """The schedule `sched=<name>` chooses, for a training of `epochs` x `steps_per_epoch` steps."""
    _check(cfg)
    per_epoch = steps_per_epoch if cfg.interval == "step" else 1

    def ticks(epochs_: float) -> int:
        return max(1, round(epochs_ * per_epoch))

    warmup = round(cfg.get("warmup", 0) * per_epoch)
    remaining = max(1, epochs * per_epoch - warmup)
    if cfg.name == "constant":
        main = lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    elif cfg.name == "cosine":
        t_max = ticks(cfg.t_max) if cfg.t_max is not None else remaining
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max, eta_min=cfg.eta_min)
    elif cfg.name == "cosine_restarts":
        main = lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=ticks(cfg.t_0), T_mult=cfg.t_mult, eta_min=cfg.eta_min)
    elif cfg.name == "step":
        main = lr_scheduler.StepLR(optimizer, step_size=ticks(cfg.step_size), gamma=cfg.gamma)
    else:
        main = lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.factor, patience=cfg.patience, min_lr=cfg.eta_min)
    if warmup:
        ramp = lr_scheduler.LinearLR(optimizer, start_factor=cfg.warmup_start_factor, total_iters=warmup)
        main = lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
    return LrSchedule(main, cfg.interval)
