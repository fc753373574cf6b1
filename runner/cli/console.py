"""What the terminal shows: a rich progress bar with live loss and accuracy (plain lines off a TTY),
one line per epoch, and a short summary at the end."""

import logging
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from runner import provenance
from runner.analysis.report import tensorboard_command

log = logging.getLogger("ablate")
console = Console()


def use_rich_logging() -> None:
    """On a terminal, log through rich so log lines print above the progress bar, not through it."""
    if not console.is_terminal:
        return
    root = logging.getLogger()
    if any(isinstance(handler, RichHandler) for handler in root.handlers):
        return
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    root.addHandler(RichHandler(console=console, show_path=False, show_level=False, log_time_format="[%X]"))


def _fmt(value, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def epoch_line(entry: dict, max_epochs: int) -> str:
    return (
        f"epoch {entry['epoch']}/{max_epochs}  train loss {_fmt(entry['train_loss'])} acc {_fmt(entry['train_acc'])}"
        f"  val loss {_fmt(entry['val_loss'])} acc {_fmt(entry['val_acc'])}  lr {entry['lr']:.3g}  {entry['seconds']:.1f}s"
    )


class TrainingProgress:
    """A progress bar over all steps of the training, or nothing but epoch lines off a terminal."""

    def __init__(self, enabled: bool = True):
        self.bar = None
        self.enabled = enabled and console.is_terminal
        self.task = None

    def start(self, max_epochs: int, steps_per_epoch: int, done_steps: int = 0) -> None:
        if not self.enabled:
            return
        self.bar = Progress(
            TextColumn("[bold]train[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}  val acc {task.fields[val_acc]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        total = max_epochs * steps_per_epoch
        self.task = self.bar.add_task(
            "train",
            total=total,
            completed=done_steps,
            epoch=min(done_steps // max(1, steps_per_epoch) + 1, max_epochs),
            epochs=max_epochs,
            loss="-",
            acc="-",
            val_acc="-",
        )
        self.bar.start()

    def advance(self) -> None:
        if self.bar:
            self.bar.advance(self.task)

    def show(self, loss: float, acc: float) -> None:
        """The training loss and accuracy over the steps since the last update."""
        if self.bar:
            self.bar.update(self.task, loss=f"{loss:.4f}", acc=f"{acc:.4f}")

    def end_epoch(self, entry: dict, max_epochs: int) -> None:
        log.info(epoch_line(entry, max_epochs))
        if self.bar:
            self.bar.update(self.task, epoch=min(entry["epoch"] + 1, max_epochs), val_acc=_fmt(entry["val_acc"]))

    def stop(self) -> None:
        if self.bar:
            self.bar.stop()
            self.bar = None


def print_summary(metrics: dict, run_dir: str, logdir: str) -> None:
    """The run's final numbers, where its files are and how to open TensorBoard."""
    table = Table(show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("run", metrics["name"]),
        ("status", metrics["status"]),
        ("test accuracy", _fmt(metrics["test_acc"])),
        ("test loss", _fmt(metrics["test_loss"])),
        ("best val accuracy", _fmt(metrics["best_val_acc"])),
        ("epochs", str(metrics["epochs"])),
        ("train seconds", _fmt(metrics["train_seconds"], ".1f")),
        ("parameters", f"{metrics['num_params']:,}"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    console.print(f"Run directory: {run_dir}", soft_wrap=True)
    console.print(f"TensorBoard:   {tensorboard_command()} --logdir {logdir}", soft_wrap=True)
    if made := provenance.how_to_reproduce(Path(run_dir)):
        console.print(
            f"Made with:     {made}; again: rerun {run_dir}", soft_wrap=True, markup=False
        )  # a command holds [brackets]
