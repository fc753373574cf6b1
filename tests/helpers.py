"""Test helpers: the `run` command in a subprocess, and (from runner.fixtures) the real config
tree composed with Hydra and small data files in the real formats."""

import os
import subprocess
import sys
from pathlib import Path

from runner.fixtures import CONFIGS, compose_cfg, write_cifar_like, write_idx, write_mnist_like  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m runner *args` (the same program as `run`) in a subprocess, not on a terminal."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
