"""The training loop: epochs of steps, validation each epoch, test at the end.

No host synchronization inside a step: losses and counts accumulate on the device and are
read (`.item()`) only every `log_every_n_steps` and at the end of an epoch. The Trainer's
state (model, optimizer, schedule, counters, history) can be saved and restored.
"""

import contextlib
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from runner.data import Batches


@dataclass
class Result:
    status: str  # completed or diverged
    history: list[dict] = field(default_factory=list)  # one entry per epoch
    best_val_acc: float | None = None
    test_loss: float | None = None
    test_acc: float | None = None
    train_seconds: float = 0.0


class Trainer:
    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule,
        train: Batches,
        val: Batches,
        test: Batches,
        cfg,
        autocast_dtype: torch.dtype | None,
        logger,
        progress,
        checkpoint=None,
        diagnostics=None,
    ):
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.train_batches, self.val_batches, self.test_batches = train, val, test
        self.max_epochs, self.grad_clip, self.log_every = cfg.max_epochs, cfg.grad_clip, max(1, cfg.log_every_n_steps)
        self.autocast_dtype = autocast_dtype
        self.device_type = next(model.parameters()).device.type
        self.logger, self.progress, self.checkpoint = logger, progress, checkpoint
        self.diagnostics, self.histograms = diagnostics, cfg.histograms
        self.epoch = 0  # epochs finished
        self.step = 0  # optimizer steps taken
        self.result = Result(status="completed")

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def fit(self) -> Result:
        start = time.perf_counter() - self.result.train_seconds
        self.progress.start(self.max_epochs, len(self.train_batches), done_epochs=self.epoch)
        while self.epoch < self.max_epochs:
            lr = self.lr()
            train_loss, train_acc = self.train_epoch(self.epoch)
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
                "lr": lr,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "seconds": round(self.result.train_seconds, 3),
            }
            self.result.history.append(entry)
            if val_acc is not None and (self.result.best_val_acc is None or val_acc > self.result.best_val_acc):
                self.result.best_val_acc = val_acc
            values = {"acc/train": train_acc, "loss/val": val_loss, "acc/val": val_acc}
            self.logger.scalars({k: v for k, v in values.items() if v is not None}, self.step)
            self.progress.end_epoch(entry, self.max_epochs)
            if self.checkpoint is not None:
                self.checkpoint(self.state_dict())
        self.progress.stop()
        self.result.train_seconds = time.perf_counter() - start
        if self.result.status == "completed":
            self.result.test_loss, self.result.test_acc = self.evaluate(self.test_batches)
            final = {"loss/test": self.result.test_loss, "acc/test": self.result.test_acc}
            if self.result.best_val_acc is not None:
                final["acc/best_val"] = self.result.best_val_acc
            self.logger.scalars({k: v for k, v in final.items() if v is not None}, self.step)
        return self.result

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over the training batches; mean loss and accuracy (nan loss if it diverged)."""
        self.model.train()
        device = next(self.model.parameters()).device
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        window_loss = torch.zeros((), device=device)
        window_correct = torch.zeros((), device=device, dtype=torch.long)
        count = window_steps = window_count = 0
        last = len(self.train_batches) - 1
        for i, (x, y) in enumerate(self.train_batches.epoch(epoch)):
            log_now = (self.step + 1) % self.log_every == 0 or i == last  # and at the end of each epoch
            if self.diagnostics:
                self.diagnostics.active = log_now
            with self.autocast():
                logits = self.model(x)
                loss = F.cross_entropy(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if log_now:
                self.log_diagnostics(self.step + 1)
            if self.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
            self.schedule.after_step()
            self.step += 1
            loss = loss.detach().float()
            hits = (logits.argmax(1) == y).sum()
            loss_sum += loss * len(y)
            correct += hits
            count += len(y)
            window_loss += loss
            window_correct += hits
            window_steps += 1
            window_count += len(y)
            self.progress.advance()
            if log_now:
                mean = (window_loss / window_steps).item()  # the only host syncs between epochs
                self.logger.scalars({"loss/train": mean, "lr": self.lr()}, self.step)
                self.progress.show(loss=mean, acc=window_correct.item() / window_count)
                if not math.isfinite(mean):
                    return math.nan, 0.0
                window_loss.zero_()
                window_correct.zero_()
                window_steps = window_count = 0
        return (loss_sum / max(count, 1)).item(), correct.item() / max(count, 1)

    def log_diagnostics(self, step: int) -> None:
        """Gradient norms and dead units (and histograms if asked), before the optimizer step."""
        if self.diagnostics:
            self.diagnostics.active = False
            self.logger.scalars(self.diagnostics.read(), step)
        if self.histograms:
            self.logger.histograms(self.model, step)

    @torch.inference_mode()
    def evaluate(self, batches: Batches) -> tuple[float | None, float | None]:
        """Mean loss and accuracy over a split; (None, None) for an empty split."""
        if len(batches.split) == 0:
            return None, None
        self.model.eval()
        device = next(self.model.parameters()).device
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for x, y in batches.epoch():
            with self.autocast():
                logits = self.model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        n = len(batches.split)
        return (loss_sum / n).item(), correct.item() / n

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "torch_rng": torch.get_rng_state(),
            "history": self.result.history,
            "best_val_acc": self.result.best_val_acc,
            "train_seconds": self.result.train_seconds,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.epoch, self.step = state["epoch"], state["step"]
        torch.set_rng_state(state["torch_rng"])
        self.result.history = list(state["history"])
        self.result.best_val_acc = state["best_val_acc"]
        self.result.train_seconds = state["train_seconds"]
