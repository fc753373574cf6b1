"""Any torchvision classification data set class (`data=torchvision data._target_=torchvision.datasets.KMNIST`),
decoded once into the same uint8 arrays (N, C, H, W) as ablate's own data sets.

The class is built for each split, with `train=True/False` or `split="train"/"test"` (as SVHN
takes), from the keys of the data config (`root`, `download`, ...), without a transform: each
sample is a PIL image (or an array) and an integer label, read once into the arrays. Before that,
the decoded size is compared with the memory the training device has free.
"""

import numpy as np
from hydra.utils import instantiate

from runner.config.targets import takes
from runner.data.datasets import Arrays, DataError
from runner.data.image_folder import check_memory

SPLITS = ("train", "test")


def split_argument(cls, split: str) -> dict:
    if takes(cls, "train"):
        return {"train": split == "train"}
    if takes(cls, "split"):
        return {"split": split}
    raise DataError(
        f"data._target_={cls.__module__}.{cls.__qualname__} takes neither train nor split; "
        "allowed: a data set class that takes train=True/False or split='train'/'test'"
    )


def as_chw(image) -> np.ndarray:
    """A sample's image as uint8 (C, H, W): a PIL image (grey or RGB), an array (H, W) or (H, W, C)."""
    if hasattr(image, "mode") and image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def decode(cfg, cls, device) -> Arrays:
    """Both splits of the data set class `cls`, built from `cfg` (the data config without ablate's keys)."""
    name = f"{cls.__module__}.{cls.__qualname__}"
    make = instantiate(cfg, _partial_=True, _convert_="all")
    root = cfg.get("root")
    splits = {}
    for split in SPLITS:
        try:
            dataset = make(**split_argument(cls, split))
        except DataError:
            raise
        except Exception as e:  # torchvision raises RuntimeError for missing files, others for bad ones
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(
                f"data._target_={name} with data.root={root}: {reason}; allowed: its files under data.root "
                "(as torchvision lays them out), or data.download=true on a machine that is online"
            ) from None
        n = len(dataset)
        first = as_chw(dataset[0][0]) if n else np.zeros((1, 1, 1), np.uint8)
        check_memory(str(root), n, first.shape, device)
        images = np.empty((n, *first.shape), dtype=np.uint8)
        labels = np.empty(n, dtype=np.int64)
        for i in range(n):
            image, label = dataset[i]
            images[i], labels[i] = as_chw(image), int(label)
        splits[split] = (images, labels)
        classes = list(getattr(dataset, "classes", []) or []) or None
    return Arrays(splits["train"], splits["test"], source=f"{name} ({root})", classes=classes)
