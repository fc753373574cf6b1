"""Optimizers and learning-rate schedules that `optimizer=` and `sched=` choose from."""

from optim.optimizers import OPTIMIZERS, build
from optim.schedulers import SCHEDULES, LrSchedule, build_scheduler

__all__ = ["OPTIMIZERS", "SCHEDULES", "LrSchedule", "build", "build_scheduler"]
