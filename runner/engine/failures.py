"""The jobs of a sweep that failed, kept in the sweep directory so that the sweep can say so at its
end whatever ran them (this process, joblib's workers, SLURM nodes): `<sweep dir>/failed/<job>.txt`,
one error line each. A job records its own failure (it raised, at build time or in training, or its
run directory was held by another process), the SLURM launcher the jobs that raised or ended without
a result there; the sweep's end (runner.cli.app.SweepSummary) prints them after the summary and the sweep
exits with FAILED_EXIT. A job that runs again clears its record.

A job that raised is named by its error and where the user's code raised it (`describe`): the
innermost frame of its traceback outside ablate's packages, the installed packages and Python's
standard library, else outside the latter two.
"""

import functools
import importlib.util
import sys
import sysconfig
import traceback
from pathlib import Path

from runner import disk

FAILED_EXIT = 1  # a sweep with a failed job, after its summary
FOLDER = "failed"
SLURM_LAUNCHER = "hydra_plugins.ablate_slurm.slurm_launcher.SlurmLauncher"  # records its jobs' failures itself
ROOT = Path(__file__).resolve().parents[2]
ABLATE = tuple(ROOT / name for name in ("runner", "models", "optim", "hydra_plugins"))
STDLIB = tuple({Path(sysconfig.get_paths()[k]).resolve() for k in ("stdlib", "platstdlib")})
LIBRARIES = tuple({*STDLIB, *(Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib"))})

exit_code = 0  # set by announce(): what `run -m` exits with


def record(sweep_dir: Path, job_num: int, line: str) -> None:
    """Keeps a failed job's line; a write that fails (a full disk) is WriteError (runner.disk)."""
    path = Path(sweep_dir) / FOLDER / f"{job_num}.txt"
    with disk.writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(line.rstrip("\n") + "\n")


def clear(sweep_dir: Path, job_num: int) -> None:
    (Path(sweep_dir) / FOLDER / f"{job_num}.txt").unlink(missing_ok=True)


def read(sweep_dir: Path) -> list[str]:
    """The error lines of the failed jobs, in job order."""
    folder = Path(sweep_dir) / FOLDER
    files = sorted(folder.glob("*.txt"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0)
    return [p.read_text().strip() for p in files]


def announce(sweep_dir: Path, more: tuple[str, ...] = ()) -> list[str]:
    """Prints each failed job's line, then `more` (the sweep's own: a summary not written), on stderr
    and sets the sweep's exit code; the lines."""
    global exit_code
    lines = read(sweep_dir) + list(more)
    for line in lines:
        print(f"error: {line}", file=sys.stderr)
    exit_code = FAILED_EXIT if lines else 0
    return lines


def describe(error: BaseException, one_line: bool = False) -> str:
    """A job's error in one line: `<ErrorType>: <message> (<file>:<line>)`, the line of the user's
    code that raised it. ablate's `one_line` errors (SetupError: bad input, a part that cannot be
    built, naming the key, the value, what is allowed and the user's error where their code raised it;
    WriteError) say it already: their line, with ` (<file>:<line>)` where it raised in the user's code
    and the line does not say so."""
    text = first_line(str(error))
    if one_line:
        where = location(error, users_only=True)
        return f"{text} ({where})" if where and where not in text else text
    where = location(error)
    said = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return f"{said} ({where})" if where else said


def location(error: BaseException, users_only: bool = False) -> str | None:
    """`<file>:<line>` where `error` was raised, from its traceback and those of the errors it was
    raised from: the innermost frame in the user's code; else (unless `users_only`) the innermost
    outside torch and Python's standard library (the line of torchvision's, timm's or ablate's code
    that called the failing operation), else the innermost. Relative to the current directory where
    inside it."""
    frames = []
    seen: BaseException | None = error
    while seen is not None:
        frames = frames + traceback.extract_tb(seen.__traceback__)  # a cause's frames are inner ones
        seen = seen.__cause__
    users = [f for f in frames if not in_library(f.filename) and not in_ablate(f.filename)]
    callers = [f for f in frames if not in_torch_or_stdlib(f.filename)]
    chosen = users or ([] if users_only else callers or frames)
    if not chosen:
        return None
    path = Path(chosen[-1].filename).resolve()
    shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
    return f"{shown}:{chosen[-1].lineno}"


def in_torch_or_stdlib(filename: str) -> bool:
    """A file of torch or of Python's standard library (or Python's own, <frozen ...>)."""
    if filename.startswith("<"):
        return True
    path = Path(filename).resolve()
    installed = any(part in ("site-packages", "dist-packages") for part in path.parts)  # a venv's platstdlib holds them
    stdlib = any(path.is_relative_to(folder) for folder in STDLIB) and not installed
    return path.is_relative_to(torch_folder()) or stdlib


@functools.cache
def torch_folder() -> Path:
    """torch's package folder, found without importing torch (`run --help` imports this module)."""
    return Path(importlib.util.find_spec("torch").origin).resolve().parent


def in_library(filename: str) -> bool:
    """A file of Python's standard library or of an installed package (or Python's own, <frozen ...>)."""
    if filename.startswith("<"):
        return True
    path = Path(filename).resolve()
    return any(part in ("site-packages", "dist-packages") for part in path.parts) or any(
        path.is_relative_to(library) for library in LIBRARIES
    )


def in_ablate(filename: str) -> bool:
    return any(Path(filename).resolve().is_relative_to(package) for package in ABLATE)


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")
