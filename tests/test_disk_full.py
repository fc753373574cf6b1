"""A full disk never costs a run: on a real, small tmpfs, a checkpoint, metrics.json, the weights or a
TensorBoard event file that does not fit is one line naming the file and the free space, the partial
file is removed and the last good checkpoint kept; the run exits with WRITE_EXIT, and the same
command, once there is space, resumes and ends bitwise equal to a run never stopped."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import assert_bitwise_equal, outcome, run_cli

from runner import disk
from runner.engine import checkpoint
from runner.engine.log import RunLogger, write_json

SIZE = "600k"
# 2 epochs of 2 steps; a checkpoint of about 135 KB (the weights and their momentum), 4 pages of small files
RUN = ["data=mnist_5k", "data.train_size=256", "trainer.max_epochs=2", "model.channels=[8,16]", "model.hidden=[16]"]


@pytest.fixture
def tmpfs(tmp_path) -> Path:
    """A tmpfs of SIZE mounted at a folder of the test's, unmounted after it (root only)."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mount)],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as e:  # no mount command
        pytest.skip(f"mount -t tmpfs is not available here: {e}")
    if mounted.returncode != 0:
        pytest.skip(f"mount -t tmpfs was refused: {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def fill(mount: Path, leave: int) -> Path:
    """A ballast file that leaves `leave` bytes free on `mount`."""
    ballast = mount / "ballast"
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(0, shutil.disk_usage(mount).free - leave))
    return ballast


def test_each_file_a_run_writes_fails_in_one_line_with_no_partial_file_and_the_old_checkpoint_whole(tmpfs, capfd):
    last = tmpfs / "checkpoints" / "last.pt"
    checkpoint.save(last, {"w": torch.arange(10.0)})
    logger = RunLogger(tmpfs / "tb")
    fill(tmpfs, 4096)
    free = rf"(\d+ bytes|[\d.]+ KB) free on {re.escape(str(tmpfs))}\)$"
    after = r"( after (\d+ bytes|[\d.]+ KB) of it)?"  # what was written of the file before the disk was full
    with pytest.raises(disk.WriteError) as raised:
        checkpoint.save(last, {"w": torch.zeros(100_000)})
    assert re.match(rf"cannot write {re.escape(str(last))} \(No space left on device{after}; {free}", str(raised.value))
    assert torch.equal(checkpoint.load(last)["w"], torch.arange(10.0))  # the last good checkpoint, whole
    with pytest.raises(disk.WriteError, match=rf"^cannot write {re.escape(str(tmpfs))}/metrics\.json \(No space"):
        write_json(tmpfs / "metrics.json", {"history": ["x" * 100] * 1000})
    with pytest.raises(disk.WriteError, match=rf"^cannot write {re.escape(str(tmpfs))}/model\.safetensors \(No space"):
        checkpoint.export_weights(tmpfs / "model.safetensors", torch.nn.Linear(300, 100))
    events = rf"{re.escape(str(tmpfs))}/tb/events\.out\.tfevents\.\S+"
    with pytest.raises(disk.WriteError, match=rf"^cannot write {events} \(No space"):
        for step in range(10_000):  # TensorBoard's writer thread fails; the next call raises
            logger.scalars({"loss/train": 1.0}, step)
    with pytest.raises(disk.WriteError, match="^cannot write .+ \\(No space"):
        logger.close()
    logger.close()  # once more: closed already
    (events,) = (tmpfs / "tb").iterdir()
    assert {p.relative_to(tmpfs) for p in tmpfs.rglob("*") if p.is_file()} == {
        Path("ballast"),
        Path("checkpoints/last.pt"),
        events.relative_to(tmpfs),
    }  # no partial file
    assert "Traceback" not in capfd.readouterr().err  # not the writer thread's either


@pytest.mark.slow
def test_a_run_whose_checkpoint_finds_the_disk_full_stops_in_one_line_and_the_same_command_resumes_it(tmpfs, tmp_path):
    reference = run_cli(*RUN, f"hydra.run.dir={tmp_path / 'reference'}")
    assert reference.returncode == 0, reference.stderr
    size = (tmp_path / "reference" / "checkpoints" / "last.pt").stat().st_size
    run_dir = tmpfs / "run"
    last = run_dir / "checkpoints" / "last.pt"
    ballast = fill(tmpfs, size * 3 // 2 + 48 * 1024)  # the first checkpoint fits, not the second beside it
    command = [*RUN, f"hydra.run.dir={run_dir}"]
    stopped = run_cli(*command)
    assert stopped.returncode == disk.WRITE_EXIT, stopped.stderr
    free = rf"(\d+ bytes|[\d.]+ KB) free on {re.escape(str(tmpfs))}"
    after = r" after (\d+ bytes|[\d.]+ KB) of it"  # the partial file's size, removed since
    assert re.fullmatch(
        rf"error: cannot write {re.escape(str(last))} \(No space left on device{after}; {free}\); "
        rf"the last good checkpoint {re.escape(str(last))} is kept: free space and run the same command with "
        rf"hydra.run.dir={re.escape(str(run_dir))} to resume\n",
        stopped.stderr,
    ), stopped.stderr
    assert [p.name for p in last.parent.iterdir()] == ["last.pt"]  # no .last.pt.tmp
    assert checkpoint.load(last)["epoch"] == 1
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"
    ballast.unlink()  # space freed
    resumed = run_cli(*command)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {last} (epoch 1" in resumed.stdout
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    assert_bitwise_equal(outcome(run_dir), outcome(tmp_path / "reference"))
