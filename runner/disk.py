"""Files written whole: `replacing(path)` writes a new file beside `path` and renames it over it,
so a reader sees the old file or the new one, never half (checkpoints, model.safetensors,
metrics.json, the decoded data cache and its records, TensorBoard's HPARAMS records). A write that
fails (a full disk, a quota, a read-only file system) is WriteError: one line naming the file, why
and the free space where it goes, with the partial file removed.

Every file a run writes as it trains (checkpoints/last.pt, model.safetensors, metrics.json, the
TensorBoard event files) is written through a temporary file or appended to, so what was written
before stays whole: the last good checkpoint is kept and the same command resumes from it once
there is space again (runner.cli.job says so and exits with WRITE_EXIT).
"""

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

WRITE_EXIT = 74  # a run (or sweep) stopped because a file could not be written; sysexits' EX_IOERR


class WriteError(OSError):
    """A file of the run could not be written; its message is the one line to print, its errno the
    system's (ENOSPC for a full disk)."""


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # what freeing space mends


@contextmanager
def writing(path: Path, tmp: Path | None = None) -> Iterator[None]:
    """Writes `path` (through `tmp`, if given): an OSError meanwhile, also one that a library wraps
    (torch.save raises RuntimeError over it, safetensors its own error), becomes WriteError, and
    the partial `tmp` is removed, as it is whatever the block raises."""
    try:
        yield
    except BaseException as e:
        cause = None if isinstance(e, WriteError) else os_error_in(e)
        written = size_of(tmp) if tmp is not None else 0
        if tmp is not None:
            remove(tmp)
        if cause is None:
            raise
        raise failed_write(path, cause, written) from e  # the free space once the partial file is gone


@contextmanager
def replacing(path: Path, unique: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` for the new file: when the block ends, its bytes are flushed to
    the disk and it is renamed over `path`; where the block raises, it is removed (a failed write is
    WriteError). `unique`: a temporary name of its own, for a file that several processes may write
    at once (the decoded data cache); else `.<name>.tmp`."""
    path = Path(path)
    with writing(path):  # a folder that cannot be made is a failed write too
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary(path) if unique else path.with_name(f".{path.name}.tmp")
    with writing(path, tmp):
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)


def temporary(path: Path) -> Path:
    """A new, empty file of a name of its own beside `path`."""
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    os.close(handle)
    return Path(name)


def failed_write(path: Path, error: OSError, written: int = 0) -> WriteError:
    """`cannot write <path> (No space left on device after 1.5 MB of it; 1.6 MB free on /mnt)`: how
    much of the file was written before it failed tells how much more space it needs."""
    reason = error.strerror or str(error)
    after = f" after {human(written)} of it" if written else ""
    failed = WriteError(f"cannot write {path} ({reason}{after}; {free_space(path)})")
    failed.errno = error.errno  # ENOSPC, EDQUOT: space to free; others: something else to mend
    return failed


def size_of(path: Path) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def os_error_in(error: BaseException) -> OSError | None:
    """The OSError behind `error`: itself, the one it was raised from or while handling, or for a
    library that reports the system's error only in its message, one rebuilt from `(os error N)`."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    found = re.search(r"\(os error (\d+)\)", str(error))
    if found:
        code = int(found.group(1))
        return OSError(code, os.strerror(code))
    return None


def free_space(path: Path) -> str:
    """`12 KB free on /mnt`: what the file system that holds `path` has left, and where it is mounted."""
    place = existing(Path(path))
    try:
        free = human(shutil.disk_usage(place).free)
    except OSError:
        free = "unknown space"
    return f"{free} free on {mount_point(place)}"


def existing(path: Path) -> Path:
    """`path` or its nearest folder that exists."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def mount_point(path: Path) -> Path:
    path = Path(os.path.realpath(path))
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def human(size: int) -> str:
    """Bytes as df -h counts them (1 KB = 1024 bytes): 12 KB, 3.4 MB, 120 GB."""
    units = ("bytes", "KB", "MB", "GB", "TB")
    value, unit = float(size), 0
    while value >= 1024 and unit < len(units) - 1:
        value, unit = value / 1024, unit + 1
    return f"{value:.1f} {units[unit]}" if 0 < unit and value < 10 else f"{value:.0f} {units[unit]}"


def remove(path: Path) -> None:
    """Removes a partial file; one that cannot be removed is left (the next write replaces it)."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError:
        pass
