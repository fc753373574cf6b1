"""hydra/launcher=slurm against a real SLURM: slurmctld and slurmd on this machine, one node, the
partition `debug`, accounting off (`scripts/slurm-up` brings it up; `.ci/run` does before the tests).
The preset's settings a one-node cluster without GPUs cannot meet are set on the command line, as a
user sets them for their cluster."""

import json
import re
import subprocess
import time

import helpers
import pytest
from helpers import SLURM_PARTITION as PARTITION
from helpers import assert_bitwise_equal, cluster_state, outcome, start_cli, wait_for_checkpoint_at_step  # noqa: F401  cluster_state: in the skip condition
from test_distributed import DDP, EPOCH_GAP, epoch_gap, relative, train_losses

CLUSTER = ["hydra/launcher=slurm", f"hydra.launcher.partition={PARTITION}", "hydra.launcher.gpus_per_node=0",
           "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10"]  # fmt: skip
QUICK = ["trainer.max_epochs=1", "data.train_size=500", "model.channels=[8]", "model.hidden=[]"]
# 2 epochs of 112 steps with a checkpoint after (nearly) every step, one thread as in the SLURM task
RESUMABLE = ["trainer.max_epochs=2", "model.channels=[8,16]", "model.hidden=[32]", "data.batch_size=32",
             "trainer.checkpoint_every_minutes=0.0001", "trainer.log_every_n_steps=5", "trainer.threads=1"]  # fmt: skip


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(  # a string: asked when a test runs, not when a run that deselects them collects them
        "cluster_state() is None",
        reason=f"no SLURM cluster here (sbatch absent, or sinfo has no partition {PARTITION}): scripts/slurm-up starts one",
    ),
]


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """`run` in a process of its own throughout this file, as on a cluster's login node: submitit
    submits from it and waits for its jobs, and a test times this machine's training to size a job."""
    return helpers.run_cli(*args, process=True, **kwargs)


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
    assert (
        "#SBATCH --array=0-3%4\n" in script.read_text() and f"#SBATCH --partition={PARTITION}\n" in script.read_text()
    )
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


def test_a_job_signalled_before_its_time_limit_checkpoints_comes_back_and_ends_bitwise_equal(tmp_path):
    """`--time=2` with USR2 30 s before it: SLURM signals 60-90 s after the job starts (it sends the
    signal up to 30 s early). The job trains about 180 s, as many epochs as this machine trains in
    that time (measured first), so it is signalled, requeued and resumed at least once even if the
    machine runs it 1.8x faster than it ran the probe (its speed drifts that much); each stretch
    trains 45 s or more, so 8 requeues, the most allowed, cover a machine 2x slower."""
    probe = run_cli(*RESUMABLE, "trainer.max_epochs=10", f"hydra.run.dir={tmp_path / 'probe'}")
    assert probe.returncode == 0, probe.stderr
    per_epoch = json.loads((tmp_path / "probe" / "metrics.json").read_text())["train_seconds"] / 10
    long = [*RESUMABLE, f"trainer.max_epochs={max(60, round(180 / per_epoch))}"]
    reference = start_cli(*long, f"hydra.run.dir={tmp_path / 'reference'}")  # meanwhile, on the other core
    sweep_dir = tmp_path / "sweep"
    limits = ["hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=30", "hydra.launcher.max_num_timeout=8"]
    result = run_cli("-m", *CLUSTER, *limits, *long, f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=job")
    assert result.returncode == 0, result.stderr
    assert reference.wait(timeout=600) == 0
    (task,) = slurm_jobs(sweep_dir)
    record = job(task)
    assert record["JobState"] == "COMPLETED" and 1 <= int(record["Restarts"]) <= 8, record
    log = "".join(p.read_text() for p in (sweep_dir / ".submitit" / task).glob("*_log.*"))
    assert "this job is timed-out" in log and "resuming from" in log  # submitit's word for the signal, then ablate's
    assert_bitwise_equal(outcome(sweep_dir / "job"), outcome(tmp_path / "reference"))


def test_two_slurm_tasks_train_one_job_with_ddp_as_one_process_with_the_same_global_batch(tmp_path):
    """The tolerances of tests/test_distributed.py (DDP under torchrun against one process)."""
    single = run_cli(*DDP, "trainer.threads=1", f"hydra.run.dir={tmp_path / 'single'}")
    assert single.returncode == 0, single.stderr
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "-m",
        *CLUSTER,
        "hydra.launcher.tasks_per_node=2",
        *DDP,
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.sweep.subdir=job",
    )
    assert result.returncode == 0, result.stderr
    (task,) = slurm_jobs(sweep_dir)
    assert job(task)["NumTasks"] == "2"
    run_dir = sweep_dir / "job"
    ddp, alone = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, tmp_path / "single"))
    assert ddp["status"] == "completed" and ddp["processes"] == 2 and ddp["steps"] == alone["steps"] == 112
    assert len(list(run_dir.glob("events.out.tfevents.[0-9]*"))) == 1  # rank 0 alone writes
    assert relative(train_losses(run_dir)[0], train_losses(tmp_path / "single")[0]) < 2e-5
    assert epoch_gap(ddp, alone) < EPOCH_GAP and abs(ddp["test_acc"] - alone["test_acc"]) <= 0.01


CASES = {  # experiment presets, one per way a job of the sweep below ends; the longest first
    "too_long": "trainer:\n  max_epochs: 200\n",  # signalled at its time limit, and no requeue is left
    "ok": "trainer:\n  max_epochs: 1\n",
    "missing_data": "defaults:\n  - override /data: mnist\ndata:\n  root: /nonexistent/mnist\n  download: false\n",
    "killed": "trainer:\n  max_epochs: 200\n",  # scancel --signal=KILL while it trains
}


def test_failed_lost_and_timed_out_jobs_fail_in_one_line_each_and_the_others_summary_is_written(tmp_path):
    configs = tmp_path / "configs" / "experiment"
    configs.mkdir(parents=True)
    for name, text in CASES.items():
        (configs / f"{name}.yaml").write_text(f"# @package _global_\n{text}")
    sweep_dir = tmp_path / "sweep"
    limits = ["hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=30", "hydra.launcher.max_num_timeout=0"]
    started = time.monotonic()
    process = start_cli(
        "-m", "--config-dir", str(tmp_path / "configs"), *CLUSTER, *limits, f"experiment={','.join(CASES)}",
        *RESUMABLE[1:], f"hydra.sweep.dir={sweep_dir}",
    )  # fmt: skip
    wait_for_checkpoint_at_step(sweep_dir / "experiment=killed", 5, timeout=300)
    (killed,) = [task for task in slurm_jobs(sweep_dir) if task.endswith("_3")]
    subprocess.run(["scancel", "--signal=KILL", killed], check=True)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 1, output
    errors = [line for line in output.splitlines() if line.startswith("error: job #")]
    assert len(errors) == 3, output
    for error, (num, name, why) in zip(errors, [
        (0, "too_long", "no requeue left (hydra.launcher.max_num_timeout=0)"),
        (2, "missing_data", "tried /nonexistent/mnist/MNIST/raw (missing)"), (3, "killed", "without a result"),
    ], strict=True):  # fmt: skip
        assert error.startswith(f"error: job #{num} (experiment={name}), SLURM job ") and why in error, error
        assert re.search(r"; log: \S+/\.submitit/\S+_log\.err$", error), error
    rows = {
        row.split(",")[0].rsplit("/", 1)[1]: row for row in (sweep_dir / "summary.csv").read_text().splitlines()[1:]
    }
    assert ",completed," in rows["experiment=ok"]
    for name in ("missing_data", "too_long", "killed"):
        assert ",failed," in rows[f"experiment={name}"], rows
    assert sorted(p.name for p in (sweep_dir / "failed").iterdir()) == ["0.txt", "2.txt", "3.txt"]
    print(f"sweep of 4 jobs with 3 failures ended in {time.monotonic() - started:.0f} s")


def test_an_ablation_path_on_the_cluster_is_one_job_array_per_step_and_ends_with_its_tables(tmp_path):
    sweep_dir = tmp_path / "study"
    result = run_cli(
        "-m", *CLUSTER, "hydra/sweeper=ablation", "hydra.sweeper.design=path", "hydra.sweeper.seeds=2",
        "+ablation.bn={off:{model:plain},on:{model:bn}}", *QUICK, "data.val_fraction=0.2", f"hydra.sweep.dir={sweep_dir}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    tasks = slurm_jobs(sweep_dir)
    arrays = {task.split("_")[0] for task in tasks}
    assert len(tasks) == 2 + 2 and len(arrays) == 2, tasks  # the baseline's seeds, then the full recipe's
    assert all(job(task)["JobState"] == "COMPLETED" for task in tasks)
    study = json.loads((sweep_dir / "ablation.json").read_text())
    assert [step["on"] for step in study["path"]] == ["bn"]
    with open(sweep_dir / "ablation.csv") as f:
        rows = f.read().splitlines()
    assert rows[0].startswith("component,design,effect") and len(rows) == 2 and rows[1].startswith("bn,path,")
