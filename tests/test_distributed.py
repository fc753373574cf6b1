"""One run over several processes: DDP under torchrun with 2 CPU processes on gloo, against one process
with the same global batch; rank 0 alone writes one run directory; SIGTERM and resume under DDP."""

import json
import os
import signal
import subprocess

import pytest
import torch
from helpers import (
    ROOT,
    assert_bitwise_equal,
    cli_env,
    command,
    compose_cfg,
    outcome,
    run_cli,
    start_cli,
    wait_for_checkpoint_at_step,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from runner.config import schema
from runner.data.batches import Batches
from runner.data.splits import Split
from runner.engine import device
from runner.engine.distributed import World

# model=bn with its BatchNorm synchronized: 2 epochs of 56 steps of 64 images (32 per process)
DDP = [
    "model=bn", "model.channels=[8,16]", "model.hidden=[32]", "data.batch_size=64", "trainer.max_epochs=2",
    "trainer.sync_bn=true", "trainer.log_every_n_steps=1", "trainer.checkpoint_every_minutes=0.0001",
    "trainer.precision=fp32",  # the tolerances below are fp32's; bf16 autocast (auto on CPUs with native bf16) rounds more
]  # fmt: skip


def split(n: int = 40) -> Split:
    generator = torch.Generator().manual_seed(0)
    return Split(torch.randint(0, 256, (n, 1, 6, 6), dtype=torch.uint8, generator=generator), torch.arange(n) % 10)


def test_each_rank_takes_its_part_of_every_training_batch_with_the_same_augmentation():
    data = split()
    kwargs = {
        "batch_size": 8,
        "mean": None,
        "std": None,
        "shuffle": True,
        "augment": True,
        "drop_last": True,
        "seed": 3,
        "pad": 2,
    }
    whole = Batches(data, **kwargs)
    parts = [Batches(data, **kwargs, rank=rank, ranks=2) for rank in (0, 1)]
    for start in (0, 3):  # a resumed epoch too
        batches = list(zip(whole.epoch(2, start), parts[0].epoch(2, start), parts[1].epoch(2, start), strict=True))
        assert len(batches) == len(whole) - start == 5 - start
        for (x, y), (x0, y0), (x1, y1) in batches:
            assert len(y0) == len(y1) == 4
            assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


def test_evaluation_batches_are_dealt_out_to_the_ranks():
    data = split(45)
    whole = [y for _, y in Batches(data, 10, None, None).epoch()]
    shares = [Batches(data, 10, None, None, rank=rank, ranks=2, split_batches=False) for rank in (0, 1)]
    dealt = [[y for _, y in share.epoch()] for share in shares]
    assert [len(d) for d in dealt] == [3, 2]
    assert torch.equal(torch.cat(dealt[0] + dealt[1]).sort().values, torch.cat(whole).sort().values)


def test_a_batch_that_does_not_split_evenly_among_the_processes_is_refused(monkeypatch):
    """A row of test_validation's table but for WORLD_SIZE, which torchrun sets for each process."""
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(schema.ConfigError) as error:
        schema.validate(compose_cfg("data.batch_size=64"))
    assert str(error.value) == (
        "data.batch_size=64 is not allowed with 3 processes (WORLD_SIZE=3); "
        "allowed: a multiple of 3, so that each process takes an equal part of every batch"
    )
    schema.validate(compose_cfg("data.batch_size=63"))


def test_processes_on_one_machine_share_its_cores_and_slurm_tasks_keep_their_own(monkeypatch):
    trainer = compose_cfg().trainer
    cores = len(os.sched_getaffinity(0))
    torchrun = World(rank=1, size=2, local_rank=1, local_size=2, core_sharers=2)
    slurm_tasks = World(rank=1, size=2, local_rank=1, local_size=2, core_sharers=1)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert device.pick(trainer, 1, torchrun).threads == max(1, cores // 2)
    assert device.pick(trainer, 1, slurm_tasks).threads == cores
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")  # what the task was given, where SLURM does not bind it to cores
    assert device.pick(trainer, 1, slurm_tasks).threads == 1


def train_losses(run_dir) -> list[float]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [e.value for e in events.Scalars("loss/train")]


def relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process, and 2 processes under torchrun started in an empty folder (default run directory)."""
    base = tmp_path_factory.mktemp("ddp")
    single = run_cli(*DDP, f"hydra.run.dir={base / 'single'}")
    assert single.returncode == 0, single.stderr
    (base / "cwd").mkdir()
    ddp = run_cli(*DDP, cwd=base / "cwd", nproc=2)
    assert ddp.returncode == 0, ddp.stderr
    return base, ddp


@pytest.mark.slow
def test_two_processes_train_one_run_that_rank_0_alone_writes(runs):
    base, ddp = runs
    (run_dir,) = (base / "cwd" / "outputs" / "runs").iterdir()  # one directory, whatever second each rank started in
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["processes"] == 2 and metrics["steps"] == 112
    assert (
        len(list(run_dir.glob("events.out.tfevents.[0-9]*"))) == 1
    )  # one writer of scalars (the HPARAMS record: .hparams)
    assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / "model.safetensors").exists()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.pt"]
    output = ddp.stdout + ddp.stderr
    assert output.count("epoch 2/2") == 1 and output.count("test accuracy") == 1  # rank 0 speaks for the run
    assert "2 processes (cpu)" in output


EPOCH_GAP = 0.08  # what separates a synchronized run from one process (below) and an unsynchronized one (above)


def epoch_gap(a: dict, b: dict) -> float:
    """The largest relative difference between two runs' per-epoch train and val losses."""
    pairs = zip(a["history"], b["history"], strict=True)
    return max(relative(x[key], y[key]) for x, y in pairs for key in ("train_loss", "val_loss"))


@pytest.mark.slow
def test_ddp_with_sync_bn_matches_one_process_with_the_same_global_batch(runs):
    """Tolerances, from seeds 0-2 of this config. Step 1 is the same computation (each process
    normalizes with the global batch's statistics, DDP averages the halves' gradients), so its loss
    agrees to float32 rounding (at most 1.9e-6 apart). Rounding differences then grow as training
    goes on: per-epoch losses 0.7% to 6.2% apart, test accuracy at most 0.002. Without sync_bn the
    epochs end 10.8% to 16.1% away. Bounds: 2e-5 for step 1, 8% for the epochs, one point of test
    accuracy."""
    base, _ = runs
    (ddp_dir,) = (base / "cwd" / "outputs" / "runs").iterdir()
    single, ddp = (json.loads((d / "metrics.json").read_text()) for d in (base / "single", ddp_dir))
    assert relative(train_losses(ddp_dir)[0], train_losses(base / "single")[0]) < 2e-5
    assert epoch_gap(ddp, single) < EPOCH_GAP
    assert abs(ddp["test_acc"] - single["test_acc"]) <= 0.01


@pytest.mark.slow
def test_without_sync_bn_each_process_normalizes_its_own_part(runs, tmp_path):
    """Each process's BatchNorm sees 32 images, not 64: the epochs end 10.8-16.1% away from one
    process's (seeds 0-2), beyond the 8% that bounds the synchronized run."""
    base, _ = runs
    ddp = run_cli(*DDP, "trainer.sync_bn=false", f"hydra.run.dir={tmp_path / 'run'}", nproc=2)
    assert ddp.returncode == 0, ddp.stderr
    single, unsynced = (json.loads((d / "metrics.json").read_text()) for d in (base / "single", tmp_path / "run"))
    assert epoch_gap(unsynced, single) > EPOCH_GAP


@pytest.mark.slow
def test_sigterm_to_torchrun_checkpoints_and_the_same_command_resumes_bitwise_equal(runs, tmp_path):
    base, _ = runs
    (uninterrupted,) = (base / "cwd" / "outputs" / "runs").iterdir()
    run_dir = tmp_path / "run"
    process = start_cli(*DDP, f"hydra.run.dir={run_dir}", nproc=2)
    wait_for_checkpoint_at_step(run_dir, 20)
    process.send_signal(signal.SIGTERM)  # torchrun passes it on to both processes
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0, output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and 20 <= metrics["steps"] < 112, output
    assert output.count("stopped by signal 15") == 1, output
    again = run_cli(*DDP, f"hydra.run.dir={run_dir}", nproc=2)
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stdout + again.stderr
    assert_bitwise_equal(outcome(run_dir), outcome(uninterrupted))


@pytest.mark.slow
def test_ctrl_c_under_torchrun_stops_every_process_at_one_step_with_a_checkpoint(tmp_path):
    """Ctrl-C reaches every process of the terminal's group, and torchrun passes it on once more."""
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        command([*DDP, f"hydra.run.dir={run_dir}"], nproc=2), cwd=ROOT, env=cli_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    wait_for_checkpoint_at_step(run_dir, 20)
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and 20 <= metrics["steps"] < 112, output
    assert output.count("stopped by signal 2") == 1 and "KeyboardInterrupt" not in output, output
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == metrics["steps"]


@pytest.mark.slow
def test_a_sweep_under_torchrun_has_one_sweep_directory_and_one_summary(tmp_path):
    quick = ["trainer.max_epochs=1", "data.batch_size=64", "model.channels=[8]", "model.hidden=[]"]
    result = run_cli("-m", "seed=0,1", *quick, cwd=tmp_path, nproc=2)
    assert result.returncode == 0, result.stderr
    (sweep_dir,) = (tmp_path / "outputs" / "sweeps").iterdir()
    assert sorted(p.name for p in sweep_dir.glob("seed=*")) == ["seed=0", "seed=1"]
    rows = (sweep_dir / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",completed," in row for row in rows[1:])


@pytest.mark.slow
def test_a_run_directory_each_rank_names_differently_is_refused(tmp_path):
    result = run_cli("trainer.max_epochs=1", f"hydra.run.dir={tmp_path}/run_${{now:%H%M%S%f}}", nproc=2)
    assert result.returncode != 0
    assert "is not allowed on rank 1: rank 0 has" in result.stderr
    assert "${started:...} in place of ${now:...}" in result.stderr
    assert not list(tmp_path.glob("run_*/metrics.json"))


@pytest.mark.slow
def test_a_module_frozen_under_torchrun_stops_training_and_the_rest_trains_on(tmp_path):
    """DDP reduces the gradients of the parameters that required one when it was made: after
    trainer.freeze stops a module, the run wraps the model again (without it, the next step raises:
    DDP waits for gradients that never come)."""
    run_dir = tmp_path / "run"
    result = run_cli(*DDP, "trainer.freeze={features.0:1}", f"hydra.run.dir={run_dir}", nproc=2)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["processes"] == 2
    assert metrics["frozen"] == {"features.0": 56} and metrics["steps"] == 112
