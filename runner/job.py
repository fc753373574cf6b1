"""One run: compose what the config chose, train, and write the run directory.

config -> seed -> data on the device -> model -> optimizer and schedule -> Trainer.fit()
-> metrics.json, TensorBoard, checkpoint -> the objective (best val accuracy) for sweepers.
"""

import platform
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import models
import optim
from runner import GROUPS, checkpoint, console, data
from runner.datasets import DataError
from runner.diagnostics import Diagnostics
from runner.log import RunLogger, write_json
from runner.train import Trainer

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")


class SetupError(Exception):
    """Bad input found before training starts; the message names the key, the value and what is allowed."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise ValueError(f"trainer.device={name!r} is not known; allowed: {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[name]:
        raise ValueError(f"trainer.device={name!r} is not available on this machine; allowed here: auto, cpu")
    return torch.device(name)


def pick_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. `auto` is bf16 on CUDA GPUs that support it, else fp32."""
    if name not in PRECISIONS:
        raise ValueError(f"trainer.precision={name!r} is not known; allowed: {', '.join(PRECISIONS)}")
    if name == "auto":
        name = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return torch.bfloat16 if name == "bf16" else None


def run_name(choices) -> str:
    return "-".join(str(choices.get(g)) for g in ("model", "activation", "optimizer", "sched"))


def hparams(cfg: DictConfig, choices, precision: str) -> dict:
    """Choices, seed, the main hyperparameters and every command-line override, for TensorBoard's hparams tab."""
    values = {g: str(choices.get(g)) for g in GROUPS}
    values.update(
        seed=cfg.seed,
        lr=cfg.optimizer.lr,
        weight_decay=cfg.optimizer.weight_decay,
        batch_size=cfg.data.batch_size,
        max_epochs=cfg.trainer.max_epochs,
        precision=precision,
    )
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        value = OmegaConf.select(cfg, key, default=None)
        if key in GROUPS or value is None or isinstance(value, DictConfig):
            continue  # group choices are listed already; hydra.* keys are not in cfg
        values[key] = value if isinstance(value, (int, float, str)) and not isinstance(value, bool) else str(value)
    return values


def check_run(cfg: DictConfig) -> None:
    """The top-level and trainer values that no builder reads."""
    t = cfg.trainer
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or cfg.seed < 0:
        raise ValueError(f"seed={cfg.seed!r} is not allowed; allowed: an integer >= 0")
    if not isinstance(t.max_epochs, int) or t.max_epochs < 0:
        raise ValueError(f"trainer.max_epochs={t.max_epochs!r} is not allowed; allowed: an integer >= 0")
    if t.grad_clip is not None and not (isinstance(t.grad_clip, (int, float)) and t.grad_clip > 0):
        raise ValueError(f"trainer.grad_clip={t.grad_clip!r} is not allowed; allowed: a number > 0 or null")
    if not isinstance(t.log_every_n_steps, int) or t.log_every_n_steps < 1:
        raise ValueError(f"trainer.log_every_n_steps={t.log_every_n_steps!r} is not allowed; allowed: an integer >= 1")


@dataclass
class Parts:
    """Everything a run trains with, built from the config before any training starts."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    dataset: data.Data
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: optim.LrSchedule
    train: data.Batches
    val: data.Batches
    test: data.Batches


def build(cfg: DictConfig) -> Parts:
    """Data on the device, model, optimizer, schedule and batches; bad input raises SetupError."""
    try:
        check_run(cfg)
        seed_everything(cfg.seed)
        device = pick_device(cfg.trainer.device)
        autocast_dtype = pick_precision(cfg.trainer.precision, device)
        dataset = data.load(cfg.data, device)
        model = models.build(cfg.model, cfg.activation, dataset.in_shape, dataset.num_classes).to(device)
        optimizer = optim.build(cfg.optimizer, model.parameters())
        mean, std = (dataset.mean, dataset.std) if cfg.data.normalize else (None, None)
        train = data.Batches(
            dataset.train, cfg.data.batch_size, mean, std,
            shuffle=True, augment=cfg.data.augment, drop_last=True, seed=cfg.seed,
        )
        val = data.Batches(dataset.val, data.EVAL_BATCH_SIZE, mean, std)
        test = data.Batches(dataset.test, data.EVAL_BATCH_SIZE, mean, std)
        schedule = optim.build_scheduler(cfg.sched, optimizer, len(train), cfg.trainer.max_epochs)
    except (ValueError, DataError) as e:
        raise SetupError(str(e)) from e
    return Parts(device, autocast_dtype, dataset, model, optimizer, schedule, train, val, test)


def run_job(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    choices = hydra_cfg.runtime.choices
    console.use_rich_logging()
    parts = build(cfg)

    precision = "bf16" if parts.autocast_dtype == torch.bfloat16 else "fp32"
    name = run_name(choices)
    console.log.info(f"{name}: {len(parts.dataset.train)} training images on {parts.device} ({precision})")
    logger = RunLogger(run_dir)
    logger.hparams(hparams(cfg, choices, precision))
    last = run_dir / "checkpoints" / "last.pt"
    trainer = Trainer(
        parts.model, parts.optimizer, parts.schedule, parts.train, parts.val, parts.test, cfg.trainer,
        parts.autocast_dtype, logger, console.TrainingProgress(), checkpoint=lambda state: checkpoint.save(last, state),
        diagnostics=Diagnostics(parts.model) if cfg.trainer.diagnostics else None,
    )
    status = "failed"
    try:
        status = trainer.fit().status
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
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
            "device": str(parts.device),
            "precision": precision,
            "data": parts.dataset.info,
            "history": result.history,
            "versions": {"python": platform.python_version(), "torch": torch.__version__},
            "command": " ".join(["run", *hydra_cfg.overrides.task]),  # this run alone, also inside a sweep
        }
        write_json(run_dir / "metrics.json", metrics)
        logger.close(status)
    if status == "diverged":
        console.log.error(f"{name}: the training loss became NaN or infinite by step {trainer.step}; status: diverged")
    outputs = Path(hydra_cfg.runtime.cwd, "outputs").resolve()
    logdir = "outputs" if run_dir.resolve().is_relative_to(outputs) else str(run_dir)
    console.print_summary(metrics, str(run_dir), logdir)
    return result.best_val_acc if result.best_val_acc is not None else result.test_acc
