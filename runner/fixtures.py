"""Real-format data files (IDX, CIFAR-10 python pickles) and configs composed from configs/ by
Hydra, for the tests and the benchmarks."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

from runner.app import CONFIGS


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

    dispatch = dict(pickle._Pickler.dispatch)

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
