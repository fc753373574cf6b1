"""Nothing lost in a sweep: a sweep stopped by SIGTERM in its second job, run again with the same
command and its hydra.sweep.dir, skips the job that completed, resumes the interrupted one from
its checkpoint (ending equal to a run never interrupted) and runs the rest (real subprocesses)."""

import csv
import json
import signal
import subprocess

import pytest
import torch
from helpers import assert_bitwise_equal, outcome, run_cli, start_cli, wait_for_checkpoint_at_step

# 50 steps an epoch, a checkpoint after (nearly) every step, so the signal lands mid-job
COMMON = ["trainer.max_epochs=2", "model.channels=[8,16]", "model.hidden=[32]", "data.batch_size=32",
          "data.train_size=1600", "trainer.checkpoint_every_minutes=0.0001", "trainer.log_every_n_steps=5"]  # fmt: skip
SWEEP = ["-m", *COMMON, "seed=0,1,2"]
JOBS = ("seed=0", "seed=1", "seed=2")


def start_sweep(sweep_dir) -> subprocess.Popen:
    return start_cli(*SWEEP, f"hydra.sweep.dir={sweep_dir}")


def snapshot(run_dir) -> dict:
    """Bytes and modification times of what a finished run wrote (not Hydra's .hydra/ or run.log)."""
    files = [run_dir / name for name in ("metrics.json", "model.safetensors", "checkpoints/last.pt", "provenance.json")]
    files += sorted(
        run_dir.glob("events.out.tfevents.[0-9]*")
    )  # the scalars (HPARAMS records follow every run: not these)
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


@pytest.mark.slow
def test_a_sweep_stopped_in_its_second_job_resumes_with_the_same_command(tmp_path):
    sweep = tmp_path / "sweep"
    process = start_sweep(sweep)
    wait_for_checkpoint_at_step(sweep / "seed=1", 10)  # the second job, 10 of its 100 steps done
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, output
    assert f"to resume the sweep, run the same command with hydra.sweep.dir={sweep}" in output
    status = {job: json.loads((sweep / job / "metrics.json").read_text())["status"] for job in JOBS[:2]}
    assert status == {"seed=0": "completed", "seed=1": "interrupted"}
    assert not (sweep / "seed=2").exists()  # the sweep stopped: no job started after the signal
    assert not (sweep / "summary.csv").exists()  # written when every job has run
    first = snapshot(sweep / "seed=0")

    again = run_cli(*SWEEP, f"hydra.sweep.dir={sweep}")
    assert again.returncode == 0, again.stderr
    log = again.stdout + again.stderr
    assert f"completed already in {sweep / 'seed=0'}; skipped" in log
    assert f"resuming from {sweep / 'seed=1' / 'checkpoints' / 'last.pt'}" in log
    assert snapshot(sweep / "seed=0") == first  # the completed job was not touched
    record = json.loads((sweep / "seed=1" / "provenance.json").read_text())
    (start,) = record["resumed"]  # the first start's record, and this one added
    assert start["command"] == record["command"] and start["differences"] == []

    reference = tmp_path / "reference"  # the second job alone, never interrupted
    alone = run_cli(*COMMON, "seed=1", f"hydra.run.dir={reference}")
    assert alone.returncode == 0, alone.stderr
    assert_bitwise_equal(outcome(sweep / "seed=1"), outcome(reference))
    for job in JOBS:
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["epochs"] == 2 and metrics["steps"] == 100, job
        assert torch.load(sweep / job / "checkpoints" / "last.pt", weights_only=True)["step"] == 100

    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(row["seed"] for row in rows) == ["0", "1", "2"]
    assert {row["status"] for row in rows} == {"completed"}
    assert "3 runs, 1 variants" in again.stdout
