"""The training loop: epochs of steps, validation each epoch, test at the end.

No host synchronization inside a step: losses and counts accumulate on the device and are
read (`.item()`) only every `log_every_n_steps` and at the end of an epoch. The Trainer's
state (model, optimizer, schedule, counters, the running epoch's totals, RNG states, history)
can be saved at any step and restored, so a resumed run continues exactly where it stopped.
A signal (`request_stop`) ends the run after the current step, with a checkpoint.

Under DDP (runner.engine.distributed) every rank runs this loop on its part of each batch: the totals are
summed over the ranks when they are read, evaluation splits the batches among the ranks, and the
ranks agree on stopping and checkpointing at logging steps, so that they all stop at the same step.
"""

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F

from runner.data.batches import Batches
from runner.engine import startup
from runner.engine.distributed import World, broadcast_buffers, rewrap


@dataclass
class Result:
    status: str  # completed, diverged, interrupted or pruned
    history: list[dict] = field(default_factory=list)  # one entry per epoch
    best_val_acc: float | None = None
    test_loss: float | None = None
    test_acc: float | None = None
    train_seconds: float = 0.0


class Totals:
    """Device-side sums over the running epoch and over the steps since the last log line."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.count = 0
        self.window_loss = torch.zeros((), device=device)
        self.window_correct = torch.zeros((), device=device, dtype=torch.long)
        self.window_steps = self.window_count = 0

    def add(self, loss: torch.Tensor, hits: torch.Tensor, n: int) -> None:
        self.loss += loss * n
        self.correct += hits
        self.count += n
        self.window_loss += loss
        self.window_correct += hits
        self.window_steps += 1
        self.window_count += n

    def read_window(self, world: World) -> tuple[float, float]:
        """Mean loss and accuracy since the last read, over all ranks (one device read), and a fresh window."""
        sums = world.sum(torch.stack([self.window_loss, self.window_correct.float()])).tolist()
        loss, acc = sums[0] / (self.window_steps * world.size), sums[1] / (self.window_count * world.size)
        self.window_loss.zero_()
        self.window_correct.zero_()
        self.window_steps = self.window_count = 0
        return loss, acc

    def read_epoch(self, world: World) -> tuple[float, float]:
        """Mean loss and accuracy of the epoch, over all ranks (each rank saw `count` images)."""
        loss, correct = world.sum(self.loss), world.sum(self.correct)
        n = max(self.count, 1) * world.size
        return (loss / n).item(), correct.item() / n

    SUMS = ("loss", "correct", "window_loss", "window_correct")  # per rank; the counts are equal on all ranks

    def state_dict(self, world: World) -> dict:
        """The totals, each sum as every rank's own, in rank order (a collective under DDP: every
        rank calls it), so that a resumed run adds the rest of the epoch in the same order."""
        return {k: world.stack(v) if k in self.SUMS else v for k, v in vars(self).items()}

    def load_state_dict(self, state: dict, world: World) -> None:
        """Each rank takes its own sums; from a checkpoint of another number of processes (or one
        that kept the total only), rank 0 takes the total and the others start at zero."""
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.loss.device)
                if key in self.SUMS:
                    value = (
                        value[world.rank] if value.ndim == 1 and len(value) == world.size else self.total(value, world)
                    )
            setattr(self, key, value)

    @staticmethod
    def total(value: torch.Tensor, world: World) -> torch.Tensor:
        return value.sum(0) if world.main else torch.zeros_like(value.sum(0))


def rng_states() -> dict:
    """Every random generator's state, in types that torch.load(weights_only=True) accepts."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "python": [version, list(mt), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    version, mt, gauss = states["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def train_step(
    model, optimizer, x, y, autocast, grad_clip: float | None, after_backward=None, stepping=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step, no host sync: forward and loss in the `autocast` context, backward,
    `after_backward()` if given, gradient clipping, the optimizer's step (in the `stepping` context
    if given). The loss and the number of correct predictions, on the device."""
    with autocast:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if after_backward is not None:
        after_backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    with stepping or contextlib.nullcontext():
        optimizer.step()
    return loss.detach().float(), (logits.argmax(1) == y).sum()


@dataclass(frozen=True)
class TrainerConfig:
    """The keys of the `trainer` group that the loop reads, typed (the others choose the device, the
    precision and the layout: runner.engine.device)."""

    max_epochs: int
    grad_clip: float | None = None
    log_every_n_steps: int = 50
    checkpoint_every_minutes: float | None = None  # None: a checkpoint at the end of each epoch only
    eval_flip: bool = False  # evaluate on the mean output for each image and its mirror image
    histograms: bool = False

    @classmethod
    def of(cls, trainer) -> "TrainerConfig":
        """From the `trainer` config node (or any mapping): its values of these keys, else the defaults."""
        return cls(**{f.name: trainer[f.name] for f in fields(cls) if f.name in trainer})


@dataclass
class Learner:
    """The model and what trains it."""

    model: torch.nn.Module  # evaluated and saved
    optimizer: torch.optim.Optimizer
    schedule: object  # optim.LrSchedule: stepped after each step or epoch
    train_model: torch.nn.Module | None = None  # the steps run through it: `model`, or `model` in DDP
    autocast_dtype: torch.dtype | None = None  # the forward pass in this precision (bf16, fp16), else fp32
    graphed_step: object | None = None  # runner.engine.graphs.GraphedStep: takes the training steps
    freezing: object | None = None  # runner.engine.freeze.Freezing: when modules stop training (trainer.freeze)


@dataclass
class SplitBatches:
    """The batches of the three splits."""

    train: Batches
    val: Batches
    test: Batches


@dataclass
class Reporting:
    """Where the loop reports: the TensorBoard writer (runner.engine.log.RunLogger), the progress on
    the terminal, the checkpoint (a function of the Trainer's state), the diagnostics, and for a
    tuned sweep's trial the pruner and whether the test set is met."""

    logger: object
    progress: object  # start(max_epochs, steps_per_epoch, done_steps), advance(), show(), end_epoch(), stop()
    checkpoint: Callable[[dict], None] | None = None
    diagnostics: object | None = None  # runner.engine.diagnostics.Diagnostics
    prune: Callable[[int, float | None], bool] | None = None  # asked after each epoch: stop the run there?
    meet_test: bool = True  # False (a tuned sweep's trial): validation only; the final runs meet the test set


class Trainer:
    def __init__(
        self,
        learner: Learner,
        batches: SplitBatches,
        config: TrainerConfig,
        reporting: Reporting,
        world: World | None = None,
    ):
        """`learner.train_model` runs the steps (`model` in DDP); `learner.model` is evaluated and saved.
        `reporting.prune(epoch, val_acc)`, if given, is asked after each epoch whether to stop the run
        there (a hopeless trial of a tuned sweep): the run ends with status `pruned`, without the test set."""
        self.model, self.optimizer, self.schedule = learner.model, learner.optimizer, learner.schedule
        self.train_model = learner.train_model or learner.model
        self.autocast_dtype, self.graphed_step = learner.autocast_dtype, learner.graphed_step
        self.freezing = learner.freezing
        self.train_batches, self.val_batches, self.test_batches = batches.train, batches.val, batches.test
        self.config = config
        self.world = world or World()
        self.logger, self.progress, self.checkpoint = reporting.logger, reporting.progress, reporting.checkpoint
        self.diagnostics, self.prune, self.meet_test = reporting.diagnostics, reporting.prune, reporting.meet_test
        self.device = next(learner.model.parameters()).device
        self.epoch = 0  # epochs finished
        self.batch = 0  # batches finished in the running epoch
        self.step = 0  # optimizer steps taken
        self.epoch_lr = self.lr()  # the learning rate the running epoch started with
        self.totals = Totals(self.device)
        self.last_step_end: float | None = None  # perf_counter() at the end of the last epoch's last step
        self.stop_signal: int | None = None
        self.last_save = time.monotonic()
        self.result = Result(status="completed")

    @property
    def max_epochs(self) -> int:
        return self.config.max_epochs

    @property
    def log_every(self) -> int:
        return max(1, self.config.log_every_n_steps)

    @property
    def checkpoint_every(self) -> float | None:
        """Seconds between checkpoints within an epoch; None: at the end of each epoch only."""
        minutes = self.config.checkpoint_every_minutes
        return None if minutes is None else 60 * minutes

    def request_stop(self, signum: int) -> None:
        """End the run after the current step (from a signal handler)."""
        self.stop_signal = signum

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def save(self) -> None:
        if self.checkpoint is not None or self.world.active:
            state = self.state_dict()  # under DDP on every rank: it sums the totals over the ranks
            if self.checkpoint is not None:
                self.checkpoint(state)
        self.last_save = time.monotonic()

    def stopping(self, check: bool = True) -> tuple[bool, bool]:
        """(stop now, checkpoint now): a stop was requested, or `trainer.checkpoint_every_minutes`
        passed. Under DDP the ranks agree on both, by a collective, at `check` steps only."""
        due = self.checkpoint_every is not None and time.monotonic() - self.last_save >= self.checkpoint_every
        if not self.world.active:
            return self.stop_signal is not None, due
        if not check:
            return False, False
        signum, due = self.world.max([self.stop_signal or 0, int(due)], self.device)
        if signum and self.stop_signal is None:
            self.stop_signal = signum  # another rank's signal
        return bool(signum), bool(due)

    def fit(self) -> Result:
        start = time.perf_counter() - self.result.train_seconds
        self.progress.start(
            self.max_epochs, len(self.train_batches), done_steps=self.epoch * len(self.train_batches) + self.batch
        )
        while self.epoch < self.max_epochs and not self.stopping()[0]:
            outcome = self.train_epoch(self.epoch)
            self.result.train_seconds = time.perf_counter() - start
            if outcome is None:  # stopped by a signal, mid-epoch
                break
            train_loss, train_acc = outcome
            if not math.isfinite(train_loss):
                self.result.status = "diverged"
                break
            val_loss, val_acc = self.evaluate(self.val_batches)
            self.schedule.after_epoch(val_loss if val_loss is not None else train_loss)
            self.epoch += 1
            self.result.train_seconds = time.perf_counter() - start
            entry = {
                "epoch": self.epoch,
                "step": self.step,
                "lr": self.epoch_lr,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "seconds": round(self.result.train_seconds, 3),
            }
            self.epoch_lr = self.lr()
            self.result.history.append(entry)
            if val_acc is not None and (self.result.best_val_acc is None or val_acc > self.result.best_val_acc):
                self.result.best_val_acc = val_acc
            values = {"acc/train": train_acc, "loss/val": val_loss, "acc/val": val_acc}
            self.logger.scalars({k: v for k, v in values.items() if v is not None}, self.step)
            self.progress.end_epoch(entry, self.max_epochs)
            self.save()
            # every epoch is reported to the study (optuna-dashboard draws them); the last is not stopped
            if self.prune is not None and self.prune(self.epoch, val_acc) and self.epoch < self.max_epochs:
                self.result.status = "pruned"
                break
        self.progress.stop()
        self.result.train_seconds = time.perf_counter() - start
        startup.between_jobs(self.last_step_end or time.perf_counter())  # the next job's record starts here
        startup.mark("epoch end")
        if self.stop_signal is not None and self.epoch < self.max_epochs and self.result.status == "completed":
            self.result.status = "interrupted"  # the checkpoint was written where it stopped
        if self.result.status == "completed" and self.meet_test:
            self.result.test_loss, self.result.test_acc = self.evaluate(self.test_batches)
            final = {"loss/test": self.result.test_loss, "acc/test": self.result.test_acc}
            if self.result.best_val_acc is not None:
                final["acc/best_val"] = self.result.best_val_acc
            self.logger.scalars({k: v for k, v in final.items() if v is not None}, self.step)
            startup.mark("test")
        return self.result

    def train_epoch(self, epoch: int) -> tuple[float, float] | None:
        """The rest of one pass over the training batches: mean loss and accuracy (nan loss if it
        diverged), or None when a stop was requested before the epoch's end."""
        self.model.train()
        last = len(self.train_batches) - 1
        totals = self.totals
        for i, (x, y) in enumerate(self.train_batches.epoch(epoch, start=self.batch), start=self.batch):
            log_now = (self.step + 1) % self.log_every == 0 or i == last  # and at the end of each epoch
            if self.diagnostics:
                self.diagnostics.active = log_now
            if self.freezing is not None and self.freezing.before_step(self.step):
                self.after_freeze()
            started = time.perf_counter()
            loss, hits = self.train_step(x, y, log_now)
            self.schedule.after_step()
            self.step += 1
            self.batch = i + 1
            startup.step_taken(time.perf_counter() - started)  # the record's first step, then an ordinary one
            totals.add(loss, hits, len(y))
            self.progress.advance()
            if log_now:
                mean, acc = totals.read_window(self.world)  # the only host syncs between epochs
                self.logger.scalars({"loss/train": mean, "lr": self.lr()}, self.step)
                self.progress.show(loss=mean, acc=acc)
                if not math.isfinite(mean):
                    return math.nan, 0.0
            if i < last:
                stop, due = self.stopping(check=log_now)
                if stop or due:
                    self.save()
                if stop:
                    return None
        self.batch, self.totals = 0, Totals(self.device)  # the next call starts the next epoch
        ended = totals.read_epoch(self.world)
        self.last_step_end = time.perf_counter()  # where the time between jobs starts (runner.engine.startup)
        return ended

    def after_freeze(self) -> None:
        """After trainer.freeze stopped some parameters: DDP made again, to reduce the gradients of
        those that still train; the graphed step captured again, as it computes fewer gradients."""
        if self.world.active:
            self.train_model = rewrap(self.train_model)
        if self.graphed_step is not None:
            self.graphed_step.again()

    def train_step(self, x: torch.Tensor, y: torch.Tensor, log_now: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, loss, backward, clipping and the optimizer's step on one batch: the loss and the
        number of correct predictions, on the device. A logging step reads the gradients between
        backward and step (a graphed step runs eagerly for it where something reads them)."""
        after_backward = (lambda: self.log_diagnostics(self.step + 1)) if log_now else None
        if self.graphed_step is not None:
            eager = log_now and bool(self.diagnostics or self.config.histograms)
            return self.graphed_step(x, y, eager=eager, after_backward=after_backward)
        return train_step(
            self.train_model, self.optimizer, x, y, self.autocast(), self.config.grad_clip, after_backward
        )

    def log_diagnostics(self, step: int) -> None:
        """Gradient norms and dead units (and histograms if asked), before the optimizer step."""
        if self.diagnostics:
            self.diagnostics.active = False
            self.logger.scalars(self.diagnostics.read(), step)
        if self.config.histograms:
            self.logger.histograms(self.model, step)

    @torch.inference_mode()
    def evaluate(self, batches: Batches) -> tuple[float | None, float | None]:
        """Mean loss and accuracy over a split; (None, None) for an empty split. With `eval_flip`,
        of the mean of the model's outputs for each image and its horizontal mirror image."""
        if len(batches.split) == 0:
            return None, None
        self.model.eval()
        if self.world.active:
            broadcast_buffers(self.model)  # one model on all ranks: rank 0's BatchNorm statistics
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        for x, y in batches.epoch():  # under DDP, this rank's share of the batches
            with self.autocast():
                logits = self.model(x)
                if self.config.eval_flip:  # the mean of the outputs for the image and its mirror image
                    logits = (logits.float() + self.model(x.flip(3)).float()) / 2
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        n = len(batches.split)
        return (self.world.sum(loss_sum) / n).item(), self.world.sum(correct).item() / n

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "epoch_lr": self.epoch_lr,
            "totals": self.totals.state_dict(self.world),
            "rng": rng_states(),
            "history": self.result.history,
            "best_val_acc": self.result.best_val_acc,
            "train_seconds": self.result.train_seconds,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.epoch, self.batch, self.step, self.epoch_lr = (
            state["epoch"],
            state["batch"],
            state["step"],
            state["epoch_lr"],
        )
        self.totals.load_state_dict(state["totals"], self.world)
        set_rng_states(state["rng"])
        self.result.history = list(state["history"])
        self.result.best_val_acc = state["best_val_acc"]
        self.result.train_seconds = state["train_seconds"]
