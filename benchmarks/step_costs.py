"""Where a training step's time goes on the CPU: the step of `experiment=fmnist_speed` (or of the
config the overrides compose), profiled op by op, beside what this machine's matrix units can do.

    .venv/bin/python benchmarks/step_costs.py [--steps 200] [--shape fashion] [OVERRIDES ...]

The model and optimizer are built from the composed config and compute as a run on this machine
does (`trainer.precision`, `trainer.layout` and `trainer.threads` auto, the run's allocator
settings, ablate's fused kernels where `trainer.fused` takes them); `--steps` steps on batches of
the data's shape run under torch's profiler. Printed, per kind of work: milliseconds per step (the
ops' own time), share of the step, and for convolutions and matrix products their floating-point
operations (torch.utils.flop_counter) and the rate they ran at. Then what the step would take if
its convolutions and matrix products ran at the rate of a large matrix product in the same
precision, measured here, and the other ops (pooling, batch norm, activations, the optimizer:
memory-bound work) took what they take now.
"""

import argparse
import contextlib
import sys
import time
import timeit
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from models import kernels
from runner.data import cache
from runner.engine import allocator, builders, device, train

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # Hydra composition of configs/
from fixtures import compose_cfg
from throughput import SHAPES

KINDS = {  # kind of work: the profiler's op names, by how they start
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm"),
    "max pooling": ("aten::max_pool2d", "aten::avg_pool2d", "aten::adaptive"),
    "zero fills": ("aten::fill_", "aten::zero_"),
    "batch norm": ("aten::native_batch_norm", "aten::_batch_norm"),
    "activations": (
        "aten::clamp_min",
        "aten::threshold_backward",
        "aten::relu",
        "aten::leaky_relu",
        "aten::tanh",
        "aten::sigmoid",
        "aten::gelu",
    ),
    "optimizer": ("Optimizer.", "aten::_fused_", "aten::_foreach_"),
    "casts and copies": ("aten::copy_", "aten::_to_copy", "aten::to"),
    "fused kernels": ("Stem", "Block"),  # models.kernels (trainer.fused): a block's pooling, batch norm and ReLU
}
CONVOLUTION = {"aten::mkldnn_convolution": 1, "aten::convolution_backward": 2}  # the weight's place among the inputs


def kind_of(event) -> str:
    """A convolution by its layer's weight (`conv 16->48 3x3`), any other op by its kind."""
    if event.key in CONVOLUTION:
        out, inp, *kernel = event.input_shapes[CONVOLUTION[event.key]]
        return f"conv {inp}->{out} {'x'.join(map(str, kernel))}"
    return next((kind for kind, starts in KINDS.items() if event.key.startswith(starts)), "the rest")


def flop_per_row(counts: dict, model: torch.nn.Module) -> dict[str, int]:
    """Floating-point operations of a step (forward and backward) per convolution layer and for the
    matrix products, from torch.utils.flop_counter's counts per module."""
    rows = {"matrix products": sum(n for op, n in counts["Global"].items() if str(op) in ("aten.mm", "aten.addmm"))}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            out, inp, *kernel = module.weight.shape
            row = f"conv {inp}->{out} {'x'.join(map(str, kernel))}"
            rows[row] = rows.get(row, 0) + sum(counts.get(f"{type(model).__name__}.{name}", {}).values())
    return rows


def matmul_rate(dtype: torch.dtype, n: int = 2048) -> float:
    """FLOP/s of an n x n x n matrix product in `dtype` (fp32 where None), the best of 5."""
    a, b = torch.randn(n, n, dtype=dtype or torch.float32), torch.randn(n, n, dtype=dtype or torch.float32)
    a @ b
    return 2 * n**3 / min(timeit.repeat(lambda: a @ b, number=5, repeat=5)) * 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="profiled steps (default 200)")
    parser.add_argument("--shape", default="fashion", choices=list(SHAPES), help="the images' shape")
    parser.add_argument("overrides", nargs="*", default=["experiment=fmnist_speed"])
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = compose_cfg(*args.overrides, "trainer.device=cpu")
    compute = device.pick(cfg.trainer)
    torch.set_num_threads(compute.threads)
    allocator.keep_freed_memory()
    shape, batch, dtype = SHAPES[args.shape], cfg.data.batch_size, compute.autocast_dtype
    model = builders.build_model(cfg.model, cfg.activation, shape, 10).to(memory_format=compute.memory_format)
    optimizer = builders.build_optimizer(cfg.optimizer, model.parameters())
    fused = kernels.switch_on(
        model, cfg.trainer.fused, compute.device, dtype, cfg.trainer.compile, cache.cache_dir() / "kernels"
    )
    batches = [
        (torch.randn(batch, *shape).contiguous(memory_format=compute.memory_format), torch.randint(0, 10, (batch,)))
        for _ in range(20)
    ]

    def step(i: int) -> None:  # the Trainer's step (runner.engine.train), its loss and hit count included
        x, y = batches[i % len(batches)]
        autocast = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()
        train.train_step(model, optimizer, x, y, autocast, cfg.trainer.grad_clip)

    for i in range(20):  # warm-up: oneDNN's kernels, the allocator
        step(i)
    start = time.perf_counter()
    for i in range(args.steps):
        step(i)
    unprofiled = (time.perf_counter() - start) / args.steps
    with FlopCounterMode(display=False) as flops:
        step(0)
    flop = flop_per_row(flops.get_flop_counts(), model)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for i in range(args.steps):
            step(i)
    ms: dict[str, float] = {}
    for event in prof.key_averages(group_by_input_shape=True):
        kind = kind_of(event)
        ms[kind] = ms.get(kind, 0.0) + event.self_cpu_time_total / 1e3 / args.steps
    total = sum(ms.values())
    print(
        f"{' '.join(args.overrides)}: {compute.precision}, {compute.layout}, {compute.threads} threads; batches of "
        f"{batch} images of {'x'.join(map(str, shape))}; fused kernels in {len(fused)} blocks; "
        f"{args.steps} steps under torch's profiler"
    )
    print(f"{'work':18s} {'ms/step':>8s} {'share':>6s} {'GFLOP/step':>11s} {'GFLOP/s':>8s}")
    for kind in sorted(ms, key=lambda k: (k == "the rest", -ms[k])):
        t, work = ms[kind], ""
        if flop.get(kind) and t:
            work = f"{flop[kind] / 1e9:11.3f} {flop[kind] / 1e6 / t:8.0f}"
        print(f"{kind:18s} {t:8.2f} {t / total:6.0%} {work}".rstrip())
    print(f"{'all ops':18s} {total:8.2f}")
    rate, all_flop = matmul_rate(dtype), sum(flop.values())
    floor = all_flop / rate * 1e3
    others = total - sum(t for kind, t in ms.items() if flop.get(kind))
    print(f"step without the profiler: {unprofiled * 1e3:.2f} ms")
    print(
        f"a 2048x2048 {str(dtype or torch.float32).removeprefix('torch.')} matrix product runs at {rate / 1e9:.0f} "
        f"GFLOP/s here: the step's {all_flop / 1e9:.3f} GFLOP at that rate take {floor:.2f} ms; with the other "
        f"ops as measured ({others:.2f} ms), a step would take {floor + others:.2f} ms "
        f"({(floor + others) / total:.0%} of the profiled step)"
    )


if __name__ == "__main__":
    main()
