"""The data set a run trains on, split and on the training device: `load` reads the set that
`data._target_` names (ablate's own loaders, a user's function, a torch Dataset class), holds out the
validation split, caps the training split, and puts each split on the device as uint8 tensors with
its statistics and fingerprints (runner.data.summary).
"""

from dataclasses import dataclass

import numpy as np
import torch

from runner.config import targets
from runner.data import facts, image_folder, torchvision_sets
from runner.data.datasets import Arrays, stratified_split
from runner.data.summary import summarize


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W), in either memory format
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def in_layout(self, memory_format: torch.memory_format) -> torch.Tensor:
        """The images in `memory_format`, converted in place: once for a sweep's jobs, which share the
        split (`load`), and without a second copy of the set (50,000 CIFAR-10 images take 0.35 s)."""
        self.images = self.images.contiguous(memory_format=memory_format)
        return self.images


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


_kept: dict[str, Data] = {}  # the last data loaded in this process, for a sweep's next jobs (one entry)


def load(cfg, device: torch.device) -> Data:
    """The splits `data=<name>` chooses, on `device`: val held out of train, train capped at train_size.
    The same data config on the same device as the last job of this process gets the same splits,
    read and decoded once (nothing writes into them: batches are gathered copies)."""
    key = f"{facts.memo_key(cfg)} {cfg.val_fraction} {cfg.train_size} {device}"
    if key not in _kept:
        _kept.clear()
        _kept[key] = split(cfg, device)
    return _kept[key]


def split(cfg, device: torch.device) -> Data:
    """The splits of load(), read and made now."""
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
