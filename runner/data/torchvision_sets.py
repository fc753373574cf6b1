"""Any torch Dataset class, torchvision's or a user's (`data=torchvision data._target_=torchvision.datasets.KMNIST`),
decoded once into the same uint8 arrays (N, C, H, W) as ablate's own data sets.

How the class is asked for a split is read from its constructor (runner.config.targets.split_style):

- `train=True/False` where its `__init__` takes `train`, or one it hands `**kwargs` on to down the
  MRO does (EMNIST's `split`, the subset such as 'balanced', is then the YAML's own key);
- `split='train'/'test'` where it takes `split` and no `train` (SVHN);
- neither (FakeData, a class of the user's): built once, and its test split drawn from it,
  `data.test_fraction` of every class with `data.split_seed` (stratified: the same for every seed).

`data.root` and `data.download` go only to a class whose constructor chain names them (FakeData takes
neither); the data config's other keys, less ablate's own, are its keyword arguments. No transform:
each sample is a PIL image (or an array) and an integer label, read once into the arrays. Before
that, the decoded size is compared with the memory the training device has free.
"""

import numpy as np

from runner.config.rules import reason
from runner.config.targets import partial, passes, split_style
from runner.data.datasets import Arrays, DataError, split_off_test
from runner.data.image_folder import check_memory

SPLITS = ("train", "test")
PASSED = ("root", "download")  # ablate's keys of data that a data set class gets where its chain names them
TEST_FRACTION = 0.2  # drawn into test from a class that has one set, where the data config says no data.test_fraction


def as_chw(image) -> np.ndarray:
    """A sample's image as uint8 (C, H, W): a PIL image (grey or RGB), an array (H, W) or (H, W, C)."""
    if hasattr(image, "mode") and image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def decode(cfg, cls, device, context: dict) -> Arrays:
    """The train and test splits of the data set class `cls`, built from `cfg` (the data config without
    ablate's keys) and from ablate's keys in `context` (root, download, test_fraction, split_seed)."""
    name = f"{cls.__module__}.{cls.__qualname__}"
    make = partial(cfg)
    given = {k: v for k, v in context.items() if k in PASSED and passes(cls, k)}
    where = f"{name} ({given['root']})" if "root" in given else name
    style = split_style(cls)
    if style is None:
        dataset = build(make, name, given)
        images, labels = read(dataset, name, given, device)
        fraction, seed = context.get("test_fraction", TEST_FRACTION), context.get("split_seed", 0)
        train, test = split_off_test(images, labels, fraction, seed, f"data._target_={name}")
        source = f"{where}; test split drawn: data.test_fraction={fraction:g}, data.split_seed={seed}"
        return Arrays(train, test, source=source, classes=class_names(dataset))
    splits, classes = {}, None
    for split in SPLITS:
        which = {"train": split == "train"} if style == "train" else {"split": split}
        dataset = build(make, name, {**given, **which})
        splits[split] = read(dataset, name, given, device)
        classes = classes or class_names(dataset)
    return Arrays(splits["train"], splits["test"], source=where, classes=classes)


def build(make, name: str, kwargs: dict):
    """The data set, or one line saying why it cannot be built: its files missing (a class that takes
    a root), or whatever its constructor raised."""
    try:
        return make(**kwargs)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 torchvision raises RuntimeError for missing files, others for bad ones
        if "root" in kwargs:
            raise DataError(
                f"data._target_={name} with data.root={kwargs['root']}: {reason(e)}; allowed: its files under data.root "
                "(as torchvision lays them out), or data.download=true on a machine that is online"
            ) from None
        raise DataError(
            f"data._target_={name} cannot be built ({type(e).__name__}: {reason(e)}); allowed: the keys and values "
            "its constructor takes"
        ) from None


def read(dataset, name: str, given: dict, device) -> tuple[np.ndarray, np.ndarray]:
    """Every sample of `dataset` as uint8 images (N, C, H, W) and int64 labels, once the memory is
    known to hold them."""
    n = len(dataset)
    first = as_chw(dataset[0][0]) if n else np.zeros((1, 1, 1), np.uint8)
    if "root" in given:
        check_memory(str(given["root"]), n, first.shape, device)
    else:
        check_memory(name, n, first.shape, device, key="data._target_")
    images = np.empty((n, *first.shape), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        image, label = dataset[i]
        images[i], labels[i] = as_chw(image), int(label)
    return images, labels


def class_names(dataset) -> list[str] | None:
    """The class names a data set states (`classes`), else as many as its `num_classes` says
    (FakeData: labels drawn from them, though a small set may miss some); None where it says neither."""
    classes = list(getattr(dataset, "classes", None) or [])
    count = getattr(dataset, "num_classes", None)
    if not classes and isinstance(count, int) and not isinstance(count, bool) and count > 0:
        classes = [str(i) for i in range(count)]
    return classes or None
