"""What a sweep's jobs cost besides their training: one sweep in one process (the basic launcher),
as a user runs it, and for each job after the first the seconds from the previous job's last
training step to its own first step, phase by phase (each job's `between_jobs` record in its
metrics.json: runner/engine/startup.py; its first step counts what it costs beyond an ordinary
step). Prints the phases of every job, their medians, and the sweep's wall time against its
training time.

    .venv/bin/python benchmarks/job_overhead.py [OVERRIDES ...]    # default: experiment=quick
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runner.engine.startup import BETWEEN_JOBS  # the checkout's runner, also when run from elsewhere


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", default=["experiment=quick"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sweep_dir = Path(tmp, "sweep")
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "runner", "-m", *args.overrides, f"hydra.sweep.dir={sweep_dir}"],
            check=True,
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )
        wall = time.perf_counter() - start
        written = sorted(sweep_dir.rglob("metrics.json"), key=lambda p: p.stat().st_mtime_ns)  # in job order
        runs = [json.loads(p.read_text()) for p in written]
    training = sum(m["train_seconds"] for m in runs)
    between = [m["between_jobs"] for m in runs if "between_jobs" in m]
    first = next((m["startup"] for m in runs if "startup" in m), {})
    print(f"run -m {' '.join(args.overrides)}: {len(runs)} jobs in {wall:.1f} s wall, {training:.1f} s of it training")
    print(f"start-up to the first job's first step: {sum(first.values()):.2f} s")
    if not between:
        print("no job ran after another in this process")
        return
    print(
        f"\nseconds from a job's last training step to the next job's first step, less that step's training "
        f"(an ordinary step's time) ({len(between)} gaps):"
    )
    print(f"{'phase':12s} " + " ".join(f"{'gap ' + str(i + 1):>7s}" for i in range(len(between))) + f" {'median':>7s}")
    for phase in BETWEEN_JOBS:
        values = [b.get(phase, 0.0) for b in between]
        print(f"{phase:12s} " + " ".join(f"{v:7.3f}" for v in values) + f" {statistics.median(values):7.3f}")
    totals = [sum(b.values()) for b in between]
    print(f"{'total':12s} " + " ".join(f"{v:7.3f}" for v in totals) + f" {statistics.median(totals):7.3f}")
    print(f"\nmedian gap {statistics.median(totals):.3f} s, largest {max(totals):.3f} s")


if __name__ == "__main__":
    main()
