"""What a run leaves in its run directory, and what a run started again reads back from it:
metrics.json (the record of the run), the HPARAMS record of the runs it sits with, and whether the
run has nothing left to do there.
"""

import json
import logging
import platform
from pathlib import Path

import torch

import models
from runner import GROUPS, run_name
from runner.analysis import hparams
from runner.engine.log import write_json
from runner.tune import job_tuning

log = logging.getLogger(__name__)


def record(status: str, name: str, trainer, parts, cfg, choices, command: list[str]) -> dict:
    """metrics.json's content: the outcome, what produced it, and where."""
    result = trainer.result
    metrics = {
        "status": status,
        "name": name,
        "test_acc": result.test_acc,
        "test_loss": result.test_loss,
        "best_val_acc": result.best_val_acc,
        "epochs": trainer.epoch,
        "steps": trainer.step,
        "train_seconds": round(result.train_seconds, 3),
        "num_params": models.num_params(parts.model),
        "seed": cfg.seed,
        "choices": {g: choices.get(g) for g in GROUPS},
        "device": str(parts.compute.device),
        "precision": parts.compute.precision,
        "layout": parts.compute.layout,
        "threads": parts.compute.threads,
        "graphs": parts.graphs,
        "processes": parts.world.size,
        "data": parts.dataset.info,
        "history": result.history,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "command": " ".join(["run", *command]),  # this run alone, also inside a sweep
    }
    if tuning := job_tuning(cfg, metrics["choices"]):  # a job of a tuned sweep (runner.tune)
        metrics["tune"] = tuning
    return metrics


def write_metrics(run_dir: Path, metrics: dict) -> None:
    write_json(run_dir / "metrics.json", metrics)


ENDED = ("completed", "diverged", "pruned")  # a run that has nothing left to do in its directory


def mark_failed(run_dir: Path, error: str, cfg, choices, command: list[str]) -> None:
    """metrics.json of a job that raised says `failed` and `error`; a job that raised before it
    trained (while it was built) gets a record of what it was to run, which the summary, HPARAMS and a
    tuned sweep read like any other. A record of a run that ended there before is kept."""
    path = run_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        metrics = None
    if metrics is not None and metrics.get("status") in ENDED:
        return
    metrics = metrics or not_built(cfg, choices, command)
    metrics.update(status="failed", error=error)
    write_metrics(run_dir, metrics)


def not_built(cfg, choices, command: list[str]) -> dict:
    """The record of a run that never trained: the keys of `record`, its outcome empty."""
    metrics = {
        "status": "failed",
        "name": run_name(choices),
        "test_acc": None,
        "test_loss": None,
        "best_val_acc": None,
        "epochs": 0,
        "steps": 0,
        "train_seconds": 0.0,
        "num_params": None,
        "seed": cfg.seed,
        "choices": {g: choices.get(g) for g in GROUPS},
        "history": [],
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "command": " ".join(["run", *command]),
    }
    if tuning := job_tuning(cfg, metrics["choices"]):
        metrics["tune"] = tuning
    return metrics


def show_in_hparams(root: Path) -> None:
    """TensorBoard's HPARAMS records of the runs under `root`, this one's included; a failure to write
    them is a warning, never the run's failure."""
    try:
        hparams.refresh(root)
    except OSError as e:
        log.warning(f"TensorBoard's HPARAMS records under {root} were not updated: {e}")


def hparams_root(hydra_cfg, run_dir: Path) -> Path:
    sweep_dir = Path(hydra_cfg.sweep.dir) if hydra_cfg.mode.name == "MULTIRUN" else None
    return hparams.root_of(run_dir, Path(hydra_cfg.runtime.cwd), sweep_dir)


def tensorboard_logdir(hydra_cfg, run_dir: Path) -> str:
    """What to pass to `tensorboard --logdir`: outputs for a run under it, else the run directory."""
    outputs = Path(hydra_cfg.runtime.cwd, "outputs").resolve()
    return "outputs" if run_dir.resolve().is_relative_to(outputs) else str(run_dir)


def finished_metrics(run_dir: Path, saved: dict | None, max_epochs: int) -> dict | None:
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
