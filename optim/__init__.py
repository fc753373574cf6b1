"""Optimizers and learning-rate schedules that `optimizer=` and `sched=` choose from
(`optimizer.impl=textbook`: the book's own update equations, optim/textbook.py)."""

from optim.optimizers import adam, adamw, momentum, nesterov, sgd
from optim.schedulers import LrSchedule, constant, cosine, cosine_restarts, plateau, step_decay

__all__ = [
    "LrSchedule", "adam", "adamw", "constant", "cosine", "cosine_restarts", "momentum", "nesterov", "plateau", "sgd",
    "step_decay",
]  # fmt: skip
