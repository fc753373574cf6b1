"""Sweep throughput: the same sweep with Hydra's sequential launcher and with the joblib launcher
(jobs in parallel, torch threads per job = cores / jobs), one after the other in this process.

    .venv/bin/python benchmarks/sweep_launchers.py [--jobs 2] [OVERRIDES ...]

Default sweep: `experiment=quick` (6 jobs on the embedded digits: model=plain,bn,residual x
seed=0,1, 3 epochs), the README's main job. Prints the wall time of each launcher, jobs per minute,
and joblib/sequential, and the largest gap between the two launchers' test accuracies (fewer threads per job
change the order of floating-point sums, so they need not be bitwise equal).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def sweep(overrides: list[str], sweep_dir: Path, launcher: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "runner", "-m", *overrides, *launcher, f"hydra.sweep.dir={sweep_dir}"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def test_accuracies(sweep_dir: Path) -> dict[str, float]:
    return {p.parent.name: json.loads(p.read_text())["test_acc"] for p in sorted(sweep_dir.glob("*/metrics.json"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="joblib's n_jobs (default 2)")
    parser.add_argument("overrides", nargs="*", default=["experiment=quick"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sequential = sweep(args.overrides, Path(tmp, "sequential"), [])
        joblib = sweep(args.overrides, Path(tmp, "joblib"), ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.jobs}"])
        accs = test_accuracies(Path(tmp, "sequential")), test_accuracies(Path(tmp, "joblib"))
    n = len(accs[0])
    print(f"sweep: {' '.join(args.overrides)} ({n} jobs)")
    print(f"sequential:      {sequential:6.1f} s  {60 * n / sequential:5.2f} jobs/min")
    print(f"joblib n_jobs={args.jobs}: {joblib:6.1f} s  {60 * n / joblib:5.2f} jobs/min")
    gap = max(abs(accs[0][job] - accs[1][job]) for job in accs[0])
    print(f"joblib/sequential throughput={sequential / joblib:.2f}; largest test accuracy gap between them {gap:.4f}")


if __name__ == "__main__":
    main()
