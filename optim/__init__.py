"""Optimizers and learning-rate schedules that `optimizer=` and `sched=` choose from
(`optimizer.impl=textbook`: the seed's own update equations, optim/textbook.py)."""

from optim.optimizers import IMPLS, OPTIMIZERS, build
from optim.schedulers import SCHEDULES, LrSchedule, build_scheduler

__all__ = ["IMPLS", "OPTIMIZERS", "SCHEDULES", "LrSchedule", "build", "build_scheduler"]
