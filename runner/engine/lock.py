"""One writer per run directory: the process that trains a run holds its directory, and any other
process that would write there is refused (`Busy`) while the holder lives.

The holder is a file in the run directory, `.holder.json`: the host, the pid and the process's
start time (from /proc/<pid>/stat: a pid the system gave again to another process is told apart),
when it was taken, and the SLURM job (`<array job>_<task>` in a job array, else the job id, else
null). It is made for the shared file systems of clusters (NFS), where a lock of fcntl may not
reach the other nodes: the file is written under a name of its own in the run directory and then
hard-linked to `.holder.json`, which fails when that name exists and is atomic on NFS too. While the
directory is held, a daemon thread touches the file's mtime every HEARTBEAT_S seconds: the
heartbeat that other hosts go by.

A holder file that is there already is stale, and taken over, when:

- (a) it names this host (and this pid namespace): its process no longer runs, or its pid now
  runs another process (another start time). On this host the process table decides alone: a live
  holder keeps the directory whatever its heartbeat (a process stopped with Ctrl-Z keeps it too);
- (b) it names another host and the same SLURM job as this process: the job was requeued and came
  back, maybe on another node;
- (c) it names another host and its heartbeat is older than STALE_S seconds: that host died or
  lost the file system (the clocks of the hosts must agree within a minute or so);
- (d) it cannot be read as a holder file and is older than STALE_S seconds.

Otherwise `acquire` raises `Busy`, one line naming the holder. A takeover is race-free between
processes that found the same stale file: each hard-links it to a name made of that file's content
(`.holder.json.taking-<digest>`), which one of them alone creates; that one checks the name still
holds the file it judged stale, puts its own file in its place at once (a rename over it: no moment
without a holder file), and removes the name. The others read the holder file again and find the
winner's. (A rename of the stale file to a name of one's own would not do: a taker slower than the
winner would rename the winner's fresh file away.)

Why not a lock library: flufl.lock (hard links on NFS, lifetimes, refresh) breaks a lock only once its
lifetime has run out, so a run killed on this host would keep its directory until then, where (a)
takes it over at once; it tells a dead holder by its pid alone (a pid given again passes for alive),
knows nothing of a requeued SLURM job (b), and by its own account leaves a window in which two
breakers of one stale lock can both proceed, where the takeover below lets one alone through; its
lock file names a claim file, not the holder a refusal must name. fcntl and filelock do not reach
other NFS clients. The tests of tests/test_one_writer.py need all of these.

The same process acquiring again only counts (re-entrant); `release` removes the file when the
count drops to zero and the file is still this holding's, and stops the heartbeat. What this process
still holds at exit is released then.
"""

import atexit
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

HOLDER_FILE = ".holder.json"
HEARTBEAT_S = 30.0  # how often the holder touches its file
STALE_S = 300.0  # a heartbeat older than this, of another host, is a holder that died or was lost
TAKEOVER_WAIT_S = 10.0  # how long acquire waits for another process that takes the same stale file over
ALLOWED = "a run directory no other process holds (wait for it to end, or stop it)"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Holder:
    """Who holds a run directory, as its holder file says."""

    host: str
    pid: int
    start: int | None  # the process's start time, in clock ticks after boot (None where /proc is not)
    since: float  # when it took the directory (seconds since the epoch)
    slurm_job: str | None
    pid_namespace: str | None = None  # pids mean one process only within their namespace
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # this holding's own mark

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True) + "\n"

    @staticmethod
    def from_json(text: bytes) -> "Holder | None":
        """The holder a file's bytes describe, or None if they describe none."""
        try:
            data = json.loads(text)
            holder = Holder(**data) if isinstance(data, dict) and "token" in data else None
        except (ValueError, TypeError):
            return None
        if holder is None:
            return None
        if not isinstance(holder.host, str) or not isinstance(holder.pid, int) or not isinstance(holder.token, str):
            return None
        return holder

    def is_on_this_host(self) -> bool:
        """The same host and pid namespace as this process: its pid can be looked up here."""
        return self.host == socket.gethostname() and self.pid_namespace == pid_namespace()


@dataclass(frozen=True)
class Found:
    """A holder file as read: its bytes, what they say (None: nothing readable), its inode and mtime."""

    raw: bytes
    holder: Holder | None
    inode: int
    mtime: float

    def heartbeat_age(self) -> float:
        """Seconds since the holder last touched its file (0 for a clock behind the file server's)."""
        return max(0.0, time.time() - self.mtime)


class Busy(Exception):
    """The run directory is held by another live process; str() is one line that names the
    directory, the holder and what is allowed."""

    def __init__(self, line: str, run_dir: Path | None = None, found: Found | None = None):
        super().__init__(line)
        self.run_dir = run_dir
        self.found = found

    @classmethod
    def of(cls, run_dir: Path, found: Found) -> "Busy":
        return cls(f"{run_dir} is in use by {describe(found)}; allowed: {ALLOWED}", run_dir, found)


def describe(found: Found) -> str:
    """The holder in words: pid, host, SLURM job, since when and its last sign of life."""
    alive = f"alive {found.heartbeat_age():.0f} s ago"
    holder = found.holder
    if holder is None:
        return f"a process whose {HOLDER_FILE} cannot be read (written {found.heartbeat_age():.0f} s ago)"
    job = f", SLURM job {holder.slurm_job}" if holder.slurm_job else ""
    return f"pid {holder.pid} on host {holder.host}{job} (since {clock(holder.since)}, {alive})"


def clock(timestamp: float) -> str:
    """HH:MM:SS in local time; with the date when it is not today's."""
    moment = datetime.fromtimestamp(timestamp)
    if moment.date() == datetime.now().date():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


# --- this process ---------------------------------------------------------------------------------


def process_stat(pid: int) -> tuple[str, int] | None:
    """A process's state letter and start time (clock ticks after boot) from /proc/<pid>/stat, or
    None where it cannot be read (no such process, no /proc)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after the command's name, which may hold spaces
    return fields[0], int(fields[19])  # fields 3 and 22 of proc(5)


def pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def slurm_job() -> str | None:
    """This process's SLURM job: `<array job>_<task>` in a job array, else the job id; None outside SLURM."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or None


def this_process() -> Holder:
    """A new holding of this process, taken now."""
    stat = process_stat(os.getpid())
    return Holder(
        host=socket.gethostname(), pid=os.getpid(), start=stat[1] if stat else None, since=time.time(),
        slurm_job=slurm_job(), pid_namespace=pid_namespace(),
    )  # fmt: skip


def process_runs(pid: int, start: int | None) -> bool:
    """The process `pid` of this host runs, and is the one that started at `start` (not a pid given
    again to another); a zombie has ended."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's: it runs
    stat = process_stat(pid)
    if stat is None:
        return True  # no /proc to tell more: the pid runs
    state, started = stat
    return state != "Z" and (start is None or started == start)


# --- the holder file ------------------------------------------------------------------------------


def read(path: Path) -> Found | None:
    """The holder file at `path`, or None when there is none."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
            stat = os.fstat(f.fileno())
    except FileNotFoundError:
        return None
    return Found(raw, Holder.from_json(raw), stat.st_ino, stat.st_mtime)


def is_stale(found: Found) -> bool:
    """The holder file may be taken over: rules (a) to (d) of this module's docstring."""
    holder = found.holder
    if holder is None:
        return found.heartbeat_age() > STALE_S  # (d)
    if holder.is_on_this_host():
        return holder.pid == os.getpid() or not process_runs(holder.pid, holder.start)  # (a); our own: a leftover
    if holder.slurm_job is not None and holder.slurm_job == slurm_job():
        return True  # (b)
    return found.heartbeat_age() > STALE_S  # (c)


def write_aside(path: Path, holder: Holder) -> Path:
    """`holder` written to a file of its own beside `path`, whole, before anyone sees it at `path`."""
    aside = path.with_name(f"{path.name}.{holder.host}.{holder.pid}.{holder.token}.tmp")
    aside.write_text(holder.to_json())
    return aside


def create(path: Path, holder: Holder) -> bool:
    """Creates the holder file if there is none (atomic, also on NFS); whether it did."""
    aside = write_aside(path, holder)
    try:
        os.link(aside, path)
        return True
    except FileExistsError:
        return os.stat(aside).st_nlink == 2  # NFS may answer a repeated request that did link so
    finally:
        aside.unlink(missing_ok=True)


def take_over(path: Path, stale: Found, holder: Holder) -> bool:
    """Puts `holder` in place of the stale holder file `stale`, if no other process takes it over
    first; whether it did (see the module's docstring)."""
    taking = path.with_name(f"{path.name}.taking-{hashlib.sha256(stale.raw).hexdigest()[:16]}")
    try:
        os.link(path, taking)
    except FileExistsError:
        remove_if_abandoned(taking)
        return False
    except FileNotFoundError:
        return False
    try:
        if os.stat(taking).st_ino != stale.inode or taking.read_bytes() != stale.raw:
            return False  # the file at `path` is no longer the one judged stale
        aside = write_aside(path, holder)
        try:
            os.replace(aside, path)
        except OSError:
            aside.unlink(missing_ok=True)
            raise
        return True
    finally:
        taking.unlink(missing_ok=True)


def remove_if_abandoned(taking: Path) -> None:
    """A takeover's name left by a process that died amid it (older than STALE_S) is removed."""
    try:
        if time.time() - os.stat(taking).st_ctime > STALE_S:
            taking.unlink(missing_ok=True)
    except FileNotFoundError:
        pass


def is_mine(path: Path, holder: Holder) -> bool:
    """The holder file at `path` is still `holder`'s (no other process took it over)."""
    found = read(path)
    return found is not None and found.holder is not None and found.holder.token == holder.token


# --- holding ----------------------------------------------------------------------------------------


@dataclass
class Holding:
    """A run directory this process holds: its file, how many acquires, and the heartbeat."""

    path: Path
    holder: Holder
    count: int = 1
    stop: threading.Event = field(default_factory=threading.Event)

    def beat(self) -> None:
        """Touches the holder file every HEARTBEAT_S seconds until released or taken over."""
        while not self.stop.wait(HEARTBEAT_S):
            try:
                found = read(self.path)
                if found is None or found.holder is None or found.holder.token != self.holder.token:
                    lost = "was removed" if found is None else f"now names {describe(found)}"
                    log.warning(f"{self.path} {lost}: this process no longer holds {self.path.parent}")
                    return
                os.utime(self.path)
            except OSError as e:
                log.warning(f"the heartbeat of {self.path} failed this time: {e}")


_held: dict[Path, Holding] = {}
_lock = threading.Lock()


def acquire(run_dir: Path) -> None:
    """Holds `run_dir` (created if missing) for this process, or raises Busy naming the live process
    that holds it; a stale holder is taken over. Acquiring a directory this process holds counts."""
    key = Path(run_dir).resolve()
    with _lock:
        if key in _held:
            _held[key].count += 1
            return
        key.mkdir(parents=True, exist_ok=True)
        path = key / HOLDER_FILE
        mine = this_process()
        deadline = time.monotonic() + TAKEOVER_WAIT_S
        while True:
            found = read(path)
            if found is None:
                if create(path, mine):
                    break
                continue  # another process created it first: read what it put there
            if not is_stale(found) or time.monotonic() > deadline:
                raise Busy.of(Path(run_dir), found)
            if take_over(path, found, mine):
                break
            time.sleep(0.02)  # another process takes it over: read again what it put there
        holding = Holding(path, mine)
        threading.Thread(target=holding.beat, name=f"holder {key}", daemon=True).start()
        _held[key] = holding


def try_acquire(run_dir: Path) -> str:
    """`acquire`, with the refusal as its value: "" when this process holds `run_dir`, else Busy's line."""
    try:
        acquire(run_dir)
    except Busy as e:
        return str(e)
    return ""


def release(run_dir: Path) -> None:
    """One acquire less; at none, the heartbeat stops and the holder file goes (if still ours).
    Releasing a directory this process does not hold does nothing."""
    key = Path(run_dir).resolve()
    with _lock:
        holding = _held.get(key)
        if holding is None:
            return
        holding.count -= 1
        if holding.count > 0:
            return
        del _held[key]
        holding.stop.set()
        try:
            if is_mine(holding.path, holding.holder):
                holding.path.unlink(missing_ok=True)
        except OSError as e:
            log.warning(f"{holding.path} could not be removed: {e}")


def release_all() -> None:
    """Releases every run directory this process holds, whatever its count (at exit)."""
    for key in list(_held):
        with _lock:
            if key in _held:
                _held[key].count = 1
        release(key)


def holds(run_dir: Path) -> bool:
    """This process holds `run_dir`."""
    return Path(run_dir).resolve() in _held


@contextmanager
def held(run_dir: Path) -> Iterator[None]:
    """`run_dir` held for the block (Busy if another process holds it)."""
    acquire(run_dir)
    try:
        yield
    finally:
        release(run_dir)


def forget_after_fork() -> None:
    """A forked child holds nothing: the holdings, their heartbeats and their files are the parent's."""
    _held.clear()
    global _lock
    _lock = threading.Lock()


atexit.register(release_all)
os.register_at_fork(after_in_child=forget_after_fork)
