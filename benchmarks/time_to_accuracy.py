"""Time to accuracy: `run experiment=fmnist_speed` (or another preset) as a user runs it, a fresh
process each time, start-up and data loading included. Prints each run's wall time and test
accuracy, then the medians. With --peer lightning, the same task written with Lightning and a
DataLoader (benchmarks/peers/lightning_fmnist.py, the `peers` extra) runs after each of ablate's
runs, seed by seed, and both are printed side by side. With --versus OVERRIDES, the preset with
those overrides runs after each run, seed by seed (`--versus trainer.freeze=null`: the preset
without one of its parts), and the walls' ratio is printed with the medians.

    .venv/bin/python benchmarks/time_to_accuracy.py [--preset fmnist_speed] [--seeds 0 1 2] [--peer lightning] [OVERRIDES ...] [--versus OVERRIDES ...]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = {"lightning": HERE / "peers" / "lightning_fmnist.py"}


def ablate(preset: str, seed: int, overrides: list[str], tmp: str, name: str = "preset") -> tuple[float, dict]:
    """One run of the preset in a fresh process: its wall time and metrics.json."""
    run_dir = Path(tmp, f"{name}-seed-{seed}")
    command = [sys.executable, "-m", "runner", f"experiment={preset}", f"seed={seed}", *overrides]
    start = time.perf_counter()
    subprocess.run([*command, f"hydra.run.dir={run_dir}"], check=True, stdout=subprocess.DEVNULL, cwd=HERE.parent)
    wall = time.perf_counter() - start
    return wall, json.loads((run_dir / "metrics.json").read_text())


def described(wall: float, metrics: dict) -> str:
    return (
        f"wall {wall:5.1f} s (training {metrics['train_seconds']:5.1f} s)  test acc {metrics['test_acc']:.4f}  "
        f"({metrics['precision']}, {metrics['layout']}, {metrics['threads']} threads)"
    )


def peer(name: str, seed: int) -> tuple[float, dict]:
    """One run of the peer's script in a fresh process: its wall time and the JSON line it prints last."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(PEERS[name]), "--seed", str(seed)], check=True, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    return wall, json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="fmnist_speed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--peer", choices=list(PEERS), help="the same task in another framework, alternating")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--versus", nargs="+", metavar="OVERRIDE", help="the preset with these, alternating")
    args = parser.parse_args()
    walls, accs, peer_walls, peer_accs, versus_walls, versus_accs = [], [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            wall, metrics = ablate(args.preset, seed, args.overrides, tmp)
            walls.append(wall)
            accs.append(metrics["test_acc"])
            print(f"seed={seed}: ablate {described(wall, metrics)}", flush=True)
            if args.versus:
                wall, metrics = ablate(args.preset, seed, [*args.overrides, *args.versus], tmp, "versus")
                versus_walls.append(wall)
                versus_accs.append(metrics["test_acc"])
                print(f"seed={seed}: {' '.join(args.versus)} {described(wall, metrics)}", flush=True)
            if args.peer:
                wall, found = peer(args.peer, seed)
                peer_walls.append(wall)
                peer_accs.append(found["test_acc"])
                print(
                    f"seed={seed}: {args.peer} {found.get(args.peer, '')} wall {wall:5.1f} s (training "
                    f"{found['train_seconds']:5.1f} s)  test acc {found['test_acc']:.4f}  ({found['workers']} "
                    f"DataLoader workers, {found['threads']} threads)",
                    flush=True,
                )
    print(
        f"experiment={args.preset} {' '.join(args.overrides)}: median wall {statistics.median(walls):.1f} s, "
        f"median test acc {statistics.median(accs):.4f}, min {min(accs):.4f}"
    )
    if args.versus:
        print(
            f"{' '.join(args.versus)}: median wall {statistics.median(versus_walls):.1f} s, median test acc "
            f"{statistics.median(versus_accs):.4f}, min {min(versus_accs):.4f}; wall ratio to it "
            f"{statistics.median(walls) / statistics.median(versus_walls):.2f}"
        )
    if args.peer:
        print(
            f"{args.peer}: median wall {statistics.median(peer_walls):.1f} s, median test acc "
            f"{statistics.median(peer_accs):.4f}, min {min(peer_accs):.4f}; {args.peer}/ablate wall "
            f"{statistics.median(peer_walls) / statistics.median(walls):.2f}"
        )


if __name__ == "__main__":
    main()
