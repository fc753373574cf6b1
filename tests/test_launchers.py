"""Hydra's submitit launchers: submitit_local runs sweeps here as the stand-in for a SLURM cluster
(with preemption: a requeued job resumes from its checkpoint), and hydra/launcher=slurm asks sbatch
for the resources of its preset. Where a real cluster answers (scripts/slurm-up), tests/test_slurm.py
does the same through slurmctld, and the stand-in's preemption and DDP tests are skipped."""

import json
import os
import signal
from pathlib import Path

import pytest
from helpers import assert_bitwise_equal, cluster_state, outcome, run_cli, start_cli, wait_for_checkpoint_at_step  # noqa: F401  cluster_state: in the skip condition

STAND_IN = pytest.mark.skipif(  # a string: asked when a test it marks runs (sinfo may take 10 s to answer)
    "cluster_state() is not None",
    reason="a real SLURM cluster answers: tests/test_slurm.py does this through slurmctld",
)
QUICK = ["trainer.max_epochs=1", "data.batch_size=64", "model.channels=[8]", "model.hidden=[]"]
# 3 epochs of 112 steps with a checkpoint after (nearly) every step, so the preemption lands mid-epoch
RESUMABLE = ["trainer.max_epochs=3", "model.channels=[8,16]", "model.hidden=[32]", "data.batch_size=32",
             "trainer.checkpoint_every_minutes=0.0001", "trainer.log_every_n_steps=5"]  # fmt: skip


def submitit_tasks(sweep_dir: Path) -> list[int]:
    """The pids of the processes that run the submitit jobs of this sweep."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in cmdline and any(str(sweep_dir).encode() in part for part in cmdline):
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow
def test_submitit_local_runs_a_sweep_with_its_summary(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_cli("-m", "hydra/launcher=submitit_local", "seed=0,1", *QUICK, f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 0, result.stderr
    for seed in (0, 1):
        assert json.loads((sweep_dir / f"seed={seed}" / "metrics.json").read_text())["status"] == "completed"
    rows = (sweep_dir / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",completed," in row for row in rows[1:])
    assert list(sweep_dir.glob(".submitit/*/*_0_log.out"))  # submitit's job logs


@pytest.mark.slow
@STAND_IN
def test_a_preempted_submitit_job_checkpoints_is_requeued_and_resumes_bitwise_equal(tmp_path):
    sweep_dir = tmp_path / "sweep"  # one job: its directory is the sweep directory
    process = start_cli("-m", "hydra/launcher=submitit_local", *RESUMABLE, f"hydra.sweep.dir={sweep_dir}")
    wait_for_checkpoint_at_step(sweep_dir, 15)
    (task,) = submitit_tasks(sweep_dir)
    os.kill(task, signal.SIGUSR2)  # what SLURM sends before a time limit or a preemption (submitit's --signal)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    (log,) = sweep_dir.glob(".submitit/*/*_0_log.out")
    text = log.read_text()
    assert "this job is preempted" in text and "Requeued job" in text, text
    assert "resuming from" in text and "(epoch 0, batch" in text, text  # mid-epoch 1
    reference = tmp_path / "reference"
    again = run_cli(*RESUMABLE, f"hydra.run.dir={reference}")
    assert again.returncode == 0, again.stderr
    assert_bitwise_equal(outcome(sweep_dir), outcome(reference))


@pytest.mark.slow
@STAND_IN
def test_two_submitit_tasks_train_each_job_with_ddp(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2", "seed=0,1", "model=bn",
        "trainer.sync_bn=true", *QUICK, f"hydra.sweep.dir={sweep_dir}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for seed in (0, 1):
        job = sweep_dir / f"seed={seed}"
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["processes"] == 2
        assert len(list(job.glob("events.out.tfevents.[0-9]*"))) == 1  # one writer of scalars


def test_the_slurm_preset_asks_sbatch_for_its_resources(tmp_path):
    """No SLURM here: a stand-in `srun` (submitit looks for one) and an `sbatch` that keeps the script
    it is given and refuses it. The script is what SLURM would get."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    sbatch = f'#!/bin/sh\ncp "$1" {tmp_path}/sbatch.sh\necho "sbatch: no cluster here" >&2\nexit 1\n'
    (bin_dir / "sbatch").write_text(sbatch)
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "seed=0,1,2", f"hydra.sweep.dir={sweep_dir}",
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )  # fmt: skip
    assert result.returncode != 0 and "no cluster here" in result.stderr
    script = (tmp_path / "sbatch.sh").read_text()
    for option in (
        "--partition=gpu", "--gpus-per-node=1", "--ntasks-per-node=1", "--cpus-per-task=8", "--mem=32GB",
        "--time=240", "--nodes=1", "--array=0-2%3", "--signal=USR2@120",
    ):  # fmt: skip
        assert f"#SBATCH {option}\n" in script, option
    assert "-m submitit.core._submit" in script and f"{sweep_dir}/.submitit" in script
    assert not list(sweep_dir.glob("seed=*"))  # nothing ran
