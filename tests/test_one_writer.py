"""One writer per run directory (runner.engine.lock): a second `run` in a held directory is refused
in one line and touches nothing there, a sweep reports its busy job and runs the others, a stale
holder (a dead process, a lost host, the same SLURM job) is taken over, by one taker alone when
several race for it. Real processes and real files throughout."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, run_cli, start_cli

from runner.engine import failures, lock

HOST = socket.gethostname()
ELSEWHERE = "node-elsewhere-17"  # a host name no machine of the test has
ONE_LINE_END = f"; allowed: {lock.ALLOWED}"

# A process that says it is ready, takes a run directory when the file `go` appears, says how it
# went, and holds the directory until its stdin closes; lock.HEARTBEAT_S from the third argument.
TAKER = """
import sys, time
from pathlib import Path
from runner.engine import lock
run_dir, go = Path(sys.argv[1]), Path(sys.argv[2])
if len(sys.argv) > 3:
    lock.HEARTBEAT_S = float(sys.argv[3])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
try:
    lock.acquire(run_dir)
    print("won", flush=True)
except lock.Busy as e:
    print(f"busy: {e}", flush=True)
sys.stdin.read()
"""


def start_takers(
    n: int, run_dir: Path, go: Path, env: dict | None = None, heartbeat_s: float | None = None
) -> list[subprocess.Popen]:
    """`n` TAKERs, once they are ready."""
    args = [str(run_dir), str(go)] + ([str(heartbeat_s)] if heartbeat_s else [])
    takers = [
        subprocess.Popen(
            [sys.executable, "-c", TAKER, *args],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    for taker in takers:
        assert taker.stdout.readline() == "ready\n"
    return takers


def start_taker(run_dir: Path, go: Path, env: dict | None = None, heartbeat_s: float | None = None) -> subprocess.Popen:
    return start_takers(1, run_dir, go, env, heartbeat_s)[0]


def end_takers(takers: list[subprocess.Popen]) -> None:
    for taker in takers:
        taker.stdin.close()
    for taker in takers:
        taker.wait(timeout=30)


def write_holder(
    run_dir: Path, host: str, pid: int, start: int | None, age_s: float = 0, slurm_job: str | None = None
) -> Path:
    """A holder file as another process would have written it, its heartbeat `age_s` seconds old."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / lock.HOLDER_FILE
    namespace = lock.pid_namespace() if host == HOST else None
    claim = lock.Holder(
        host=host, pid=pid, start=start, since=time.time() - age_s, slurm_job=slurm_job, pid_namespace=namespace
    )
    path.write_text(claim.to_json())
    beat = time.time() - age_s
    os.utime(path, (beat, beat))
    return path


def dead_pid() -> int:
    """The pid of a process that has ended (and was reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture
def sleeper():
    """A live process of this host and its start time."""
    process = subprocess.Popen(["sleep", "600"])
    yield process.pid, lock.process_stat(process.pid)[1]
    process.kill()
    process.wait()


def wait_for(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "waited in vain"
        time.sleep(0.02)


def holder_pid(run_dir: Path) -> int:
    return json.loads((run_dir / lock.HOLDER_FILE).read_text())["pid"]


def snapshot(run_dir: Path) -> dict:
    """Every file under `run_dir`: its bytes and mtime."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run_dir.rglob("*")) if p.is_file()}


def busy_line(run_dir, pid: int, host: str = HOST) -> str:
    """The start of the refusal of a run in `run_dir` held by `pid` on `host`."""
    return f"error: hydra.run.dir={run_dir} is in use by pid {pid} on host {host} (since "


# --- two runs in one directory -----------------------------------------------------------------------


def test_two_runs_started_together_in_one_directory_one_is_refused_the_other_completes(tmp_path, quick):
    run_dir = tmp_path / "D"
    args = [*quick, "trainer.max_epochs=10", f"hydra.run.dir={run_dir}"]  # the second starts while the first trains
    first = start_cli(*args)
    time.sleep(0.5)
    second = start_cli(*args)
    outputs = {}
    for process in (first, second):
        outputs[process.pid] = process.communicate(timeout=300)[0]
    codes = {process.pid: process.returncode for process in (first, second)}
    assert sorted(codes.values()) == [0, 2], outputs
    winner = next(pid for pid, code in codes.items() if code == 0)
    loser = next(pid for pid, code in codes.items() if code == 2)
    refusal = outputs[loser].strip().splitlines()
    assert len(refusal) == 1, outputs[loser]
    assert refusal[0].startswith(busy_line(run_dir, winner)) and refusal[0].endswith(ONE_LINE_END)
    assert len(list(run_dir.glob("events.out.tfevents.[0-9]*"))) == 1
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    assert not (run_dir / lock.HOLDER_FILE).exists()  # released at the end


def test_a_run_refused_by_a_holder_touches_no_file_of_its_directory(tmp_path, quick):
    run_dir = tmp_path / "D"
    args = [*quick, f"hydra.run.dir={run_dir}"]
    first = start_cli(*args)
    wait_for(lambda: list(run_dir.glob("events.out.tfevents.[0-9]*")))  # it has started to write
    first.send_signal(signal.SIGSTOP)  # it writes nothing meanwhile, and holds the directory all along
    try:
        before = snapshot(run_dir)
        second = run_cli(*args)
        assert second.returncode == 2, second.stdout + second.stderr
        assert second.stderr.startswith(busy_line(run_dir, first.pid)) and second.stderr.count("\n") == 1
        assert snapshot(run_dir) == before
    finally:
        first.send_signal(signal.SIGCONT)
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 0, output
    assert len(list(run_dir.glob("events.out.tfevents.[0-9]*"))) == 1
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_a_sweep_reports_the_job_whose_directory_is_held_runs_the_others_and_resumed_runs_it(tmp_path, quick, sleeper):
    sweep_dir = tmp_path / "S"
    pid, start = sleeper
    held = write_holder(sweep_dir / "seed=1", HOST, pid, start)
    held_bytes = held.read_bytes()
    sweep = ["-m", "seed=0,1,2", *quick, f"hydra.sweep.dir={sweep_dir}"]
    result = run_cli(*sweep)
    assert result.returncode == failures.FAILED_EXIT, result.stderr
    line = f"job #1 (seed=1): {sweep_dir / 'seed=1'} is in use by pid {pid} on host {HOST} (since "
    assert f"error: {line}" in result.stderr
    assert failures.read(sweep_dir) == [
        next(s for s in result.stderr.splitlines() if s.startswith(f"error: {line}"))[7:]
    ]
    for seed in (0, 2):
        assert json.loads((sweep_dir / f"seed={seed}" / "metrics.json").read_text())["status"] == "completed"
    busy = sweep_dir / "seed=1"
    assert held.read_bytes() == held_bytes
    assert not (busy / "metrics.json").exists() and not list(busy.glob("events.out.tfevents.[0-9]*"))
    assert not (busy / "checkpoints").exists()

    os.kill(pid, signal.SIGKILL)  # the holder ends: the same sweep again takes its directory over
    again = run_cli(*sweep)
    assert again.returncode == 0, again.stderr
    assert json.loads((busy / "metrics.json").read_text())["status"] == "completed"
    assert failures.read(sweep_dir) == []
    assert not list(sweep_dir.rglob(lock.HOLDER_FILE))


# --- when a holder is stale ---------------------------------------------------------------------------


def test_a_holder_whose_process_ended_on_this_host_is_taken_over(tmp_path):
    run_dir = tmp_path / "D"
    write_holder(run_dir, HOST, dead_pid(), start=1)
    with lock.held(run_dir):
        assert holder_pid(run_dir) == os.getpid()
    assert not (run_dir / lock.HOLDER_FILE).exists()


def test_a_holder_whose_pid_now_runs_another_process_is_taken_over(tmp_path, sleeper):
    run_dir = tmp_path / "D"
    pid, start = sleeper
    write_holder(run_dir, HOST, pid, start - 1)  # the pid of a process that started before: given again since
    with lock.held(run_dir):
        assert holder_pid(run_dir) == os.getpid()


def test_a_live_holder_on_this_host_is_kept_whatever_its_heartbeat(tmp_path, sleeper):
    run_dir = tmp_path / "D"
    pid, start = sleeper
    path = write_holder(run_dir, HOST, pid, start, age_s=2 * lock.STALE_S)  # stopped with Ctrl-Z, say
    before = snapshot(run_dir)
    with pytest.raises(lock.Busy) as refused:
        lock.acquire(run_dir)
    assert f"is in use by pid {pid} on host {HOST} (since " in str(refused.value)
    assert snapshot(run_dir) == before and path.exists()


def test_a_holder_of_another_host_whose_heartbeat_stopped_is_taken_over(tmp_path):
    run_dir = tmp_path / "D"
    write_holder(run_dir, ELSEWHERE, 4242, start=7, age_s=lock.STALE_S + 5)
    with lock.held(run_dir):
        assert holder_pid(run_dir) == os.getpid()


def test_a_holder_of_another_host_with_a_fresh_heartbeat_is_refused_in_one_line(tmp_path):
    run_dir = tmp_path / "D"
    write_holder(run_dir, ELSEWHERE, 4242, start=7, age_s=20)
    before = snapshot(run_dir)
    with pytest.raises(lock.Busy) as refused:
        lock.acquire(run_dir)
    line = str(refused.value)
    assert "\n" not in line
    assert line.startswith(f"{run_dir} is in use by pid 4242 on host {ELSEWHERE} (since ")
    assert ", alive 20 s ago)" in line and line.endswith(ONE_LINE_END)
    assert snapshot(run_dir) == before
    assert not lock.holds(run_dir)


def test_a_holder_of_the_same_slurm_job_on_another_host_is_taken_over_by_the_requeued_job(tmp_path):
    run_dir, go = tmp_path / "D", tmp_path / "go"
    write_holder(run_dir, ELSEWHERE, 4242, start=7, age_s=5, slurm_job="812_3")
    go.touch()
    other_job = start_taker(run_dir, go, env={"SLURM_ARRAY_JOB_ID": "812", "SLURM_ARRAY_TASK_ID": "4"})
    assert other_job.stdout.readline().startswith(
        f"busy: {run_dir} is in use by pid 4242 on host {ELSEWHERE}, SLURM job 812_3"
    )
    requeued = start_taker(run_dir, go, env={"SLURM_ARRAY_JOB_ID": "812", "SLURM_ARRAY_TASK_ID": "3"})
    assert requeued.stdout.readline() == "won\n"
    assert json.loads((run_dir / lock.HOLDER_FILE).read_text())["slurm_job"] == "812_3"
    assert holder_pid(run_dir) == requeued.pid
    end_takers([other_job, requeued])
    assert not (run_dir / lock.HOLDER_FILE).exists()


def test_an_unreadable_holder_file_is_taken_over_once_old(tmp_path):
    run_dir = tmp_path / "D"
    run_dir.mkdir()
    path = run_dir / lock.HOLDER_FILE
    path.write_text("{not json")
    with pytest.raises(lock.Busy, match=r"cannot be read \(written 0 s ago\)"):
        lock.acquire(run_dir)
    old = time.time() - lock.STALE_S - 5
    os.utime(path, (old, old))
    with lock.held(run_dir):
        assert holder_pid(run_dir) == os.getpid()


# --- holding -------------------------------------------------------------------------------------------


def test_acquiring_again_in_the_same_process_counts_and_the_last_release_removes_the_file(tmp_path):
    run_dir = tmp_path / "D"
    lock.acquire(run_dir)
    lock.acquire(run_dir)
    lock.release(run_dir)
    assert holder_pid(run_dir) == os.getpid() and lock.holds(run_dir)
    lock.release(run_dir)
    assert not (run_dir / lock.HOLDER_FILE).exists() and not lock.holds(run_dir)
    lock.release(run_dir)  # not held: nothing to do


def test_the_heartbeat_keeps_the_holder_fresh_and_exit_releases_it(tmp_path):
    run_dir, go = tmp_path / "D", tmp_path / "go"
    go.touch()
    taker = start_taker(run_dir, go, heartbeat_s=0.05)
    assert taker.stdout.readline() == "won\n"
    path = run_dir / lock.HOLDER_FILE
    old = time.time() - 1000
    os.utime(path, (old, old))
    deadline = time.monotonic() + 10
    while path.stat().st_mtime < time.time() - 60 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.stat().st_mtime > time.time() - 60, "the heartbeat did not touch the holder file"
    end_takers([taker])  # it exits without release(): atexit releases
    assert not path.exists()


def test_a_release_leaves_the_file_of_a_process_that_took_over(tmp_path):
    run_dir = tmp_path / "D"
    lock.acquire(run_dir)
    try:
        write_holder(run_dir, ELSEWHERE, 4242, start=7)  # taken over while this process was lost, say
    finally:
        lock.release(run_dir)
    assert holder_pid(run_dir) == 4242


# --- a race ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stale", ["dead process here", "lost host"])
def test_of_several_processes_taking_over_one_stale_holder_at_once_exactly_one_wins(tmp_path, stale):
    for attempt in range(5):
        run_dir, go = tmp_path / f"D{attempt}", tmp_path / f"go{attempt}"
        if stale == "dead process here":
            write_holder(run_dir, HOST, dead_pid(), start=1)
        else:
            write_holder(run_dir, ELSEWHERE, 4242, start=7, age_s=lock.STALE_S + 5)
        takers = start_takers(6, run_dir, go)
        go.touch()  # all at once
        said = {taker.pid: taker.stdout.readline().strip() for taker in takers}
        try:
            winners = [pid for pid, line in said.items() if line == "won"]
            assert len(winners) == 1, said
            assert holder_pid(run_dir) == winners[0]
            for pid, line in said.items():
                if pid != winners[0]:
                    assert line.startswith(f"busy: {run_dir} is in use by pid {winners[0]} on host {HOST}"), said
            assert [p.name for p in run_dir.iterdir()] == [lock.HOLDER_FILE]  # no name of a takeover left
        finally:
            end_takers(takers)
        assert not (run_dir / lock.HOLDER_FILE).exists()
