"""Does logging diagnostics slow training? Times the same training steps with and without
runner.engine.diagnostics, side by side in one process, and prints the ratio.

    .venv/bin/python benchmarks/diagnostics_overhead.py [--model bn] [--log-every 50] [--rounds 5]

Each round trains `--steps` steps on mnist_5k-shaped batches with diagnostics off, then on
(reading them every `--log-every` steps, as the Trainer does); the median over rounds is reported.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from runner.engine import builders
from runner.engine.diagnostics import Diagnostics

sys.path.insert(
    0, str(Path(__file__).resolve().parent.parent / "tests")
)  # the tests' fixtures: data files in real formats
from fixtures import compose_cfg


def steps_per_second(model, optimizer, batches, log_every: int, diagnostics: Diagnostics | None) -> float:
    start = time.perf_counter()
    for step, (x, y) in enumerate(batches, start=1):
        log_now = step % log_every == 0
        if diagnostics:
            diagnostics.active = log_now
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
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = compose_cfg(f"model={args.model}")
    batches = [(torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))) for _ in range(args.steps)]
    plain_model = builders.build_model(cfg.model, cfg.activation, (1, 28, 28), 10)
    diag_model = builders.build_model(cfg.model, cfg.activation, (1, 28, 28), 10)
    diagnostics = Diagnostics(diag_model)
    plain_opt, diag_opt = (
        builders.build_optimizer(cfg.optimizer, plain_model.parameters()),
        builders.build_optimizer(cfg.optimizer, diag_model.parameters()),
    )
    steps_per_second(plain_model, plain_opt, batches[:10], args.log_every, None)  # warm-up
    steps_per_second(diag_model, diag_opt, batches[:10], args.log_every, diagnostics)
    off, on = [], []
    for _ in range(args.rounds):
        off.append(steps_per_second(plain_model, plain_opt, batches, args.log_every, None))
        on.append(steps_per_second(diag_model, diag_opt, batches, args.log_every, diagnostics))
    off_s, on_s = statistics.median(off), statistics.median(on)
    print(f"model={args.model} log_every={args.log_every} steps={args.steps} rounds={args.rounds}")
    print(f"diagnostics off: {off_s:.1f} steps/s   on: {on_s:.1f} steps/s   on/off={on_s / off_s:.3f}")


if __name__ == "__main__":
    main()
