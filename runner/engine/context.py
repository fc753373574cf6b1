"""What the engine is told of the run it trains, beside the config: built once by the layer that
starts it (runner.cli.job from Hydra's job, a test or a script by hand), and the engine's only
knowledge of how it was started."""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RunContext:
    run_dir: Path  # where the run writes: metrics.json, TensorBoard's events, checkpoints/
    name: str = "run"  # the run's name in log lines and metrics.json (runner.run_name)
    choices: dict[str, str | None] = field(default_factory=dict)  # each config group's choice
    command: list[str] = field(default_factory=list)  # the overrides that make this run (metrics.json's command)
    sweep_dir: Path | None = None  # the sweep this run is a job of; None for a single run
    job: int = 0  # the job's number in its sweep
    parallel_jobs: int = 1  # how many jobs run at once: they share the CPU cores and the GPUs
    tuning: dict | None = None  # a tuned sweep's job: its phase, trial and tuned values (metrics.json's `tune`)
    prune: Callable[[int, float | None], bool] | None = None  # a tuned trial's pruner, asked after each epoch
    meet_test: bool = True  # False for a tuned sweep's trial: validation only

    @property
    def in_sweep(self) -> bool:
        return self.sweep_dir is not None

    @property
    def checkpoint(self) -> Path:
        """What a run started again resumes from, and where it checkpoints."""
        return self.run_dir / "checkpoints" / "last.pt"
