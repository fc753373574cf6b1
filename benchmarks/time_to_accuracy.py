"""Time to accuracy: `run experiment=fmnist_speed` (or another preset) as a user runs it, a fresh
process each time, start-up and data loading included. Prints each run's wall time and test
accuracy, then the medians.

    .venv/bin/python benchmarks/time_to_accuracy.py [--preset fmnist_speed] [--seeds 0 1 2] [OVERRIDES ...]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="fmnist_speed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    walls, accs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            run_dir = Path(tmp, f"seed-{seed}")
            command = [sys.executable, "-m", "runner", f"experiment={args.preset}", f"seed={seed}", *args.overrides]
            start = time.perf_counter()
            subprocess.run([*command, f"hydra.run.dir={run_dir}"], check=True, stdout=subprocess.DEVNULL)
            walls.append(time.perf_counter() - start)
            metrics = json.loads((run_dir / "metrics.json").read_text())
            accs.append(metrics["test_acc"])
            print(
                f"seed={seed}: wall {walls[-1]:5.1f} s (training {metrics['train_seconds']:5.1f} s)  "
                f"test acc {accs[-1]:.4f}  ({metrics['precision']}, {metrics['layout']}, {metrics['threads']} threads)",
                flush=True,
            )
    print(
        f"experiment={args.preset} {' '.join(args.overrides)}: median wall {statistics.median(walls):.1f} s, "
        f"median test acc {statistics.median(accs):.4f}, min {min(accs):.4f}"
    )


if __name__ == "__main__":
    main()
