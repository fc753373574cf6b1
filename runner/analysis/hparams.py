"""TensorBoard's HPARAMS tab over every run under a log directory (`outputs/`, where `make
tensorboard` looks): one row per run, the answer's metrics first, a column for every key that
differs between the runs.

TensorBoard keeps the first hparams record it reads of a run and builds its columns from one
experiment summary, so each run's record is a file of its own, `events.out.tfevents.hparams`,
replaced whole (never appended to) whenever anything in it changes: a run interrupted and resumed
to completion shows as completed in a freshly started TensorBoard. Every run's file holds the same
experiment summary: the metrics (METRICS) and the columns, which are

- the config choices, `seed` and `status` (completed, interrupted, diverged, failed, pruned or
  running): always there;
- every key of the runs' configs (`.hydra/config.yaml`, as Hydra saved them) whose value differs
  between runs, with each run's value (a default is its value, null is "null"); integers are
  written as text, since TensorBoard shows numbers with five significant digits (a seed would
  read 0.0000).

TensorBoard ticks the first five columns that differ, in the order of their names; the names
here put the choices first, then the seed, then the keys a choice does not explain (a swept
learning rate), the status, and last the keys that only follow a choice (model.channels of model=bn).

`refresh(root)` rewrites every run's file under `root` that changed, under a lock, so runs and
sweeps that end at once do not undo each other's records. A run calls it when it starts and when
it ends.
"""

import fcntl
import io
import math
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from runner import disk, run_name
from runner.analysis.runs import CHOICES, Run, follows_a_choice, started_under

FILE = "events.out.tfevents.hparams"  # "tfevents" in the name: TensorBoard reads it as an event file
LOCK = ".hparams.lock"
METRICS = {  # tag: what the column says
    "acc/test": "test acc",
    "loss/test": "test loss",
    "acc/best_val": "best val acc",
    "loss/val": "final val loss",
    "loss/train": "final train loss",
}
SESSION_STATUS = {
    "completed": "STATUS_SUCCESS",
    "diverged": "STATUS_FAILURE",
    "failed": "STATUS_FAILURE",
    "running": "STATUS_RUNNING",
}  # interrupted (to be resumed) and pruned (a tuned sweep's trial stopped early): STATUS_UNKNOWN
SWEEP_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)_(\d\d)-(\d\d)-(\d\d)")  # hydra.sweep.dir's default name


def refresh(root: Path) -> int:
    """Write the HPARAMS record of every run under `root` whose record changed; how many were written."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        runs = started_under(root)
        name_trials(runs)
        experiment, columns = experiment_summary(runs)
        shared = experiment.SerializeToString(deterministic=True)
        written = 0
        for run in runs:
            path = run.dir / FILE
            made_of = (run.stamp, run.trial, shared)
            if _made.get(path) == made_of and path.exists():
                continue  # this process wrote it from the same run files and columns: unchanged
            content = event_file([experiment, session_start(run, columns), session_end(run)], run.started)
            if not path.exists() or path.read_bytes() != content:
                with disk.replacing(path) as tmp:  # a full disk leaves no partial file behind
                    tmp.write_bytes(content)
                written += 1
            _made[path] = made_of
        return written


_made: dict[Path, tuple] = {}  # a record's path: what this process made it of (the run's files, label, columns)


def name_trials(runs: list[Run]) -> None:
    """Short trial IDs that tell runs apart in TensorBoard's narrow first column: the sweep's start
    time and the job's number ("14:02:11 #3"), or a single run's start time and its choices; the date
    goes in front when the runs span several days."""

    def started(run: Run) -> tuple[datetime, str]:
        """When the run's sweep (or the run) started, and what follows the time in the sweep's name (-2)."""
        if run.sweep and (m := SWEEP_TIME.match(run.sweep.name)):
            return datetime(*map(int, m.groups())), run.sweep.name[m.end() :]
        return datetime.fromtimestamp(run.started), ""

    days = {started(run)[0].date() for run in runs}
    fmt = "%H:%M:%S" if len(days) <= 1 else "%m-%d %H:%M:%S"
    for run in runs:
        moment, suffix = started(run)
        if run.sweep:
            run.trial = f"{moment.strftime(fmt)}{suffix} #{run.job}"
        else:
            run.trial = f"{moment.strftime(fmt)} {run_name(run.values)}"
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.trial] = counts.get(run.trial, 0) + 1
    for run in runs:
        if counts[run.trial] > 1:  # the same label twice: the directory's name tells them apart
            run.trial = f"{run.trial} {run.dir.name}"


def shown(value):
    """A value as TensorBoard holds it: floats as numbers, booleans as booleans, the rest as text."""
    if isinstance(value, bool) or (isinstance(value, float) and math.isfinite(value)):
        return value
    if value is None:
        return "null"
    return str(value)


@dataclass
class Column:
    key: str
    name: str  # TensorBoard orders the columns by name; the key is what it shows
    kind: str  # DATA_TYPE_STRING | DATA_TYPE_BOOL | DATA_TYPE_FLOAT64
    differs: bool
    values: list


def columns_of(runs: list[Run]) -> list[Column]:
    """The choices, the seed, every key that differs, and the status, in the order TensorBoard ticks them."""
    keys = list(CHOICES) + sorted({k for run in runs for k in run.values} - set(CHOICES))
    ranked = []
    for key in keys:
        distinct = sorted({shown(run.values[key]) for run in runs if key in run.values}, key=repr)
        differs = len(distinct) > 1
        if key in CHOICES:
            rank = 0
        elif key == "seed":
            rank = 1
        elif not differs:
            continue  # the same in every run: not a column
        else:
            rank = 4 if follows_a_choice(key, runs) else 2
        ranked.append((rank, key, distinct, differs))
    statuses = sorted({run.status for run in runs})
    ranked.append((3, "status", statuses, len(statuses) > 1))
    columns = []
    for rank, key, distinct, differs in sorted(ranked, key=lambda r: (r[0], r[1])):
        if all(isinstance(v, bool) for v in distinct):
            kind = "DATA_TYPE_BOOL"
        elif all(isinstance(v, float) for v in distinct):
            kind = "DATA_TYPE_FLOAT64"
        else:
            kind = "DATA_TYPE_STRING"
            distinct = [str(v) for v in distinct]
        columns.append(Column(key, f"{len(columns):03d} {key}", kind, differs, distinct))
    return columns


def experiment_summary(runs: list[Run]):
    from google.protobuf.struct_pb2 import ListValue
    from tensorboard.plugins.hparams import api_pb2

    columns = columns_of(runs)
    infos = []
    for c in columns:
        info = api_pb2.HParamInfo(
            name=c.name, display_name=c.key, type=api_pb2.DataType.Value(c.kind), differs=c.differs
        )
        if c.kind != "DATA_TYPE_FLOAT64":
            info.domain_discrete.CopyFrom(ListValue(values=[to_value(v) for v in c.values]))
        infos.append(info)
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=name) for tag, name in METRICS.items()]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics)
    return plugin_summary("experiment", experiment), columns


def to_value(v):
    from google.protobuf.struct_pb2 import Value

    if isinstance(v, bool):
        return Value(bool_value=v)
    if isinstance(v, float):
        return Value(number_value=v)
    return Value(string_value=str(v))


def session_start(run: Run, columns: list[Column]):
    from tensorboard.plugins.hparams import plugin_data_pb2

    info = plugin_data_pb2.SessionStartInfo(group_name=run.trial, start_time_secs=run.started)
    values = {**run.values, "status": run.status}
    for c in columns:
        if c.key in values:  # else a key this run's config does not have (model.blocks of a plain CNN)
            value = shown(values[c.key])
            info.hparams[c.name].CopyFrom(to_value(value if c.kind != "DATA_TYPE_STRING" else str(value)))
    return plugin_summary("session_start_info", info)


def session_end(run: Run):
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    status = api_pb2.Status.Value(SESSION_STATUS.get(run.status, "STATUS_UNKNOWN"))
    return plugin_summary(
        "session_end_info", plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=run.ended or 0)
    )


def plugin_summary(kind: str, message):
    """A Summary that TensorBoard's hparams plugin reads: `message` in the plugin data of tag _hparams_/<kind>."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    content = plugin_data_pb2.HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **{kind: message})
    plugin = SummaryMetadata.PluginData(
        plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString(deterministic=True)
    )
    return Summary(value=[Summary.Value(tag=f"_hparams_/{kind}", metadata=SummaryMetadata(plugin_data=plugin))])


def event_file(summaries: list, wall_time: float) -> bytes:
    """The bytes of an event file holding `summaries`, framed by TensorBoard's own record writer."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    events = [Event(wall_time=wall_time, file_version="brain.Event:2")]
    events += [Event(wall_time=wall_time, step=0, summary=s) for s in summaries]
    out = io.BytesIO()
    records = RecordWriter(out)
    for event in events:
        records.write(event.SerializeToString(deterministic=True))
    return out.getvalue()


def root_of(run_dir: Path, cwd: Path, sweep_dir: Path | None) -> Path:
    """The log directory whose runs share one HPARAMS table: `outputs/` for a run under it (where
    `make tensorboard` looks), else the sweep directory, else the run directory itself."""
    outputs = (cwd / "outputs").resolve()
    if run_dir.resolve().is_relative_to(outputs):
        return outputs
    return sweep_dir.resolve() if sweep_dir else run_dir.resolve()
