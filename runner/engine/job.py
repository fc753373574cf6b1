"""One run: compose what the config chose, train, and write the run directory.

config -> seed -> data on the device -> model -> optimizer and schedule -> Trainer.fit()
-> metrics.json, TensorBoard, checkpoint, model.safetensors (runner.engine.run_dir) -> the exit
code, and the objective (best val accuracy) for sweepers. Run again in its directory, a run
resumes from its checkpoint, or is skipped when it completed or diverged there already. A run
holds its run directory while it runs (runner.engine.holder): one writer per directory. Under
torchrun, every rank runs this; rank 0 alone holds and writes.
"""

import dataclasses
import functools
import logging
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import optim
from runner import disk, run_name
from runner.cli import console
from runner.config import schema, targets
from runner.config.rules import reason
from runner.data import batches
from runner.data.datasets import DataError
from runner.engine import checkpoint, device, distributed, failures, graphs, holder, parts, preflight, startup
from runner.engine import run_dir as run_dir_files
from runner.engine.diagnostics import Diagnostics
from runner.engine.interrupt import pass_on, stop_on_signals
from runner.engine.log import RunLogger, charts
from runner.engine.train import Trainer
from runner.tune import PHASE_ENV, trial_pruner

DIVERGED_EXIT = 3  # a single run whose loss became NaN or infinite; a sweep goes on and exits 0


class SetupError(Exception):
    """Bad input found before training starts; the message names the key, the value and what is allowed."""


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Every generator from `seed`; `deterministic`: cuDNN's deterministic convolutions, else its
    autotuned fastest ones, which may differ from run to run (CPU kernels repeat either way)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def job_number(hydra_cfg) -> int:
    """A sweep's job number (Hydra's hydra.job.num), 0 for a single run."""
    return hydra_cfg.job.get("num", 0) if hydra_cfg.mode == RunMode.MULTIRUN else 0


def parallel_jobs(hydra_cfg) -> int:
    """How many jobs the launcher runs at once: its n_jobs in a sweep (joblib's -1 is every core), else 1."""
    n = hydra_cfg.launcher.get("n_jobs") if hydra_cfg.mode == RunMode.MULTIRUN else None
    if not isinstance(n, int) or n == 0:
        return 1
    return n if n > 0 else max(1, (os.cpu_count() or 1) + 1 + n)


@dataclass
class Parts:
    """Everything a run trains with, built from the config before any training starts."""

    compute: device.Compute
    world: distributed.World
    dataset: batches.Data
    model: torch.nn.Module  # evaluated and saved
    train_model: torch.nn.Module  # the steps run through it: `model`, or `model` in DDP
    optimizer: torch.optim.Optimizer
    schedule: optim.LrSchedule
    train: batches.Batches
    val: batches.Batches
    test: batches.Batches
    graphs: bool = False  # the training step captured in a CUDA graph (runner.engine.graphs)


def build(cfg: DictConfig, parallel_jobs: int = 1, job: int = 0) -> Parts:
    """Data on the device, model, optimizer, schedule and batches; bad input raises SetupError.
    `parallel_jobs` (the jobs a launcher runs at once) shares the CPU cores out under threads=auto,
    and the GPUs among the jobs by their number `job`.
    Under torchrun, this process joins the run's process group and takes its part of the batches."""
    try:
        schema.validate(cfg)  # checked before Hydra wrote anything too, but a sweeper may choose values as it goes
        seed_everything(cfg.seed, cfg.trainer.deterministic)  # the same on every rank: the same initial weights
        world = distributed.world()
        compute = device.pick(cfg.trainer, parallel_jobs, world, job)
        torch.set_num_threads(compute.threads)
        if compute.device.index is not None:
            torch.cuda.set_device(compute.device)  # nothing of this job's on another GPU
        distributed.start(world, compute.device)
        dataset = batches.load(cfg.data, compute.device)
        startup.mark("data")
        model = build_model(cfg, dataset).to(compute.device)
        images, labels = dataset.train.images, dataset.train.labels
        layout = preflight.first_step(model, images, labels, dataset.num_classes, cfg, compute.layout)
        compute = dataclasses.replace(compute, layout=layout)  # contiguous where the model fails in channels_last
        model = model.to(memory_format=compute.memory_format)
        if cfg.trainer.compile:
            model.compile()  # in place: parameter names and checkpoints stay those of the model
        else:
            optim.eager.mark_not_compiled()
        train_model = distributed.wrap(model, compute.device, cfg.trainer.sync_bn) if world.active else model
        optimizer = parts.build_optimizer(cfg.optimizer, model.parameters())
        mean, std = (dataset.mean, dataset.std) if cfg.data.normalize else (None, None)
        share = {"memory_format": compute.memory_format, "rank": world.rank, "ranks": world.size}
        train = batches.Batches(
            dataset.train,
            cfg.data.batch_size,
            mean,
            std,
            shuffle=True,
            augment=cfg.data.augment,
            drop_last=True,
            seed=cfg.seed,
            **share,
        )
        val = batches.Batches(dataset.val, batches.EVAL_BATCH_SIZE, mean, std, split_batches=False, **share)
        test = batches.Batches(dataset.test, batches.EVAL_BATCH_SIZE, mean, std, split_batches=False, **share)
        schedule = parts.build_schedule(cfg.sched, optimizer, len(train), cfg.trainer.max_epochs)
        captured = graphs.pick(cfg.trainer.graphs, compute.device, optimizer, cfg.trainer.compile, world.size)
        startup.mark("model")
    except (ValueError, DataError) as e:
        raise SetupError(str(e)) from e
    return Parts(compute, world, dataset, model, train_model, optimizer, schedule, train, val, test, captured)


def build_model(cfg: DictConfig, dataset: batches.Data) -> torch.nn.Module:
    """The model for the data's shape and classes; a constructor that raises (pooling more often than
    the image allows, a user's model) is refused in one line naming `model` and where it raised."""
    try:
        return parts.build_model(cfg.model, cfg.activation, dataset.in_shape, dataset.num_classes)
    except parts.PartError:
        raise
    except Exception as e:
        if preflight.in_activation(e, cfg):
            raise parts.blamed("activation", cfg.activation, "fails in the model", e) from e
        shape = "x".join(map(str, dataset.in_shape))
        mend = (
            "fewer pooled layers for small images"
            if targets.is_ablates(cfg.model._target_)
            else "the values its constructor takes"
        )
        raise SetupError(
            f"model._target_={cfg.model._target_} cannot be built for {shape} images and {dataset.num_classes} classes "
            f"({type(e).__name__}: {reason(e)}, at {preflight.where(e)}); allowed: {mend}"
        ) from e


def run_job(cfg: DictConfig) -> float | None:
    """One run, from its config to its run directory, which it holds meanwhile (runner.engine.holder);
    the objective for sweepers. A job of a sweep whose run directory another process holds is left
    alone, and one that raises is recorded as failed (`job_failed`): None, and the sweep goes on. A
    file that cannot be written (a full disk) stops the run, or the sweep, with WRITE_EXIT (`cannot_write`)."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if not hold_run_dir(run_dir, hydra_cfg):
        return None
    try:
        return train_in(run_dir, cfg, hydra_cfg)
    except disk.WriteError as e:
        cannot_write(e, run_dir, hydra_cfg)
    except Exception as e:
        if not records_failures(hydra_cfg):
            raise  # a single run: SetupError is one line and exit 2 (runner.cli.app), the rest Hydra's traceback
        return job_failed(e, run_dir, cfg, hydra_cfg)
    finally:
        if distributed.world().main:
            holder.release(run_dir)


def records_failures(hydra_cfg) -> bool:
    """Whether a job that raises is recorded here and the sweep goes on: in a sweep, except under
    hydra/launcher=slurm, whose launcher records it, naming the SLURM job and its log."""
    return hydra_cfg.mode == RunMode.MULTIRUN and hydra_cfg.launcher.get("_target_") != failures.SLURM_LAUNCHER


def job_failed(error: Exception, run_dir: Path, cfg: DictConfig, hydra_cfg) -> None:
    """A job of a sweep that raised, while it was built or as it trained: one error line naming the
    job, the error and the line of the user's code that raised it (runner.engine.failures.describe),
    kept in <sweep dir>/failed/ for the sweep's end; the traceback in the job's run.log; metrics.json
    says failed and why. None: the sweep goes on, and a tuned sweep tells the trial's study it failed."""
    if not distributed.world().main:
        return
    said = failures.describe(error, one_line=isinstance(error, SetupError))
    line = f"job #{hydra_cfg.job.num} ({hydra_cfg.job.override_dirname}): {said}"
    console.log.error(line)
    log_traceback(error)
    try:
        run_dir_files.mark_failed(run_dir, line, cfg, hydra_cfg.runtime.choices, hydra_cfg.overrides.task)
        failures.record(Path(hydra_cfg.sweep.dir), hydra_cfg.job.num, line)
    except disk.WriteError as e:
        cannot_write(e, run_dir, hydra_cfg)
    run_dir_files.show_in_hparams(run_dir_files.hparams_root(hydra_cfg, run_dir))
    return


def log_traceback(error: BaseException) -> None:
    """The error's traceback, in the job's log file (run.log) only: the terminal has its one line."""
    record = console.log.makeRecord(
        console.log.name, logging.ERROR, __file__, 0, "the traceback of the error above:", None,
        (type(error), error, error.__traceback__),
    )  # fmt: skip
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def cannot_write(error: disk.WriteError, run_dir: Path, hydra_cfg) -> NoReturn:
    """A file of the run that cannot be written (a full disk) ends the run, and a sweep (its next jobs
    would fail alike), with WRITE_EXIT: one line naming the file, the free space, what is kept and how
    to go on. What was written before is whole (runner.disk), so the same command resumes."""
    last = run_dir / "checkpoints" / "last.pt"
    kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint was written yet"
    mend = "free space" if error.errno in disk.NO_SPACE else "make it writable"
    if hydra_cfg.mode == RunMode.MULTIRUN:
        where = f"hydra.sweep.dir={hydra_cfg.sweep.dir}"
    else:
        where = f"hydra.run.dir={run_dir}"
    if distributed.world().main:
        print(f"error: {error}; {kept}: {mend} and run the same command with {where} to resume", file=sys.stderr)
    raise SystemExit(disk.WRITE_EXIT)


def hold_run_dir(run_dir: Path, hydra_cfg) -> bool:
    """Rank 0 holds `run_dir` before ablate writes into it (a single run holds it already, since
    CheckFirst); every rank learns rank 0's answer. Whether the job runs: a sweep's job whose
    directory another process holds is one error line, recorded for the sweep's end
    (runner.engine.failures), and the sweep goes on; a single run's is refused (SetupError)."""
    world = distributed.world()
    busy = distributed.shared("holder", lambda: holder.try_acquire(run_dir))
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if not busy:
        if multirun and world.main:
            failures.clear(Path(hydra_cfg.sweep.dir), hydra_cfg.job.num)  # a resumed sweep forgets an old refusal
        return True
    if not multirun:
        raise SetupError(f"hydra.run.dir={busy}")
    if world.main:
        line = f"job #{hydra_cfg.job.num} ({hydra_cfg.job.override_dirname}): {busy}"
        leave_run_log()
        console.log.error(line)
        failures.record(Path(hydra_cfg.sweep.dir), hydra_cfg.job.num, line)
    return False


def quiet_run_log() -> None:
    """A line that cannot be written to run.log (a full disk) is dropped without logging's traceback on
    the terminal: the next write of the run's own files says what failed, in one line (`cannot_write`)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and not getattr(handler, "drops_os_errors", False):
            handler.handleError = functools.partial(drop_os_error, handler.handleError)
            handler.drops_os_errors = True


def drop_os_error(report, record: logging.LogRecord) -> None:
    """logging's handleError, called while the handler's error is handled: an OSError is dropped."""
    if not isinstance(sys.exc_info()[1], OSError):
        report(record)


def leave_run_log() -> None:
    """Hydra's log file of this job (run.log in the run directory) is closed; the log goes to the terminal only."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()


def train_in(run_dir: Path, cfg: DictConfig, hydra_cfg) -> float | None:
    """The run in `run_dir`, which this process holds: build, resume or skip, train, write."""
    choices = hydra_cfg.runtime.choices
    console.use_rich_logging()
    quiet_run_log()
    parts = build(cfg, parallel_jobs(hydra_cfg), job_number(hydra_cfg))
    compute, world = parts.compute, parts.world
    if world.active:
        agree_on_run_dir(run_dir)
        if not world.main:
            quiet()
    name = run_name(choices)
    on = f"{world.size} processes ({compute.device.type})" if world.active else str(compute.device)
    console.log.info(
        f"{name}: {len(parts.dataset.train)} training images on {on} "
        f"({compute.precision}, {compute.layout}, {compute.threads} threads{' each' if world.active else ''})"
    )
    last = run_dir / "checkpoints" / "last.pt"
    config = OmegaConf.to_container(cfg, resolve=True)
    try:
        saved = checkpoint.load_matching(last, config)  # None for a fresh run
    except ValueError as e:
        raise SetupError(str(e)) from e
    done = run_dir_files.finished_metrics(run_dir, saved, cfg.trainer.max_epochs)
    logdir = run_dir_files.tensorboard_logdir(hydra_cfg, run_dir)
    if done:
        console.log.info(f"{name}: {done['status']} already in {run_dir}; skipped")
        if world.main:
            console.print_summary(done, str(run_dir), logdir)
        return finish(done, name, run_dir, hydra_cfg)
    trainer = make_trainer(cfg, parts, run_dir, saved, checkpoint_to=last, config=config)
    if saved:
        trainer.load_state_dict(saved)
        console.log.info(
            f"{name}: resuming from {last} (epoch {trainer.epoch}, batch {trainer.batch}, step {trainer.step})"
        )
    hparams_root = run_dir_files.hparams_root(hydra_cfg, run_dir)
    if world.main:
        run_dir_files.show_in_hparams(hparams_root)  # as running
    status, failure = "failed", None
    try:
        with stop_on_signals(trainer.request_stop):
            ended = trainer.fit().status
        if ended == "completed" and world.main:
            checkpoint.export_weights(run_dir / "model.safetensors", parts.model)
        status = ended  # a completed run whose weights could not be written is not: run again, it writes them
    except BaseException as e:
        failure = e
        raise
    finally:
        trainer.progress.stop()
        metrics = run_dir_files.record(status, name, trainer, parts, cfg, choices, hydra_cfg.overrides.task)
        if isinstance(failure, Exception):
            metrics["error"] = failures.describe(failure, one_line=isinstance(failure, disk.WriteError))
        if hydra_cfg.mode == RunMode.RUN and (phases := startup.phases()):
            metrics["startup"] = phases  # a sweep's jobs share their process's start-up: not theirs to record
        close_and_record(trainer, metrics, run_dir, hparams_root, failure)
    if status == "interrupted":
        stop(trainer, name, run_dir, hydra_cfg, world)
    if world.main:
        console.print_summary(metrics, str(run_dir), logdir)
    return finish(metrics, name, run_dir, hydra_cfg)


def close_and_record(trainer: Trainer, metrics: dict, run_dir: Path, hparams_root: Path, failure) -> None:
    """Closes the TensorBoard file, writes metrics.json and the HPARAMS records (rank 0). Where the run
    fails already (`failure`), a write that fails too (the same full disk) is left unsaid: the first
    error is the one told."""
    try:
        try:
            trainer.logger.close()
        finally:
            if trainer.world.main:
                run_dir_files.write_metrics(run_dir, metrics)
                run_dir_files.show_in_hparams(hparams_root)
    except disk.WriteError:
        if failure is None:
            raise


def make_trainer(
    cfg: DictConfig, parts: Parts, run_dir: Path, saved: dict | None, checkpoint_to: Path, config: dict
) -> Trainer:
    """The Trainer of this run: on rank 0 it logs to TensorBoard in `run_dir` and checkpoints, with
    the resolved `config`, to `checkpoint_to`."""
    world = parts.world
    diagnostics = Diagnostics(parts.model) if cfg.trainer.diagnostics else None
    logger = RunLogger(
        run_dir, enabled=world.main, purge_step=saved["step"] if saved else None,
        layout=charts(diagnostics.rectifiers if diagnostics else None),
    )  # fmt: skip
    return Trainer(
        parts.model, parts.optimizer, parts.schedule, parts.train, parts.val, parts.test, cfg.trainer,
        parts.compute.autocast_dtype, logger, console.TrainingProgress(enabled=world.main),
        checkpoint=(lambda state: checkpoint.save(checkpoint_to, {**state, "config": config})) if world.main else None,
        diagnostics=diagnostics, world=world, train_model=parts.train_model,
        prune=None if world.active else trial_pruner(),
        meet_test=not os.environ.get(PHASE_ENV, "").startswith("tune/"),  # a tuned sweep's trial: validation only
        graphed_step=graphs.GraphedStep(
            parts.model, parts.optimizer, parts.compute.autocast_dtype, cfg.trainer.grad_clip
        ) if parts.graphs else None,
    )  # fmt: skip


def stop(trainer: Trainer, name: str, run_dir: Path, hydra_cfg, world) -> NoReturn:
    """An interrupted run exits with 128 + the signal, saying how to resume; a sweep stops here too
    (its later jobs have not started), and a launcher's own handler gets the signal (submitit requeues)."""
    if hydra_cfg.mode == RunMode.MULTIRUN:
        again = f"to resume the sweep, run the same command with hydra.sweep.dir={hydra_cfg.sweep.dir}"
    else:
        again = f"to resume, run it again with hydra.run.dir={run_dir}"
    pass_on(trainer.stop_signal)
    if world.main:
        console.log.warning(f"{name}: stopped by signal {trainer.stop_signal} at step {trainer.step}; {again}")
    raise SystemExit(128 + trainer.stop_signal)


def agree_on_run_dir(run_dir: Path) -> None:
    """Under torchrun, every rank must name the run directory rank 0 names; else SetupError on all ranks."""
    names = distributed.gather(str(run_dir.resolve()))
    other = next((rank for rank, name in enumerate(names) if name != names[0]), None)
    if other is not None:
        raise SetupError(
            f"hydra.run.dir={names[other]} is not allowed on rank {other}: rank 0 has {names[0]}; "
            "allowed: a directory every rank names alike: ${started:...} in place of ${now:...}, or a fixed path"
        )


def quiet() -> None:
    """A rank other than 0 prints warnings only and writes no log file: rank 0 speaks for the run."""
    leave_run_log()
    console.log.setLevel(logging.WARNING)


def finish(metrics: dict, name: str, run_dir: Path, hydra_cfg) -> float | None:
    """The objective for sweepers; a diverged single run exits with DIVERGED_EXIT (a sweep goes on)."""
    if metrics["status"] == "diverged":
        console.log.error(
            f"{name}: the training loss became NaN or infinite by step {metrics['steps']} ({run_dir}); "
            "status: diverged. Try a lower optimizer.lr or set trainer.grad_clip"
        )
        if hydra_cfg.mode != RunMode.MULTIRUN:
            raise SystemExit(DIVERGED_EXIT)
    return objective(metrics)


def objective(metrics: dict) -> float | None:
    """What a sweeper optimizes: the best validation accuracy, or test accuracy without a val split."""
    return metrics["best_val_acc"] if metrics["best_val_acc"] is not None else metrics["test_acc"]
