"""Does logging diagnostics slow training? Times the same training steps with and without
runner.engine.diagnostics, side by side in one process, and prints the ratio.

    .venv/bin/python benchmarks/diagnostics_overhead.py [--model bn] [--log-every 50] [--rounds 20]

Each round trains `--log-every` steps on mnist_5k-shaped batches with diagnostics off and as many
with them on (read on the last step, as the Trainer does), in alternating order: the speeds are
medians over rounds, on/off the geometric mean of the rounds' ratios with its 95% interval (the
two halves of a round share the machine's state). The steps compute as a run on this machine does
(`trainer.precision` and `trainer.layout` auto).
"""

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from runner.engine import builders, device
from runner.engine.diagnostics import Diagnostics

sys.path.insert(
    0, str(Path(__file__).resolve().parent.parent / "tests")
)  # the tests' fixtures: data files in real formats
from fixtures import compose_cfg
from throughput import paired_ratio


def steps_per_second(model, optimizer, batches, log_every: int, diagnostics: Diagnostics | None, autocast) -> float:
    start = time.perf_counter()
    for step, (x, y) in enumerate(batches, start=1):
        log_now = step % log_every == 0
        if diagnostics:
            diagnostics.active = log_now
        with autocast():
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if log_now:
            loss.item()  # the Trainer reads the loss on these steps anyway
            if diagnostics:
                diagnostics.active = False
                diagnostics.read()
        optimizer.step()
    return len(batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="bn")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = compose_cfg(f"model={args.model}")
    compute = device.pick(cfg.trainer)
    dtype = compute.autocast_dtype

    def autocast():
        return torch.autocast(compute.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    batches = [
        (torch.randn(128, 1, 28, 28).contiguous(memory_format=compute.memory_format), torch.randint(0, 10, (128,)))
        for _ in range(args.log_every)
    ]
    model = builders.build_model(cfg.model, cfg.activation, (1, 28, 28), 10).to(memory_format=compute.memory_format)
    optimizer = builders.build_optimizer(cfg.optimizer, model.parameters())
    diagnostics = Diagnostics(model)  # one model for both: two models' speeds may differ by a few per cent

    def speed(with_diagnostics: bool) -> float:
        watching = diagnostics if with_diagnostics else None
        return steps_per_second(model, optimizer, batches, args.log_every, watching, autocast)

    speed(False)  # warm-up
    speed(True)
    off, on = [], []
    for r in range(args.rounds):
        for with_diagnostics in (False, True) if r % 2 == 0 else (True, False):
            (on if with_diagnostics else off).append(speed(with_diagnostics))
    ratio = paired_ratio([1 / v for v in on], [1 / v for v in off])
    print(
        f"model={args.model} log_every={args.log_every} rounds={args.rounds} "
        f"({compute.precision}, {compute.layout}, {compute.threads} threads)"
    )
    off_s, on_s = statistics.median(off), statistics.median(on)
    print(f"diagnostics off: {off_s:.1f} steps/s   on: {on_s:.1f} steps/s   on/off={ratio}")


if __name__ == "__main__":
    main()
