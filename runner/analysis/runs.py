"""Run directories read back: the one reader that the summary (runner.analysis.report) and
TensorBoard's HPARAMS table (runner.analysis.hparams) compare runs with, and the one rule for a key
that only follows its group's choice.

A run directory holds Hydra's `.hydra/config.yaml` and `.hydra/hydra.yaml` (from its start) and
`metrics.json` (once it ended, or failed); a run with no metrics.json yet is running.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from runner import GROUPS, flatten

CHOICES = (*GROUPS, "experiment")  # what Hydra's runtime.choices names: the groups and the preset
LEFT_OUT = ("search_space",)  # a tuned sweep's space: in every run of the preset alike


@dataclass
class Run:
    dir: Path
    metrics: dict  # metrics.json; empty while the run runs
    values: dict  # the choices ("model": "bn") and the flattened config ("model.channels": [32, 64], "seed": 0)
    started: float = 0.0  # seconds since the epoch: when Hydra wrote its config
    ended: float | None = None  # when metrics.json was written
    sweep: Path | None = None  # the sweep directory of a sweep's job
    job: int | None = None  # its number in the sweep
    trial: str = field(default="")  # TensorBoard's label of the run (runner.analysis.hparams.name_trials)
    stamp: tuple = ()  # the mtimes of the files it was read from

    @property
    def status(self) -> str:
        return self.metrics.get("status", "running")

    @property
    def final_train_loss(self) -> float | None:
        history = self.metrics.get("history") or []
        return history[-1]["train_loss"] if history else None


_read: dict[Path, tuple[tuple, Run]] = {}  # run directory: (its files' mtimes, the Run read from them)


def read(run_dir: Path) -> Run | None:
    """The run in `run_dir` as written so far; None while Hydra's files are being written. Read again
    only when one of its files changed."""
    files = [run_dir / ".hydra" / "config.yaml", run_dir / ".hydra" / "hydra.yaml", run_dir / "metrics.json"]
    try:
        stamp = tuple(f.stat().st_mtime_ns if f.exists() else None for f in files)
        if run_dir in _read and _read[run_dir][0] == stamp:
            return _read[run_dir][1]
        config = load_yaml(files[0]) if stamp[0] else {}
        hydra = load_yaml(files[1]).get("hydra", {}) if stamp[1] else {}
    except (OSError, yaml.YAMLError):
        return None  # being written: the next read finds it whole
    metrics = read_metrics(files[2])
    choices = hydra.get("runtime", {}).get("choices") or metrics.get("choices") or {}
    values = {group: choices.get(group) for group in CHOICES}
    values.update(flatten({k: v for k, v in config.items() if k not in LEFT_OUT}))
    sweep = run_dir.parent if (run_dir.parent / "multirun.yaml").exists() else None
    started = next((s for s in stamp if s is not None), 0) / 1e9
    run = Run(
        dir=run_dir,
        metrics=metrics,
        values=values,
        started=started,
        ended=stamp[2] / 1e9 if metrics else None,
        sweep=sweep,
        job=hydra.get("job", {}).get("num") if sweep else None,
        stamp=stamp,
    )
    _read[run_dir] = (stamp, run)
    return run


def load_yaml(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=yaml.CSafeLoader) or {}


def read_metrics(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def started_under(root: Path) -> list[Run]:
    """Every run under `root` that Hydra started (one with a `.hydra/config.yaml`), running or ended."""
    found = (read(config.parent.parent) for config in sorted(root.glob("**/.hydra/config.yaml")))
    return [run for run in found if run is not None]


def ended_under(paths: list[Path]) -> list[Run]:
    """Every run that ended (one holding metrics.json) at or below the given paths, once each."""
    found = {}
    for path in paths:
        for metrics_file in sorted(Path(path).rglob("metrics.json")):
            found.setdefault(metrics_file.parent.resolve(), metrics_file.parent)
    return [run for path in found.values() if (run := read(path)) is not None and run.metrics]


def same(value) -> str:
    """A value as the comparisons of runs tell values apart."""
    return json.dumps(value, sort_keys=True, default=str)


def follows_a_choice(key: str, runs: list[Run]) -> bool:
    """Whether `key` (model.channels) has one value among the runs of each choice of its group
    (model=bn): it tells no more than the choice does. A key outside the groups follows none."""
    group = key.split(".", 1)[0]
    if group not in GROUPS or key == group:
        return False
    by_choice: dict[str, set] = {}
    for run in runs:
        if key in run.values:
            by_choice.setdefault(same(run.values.get(group)), set()).add(same(run.values[key]))
    return all(len(v) == 1 for v in by_choice.values())
