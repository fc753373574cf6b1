"""Training images per second, measured side by side in one process (`make bench`):

  minimal     a hand-written PyTorch loop: normalized tensors on the device, shuffled batches by
              index, forward, loss, backward, step; the same model, precision and layout as ablate
  runner      ablate's own Trainer.train_epoch, with its default logging (TensorBoard every 50
              steps) and diagnostics, on uint8 data held on the device (on a CUDA GPU, its step
              captured in a CUDA graph as trainer.graphs decides: --graphs auto, true or false)
  dataloader  the usual path: the torchvision dataset class reading the real file format, with
              ToTensor and Normalize, through a DataLoader (the fastest of --workers; pinned
              memory on CUDA), fp32 in the default layout

for model=plain, bn and residual on Fashion-MNIST-shaped (1x28x28) and CIFAR-10-shaped (3x32x32)
data. The images are random bytes written in the real formats, so the numbers measure speed only.
Shape `folder` is a folder of 32x32 PNG files in torchvision's ImageFolder layout: the minimal loop
and ablate train on what ablate's `image_folder()` decoded (its one-off decode time and its cached
load time are printed), the DataLoader reads the files through torchvision's ImageFolder.
With --augment all three also crop and flip each image (4-pixel padding): the minimal loop and
ablate on the device, the DataLoader with RandomCrop and RandomHorizontalFlip. The device is the
one a run would pick (`trainer.device=auto`: a CUDA GPU if there is one). Rounds alternate the
paths; within a round the minimal loop and the runner alternate --pairs times (4: eight epochs),
each DataLoader path runs once. The minimal loop and the runner train one model and optimizer (two
instances of a model can train at speeds a few per cent apart), except where the runner's step is a
CUDA graph, which keeps its gradients its own. Each speed is the median over its epochs. runner/minimal is the
geometric mean of the ratios of neighbouring epochs (which share the machine's state: its speed
moves by several per cent from one second to the next), runner/dataloader that of the per-round
ratios, each with its 95% interval, `level` where the interval holds 1.0. Last line:

  min runner/minimal=X.XX runner/dataloader=Y.YY   (the worst case over models and shapes)

Other questions, same method:
  --compute   ablate's runner in fp32 and bf16 autocast, contiguous and channels_last (ratios to fp32)
  --compile   ablate's runner with and without trainer.compile=true
  --fused     ablate's runner with trainer.fused=auto (its fused CPU kernels) against false, on
              experiment=fmnist_speed's net, batches and trainer settings
"""

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader
from torchvision import transforms

from models import kernels
from runner.cli.console import TrainingProgress
from runner.data import batches, cache, splits
from runner.data.augment import crop_flip
from runner.engine import builders, device, graphs
from runner.engine.diagnostics import Diagnostics

sys.path.insert(
    0, str(Path(__file__).resolve().parent.parent / "tests")
)  # the tests' fixtures: data files in real formats
from fixtures import compose_cfg, write_cifar_like, write_image_folder, write_mnist_like

from runner.data.image_folder import image_folder
from runner.engine.log import RunLogger
from runner.engine.train import Learner, Reporting, SplitBatches, Trainer, TrainerConfig

SHAPES = {"fashion": (1, 28, 28), "cifar": (3, 32, 32), "folder": (3, 32, 32)}
MODELS = ("plain", "bn", "residual")


class CifarFiles(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR10 on the files written here: their checksums are not the real ones."""

    meta: ClassVar[dict] = {**torchvision.datasets.CIFAR10.meta, "md5": None}

    def _check_integrity(self) -> bool:
        return True


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a host clock read after it times the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def usual_dataset(shape: str, root: Path, n: int, augment: bool) -> torch.utils.data.Dataset:
    """The torchvision dataset class over `n` random images written in its real file format."""
    if shape == "fashion":
        write_mnist_like(root / "FashionMNIST" / "raw", n_train=n, n_test=10, gz=False)
        mean, std, cls = (0.286,), (0.353,), torchvision.datasets.FashionMNIST
    elif shape == "folder":
        classes = math.gcd(n, 10)  # n training images in all, over at most the models' 10 classes
        write_image_folder(root, classes=classes, per_class_train=n // classes, per_class_test=1, size=(32, 32))
        mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    else:
        write_cifar_like(root / "cifar-10-batches-py", per_batch=n // 5)
        mean, std, cls = (0.491, 0.482, 0.447), (0.247, 0.243, 0.262), CifarFiles
    crop_flip = [transforms.RandomCrop(SHAPES[shape][1:], padding=4), transforms.RandomHorizontalFlip()]
    transform = transforms.Compose(
        [*(crop_flip if augment else []), transforms.ToTensor(), transforms.Normalize(mean, std)]
    )
    if shape == "folder":
        return torchvision.datasets.ImageFolder(str(root / "train"), transform=transform)
    return cls(str(root), train=True, transform=transform, download=False)


def build_model(cfg, in_shape, compute: device.Compute) -> torch.nn.Module:
    model = builders.build_model(cfg.model, cfg.activation, in_shape, 10)
    return model.to(compute.device, memory_format=compute.memory_format)


def model_and_optimizer(cfg, in_shape, compute: device.Compute) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = build_model(cfg, in_shape, compute)
    return model, builders.build_optimizer(cfg.optimizer, model.parameters())


def fused_blocks(model: torch.nn.Module, names: set[str]) -> None:
    """The blocks named take ablate's fused kernels (trainer.fused), the others torch's ops: the minimal
    loop, training the runner's model, computes with torch's ops as a hand-written loop would."""
    for name, module in model.named_modules():
        if hasattr(module, "fused"):
            module.fused = name in names


def minimal_loop(cfg, images: torch.Tensor, labels: torch.Tensor, compute: device.Compute, augment: bool, shared=None):
    """A hand-written loop over normalized float tensors, with torch's ops; returns a function timing
    one epoch. `shared`: the (model, optimizer) to train, else its own."""
    model, opt = shared or model_and_optimizer(cfg, images.shape[1:], compute)
    dev, batch = compute.device, cfg.data.batch_size
    x_all = ((images.to(dev).float() / 255 - 0.5) / 0.25).contiguous(memory_format=compute.memory_format)
    labels = labels.to(dev)

    def epoch() -> float:
        model.train()
        fused_blocks(model, set())
        synchronize(dev)
        start = time.perf_counter()
        order = torch.randperm(len(labels), device=dev)
        for i in range(len(labels) // batch):
            idx = order[i * batch : (i + 1) * batch]
            x = x_all[idx]
            if augment:
                shift = torch.randint(0, 9, (2, batch), device=dev)
                x = crop_flip(x, shift[0], shift[1], torch.rand(batch, device=dev) < 0.5, 4)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=compute.precision == "bf16"):
                loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        synchronize(dev)
        return time.perf_counter() - start

    return epoch


def runner_loop(
    cfg, images: torch.Tensor, labels: torch.Tensor, compute: device.Compute, logdir: Path, augment=False, shared=None
):
    """ablate's Trainer with its default logging and diagnostics; returns a function timing one epoch.
    `shared`: the (model, optimizer) to train, else its own."""
    model, opt = shared or model_and_optimizer(cfg, images.shape[1:], compute)
    if cfg.trainer.compile:
        model.compile()
    dev = compute.device
    folder = cache.cache_dir() / "kernels"  # the blocks that take the fused kernels, as a run decides (trainer.fused)
    fused = set(kernels.switch_on(model, cfg.trainer.fused, dev, compute.autocast_dtype, cfg.trainer.compile, folder))
    split = splits.Split(images.to(dev), labels.to(dev))
    mean, std = torch.full((images.shape[1],), 0.5, device=dev), torch.full((images.shape[1],), 0.25, device=dev)
    train = batches.Batches(
        split,
        cfg.data.batch_size,
        mean,
        std,
        shuffle=True,
        augment=augment,
        drop_last=True,
        memory_format=compute.memory_format,
    )
    empty = batches.Batches(splits.Split(images[:0], labels[:0]), 256, mean, std)
    schedule = builders.build_schedule(cfg.sched, opt, len(train), 1000)
    captured = graphs.pick(cfg.trainer.graphs, dev, opt, cfg.trainer.compile, 1)  # as a run decides (trainer.graphs)
    graphed_step = graphs.GraphedStep(model, opt, compute.autocast_dtype, cfg.trainer.grad_clip) if captured else None
    learner = Learner(model, opt, schedule, autocast_dtype=compute.autocast_dtype, graphed_step=graphed_step)
    diagnostics = Diagnostics(model) if cfg.trainer.diagnostics else None
    reporting = Reporting(RunLogger(logdir), TrainingProgress(enabled=False), diagnostics=diagnostics)
    trainer = Trainer(learner, SplitBatches(train, empty, empty), TrainerConfig.of(cfg.trainer), reporting)
    epochs = iter(range(10**6))

    def epoch() -> float:
        fused_blocks(model, fused)
        synchronize(dev)
        start = time.perf_counter()
        trainer.train_epoch(next(epochs))
        synchronize(dev)
        return time.perf_counter() - start

    return epoch


def dataloader_loop(cfg, dataset, in_shape, workers: int, dev: torch.device):
    """The usual path, fp32 in the default layout; returns a function timing one epoch."""
    fp32 = device.Compute(dev, "fp32", "contiguous", torch.get_num_threads())
    model = build_model(cfg, in_shape, fp32)
    opt = builders.build_optimizer(cfg.optimizer, model.parameters())
    pin = dev.type == "cuda"
    loader = DataLoader(
        dataset, batch_size=cfg.data.batch_size, shuffle=True, drop_last=True, num_workers=workers, pin_memory=pin
    )

    def epoch() -> float:
        model.train()
        synchronize(dev)
        start = time.perf_counter()
        for x, y in loader:
            x, y = x.to(dev, non_blocking=pin), y.to(dev, non_blocking=pin)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        synchronize(dev)
        return time.perf_counter() - start

    return epoch


def epoch_seconds(loops: dict, rounds: int, pairs: int = 1) -> dict[str, list[float]]:
    """Each loop's epoch times over `rounds`, after one warm-up epoch each (allocator, oneDNN kernels,
    compilation). In each round the first two loops alternate `pairs` times (A B, B A, A B, ...), so
    that each of their epochs has the other's next to it, then the others run once; the whole order is
    reversed every other round, so that neither what drifts through a round nor what one loop leaves
    behind for the next (a DataLoader's workers ending) favours one of them. The first two loops get
    `pairs` times per round, the others one, in the order they ran: the i-th times of the first two
    are neighbours."""
    for loop in loops.values():
        loop()
    first, second, *others = loops
    alternating = [name for i in range(pairs) for name in ((first, second) if i % 2 == 0 else (second, first))]
    times = {name: [] for name in loops}
    for r in range(rounds):
        order = alternating + others
        for name in order if r % 2 == 0 else reversed(order):
            times[name].append(loops[name]())
    return times


def images_per_second(times: dict[str, list[float]], n: int) -> dict[str, float]:
    """Median images/s of each loop over its epochs."""
    return {name: n / statistics.median(t) for name, t in times.items()}


def per_round(times: list[float], rounds: int) -> list[float]:
    """A loop's mean epoch time in each round (the first two loops of `epoch_seconds` run several per round)."""
    k = len(times) // rounds
    return [statistics.fmean(times[i * k : (i + 1) * k]) for i in range(rounds)]


@dataclass
class Ratio:
    """A speed ratio a/b from paired times (neighbouring epochs, or rounds): the geometric mean of the
    pairs' ratios with its 95% interval (Student's t on their logs); `level` when the interval holds 1.0."""

    value: float
    low: float
    high: float

    @property
    def level(self) -> bool:
        return self.low <= 1.0 <= self.high

    def __str__(self) -> str:
        return f"{self.value:.2f} [{self.low:.2f}, {self.high:.2f}]{' level' if self.level else ''}"


def paired_ratio(a: list[float], b: list[float]) -> Ratio:
    """Speed of a over speed of b (= b's time / a's time), pair by pair; the two times of a pair share
    the machine's state, so the pairs cancel what drifts between them. Fewer than 2 pairs: no interval."""
    logs = [math.log(tb / ta) for ta, tb in zip(a, b, strict=True)]
    center = statistics.fmean(logs)
    if len(logs) < 2:
        return Ratio(math.exp(center), math.exp(center), math.exp(center))
    from scipy import stats

    half = stats.t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return Ratio(math.exp(center), math.exp(center - half), math.exp(center + half))


def describe(compute: device.Compute) -> str:
    if compute.device.type == "cuda":
        return torch.cuda.get_device_name(compute.device)
    return f"{compute.device.type}, native bf16: {device.native_bf16(compute.device)}"


def folder_images(root: Path, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The train split of the image folder at `root` as ablate's `image_folder()` decodes it, its
    cache in a temporary folder; prints the first call's time (decoding) and the second's (cache)."""
    os.environ["ABLATE_CACHE"] = str(root.parent / "ablate-cache")  # not the user's ~/.cache
    start = time.perf_counter()
    arrays = image_folder(str(root), device=dev)
    decoded = time.perf_counter()
    again = image_folder(str(root), device=dev)
    cached = time.perf_counter()
    assert "decoded cache" in again.source and np.array_equal(again.train[0], arrays.train[0])
    images, labels = arrays.train
    n, shape = len(images) + len(arrays.test[0]), "x".join(map(str, images.shape[1:]))
    print(
        f"folder   image_folder(): {n} PNG files of {shape}, decoded in {decoded - start:.2f} s (first call), "
        f"loaded from its cache in {cached - decoded:.3f} s (second call)",
        flush=True,
    )
    return torch.from_numpy(images), torch.from_numpy(labels)


def random_images(shape: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *SHAPES[shape]), generator=gen, dtype=torch.uint8)
    return images, torch.randint(0, 10, (n,), generator=gen)


def compare_paths(args, compute: device.Compute, tmp: Path) -> None:
    """The issue's table: minimal, runner and dataloader per model and shape."""
    print(
        f"compute: {describe(compute)}, {compute.precision}, {compute.layout}, {compute.threads} threads; batch {args.batch_size}; "
        f"augment {args.augment}; images/s, median over {args.rounds} rounds, minimal and runner alternating "
        f"{args.pairs} times in each; ratios: geometric mean of the paired ratios [95% interval], `level` where it "
        "holds 1.0"
    )
    worst_minimal, worst_loader = [], []
    for shape in args.shapes:
        datasets = usual_dataset(shape, tmp / shape, args.images, args.augment)
        if shape == "folder":  # the files usual_dataset wrote, decoded by ablate
            images, labels = folder_images(tmp / shape, compute.device)
        else:
            images, labels = random_images(shape, args.images)
        for name in args.models:
            cfg = compose_cfg(f"model={name}", f"data.batch_size={args.batch_size}", f"trainer.graphs={args.graphs}")
            # one model and optimizer for both loops (two instances of a model can differ in speed by a few
            # per cent), unless the runner's step is a CUDA graph, which keeps the gradients its own
            shared = model_and_optimizer(cfg, images.shape[1:], compute)
            if graphs.pick(cfg.trainer.graphs, compute.device, shared[1], cfg.trainer.compile, 1):
                shared = None
            loops = {
                "minimal": minimal_loop(cfg, images, labels, compute, args.augment, shared),
                "runner": runner_loop(cfg, images, labels, compute, tmp / f"logs-{shape}-{name}", args.augment, shared),
                **{
                    f"dataloader-{w}": dataloader_loop(cfg, datasets, SHAPES[shape], w, compute.device)
                    for w in args.workers
                },
            }
            times = epoch_seconds(loops, args.rounds, args.pairs)
            speed = images_per_second(times, args.images)
            workers = max(args.workers, key=lambda w: speed[f"dataloader-{w}"])
            loader = speed[f"dataloader-{workers}"]
            to_minimal = paired_ratio(times["runner"], times["minimal"])
            to_loader = paired_ratio(per_round(times["runner"], args.rounds), times[f"dataloader-{workers}"])
            worst_minimal.append(to_minimal)
            worst_loader.append(to_loader)
            print(
                f"{shape:8s} model={name:9s} minimal {speed['minimal']:7.0f}  runner {speed['runner']:7.0f}  "
                f"dataloader {loader:7.0f} ({workers} workers)  runner/minimal={to_minimal} "
                f"runner/dataloader={to_loader}",
                flush=True,
            )
    low_minimal = min(worst_minimal, key=lambda r: r.value)
    low_loader = min(worst_loader, key=lambda r: r.value)
    print(
        f"min runner/minimal={low_minimal.value:.2f} runner/dataloader={low_loader.value:.2f}  "
        f"(95% intervals: {low_minimal}, {low_loader})"
    )


def compare_compute(args, tmp: Path) -> None:
    """ablate's runner in each precision and layout, as ratios to fp32 contiguous."""
    threads, dev = torch.get_num_threads(), device.pick_device("auto")
    combos = [(p, layout) for p in ("fp32", "bf16") for layout in ("contiguous", "channels_last")]
    print(
        f"{describe(device.Compute(dev, 'fp32', 'contiguous', threads))}; augment {args.augment}; images/s, median of {args.rounds}"
    )
    for shape in args.shapes:
        images, labels = random_images(shape, args.images)
        for name in args.models:
            cfg = compose_cfg(f"model={name}", f"data.batch_size={args.batch_size}")
            loops = {
                f"{p}/{layout}": runner_loop(
                    cfg, images, labels, device.Compute(dev, p, layout, threads), tmp / f"{shape}-{name}-{p}-{layout}", args.augment
                )
                for p, layout in combos
            }  # fmt: skip
            speed = images_per_second(epoch_seconds(loops, args.rounds), args.images)
            base = speed["fp32/contiguous"]
            cells = "  ".join(f"{k} {v:6.0f} ({v / base:.2f})" for k, v in speed.items())
            print(f"{shape:8s} model={name:9s} {cells}", flush=True)


def compare_compile(args, compute: device.Compute, tmp: Path) -> None:
    """ablate's runner with trainer.compile=true against the same without it."""
    for shape in args.shapes:
        images, labels = random_images(shape, args.images)
        for name in args.models:
            eager = compose_cfg(f"model={name}", f"data.batch_size={args.batch_size}")
            compiled = compose_cfg(f"model={name}", f"data.batch_size={args.batch_size}", "trainer.compile=true")
            start = time.perf_counter()
            loops = {
                "eager": runner_loop(eager, images, labels, compute, tmp / f"{shape}-{name}-eager", args.augment),
                "compiled": runner_loop(
                    compiled, images, labels, compute, tmp / f"{shape}-{name}-compiled", args.augment
                ),
            }
            speed = images_per_second(epoch_seconds(loops, args.rounds), args.images)
            print(
                f"{shape:8s} model={name:9s} eager {speed['eager']:7.0f}  compiled {speed['compiled']:7.0f}  "
                f"compiled/eager={speed['compiled'] / speed['eager']:.2f}  (all, compilation included: "
                f"{time.perf_counter() - start:.0f} s)",
                flush=True,
            )


PRESET = "experiment=fmnist_speed"  # --fused: the net the kernels were written for


def compare_fused(args, compute: device.Compute, tmp: Path) -> None:
    """ablate's runner with its fused CPU kernels (trainer.fused=auto) against torch's ops (false)."""
    for shape in args.shapes:
        images, labels = random_images(shape, args.images)
        cfgs = {setting: compose_cfg(PRESET, f"trainer.fused={setting}") for setting in ("auto", "false")}
        loops = {
            setting: runner_loop(cfg, images, labels, compute, tmp / f"{shape}-{setting}", args.augment)
            for setting, cfg in cfgs.items()
        }
        times = epoch_seconds(loops, args.rounds, args.pairs)
        speed = images_per_second(times, args.images)
        print(
            f"{shape:8s} {PRESET} (batches of {cfgs['auto'].data.batch_size}): torch's ops {speed['false']:7.0f}  "
            f"fused {speed['auto']:7.0f} images/s  fused/torch={paired_ratio(times['auto'], times['false'])}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--images", type=int, default=6400, help="images per timed epoch (default 6400: 50 batches, one logging step)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds, paired for the ratios (default 5)")
    parser.add_argument(
        "--pairs", type=int, default=4, help="minimal and runner epochs side by side in each round (default 4)"
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument(
        "--batch-size", type=int, default=128, help="images per step (default 128, the configs' default)"
    )
    parser.add_argument("--augment", action="store_true", help="random crop and flip in every path")
    parser.add_argument(
        "--graphs", default="auto", choices=["auto", "true", "false"], help="the runner's trainer.graphs (default auto)"
    )
    parser.add_argument(
        "--workers", nargs="+", type=int, default=[0, 2], help="DataLoader workers to try (default 0 2)"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--compute", action="store_true", help="fp32/bf16 x contiguous/channels_last")
    mode.add_argument("--compile", action="store_true", help="trainer.compile=true against eager")
    mode.add_argument("--fused", action="store_true", help="trainer.fused=auto against false (fmnist_speed)")
    args = parser.parse_args()
    torch.manual_seed(0)
    np.random.seed(0)
    compute = device.pick(compose_cfg().trainer)
    with tempfile.TemporaryDirectory() as tmp:
        if args.compute:
            compare_compute(args, Path(tmp))
        elif args.compile:
            compare_compile(args, compute, Path(tmp))
        elif args.fused:
            compare_fused(args, compute, Path(tmp))
        else:
            compare_paths(args, compute, Path(tmp))


if __name__ == "__main__":
    main()
