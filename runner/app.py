"""The `run` command: a Hydra app over configs/. torch is imported inside the task, so
`run --help` and `run --cfg job` stay fast."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@hydra.main(config_path=str(CONFIGS), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from runner.job import SetupError, run_job

    try:
        return run_job(cfg)
    except SetupError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
