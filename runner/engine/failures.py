"""The jobs of a sweep that failed, kept in the sweep directory so that the sweep can say so at its
end whatever ran them (this process, joblib's workers, SLURM nodes): `<sweep dir>/failed/<job>.txt`,
one error line each. A job records its own failure (its run directory held by another process), the
SLURM launcher the jobs that ended without a result; the sweep's end (report.SweepSummary) prints
them after the summary and the sweep exits with FAILED_EXIT. A job that runs again clears its record.
"""

from pathlib import Path

FAILED_EXIT = 1  # a sweep with a failed job, after its summary
FOLDER = "failed"

exit_code = 0  # set by announce(): what `run -m` exits with


def record(sweep_dir: Path, job_num: int, line: str) -> None:
    folder = Path(sweep_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{job_num}.txt").write_text(line.rstrip("\n") + "\n")


def clear(sweep_dir: Path, job_num: int) -> None:
    (Path(sweep_dir) / FOLDER / f"{job_num}.txt").unlink(missing_ok=True)


def read(sweep_dir: Path) -> list[str]:
    """The error lines of the failed jobs, in job order."""
    folder = Path(sweep_dir) / FOLDER
    files = sorted(folder.glob("*.txt"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0)
    return [p.read_text().strip() for p in files]


def announce(sweep_dir: Path) -> list[str]:
    """Prints each failed job's line on stderr and sets the sweep's exit code; the lines."""
    import sys

    global exit_code
    lines = read(sweep_dir)
    for line in lines:
        print(f"error: {line}", file=sys.stderr)
    exit_code = FAILED_EXIT if lines else 0
    return lines
