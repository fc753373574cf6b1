"""Sweep throughput: the same sweep with Hydra's sequential launcher and with the joblib launcher
(jobs in parallel, torch threads per job = cores / jobs; on GPUs, the jobs running at once spread
over them and share them), one after the other in this process.

    .venv/bin/python benchmarks/sweep_launchers.py [--jobs 2 [4 8 ...]] [OVERRIDES ...]

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
    parser.add_argument("--jobs", type=int, nargs="+", default=[2], help="joblib's n_jobs, one sweep each (default 2)")
    parser.add_argument("overrides", nargs="*", default=["experiment=quick"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sequential = sweep(args.overrides, Path(tmp, "sequential"), [])
        accs = test_accuracies(Path(tmp, "sequential"))
        parallel = {}
        for n_jobs in args.jobs:
            sweep_dir = Path(tmp, f"joblib-{n_jobs}")
            launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}"]
            seconds = sweep(args.overrides, sweep_dir, launcher)
            gap = max(abs(accs[job] - acc) for job, acc in test_accuracies(sweep_dir).items())
            parallel[n_jobs] = (seconds, gap, devices(sweep_dir))
        n = len(accs)
        print(f"sweep: {' '.join(args.overrides)} ({n} jobs) on {', '.join(sorted(devices(Path(tmp, 'sequential'))))}")
        print(f"sequential:       {sequential:6.1f} s  {60 * n / sequential:6.2f} jobs/min")
        for n_jobs, (seconds, gap, used) in parallel.items():
            print(
                f"joblib n_jobs={n_jobs:<3d} {seconds:6.1f} s  {60 * n / seconds:6.2f} jobs/min  "
                f"joblib/sequential throughput={sequential / seconds:.2f}  devices: {', '.join(sorted(used))}  "
                f"largest test accuracy gap to sequential {gap:.4f}"
            )


def devices(sweep_dir: Path) -> set[str]:
    """The devices the sweep's jobs trained on, from their metrics.json."""
    return {json.loads(p.read_text())["device"] for p in sweep_dir.glob("*/metrics.json")}


if __name__ == "__main__":
    main()
