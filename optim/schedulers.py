"""Learning-rate schedules on torch.optim.lr_scheduler: constant, cosine, cosine_restarts, step, plateau.

Durations in the configs (`t_max`, `t_0`, `step_size`, `warmup`) count epochs, as the seed
does; `interval` says whether the rate changes after every step or after every epoch.
Cosine annealing: eta_t = eta_min + (eta_0 - eta_min) (1 + cos(pi t / T_max)) / 2.
"""

import torch
from torch.optim import lr_scheduler

from runner import schema


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


def build_scheduler(cfg, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int) -> LrSchedule:
    """The schedule `sched=<name>` chooses, for a training of `epochs` x `steps_per_epoch` steps."""
    schema.check("sched", cfg)  # the rules `run` checks before anything runs
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
