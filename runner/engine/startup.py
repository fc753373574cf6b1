"""Start-up, and the seconds between a sweep's jobs: phase by phase.

`mark(phase)` ends a phase. A process's first run records the phases from the process's start to
its first training step in its metrics.json (`startup`); benchmarks/startup.py prints their medians
over fresh processes:

    python       the interpreter, Hydra's and ablate's imports, up to `run`'s main()
    composition  Hydra composes the config (once: runner.cli.hydra_shortcuts)
    torch        import torch
    checks       the config's values checked, the run directory held, Hydra's .hydra/ and log set up
    engine       ablate's training modules imported (TensorBoard's writer among them)
    data         the data set read and put on the device
    model        model, optimizer, schedule and batches built
    first step   the TensorBoard writer opened and the first training step, less the second step's
                 own time: what the first step costs beyond its training (kernels picked and made
                 for the model's shapes, memory first allocated)

Each later job of the same process (a sweep under the basic launcher, or a joblib worker's next
job) records instead the phases from the previous job's last training step to its own first step
(`between_jobs`); benchmarks/job_overhead.py prints them. Training is counted on neither side: the
record starts where the previous job's last step ended, and its first step counts what it costs
beyond an ordinary step.

    epoch end    the previous job's last validation and checkpoint
    test         its test set
    records      its weights, metrics.json, summary and TensorBoard's HPARAMS records written
    launch       Hydra sets up the next job (its config, directory, .hydra/ and log)
    provenance   the job's directory held, its provenance written
    data, model, first step   as above

What the phases avoid: a second composition (runner.cli.hydra_shortcuts), torch._dynamo's import
(optim.eager), decoding the data set's files again and summarizing its splits again
(runner.data.cache, runner.data.batches.summarize), compiling ablate's sources (`make` writes
their bytecode).
"""

import os
import time
from pathlib import Path

from runner.engine import lock

PHASES = ("python", "composition", "torch", "checks", "engine", "data", "model", "first step")
BETWEEN_JOBS = ("epoch end", "test", "records", "launch", "provenance", "data", "model", "first step")
RECORDS = {"startup": PHASES, "between_jobs": BETWEEN_JOBS}  # metrics.json's key: its phases

_record: dict[str, float] = {}  # the phases so far of the record being taken
_kind = ["startup"]  # which record: the process's start-up, or the time between two jobs
_last: list[float] = []  # perf_counter() at the end of the last phase
_taken: list[tuple[str, dict[str, float]]] = []  # the record that reached its first step, until a run keeps it
_ordinary: list[float] = []  # the second step's own seconds, once taken off the record's first step


def process_age() -> float:
    """Seconds since this process started (Linux's /proc, to 10 ms); 0 where that cannot be read."""
    stat = lock.process_stat(os.getpid())
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, uptime - stat[1] / os.sysconf("SC_CLK_TCK")) if stat else 0.0


def mark(phase: str) -> None:
    """`phase` ends now: its seconds since the previous phase ended (the first: since the process
    started). A phase is recorded once per record: what repeats after it (a skipped job's checks
    before the next job's) counts towards the next phase."""
    now = time.perf_counter()
    if phase in _record or phase not in RECORDS[_kind[0]]:
        return
    if not _last:
        _last.append(now - process_age())
    _record[phase] = round(now - _last[0], 3)
    _last[0] = now
    if phase == "first step":
        _taken[:] = [(_kind[0], {p: _record[p] for p in RECORDS[_kind[0]] if p in _record})]


def step_taken(seconds: float) -> None:
    """A training step ended now, after `seconds` of its own (train_step's). The record's first step
    ends its last phase; the second step's seconds, an ordinary step's, are taken off that phase."""
    if "first step" not in _record:
        mark("first step")
    elif not _ordinary and _taken:
        _ordinary.append(seconds)
        _record["first step"] = round(max(0.0, _record["first step"] - seconds), 3)
        _taken[0][1]["first step"] = _record["first step"]


def between_jobs(last_step_end: float) -> None:
    """A job's last training step ended at `last_step_end` (perf_counter()): from there, the phases up
    to the next job's first step in this process are that job's `between_jobs` record."""
    _record.clear()
    _ordinary.clear()
    _kind[0] = "between_jobs"
    _last[:] = [last_step_end]


def phases() -> tuple[str, dict[str, float]] | None:
    """The record for this run's metrics.json, once: (its key, seconds per phase in their order), or
    None where this run took no first step of its own."""
    return _taken.pop() if _taken else None
