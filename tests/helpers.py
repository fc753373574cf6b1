"""Test helpers: the `run` command in this process (tests/in_process.py) or in a subprocess, and (from
fixtures) the real config tree composed with Hydra and small data files in the real formats."""

import functools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from fixtures import CONFIGS, compose_cfg, write_cifar_like, write_idx, write_mnist_like  # noqa: F401
from in_process import python_here, run_here  # noqa: F401  python_here: for the tests
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams import plugin_data_pb2

ROOT = Path(__file__).resolve().parent.parent
SLURM_PARTITION = "debug"  # the partition of scripts/slurm-up


def cli_env(env: dict | None = None) -> dict:
    """The environment of a `run` subprocess: this one's, without HYDRA_FULL_ERROR, plus `env`."""
    return {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, **(env or {})}


def command(args, nproc: int) -> list[str]:
    """`python -m runner *args` (the same program as `run`), or with nproc > 0 the same under
    `torchrun --standalone --nproc_per_node=nproc` (its module form: the venv's torchrun)."""
    torchrun = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc else []
    return [sys.executable, *torchrun, "-m", "runner", *args]


def run_cli(
    *args: str,
    cwd: Path | None = None,
    env: dict | None = None,
    timeout: int = 600,
    nproc: int = 0,
    process: bool = False,
) -> subprocess.CompletedProcess:
    """`run *args`, not on a terminal: in this process (`run_here`), or with `process=True` (or under
    torchrun with nproc processes if nproc > 0) in a subprocess, where the process itself matters."""
    if not (process or nproc):
        return run_here(*args, cwd=cwd, env=env)
    return subprocess.run(
        command(args, nproc),
        cwd=cwd or ROOT,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_cli(*args: str, nproc: int = 0, cwd: Path | None = None) -> subprocess.Popen:
    """`run *args` started in the background, its output in one text pipe, to signal it."""
    return subprocess.Popen(
        command(args, nproc), cwd=cwd or ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def wait_for_checkpoint_at_step(run_dir, min_step: int, timeout: float = 120) -> int:
    """Wait until checkpoints/last.pt holds step >= min_step; returns that step."""
    path = run_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            step = torch.load(path, weights_only=True)["step"]
            if step >= min_step:
                return step
        except (FileNotFoundError, RuntimeError, EOFError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint at step >= {min_step} within {timeout} s")


def outcome(run_dir) -> tuple[list, float, dict]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = [{k: v for k, v in e.items() if k != "seconds"} for e in metrics["history"]]
    weights = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    return history, metrics["test_acc"], weights


def assert_bitwise_equal(a, b) -> None:
    assert a[0] == b[0] and a[1] == b[1]  # every epoch's losses and accuracies, and test accuracy
    assert a[2].keys() == b[2].keys()
    for name in a[2]:
        assert torch.equal(a[2][name], b[2][name]), name


def session_hparams(events) -> dict:
    """The HPARAMS row a run's TensorBoard events record (EventAccumulator, reloaded), by column
    name as TensorBoard shows it (the experiment summary's display names)."""
    tags = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(tags[hparams_metadata.EXPERIMENT_TAG]).experiment
    shown = {info.name: info.display_name for info in experiment.hparam_infos}
    start = plugin_data_pb2.HParamsPluginData.FromString(
        tags[hparams_metadata.SESSION_START_INFO_TAG]
    ).session_start_info
    return {shown[k]: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}


@functools.cache
def cluster_state() -> str | None:
    """The node state (idle, mix, ...) of the SLURM partition scripts/slurm-up makes, or None where no
    SLURM answers (asked once per process: sinfo waits about 10 s for a controller that does not answer)."""
    if shutil.which("sbatch") is None:
        return None
    result = subprocess.run(
        ["sinfo", "-h", "-p", SLURM_PARTITION, "-o", "%t"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None
