"""What a run writes for people and tools: TensorBoard scalars and hparams, metrics.json.

The run directory itself is the TensorBoard run: scalars and the hparams session live in
the same event files (no sub-run). Only the process that owns the run directory (rank 0)
makes a RunLogger that writes; the others get one with `enabled=False`.
"""

import json
import os
import time
from pathlib import Path

# TensorBoard's CUSTOM SCALARS tab: each chart shows these tags for every selected run, side by side.
LAYOUT = {
    "train vs val": {
        "loss": ["Multiline", ["loss/train", "loss/val"]],
        "accuracy": ["Multiline", ["acc/train", "acc/val"]],
    },
    "diagnostics": {
        "first layer / last layer gradient norm": ["Multiline", ["grad_norm/first_to_last"]],
        "dead units": ["Multiline", ["dead_units/.*"]],
        "learning rate": ["Multiline", ["lr"]],
    },
}


def write_json(path: Path, obj) -> None:
    """Write `obj` as JSON atomically: a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _session_end(status: str):
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    code = {"completed": "STATUS_SUCCESS", "interrupted": "STATUS_UNKNOWN"}.get(status, "STATUS_FAILURE")  # interrupted: to be resumed
    info = plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value(code), end_time_secs=time.time())
    content = plugin_data_pb2.HParamsPluginData(session_end_info=info, version=metadata.PLUGIN_DATA_VERSION)
    plugin = SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString())
    return Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=SummaryMetadata(plugin_data=plugin))])


class RunLogger:
    """TensorBoard writer for one run directory."""

    def __init__(self, run_dir: Path, enabled: bool = True, purge_step: int | None = None):
        """`purge_step`: a resumed run's step; TensorBoard drops what earlier files logged from there on."""
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)
            self.writer.add_custom_scalars(LAYOUT)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def histograms(self, model, step: int) -> None:
        """Weight and gradient histograms of every parameter."""
        if self.writer:
            for name, p in model.named_parameters():
                self.writer.add_histogram(f"weights/{name}", p.detach().float().cpu(), step)
                if p.grad is not None:
                    self.writer.add_histogram(f"grads/{name}", p.grad.detach().float().cpu(), step)

    def hparams(self, hparams: dict[str, str | float | int]) -> None:
        """Start the hparams session: the choices and main hyperparameters of this run.

        No experiment summary is written: TensorBoard builds the table from the sessions of
        all runs, so runs of different sweeps, with different hyperparameters, sit together.
        """
        if self.writer:
            from torch.utils.tensorboard.summary import hparams as hparams_summaries

            _, start, _ = hparams_summaries(hparams, {})
            self.writer.file_writer.add_summary(start)

    def close(self, status: str) -> None:
        if self.writer:
            self.writer.file_writer.add_summary(_session_end(status))
            self.writer.close()
