"""Real-format data files (IDX, CIFAR-10 python pickles, PNG image folders) and configs composed
from configs/ by Hydra, for the tests and the benchmarks."""

import gzip
import pickle
import struct
from pathlib import Path
from typing import ClassVar

import numpy as np
from hydra import compose, initialize_config_dir

from runner.cli.app import CONFIGS


def compose_cfg(*overrides: str):
    """The config `run *overrides` would get, composed from configs/ by Hydra."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    """An IDX file of unsigned bytes (magic 0x0000 08 ndim, big-endian sizes), gzipped or not."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def write_mnist_like(folder: Path, n_train: int = 60, n_test: int = 20, gz: bool = True, seed: int = 0) -> dict:
    """Small MNIST-format files: random 28x28 digits with labels 0-9; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10,
    }
    for name, array in arrays.items():
        write_idx(folder / name, array, gz=gz)
    return arrays


class _Python2Pickler(pickle._Pickler):
    """Pickles bytes as Python 2 `str` (the BINSTRING opcodes), as in the real CIFAR-10 batch files,
    which Python 3 reads as bytes with encoding="bytes" and as text with encoding="latin1"."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def save_python2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str


def write_cifar_like(folder: Path, per_batch: int = 20, seed: int = 0) -> dict:
    """Small CIFAR-10 python batches as Python 2 pickled them (dicts of str keys, data rows of 3072
    uint8, labels lists), and batches.meta."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(folder / name, "wb") as f:
            _Python2Pickler(f, protocol=2).dump({b"batch_label": name.encode(), b"labels": labels, b"data": data})
        written[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        _Python2Pickler(f, protocol=2).dump({b"label_names": [f"class{i}".encode() for i in range(10)]})
    return written


def write_image_folder(
    root: Path,
    classes: int = 3,
    per_class_train: int = 8,
    per_class_test: int = 4,
    size=(32, 32),
    mode: str = "RGB",
    seed: int = 0,
) -> dict:
    """PNG files in torchvision's ImageFolder layout, root/{train,test}/class_a/0000.png, ...: images
    of `size` (height, width) in PIL `mode` ("L", "RGB" or "RGBA"), each class its own mean colour
    plus noise (learnable). Returns the class names and, per split, the images as ablate decodes them
    (uint8 (N, C, H, W), alpha dropped), the labels and the paths, in ablate's order."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    names = [f"class_{chr(ord('a') + i)}" if i < 26 else f"class_{i:03d}" for i in range(classes)]
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    means = rng.integers(40, 216, (classes, channels))
    written = {"classes": names}
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        images, labels, paths = [], [], []
        for label, name in enumerate(names):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                noise = rng.integers(-40, 41, (*size, channels))
                pixels = np.clip(means[label] + noise, 0, 255).astype(np.uint8)
                path = folder / f"{i:04d}.png"
                Image.fromarray(pixels[..., 0] if mode == "L" else pixels).save(path)
                images.append(pixels[..., :3].transpose(2, 0, 1))
                labels.append(label)
                paths.append(path)
        empty = np.empty((0, min(channels, 3), *size), dtype=np.uint8)
        written[split] = (np.stack(images) if images else empty, np.array(labels, dtype=np.int64), paths)
    return written
