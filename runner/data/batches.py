"""Data on the training device: whole splits as uint8 tensors, batches by seeded permutation.

No DataLoader and no workers: an epoch is a permutation drawn from (seed, epoch), and
normalization and augmentation (random crop with padding, horizontal flip) run on whole
batches on the device.
"""

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from runner.config import targets
from runner.data import cache, facts, image_folder, torchvision_sets
from runner.data.datasets import Arrays, stratified_split

SUMMARY_VERSION = "summary-1"  # part of a summary record's key: a change of what summarize computes makes new ones
EVAL_BATCH_SIZE = 256  # the fastest of 128, 256 and 1000 for evaluation on a 2-core CPU


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Data:
    train: Split
    val: Split
    test: Split
    mean: torch.Tensor  # per channel, of the training images scaled to [0, 1]
    std: torch.Tensor
    num_classes: int
    info: dict  # source, sizes, split seed and fingerprints, recorded with the run

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])


def _fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of the images' bytes, then the labels' (C order), to 16 hex digits."""
    h = hashlib.sha256()
    for array in (images, labels):
        h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()[:16]


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 images scaled to [0, 1], from a histogram of the 256 values."""
    values = np.arange(256) / 255
    mean, std = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(torch.from_numpy(images[:, c].ravel()), minlength=256).double().numpy()  # 30x numpy's
        m = counts @ values / counts.sum()
        mean.append(m)
        std.append(np.sqrt(counts @ (values - m) ** 2 / counts.sum()))
    return np.array(mean), np.array(std)


# ablate's keys of data, given to the data set where its signature names them
PASSED = ("root", "download", "test_fraction", "split_seed")


def load_arrays(cfg, device: torch.device) -> Arrays:
    """The data set `data._target_` names as uint8 arrays: those the `${data:...}` facts of this data
    config loaded already in this process (runner.data.facts), else read now (read_arrays)."""
    kept = facts.take_loaded(cfg, device)
    if kept is None:
        return read_arrays(cfg, device)
    if device is not None and torch.device(device).type == "cuda":  # the host holds them already
        n, shape = len(kept.train[1]) + len(kept.test[1]), kept.train[0].shape[1:]
        image_folder.check_memory(cfg._target_, n, shape, device, key="data._target_")
    return kept


def read_arrays(cfg, device: torch.device | None) -> Arrays:
    """The data set `data._target_` names, read: ablate's own and a user's functions return the arrays;
    a torch Dataset class (torchvision's) is built and decoded (runner.data.torchvision_sets). Each gets
    `device` and ablate's keys of data (PASSED) where its signature names them."""
    source = targets.without(cfg, targets.OWN_KEYS["data"])
    context = {key: cfg[key] for key in PASSED if key in cfg}
    target = targets.locate(cfg._target_)
    if targets.is_data_set_class(target):
        return torchvision_sets.decode(source, target, device, context)
    return targets.call(source, device=device, **context)


def count_classes(arrays: Arrays) -> int:
    """The number of classes: as many as the data set names, else the largest label of either split + 1."""
    if arrays.classes:
        return len(arrays.classes)
    labels = [split[1] for split in (arrays.train, arrays.test) if len(split[1])]
    return int(max(y.max() for y in labels)) + 1 if labels else 0


def load(cfg, device: torch.device) -> Data:
    """The splits `data=<name>` chooses, on `device`: val held out of train, train capped at train_size."""
    arrays = load_arrays(cfg, device)
    images, labels = arrays.train
    train_idx, val_idx = stratified_split(labels, cfg.val_fraction, cfg.split_seed)
    if cfg.train_size is not None and cfg.train_size < len(train_idx):
        train_idx = np.sort(np.random.default_rng(cfg.split_seed).permutation(train_idx)[: cfg.train_size])
    splits = {  # own, writable copies: indexing copies
        "train": (images[train_idx], labels[train_idx]),
        "val": (images[val_idx], labels[val_idx]),
        "test": tuple(np.array(a) for a in arrays.test),
    }
    summary = summarize(splits, arrays.key, (cfg.val_fraction, cfg.split_seed, cfg.train_size))
    mean, std = np.array(summary["mean"]), np.array(summary["std"])
    info = {
        "name": cfg._target_,
        "source": arrays.source,
        "split_seed": cfg.split_seed,
        "sizes": {k: len(v[1]) for k, v in splits.items()},
        "num_classes": count_classes(arrays),  # the facts `${data:...}` gives a YAML (runner.data.facts)
        "in_shape": list(images.shape[1:]),
        "fingerprints": summary["fingerprints"],
        "mean": mean.round(6).tolist(),
        "std": std.round(6).tolist(),
    }

    def to_device(x: np.ndarray, y: np.ndarray) -> Split:
        return Split(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))

    return Data(
        **{k: to_device(*v) for k, v in splits.items()},
        mean=torch.tensor(mean, dtype=torch.float32, device=device),
        std=torch.tensor(std, dtype=torch.float32, device=device),
        num_classes=info["num_classes"],
        info=info,
    )


def summarize(splits: dict, arrays_key: str | None, split: tuple) -> dict:
    """The training images' per-channel mean and std (full precision) and every split's fingerprint.
    Where the arrays have a decoded cache's key, read back from a record in the cache the second
    time the same arrays are split the same way (`split`): 0.13 s of a Fashion-MNIST run's start."""
    path = None
    if arrays_key:
        key = hashlib.sha256(f"{SUMMARY_VERSION}\n{arrays_key}\n{split}".encode()).hexdigest()
        path = cache.cache_dir() / "summaries" / f"{key}.json"
        record = cache.read_record(path)
        if record is not None and _fits(record, splits):
            return record
    mean, std = channel_stats(splits["train"][0])
    record = {
        "mean": mean.tolist(),
        "std": std.tolist(),
        "fingerprints": {k: _fingerprint(*v) for k, v in splits.items()},
    }
    if path is not None:
        cache.write_record(path, record)
    return record


def _fits(record: dict, splits: dict) -> bool:
    """Whether a summary record read back has summarize's form for these splits."""
    channels = splits["train"][0].shape[1]
    fingerprints, mean, std = record.get("fingerprints"), record.get("mean"), record.get("std")
    return (
        isinstance(fingerprints, dict) and fingerprints.keys() == splits.keys()
        and isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == channels
    )  # fmt: skip


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The random stream of one epoch: a function of (seed, epoch) alone, so a resumed run draws the same."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    """Per-sample random crop of the zero-padded batch at offsets (dy, dx), mirrored where `flip`
    (with `pad` 0, the flip alone: each image or its mirror image)."""
    if pad == 0:
        return torch.where(flip[:, None, None, None], x.flip(3), x)
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = dy[:, None] + torch.arange(h, device=x.device)
    cols = dx[:, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]


class Batches:
    """Float batches of one split: normalized, optionally shuffled, augmented and cut to full batches."""

    def __init__(
        self,
        split: Split,
        batch_size: int,
        mean: torch.Tensor | None,
        std: torch.Tensor | None,
        shuffle: bool = False,
        augment: bool | str = False,
        drop_last: bool = False,
        seed: int = 0,
        pad: int = 4,
        memory_format: torch.memory_format = torch.contiguous_format,
        rank: int = 0,
        ranks: int = 1,
        split_batches: bool = True,
    ):
        """Under DDP (`ranks` > 1), this process (`rank`) takes its part of every batch when
        `split_batches` (training: the global batch is `batch_size`), else every ranks-th batch
        (evaluation: the ranks then sum their totals)."""
        self.split, self.shuffle, self.augment, self.seed = split, shuffle, bool(augment), seed
        self.pad = 0 if augment == "flip" else pad  # flip only: the crop of the unpadded image is the image
        self.memory_format = memory_format
        self.batch_size = min(batch_size, max(1, len(split)))
        self.drop_last = drop_last
        self.rank, self.ranks, self.split_batches = rank, ranks, split_batches  # ranks divide batch_size: schema
        channels = split.images.shape[1]
        device = split.images.device
        mean = torch.zeros(channels, device=device) if mean is None else mean
        std = torch.ones(channels, device=device) if std is None else std
        # x / 255, then (x - mean) / std, as one multiply-add
        self.scale = (1 / (255 * std)).view(1, -1, 1, 1)
        self.shift = (-mean / std).view(1, -1, 1, 1)

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _draw_crops(self, gen: torch.Generator) -> torch.Tensor:
        """The epoch's crop offsets (dy, dx) and flips, drawn batch by batch for the whole batch (so
        every image gets the same crop under DDP) and sent to the device in one copy, not three a step."""
        n, draws = len(self.split), []
        for i in range(len(self)):
            size = (min(n, (i + 1) * self.batch_size) - i * self.batch_size,)
            dy = torch.randint(0, 2 * self.pad + 1, size, generator=gen)
            dx = torch.randint(0, 2 * self.pad + 1, size, generator=gen)
            flip = torch.rand(size, generator=gen) < 0.5
            draws.append(torch.stack([dy, dx, flip.long()]))
        crops = torch.cat(draws, dim=1)
        return crops.pin_memory() if self.split.images.is_cuda else crops

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `epoch`, from batch `start` on (a resumed epoch draws what it skips)."""
        n, device = len(self.split), self.split.images.device
        gen = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=gen).to(device, non_blocking=True) if self.shuffle else None
        if self.augment:
            crops = self._draw_crops(gen).to(device, non_blocking=True)  # (3, batches * batch_size)
        for i in range(len(self)):
            lo, hi = i * self.batch_size, min(n, (i + 1) * self.batch_size)
            if i < start or (not self.split_batches and i % self.ranks != self.rank):
                continue
            part = slice(None)
            if self.split_batches and self.ranks > 1:
                width = (hi - lo) // self.ranks
                part = slice(self.rank * width, (self.rank + 1) * width)
                lo, hi = lo + part.start, lo + part.stop
            idx = order[lo:hi] if order is not None else slice(lo, hi)
            x = self.split.images[idx].float()
            if self.augment:
                dy, dx, flip = crops[:, lo:hi]
                x = crop_flip(x, dy, dx, flip.bool(), self.pad)
            x = x * self.scale + self.shift
            yield x.contiguous(memory_format=self.memory_format), self.split.labels[idx]
