"""Start-up, two ways, each in fresh Python processes:

1. `run --help` and `run --cfg job` (which do not import torch) next to `python -c "import torch"`,
   with their ratios; the commands alternate, median of --repeats.
2. A run's time from the command to its first training step, phase by phase (the `startup` record
   of its metrics.json, runner/engine/startup.py), in runs of one epoch: the first run, which
   decodes the data files into an empty cache, then the median of --repeats runs after it (about
   20 s each for data=fashion_mnist on 2 cores; `data.train_size=512` among the overrides
   shortens them, and the data phase with them).

    .venv/bin/python benchmarks/startup.py [--repeats 5] [--data fashion_mnist] [OVERRIDES ...]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = {
    "import torch": ["-c", "import torch"],
    "run --help": ["-m", "runner", "--help"],
    "run --cfg job": ["-m", "runner", "--cfg", "job"],
}


def seconds(args: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def commands(repeats: int) -> None:
    times = {name: [] for name in COMMANDS}
    for _ in range(repeats):
        for name, command in COMMANDS.items():
            times[name].append(seconds(command))
    median = {name: statistics.median(t) for name, t in times.items()}
    for name, t in median.items():
        print(f"{name:14s} {t:5.2f} s  ({t / median['import torch']:.2f} of import torch)")


def phases(repeats: int, data: str, overrides: list[str]) -> None:
    """The phases of a run of one epoch on `data` (all of its training images: reading, splitting
    and summarizing them is part of the start-up)."""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ABLATE_CACHE": str(Path(tmp, "cache"))}
        command = ["-m", "runner", f"data={data}", "trainer.max_epochs=1", *overrides]
        for i in range(repeats + 1):
            run_dir = Path(tmp, f"run-{i}")
            seconds([*command, f"hydra.run.dir={run_dir}"], env)
            runs.append(json.loads((run_dir / "metrics.json").read_text())["startup"])
    first, after = runs[0], runs[1:]
    shown = f"run data={data} {' '.join(overrides)}"
    print(f"\n{shown}: seconds from the command to the first training step, less that step's training")
    print(f"{'phase':12s} {'first run':>9s} {'after':>7s}   (after: median of {repeats})")
    for phase in first:
        print(f"{phase:12s} {first[phase]:9.2f} {statistics.median(r[phase] for r in after):7.2f}")
    total = statistics.median(sum(r.values()) for r in after)
    print(f"{'total':12s} {sum(first.values()):9.2f} {total:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("overrides", nargs="*", help="more overrides of the run, e.g. model=residual")
    args = parser.parse_args()
    commands(args.repeats)
    phases(args.repeats, args.data, args.overrides)


if __name__ == "__main__":
    main()
