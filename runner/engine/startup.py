"""Start-up: the seconds a run spends before its first training step, phase by phase.

`mark(phase)` ends a phase; a single run records the phases in metrics.json (`startup`), and
benchmarks/startup.py prints their medians over fresh processes:

    python       the interpreter, Hydra's and ablate's imports, up to `run`'s main()
    composition  Hydra composes the config (once: runner.cli.hydra_shortcuts)
    torch        import torch
    checks       the config's values checked, the run directory held, Hydra's .hydra/ and log set up
    engine       ablate's training modules imported (TensorBoard's writer among them)
    data         the data set read and put on the device
    model        model, optimizer, schedule and batches built
    first step   the TensorBoard writer opened and the first training step

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

_phases: dict[str, float] = {}
_last: list[float] = []  # perf_counter() at the end of the last phase


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
    started). A phase is recorded once per process: a sweep's later jobs leave the record alone."""
    now = time.perf_counter()
    if phase in _phases:
        return
    if not _last:
        _last.append(now - process_age())
    _phases[phase] = round(now - _last[0], 3)
    _last[0] = now


def phases() -> dict[str, float] | None:
    """Seconds per phase up to the first training step, in PHASES' order; None until that step."""
    if "first step" not in _phases:
        return None
    return {phase: _phases[phase] for phase in PHASES if phase in _phases}
