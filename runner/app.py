"""The `run` command: a Hydra app over configs/. torch is imported inside the task, so
`run --help` and `run --cfg job` stay fast."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
EXCLUDE_KEYS = "hydra.job.config.override_dirname.exclude_keys"


@hydra.main(config_path=str(CONFIGS), config_name="config", version_base="1.3")
def task(cfg: DictConfig) -> float | None:
    from runner.job import SetupError, run_job

    try:
        return run_job(cfg)
    except SetupError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def new_dir(path: str) -> str:
    """`path`, or `path-2`, `path-3`, ...: the first that does not exist yet, created now, so two
    sweeps started in the same second never share a directory."""
    candidate, n = Path(path), 1
    while True:
        try:
            candidate.mkdir(parents=True)
            return str(candidate)
        except FileExistsError:
            n += 1
            candidate = Path(f"{path}-{n}")


def name_jobs_by_swept_keys(argv: list[str]) -> list[str]:
    """In a sweep, leave the fixed overrides out of the job directory names, so a job of
    `run -m model=plain,bn seed=0,1 trainer.max_epochs=3` is named `model=bn,seed=1` (and a job of
    `run -m experiment=quick`, whose preset sweeps model and seed, `model=bn,seed=1`)."""
    if not {"-m", "--multirun"} & set(argv) or any(a.startswith(EXCLUDE_KEYS) for a in argv):
        return argv
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    candidates = [a for a in argv[1:] if "=" in a and not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except HydraException:
        return argv  # Hydra reports the bad override itself
    fixed = [o.key_or_group for o in overrides if not o.is_sweep_override() and not o.key_or_group.startswith("hydra")]
    if not fixed:
        return argv
    at = argv.index(candidates[0])  # next to the other overrides: argparse wants them together
    return [*argv[:at], f"{EXCLUDE_KEYS}=[{','.join(fixed)}]", *argv[at:]]


def main() -> None:
    OmegaConf.register_new_resolver("new_dir", new_dir, use_cache=True, replace=True)
    sys.argv = name_jobs_by_swept_keys(sys.argv)
    task()
