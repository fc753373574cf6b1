"""metrics.json, the record a run leaves in its run directory, and what a run started again reads
back from it: whether the run has nothing left to do there.
"""

import json
import platform
from pathlib import Path

import torch

import models
from runner import GROUPS
from runner.engine.context import RunContext
from runner.engine.log import write_json


def of_run(status: str, trainer, setup, cfg, ctx: RunContext) -> dict:
    """metrics.json's content: the outcome, what produced it, and where."""
    result = trainer.result
    learner = setup.learner
    metrics = {
        "status": status,
        "name": ctx.name,
        "test_acc": result.test_acc,
        "test_loss": result.test_loss,
        "best_val_acc": result.best_val_acc,
        "epochs": trainer.epoch,
        "steps": trainer.step,
        "train_seconds": round(result.train_seconds, 3),
        "num_params": models.num_params(learner.model),
        "seed": cfg.seed,
        "choices": {g: ctx.choices.get(g) for g in GROUPS},
        "device": str(setup.compute.device),
        "precision": setup.compute.precision,
        "layout": setup.compute.layout,
        "threads": setup.compute.threads,
        "graphs": learner.graphed_step is not None,
        "fused": [name for name, m in learner.model.named_modules() if getattr(m, "fused", False)],
        "frozen": learner.freezing.frozen if learner.freezing else {},  # trainer.freeze: module -> step
        "processes": setup.world.size,
        "data": setup.dataset.info,
        "history": result.history,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "command": " ".join(["run", *ctx.command]),  # this run alone, also inside a sweep
    }
    if ctx.tuning:  # a job of a tuned sweep (runner.tune)
        metrics["tune"] = ctx.tuning
    return metrics


def write(run_dir: Path, metrics: dict) -> None:
    write_json(run_dir / "metrics.json", metrics)


ENDED = ("completed", "diverged", "pruned")  # a run that has nothing left to do in its directory


def mark_failed(error: str, cfg, ctx: RunContext) -> None:
    """metrics.json of a job that raised says `failed` and `error`; a job that raised before it
    trained (while it was built) gets a record of what it was to run, which the summary, HPARAMS and a
    tuned sweep read like any other. A record of a run that ended there before is kept."""
    path = ctx.run_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        metrics = None
    if metrics is not None and metrics.get("status") in ENDED:
        return
    metrics = metrics or not_built(cfg, ctx)
    metrics.update(status="failed", error=error)
    write(ctx.run_dir, metrics)


def not_built(cfg, ctx: RunContext) -> dict:
    """The record of a run that never trained: the keys of `of_run`, its outcome empty."""
    metrics = {
        "status": "failed",
        "name": ctx.name,
        "test_acc": None,
        "test_loss": None,
        "best_val_acc": None,
        "epochs": 0,
        "steps": 0,
        "train_seconds": 0.0,
        "num_params": None,
        "seed": cfg.seed,
        "choices": {g: ctx.choices.get(g) for g in GROUPS},
        "history": [],
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "command": " ".join(["run", *ctx.command]),
    }
    if ctx.tuning:
        metrics["tune"] = ctx.tuning
    return metrics


def finished(run_dir: Path, saved: dict | None, max_epochs: int) -> dict | None:
    """metrics.json of a run that completed, or diverged, in `run_dir` with this config (its checkpoint
    says so), else None. A diverged run would diverge again the same way: it is not rerun either."""
    path = run_dir / "metrics.json"
    if saved is None or not path.exists():
        return None
    metrics = json.loads(path.read_text())
    if metrics.get("status") == "completed" and saved["epoch"] >= max_epochs:
        return metrics
    if metrics.get("status") == "pruned":  # a tuned sweep's trial that the pruner stopped: it stays stopped
        return metrics
    if metrics.get("status") == "diverged" and saved["step"] <= metrics.get("steps", -1):
        return metrics
    return None
