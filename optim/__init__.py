"""Optimizers and learning-rate schedules that `optimizer=` and `sched=` choose from
(`optimizer.impl=textbook`: the seed's own update equations, optim/textbook.py)."""

from optim.optimizers import build
from optim.schedulers import LrSchedule, build_scheduler

__all__ = ["LrSchedule", "build", "build_scheduler"]
