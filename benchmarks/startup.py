"""Start-up: `run --help` and `run --cfg job` do not import torch. Times each (a fresh Python
process every time, median of --repeats) next to `python -c "import torch"` and prints the ratios.

    .venv/bin/python benchmarks/startup.py [--repeats 5]
"""

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "import torch": ["-c", "import torch"],
    "run --help": ["-m", "runner", "--help"],
    "run --cfg job": ["-m", "runner", "--cfg", "job"],
}


def seconds(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    times = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            times[name].append(seconds(command))
    median = {name: statistics.median(t) for name, t in times.items()}
    for name, t in median.items():
        print(f"{name:14s} {t:5.2f} s  ({t / median['import torch']:.2f} of import torch)")


if __name__ == "__main__":
    main()
