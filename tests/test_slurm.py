"""hydra/launcher=slurm against a real SLURM: slurmctld and slurmd on this machine, one node, the
partition `debug`, accounting off (`scripts/slurm-up` brings it up; `.ci/run` does before the tests).
The preset's settings a one-node cluster without GPUs cannot meet are set on the command line, as a
user sets them for their cluster."""

import json
import re
import shutil
import subprocess

import pytest
from helpers import assert_bitwise_equal, outcome, run_cli, start_cli, wait_for_checkpoint_at_step

PARTITION = "debug"
CLUSTER = ["hydra/launcher=slurm", f"hydra.launcher.partition={PARTITION}", "hydra.launcher.gpus_per_node=0",
           "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10"]  # fmt: skip
QUICK = ["trainer.max_epochs=1", "data.train_size=500", "model.channels=[8]", "model.hidden=[]"]
# 2 epochs of 112 steps with a checkpoint after (nearly) every step, one thread as in the SLURM task
RESUMABLE = ["trainer.max_epochs=2", "model.channels=[8,16]", "model.hidden=[32]", "data.batch_size=32",
             "trainer.checkpoint_every_minutes=0.0001", "trainer.log_every_n_steps=5", "trainer.threads=1"]  # fmt: skip


def cluster_state() -> str | None:
    """The partition's node state (idle, mix, ...), or None where no SLURM answers."""
    if shutil.which("sbatch") is None:
        return None
    result = subprocess.run(["sinfo", "-h", "-p", PARTITION, "-o", "%t"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        cluster_state() is None,
        reason=f"no SLURM cluster here (sbatch absent, or sinfo has no partition {PARTITION}): scripts/slurm-up starts one",
    ),
]


def job(job_id: str) -> dict:
    """`scontrol show job` of one job (or array task) as a dict."""
    text = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", text))


def slurm_jobs(sweep_dir) -> list[str]:
    """The SLURM ids of the sweep's jobs (`<array job>_<task>` in an array), from submitit's folders."""
    return sorted(p.parent.name for p in (sweep_dir / ".submitit").glob("*/*_submitted.pkl"))


def test_a_sweep_is_one_job_array_on_the_cluster_and_ends_with_its_summary(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_cli("-m", *CLUSTER, "model=plain,bn", "seed=0,1", *QUICK, f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 0, result.stderr
    tasks = slurm_jobs(sweep_dir)
    array_ids = {task.split("_")[0] for task in tasks}
    assert len(tasks) == 4 and len(array_ids) == 1  # one array of 4 tasks
    for task in tasks:
        record = job(task)
        assert record["JobState"] == "COMPLETED" and record["ArrayJobId"] == next(iter(array_ids)), record
    (script,) = (sweep_dir / ".submitit").glob("*/*_submission.sh")
    assert "#SBATCH --array=0-3%4\n" in script.read_text() and f"#SBATCH --partition={PARTITION}\n" in script.read_text()
    rows = (sweep_dir / "summary.csv").read_text().splitlines()
    assert len(rows) == 5 and all(",completed," in row for row in rows[1:])
    for job_dir in ("model=plain,seed=0", "model=plain,seed=1", "model=bn,seed=0", "model=bn,seed=1"):
        assert json.loads((sweep_dir / job_dir / "metrics.json").read_text())["status"] == "completed"


def test_a_job_requeued_by_scontrol_checkpoints_comes_back_and_ends_bitwise_equal(tmp_path):
    reference = tmp_path / "reference"
    result = run_cli(*RESUMABLE, f"hydra.run.dir={reference}")
    assert result.returncode == 0, result.stderr
    sweep_dir = tmp_path / "sweep"
    process = start_cli("-m", *CLUSTER, *RESUMABLE, f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=job")
    run_dir = sweep_dir / "job"
    wait_for_checkpoint_at_step(run_dir, 20, timeout=180)
    (task,) = slurm_jobs(sweep_dir)  # a sweep of one job: not an array
    subprocess.run(["scontrol", "requeue", task], check=True)  # SLURM signals the job, then queues it again
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    record = job(task)
    assert record["JobState"] == "COMPLETED" and int(record["Restarts"]) == 1, record
    log = "".join(p.read_text() for p in (sweep_dir / ".submitit" / task).glob("*_log.*"))
    assert "resuming from" in log  # the requeued job started again from the checkpoint
    assert_bitwise_equal(outcome(run_dir), outcome(reference))
