"""One run, from its checked config and its context (runner.engine.context) to its run directory.

config -> seed -> data on the device -> model -> optimizer and schedule -> Trainer.fit()
-> metrics.json (runner.engine.records), TensorBoard, checkpoint, model.safetensors. Started again
in its directory, a run resumes from its checkpoint, or is skipped when it completed or diverged
there already. Under torchrun every rank runs this; rank 0 alone writes.

The engine knows nothing of how it was started: Hydra, the terminal and a sweep's bookkeeping are
the layer above (runner.cli.job), which builds the RunContext, holds the run directory, and turns
the Outcome into what the user sees and the exit code.
"""

import dataclasses
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import optim
from models import kernels
from runner import disk
from runner.config import targets
from runner.config.rules import reason
from runner.data import batches, cache, splits
from runner.data.datasets import DataError
from runner.engine import (
    allocator,
    builders,
    checkpoint,
    collector,
    device,
    distributed,
    failures,
    freeze,
    graphs,
    preflight,
    records,
    startup,
)
from runner.engine.context import RunContext
from runner.engine.diagnostics import Diagnostics
from runner.engine.interrupt import stop_on_signals
from runner.engine.log import RunLogger, charts
from runner.engine.train import Learner, Reporting, SplitBatches, Trainer, TrainerConfig

log = logging.getLogger("ablate")


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


@dataclass
class Setup:
    """Everything a run trains with, built from the config before any training starts."""

    compute: device.Compute
    world: distributed.World
    dataset: splits.Data
    learner: Learner
    batches: SplitBatches


def build(cfg: DictConfig, parallel_jobs: int = 1, job: int = 0) -> Setup:
    """Data on the device, model, optimizer, schedule and batches from a checked config
    (runner.config.schema); bad input found only now raises SetupError. `parallel_jobs` (the jobs a
    launcher runs at once) shares the CPU cores out under threads=auto, and the GPUs among the jobs
    by their number `job`. Under torchrun, this process joins the run's process group and takes its
    part of the batches."""
    try:
        seed_everything(cfg.seed, cfg.trainer.deterministic)  # the same on every rank: the same initial weights
        world = distributed.world()
        compute = device.pick(cfg.trainer, parallel_jobs, world, job)
        torch.set_num_threads(compute.threads)
        allocator.keep_freed_memory()
        if compute.device.index is not None:
            torch.cuda.set_device(compute.device)  # nothing of this job's on another GPU
        distributed.start(world, compute.device)
        dataset = splits.load(cfg.data, compute.device)
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
        kernels.switch_on(
            model,
            cfg.trainer.fused,
            compute.device,
            compute.autocast_dtype,
            cfg.trainer.compile,
            cache.cache_dir() / "kernels",
        )
        train_model = distributed.wrap(model, compute.device, cfg.trainer.sync_bn) if world.active else model
        optimizer = builders.build_optimizer(cfg.optimizer, model.parameters())
        split_batches = make_batches(cfg, dataset, compute, world)
        schedule = builders.build_schedule(cfg.sched, optimizer, len(split_batches.train), cfg.trainer.max_epochs)
        graphed_step = None
        if graphs.pick(cfg.trainer.graphs, compute.device, optimizer, cfg.trainer.compile, world.size):
            graphed_step = graphs.GraphedStep(model, optimizer, compute.autocast_dtype, cfg.trainer.grad_clip)
        freezing = None
        if cfg.trainer.freeze:
            freezing = freeze.Freezing(model, cfg.trainer.freeze, len(split_batches.train), cfg.trainer.max_epochs)
        learner = Learner(model, optimizer, schedule, train_model, compute.autocast_dtype, graphed_step, freezing)
        collector.settle()
        startup.mark("model")
    except (ValueError, DataError) as e:
        raise SetupError(str(e)) from e
    return Setup(compute, world, dataset, learner, split_batches)


def make_batches(cfg: DictConfig, dataset: splits.Data, compute: device.Compute, world) -> SplitBatches:
    """The three splits' batches: training shuffled, augmented and cut to full batches; evaluation in
    EVAL_BATCH_SIZE, each rank taking every ranks-th batch under DDP."""
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
    val, test = (
        batches.Batches(split, batches.EVAL_BATCH_SIZE, mean, std, split_batches=False, **share)
        for split in (dataset.val, dataset.test)
    )
    return SplitBatches(train, val, test)


def build_model(cfg: DictConfig, dataset: splits.Data) -> torch.nn.Module:
    """The model for the data's shape and classes; a constructor that raises (pooling more often than
    the image allows, a user's model) is refused in one line naming `model` and where it raised."""
    try:
        return builders.build_model(cfg.model, cfg.activation, dataset.in_shape, dataset.num_classes)
    except builders.PartError:
        raise
    except Exception as e:
        if preflight.in_activation(e, cfg):
            raise builders.blamed("activation", cfg.activation, "fails in the model", e) from e
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


@dataclass
class Outcome:
    """How a run ended: metrics.json's content, whether it had ended there before (skipped), and the
    signal that stopped it (status `interrupted`)."""

    metrics: dict
    skipped: bool = False
    stop_signal: int | None = None


def train(cfg: DictConfig, ctx: RunContext, progress, built: Callable[[bool], None] | None = None) -> Outcome:
    """The run in `ctx.run_dir`, which this process holds: build, resume or skip, train, write.
    `progress` shows the training on the terminal (runner.cli.console.TrainingProgress); `built`, if
    given, is called once the run is built and before it trains, with whether it resumes from its
    checkpoint (the layer above shows it as running and records it). Raises SetupError on bad input,
    disk.WriteError when a file cannot be written, and what the training raises, after metrics.json
    recorded it."""
    setup = build(cfg, ctx.parallel_jobs, ctx.job)
    compute, world = setup.compute, setup.world
    if world.active:
        agree_on_run_dir(ctx.run_dir)
    on = f"{world.size} processes ({compute.device.type})" if world.active else str(compute.device)
    fused = sum(getattr(m, "fused", False) for m in setup.learner.model.modules())
    freezing = setup.learner.freezing.plan() if setup.learner.freezing else ""
    log.info(
        f"{ctx.name}: {len(setup.dataset.train)} training images on {on} "
        f"({compute.precision}, {compute.layout}, {compute.threads} threads{' each' if world.active else ''}"
        f"{f', fused kernels in {fused} block' + 's' * (fused > 1) if fused else ''}{', ' + freezing if freezing else ''})"
    )
    config = OmegaConf.to_container(cfg, resolve=True)
    try:
        saved = checkpoint.load_matching(ctx.checkpoint, config)  # None for a fresh run
    except ValueError as e:
        raise SetupError(str(e)) from e
    done = records.finished(ctx.run_dir, saved, cfg.trainer.max_epochs)
    if done:
        log.info(f"{ctx.name}: {done['status']} already in {ctx.run_dir}; skipped")
        return Outcome(done, skipped=True)
    trainer = make_trainer(cfg, setup, ctx, saved, config, progress)
    if built is not None:
        built(saved is not None)
    if saved:
        trainer.load_state_dict(saved)
        log.info(
            f"{ctx.name}: resuming from {ctx.checkpoint} (epoch {trainer.epoch}, batch {trainer.batch}, step {trainer.step})"
        )
    status, failure = "failed", None
    try:
        with stop_on_signals(trainer.request_stop):
            ended = trainer.fit().status
        if ended == "completed" and world.main:
            checkpoint.export_weights(ctx.run_dir / "model.safetensors", setup.learner.model)
        status = ended  # a completed run whose weights could not be written is not: run again, it writes them
    except BaseException as e:
        failure = e
        raise
    finally:
        trainer.progress.stop()
        metrics = records.of_run(status, trainer, setup, cfg, ctx)
        if isinstance(failure, Exception):
            metrics["error"] = failures.describe(failure, one_line=isinstance(failure, disk.WriteError))
        if recorded := startup.phases():
            metrics[recorded[0]] = recorded[1]  # the process's start-up, or the time since its previous job
        close_and_record(trainer, metrics, ctx.run_dir, failure)
    return Outcome(metrics, stop_signal=trainer.stop_signal if status == "interrupted" else None)


def close_and_record(trainer: Trainer, metrics: dict, run_dir: Path, failure) -> None:
    """Closes the TensorBoard file and writes metrics.json (rank 0). Where the run fails already
    (`failure`), a write that fails too (the same full disk) is left unsaid: the first error is the
    one told."""
    try:
        try:
            trainer.logger.close()
        finally:
            if trainer.world.main:
                records.write(run_dir, metrics)
    except disk.WriteError:
        if failure is None:
            raise


def make_trainer(cfg: DictConfig, setup: Setup, ctx: RunContext, saved: dict | None, config: dict, progress) -> Trainer:
    """The Trainer of this run: on rank 0 it logs to TensorBoard in the run directory and checkpoints,
    with the resolved `config`, to `ctx.checkpoint`."""
    world = setup.world
    diagnostics = Diagnostics(setup.learner.model) if cfg.trainer.diagnostics else None
    logger = RunLogger(
        ctx.run_dir,
        enabled=world.main,
        purge_step=saved["step"] if saved else None,
        layout=charts(diagnostics.rectifiers if diagnostics else None),
    )

    def save(state: dict) -> None:
        checkpoint.save(ctx.checkpoint, {**state, "config": config})

    reporting = Reporting(
        logger,
        progress,
        checkpoint=save if world.main else None,
        diagnostics=diagnostics,
        prune=None if world.active else ctx.prune,
        meet_test=ctx.meet_test,
    )
    return Trainer(setup.learner, setup.batches, TrainerConfig.of(cfg.trainer), reporting, world)


def agree_on_run_dir(run_dir: Path) -> None:
    """Under torchrun, every rank must name the run directory rank 0 names; else SetupError on all ranks."""
    names = distributed.gather(str(run_dir.resolve()))
    other = next((rank for rank, name in enumerate(names) if name != names[0]), None)
    if other is not None:
        raise SetupError(
            f"hydra.run.dir={names[other]} is not allowed on rank {other}: rank 0 has {names[0]}; "
            "allowed: a directory every rank names alike: ${started:...} in place of ${now:...}, or a fixed path"
        )


def objective(metrics: dict) -> float | None:
    """What a sweeper optimizes: the best validation accuracy, or test accuracy without a val split."""
    return metrics["best_val_acc"] if metrics["best_val_acc"] is not None else metrics["test_acc"]
