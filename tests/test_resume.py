"""Nothing lost: a run stopped by SIGTERM or SIGINT or killed by SIGKILL, mid-epoch, and started again in
its directory ends bitwise equal to a run that was never interrupted (real subprocesses)."""

import json
import signal
import subprocess
import time

import pytest
import torch
from helpers import assert_bitwise_equal, outcome, run_cli, start_cli, wait_for_checkpoint_at_step
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from runner.engine.log import RunLogger

# checkpoint_every_minutes=0.0001: a checkpoint after (nearly) every step, so kills land mid-epoch
RESUMABLE = ["trainer.max_epochs=2", "model.channels=[8,16]", "model.hidden=[32]", "data.batch_size=32",
             "trainer.checkpoint_every_minutes=0.0001", "trainer.log_every_n_steps=5"]  # fmt: skip


def start(run_dir) -> subprocess.Popen:
    return start_cli(*RESUMABLE, f"hydra.run.dir={run_dir}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference")
    result = run_cli(*RESUMABLE, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    return outcome(run_dir)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_epoch_checkpoints_exits_128_plus_it_and_the_same_command_completes_it(
    tmp_path, uninterrupted, signum, code
):
    run_dir = tmp_path / "run"
    process = start(run_dir)
    stopped_near = wait_for_checkpoint_at_step(run_dir, 20)  # epoch 1 has 112 steps
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == code, output
    assert f"to resume, run it again with hydra.run.dir={run_dir}" in output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["epochs"] == 0 and metrics["steps"] >= stopped_near
    again = run_cli(*RESUMABLE, f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stdout + again.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    assert_bitwise_equal(outcome(run_dir), uninterrupted)
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    steps = [e.step for e in events.Scalars("loss/train")]
    assert steps == sorted(set(steps)), "a resumed run logs each step once"


def test_a_resumed_runs_event_file_sorts_after_one_written_in_the_same_second(tmp_path):
    # TensorBoard reads the files in name order: the second, then the host and the process id
    earlier = tmp_path / f"events.out.tfevents.{int(time.time()):010d}.zzz.99999.0"
    earlier.write_bytes(b"")
    logger = RunLogger(tmp_path, purge_step=5)
    try:
        assert sorted(p.name for p in tmp_path.glob("events.out.tfevents.*")) == [earlier.name, logger.path.name]
    finally:
        logger.close()


@pytest.mark.slow
def test_sigkill_at_three_points_then_resume_ends_bitwise_equal(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    for min_step in (15, 100, 150):  # mid epoch 1, near its end, mid epoch 2
        process = start(run_dir)
        wait_for_checkpoint_at_step(run_dir, min_step)
        process.kill()
        process.wait(timeout=60)
        assert process.returncode == -signal.SIGKILL
    again = run_cli(*RESUMABLE, f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stderr
    assert_bitwise_equal(outcome(run_dir), uninterrupted)


def test_a_checkpoint_of_another_config_is_refused_and_left_as_it_is(tmp_path, quick):
    run_dir = tmp_path / "run"
    assert run_cli(*quick, f"hydra.run.dir={run_dir}").returncode == 0
    before = (run_dir / "checkpoints" / "last.pt").read_bytes()
    other = run_cli(*quick, "optimizer.lr=0.01", f"hydra.run.dir={run_dir}")
    assert other.returncode == 2
    assert other.stderr.strip().endswith(
        "holds a checkpoint of another config (optimizer.lr=0.05 there, 0.01 now); "
        "allowed: the same config to resume it, or another hydra.run.dir / hydra.sweep.dir"
    )
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def test_a_checkpoint_from_before_a_config_key_resumes_under_the_value_it_trained_with(tmp_path, uninterrupted):
    """A checkpoint written before model.pool_position, trainer.eval_flip and trainer.graphs existed
    (its config lacks them) resumes bitwise under their defaults, and is refused under another value."""
    run_dir = tmp_path / "run"
    process = start(run_dir)
    wait_for_checkpoint_at_step(run_dir, 20)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    last = run_dir / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    for group, key in (("model", "pool_position"), ("trainer", "eval_flip"), ("trainer", "graphs")):
        del state["config"][group][key]
    torch.save(state, last)
    older = last.read_bytes()

    other = run_cli(*RESUMABLE, "trainer.eval_flip=true", f"hydra.run.dir={run_dir}")
    assert other.returncode == 2
    assert "holds a checkpoint of another config (trainer.eval_flip=false there, true now)" in other.stderr
    assert last.read_bytes() == older

    again = run_cli(*RESUMABLE, f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stdout + again.stderr
    assert_bitwise_equal(outcome(run_dir), uninterrupted)
