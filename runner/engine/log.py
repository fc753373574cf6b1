"""What a run writes for people and tools as it trains: TensorBoard scalars, histograms and charts,
and metrics.json (written atomically).

The run directory itself is the TensorBoard run (no sub-run); its HPARAMS record is written
apart, by runner.analysis.hparams. Only the process that owns the run directory (rank 0) makes a
RunLogger that writes; the others get one with `enabled=False`.
"""

import json
import re
import threading
import time
from pathlib import Path

from runner import disk
from runner.engine.diagnostics import DEAD_UNITS, GRAD_NORM


def charts(dead_unit_layers: list[str] | None) -> dict:
    """TensorBoard's CUSTOM SCALARS tab: one tag per chart, so that each run is one line in its own
    colour; train and val apart; with diagnostics (`dead_unit_layers` not None), the gradient ratio
    and one chart of dead units per ReLU layer."""

    def one(tag: str) -> list:
        return ["Multiline", [f"^{re.escape(tag)}$"]]

    layout = {
        "loss, accuracy and learning rate": {
            "train loss": one("loss/train"),
            "val loss": one("loss/val"),
            "train accuracy": one("acc/train"),
            "val accuracy": one("acc/val"),
            "learning rate": one("lr"),
        },
    }
    if dead_unit_layers is not None:
        layout["vanishing gradients"] = {"first layer / last layer gradient norm": one(f"{GRAD_NORM}/first_to_last")}
        if dead_unit_layers:
            layout["dead units (the fraction of a ReLU layer's units off for a whole batch)"] = {
                layer: one(f"{DEAD_UNITS}/{layer}") for layer in dead_unit_layers
            }
    return layout


def write_json(path: Path, obj) -> None:
    """Write `obj` as JSON atomically: a reader sees the old file or the new one, never half. A
    write that fails (a full disk) is WriteError, the partial file removed (runner.disk)."""
    with disk.replacing(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


class RunLogger:
    """TensorBoard writer for one run directory. TensorBoard's writer appends to its event file from
    a thread of its own, which keeps a write's error until the next call: that error (a full disk)
    comes out of `scalars`, `histograms` or `close` as WriteError naming the file, and the thread's
    own traceback is not printed (`quiet_writer_thread`)."""

    def __init__(self, run_dir: Path, enabled: bool = True, purge_step: int | None = None, layout: dict | None = None):
        """`purge_step`: a resumed run's step; TensorBoard drops what earlier files logged from there on.
        `layout`: the CUSTOM SCALARS charts (`charts`)."""
        self.writer = None
        self.path = Path(run_dir)
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            quiet_writer_thread()
            after_earlier_event_files(self.path)
            with disk.writing(self.path):
                self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)
                event_writer = getattr(self.writer.file_writer, "event_writer", None)
                self.path = Path(getattr(event_writer, "_file_name", run_dir))  # the event file, to name it
                if layout:
                    self.writer.add_custom_scalars(layout)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer:
            with disk.writing(self.path):
                for tag, value in values.items():
                    self.writer.add_scalar(tag, value, step)

    def histograms(self, model, step: int) -> None:
        """Weight and gradient histograms of every parameter."""
        if self.writer:
            with disk.writing(self.path):
                for name, p in model.named_parameters():
                    self.writer.add_histogram(f"weights/{name}", p.detach().float().cpu(), step)
                    if p.grad is not None:
                        self.writer.add_histogram(f"grads/{name}", p.grad.detach().float().cpu(), step)

    def close(self) -> None:
        if self.writer:
            writer, self.writer = self.writer, None  # closed once, also when closing fails
            with disk.writing(self.path):
                writer.close()


def after_earlier_event_files(run_dir: Path) -> None:
    """Wait, if need be, until a new event file's name sorts after the run directory's earlier ones.
    TensorBoard reads a directory's event files in name order, and a name starts with the second it
    was created in, then the host and the process id: a run resumed within the second its previous
    process wrote its file in (in process, or by a fast restart) could sort first, and its steps then
    read as if logged before the earlier ones."""
    names = (p.name.split(".") for p in run_dir.glob("events.out.tfevents.*"))
    latest = max((int(parts[3]) for parts in names if parts[3].isdigit()), default=None)
    if latest is not None:
        time.sleep(max(0.0, latest + 1 - time.time()))


def quiet_writer_thread() -> None:
    """An OSError in TensorBoard's writer thread is not printed as the thread's traceback: the writer
    raises it again at its next call, where RunLogger turns it into one line (WriteError)."""
    if getattr(threading.excepthook, "ablate_quiet", False):
        return
    previous = threading.excepthook

    def hook(args) -> None:
        if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
            return
        previous(args)

    hook.ablate_quiet = True
    threading.excepthook = hook
