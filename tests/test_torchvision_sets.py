"""`data=torchvision data._target_=...`: torchvision data set classes on small files in their real
formats (KMNIST's and EMNIST's IDX files, SVHN's .mat files), FakeData (no root, no split), and
classes of a user's (one that takes `split=`, one that takes neither), decoded once into ablate's
arrays; what a class cannot take refused before anything is written."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import cli_env, compose_cfg, run_cli, write_idx, write_mnist_like

from runner.config import schema
from runner.config.rules import ConfigError
from runner.data.splits import load, load_arrays

SPLIT_DATASET = '''
import numpy as np
import torch
from PIL import Image


class Colours(torch.utils.data.Dataset):
    """RGB images of one colour per class; `split` picks train or test, as torchvision's SVHN does."""

    def __init__(self, root, split="train", transform=None):
        n = 30 if split == "train" else 9
        self.labels = [i % 3 for i in range(n)]
        self.classes = ["red", "green", "blue"]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        pixels = np.zeros((8, 6, 3), np.uint8)
        pixels[..., self.labels[i]] = 200 + i % 50
        return Image.fromarray(pixels), self.labels[i]
'''


def test_kmnist_in_its_real_file_format_decodes_to_the_bytes_written(tmp_path):
    written = write_mnist_like(tmp_path / "KMNIST" / "raw", n_train=50, n_test=20, gz=False)
    cfg = compose_cfg("data=torchvision", "data._target_=torchvision.datasets.KMNIST", f"data.root={tmp_path}")
    schema.validate(cfg)
    arrays = load_arrays(cfg.data, torch.device("cpu"))
    train_images, train_labels = arrays.train
    assert train_images.dtype == np.uint8 and train_images.shape == (50, 1, 28, 28)
    assert np.array_equal(train_images[:, 0], written["train-images-idx3-ubyte"])
    assert np.array_equal(train_labels, written["train-labels-idx1-ubyte"])
    assert np.array_equal(arrays.test[0][:, 0], written["t10k-images-idx3-ubyte"])
    assert len(arrays.classes) == 10


def test_a_class_that_takes_split_trains_from_the_command_line(tmp_path):
    """Its class takes no `download`: `~data.download` leaves the key out (kept, it is refused by name)."""
    (tmp_path / "my_data.py").write_text(SPLIT_DATASET)
    # the command a user types, in the folder of their module: a process of its own, so that the console
    # script itself and a fresh process's import of my_data (the current directory made importable) are tested
    run = Path(sys.executable).parent / "run"
    result = subprocess.run(
        [run, "data=torchvision", "data._target_=my_data.Colours", "~data.download", "data.batch_size=10",
         "trainer.max_epochs=2",
         "model.channels=[4]", "model.hidden=[]", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["data"]["sizes"] == {"train": 27, "val": 3, "test": 9}
    assert len(metrics["data"]["mean"]) == 3 and metrics["data"]["name"] == "my_data.Colours"


def test_missing_files_are_refused_in_one_line_naming_the_class_and_the_root(tmp_path):
    result = run_cli("data=torchvision", "data._target_=torchvision.datasets.KMNIST", f"data.root={tmp_path}",
                     f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(
        f"error: data._target_=torchvision.datasets.mnist.KMNIST with data.root={tmp_path}: "
    )
    assert "data.download=true" in result.stderr


ONE_SET = '''
import numpy as np
import torch


class Stripes(torch.utils.data.Dataset):
    """Grey 6x6 images, one stripe row per class: one set, no root, no train or split."""

    def __init__(self, n=40, classes=4):
        self.labels = [i % classes for i in range(n)]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        pixels = np.full((6, 6), i % 7, np.uint8)
        pixels[self.labels[i]] = 255
        return pixels, self.labels[i]


class Needs(torch.utils.data.Dataset):
    """A required parameter without a default."""

    def __init__(self, n: int):
        self.n = n
'''

FAKE = [
    "data=torchvision", "data._target_=torchvision.datasets.FakeData", "+data.size=50", "+data.image_size=[3,32,32]",
]  # fmt: skip


def user_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`run *args` as a user types it, in the folder of their module my_data.py."""
    return run_cli(*args, "model.channels=[4]", "model.hidden=[]", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)


def test_fakedata_takes_no_root_and_its_test_split_is_drawn_the_same_for_every_seed(tmp_path):
    """data=torchvision's root and download go only to a class that takes them; FakeData takes neither
    train nor split: built once, data.test_fraction of every class drawn into test with split_seed."""
    cfgs = [compose_cfg(*FAKE, f"seed={seed}") for seed in (0, 1)]
    schema.validate(cfgs[0])
    arrays = load_arrays(cfgs[0].data, torch.device("cpu"))
    assert arrays.train[0].shape[1:] == (3, 32, 32) and len(arrays.train[1]) + len(arrays.test[1]) == 50
    labels = np.concatenate([arrays.train[1], arrays.test[1]])
    for c in np.unique(labels):  # stratified: 20% of every class, rounded
        assert (arrays.test[1] == c).sum() == round(0.2 * (labels == c).sum())
    assert len(arrays.classes) == 10 and "data.test_fraction=0.2, data.split_seed=0" in arrays.source
    infos = [load(cfg.data, torch.device("cpu")).info for cfg in cfgs]
    assert infos[0]["fingerprints"] == infos[1]["fingerprints"]
    other = load(compose_cfg(*FAKE, "data.split_seed=1").data, torch.device("cpu")).info
    assert other["fingerprints"]["test"] != infos[0]["fingerprints"]["test"]


def test_fakedata_trains_from_the_command_line(tmp_path):
    result = user_run(tmp_path, *FAKE, "data.test_fraction=0.3", "data.batch_size=8", "trainer.max_epochs=1")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["data"]["in_shape"] == [3, 32, 32]
    assert sum(metrics["data"]["sizes"].values()) == 50 and metrics["data"]["num_classes"] == 10


def write_svhn_like(root: Path, n: dict, seed: int = 0) -> dict:
    """SVHN's .mat files as torchvision reads them: X uint8 (32, 32, 3, N), y (N, 1) with labels 1-10
    (10 for the digit 0); returns the images (N, 3, 32, 32) and labels (0-9) each split should give."""
    import scipy.io

    rng = np.random.default_rng(seed)
    written = {}
    for split, count in n.items():
        x = rng.integers(0, 256, (32, 32, 3, count), dtype=np.uint8)
        y = (np.arange(count) % 10 + 1).astype(np.uint8)[:, None]
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
        written[split] = (x.transpose(3, 2, 0, 1), y[:, 0].astype(np.int64) % 10)
    return written


def test_svhn_takes_split_and_reads_its_real_mat_files(tmp_path, monkeypatch):
    from torchvision.datasets import SVHN

    written = write_svhn_like(tmp_path, {"train": 30, "test": 12})
    for split in ("train", "test"):  # torchvision checks each file's MD5: the known one is the real file's
        url, name, _ = SVHN.split_list[split]
        md5 = hashlib.md5((tmp_path / name).read_bytes()).hexdigest()
        monkeypatch.setitem(SVHN.split_list, split, [url, name, md5])
    cfg = compose_cfg("data=torchvision", "data._target_=torchvision.datasets.SVHN", f"data.root={tmp_path}")
    schema.validate(cfg)
    arrays = load_arrays(cfg.data, torch.device("cpu"))
    for split in ("train", "test"):
        images, labels = getattr(arrays, split)
        assert np.array_equal(images, written[split][0]) and np.array_equal(labels, written[split][1])
    assert arrays.source == f"torchvision.datasets.svhn.SVHN ({tmp_path})"
    with pytest.raises(ConfigError) as e:  # ablate passes split itself
        schema.validate(compose_cfg("data=torchvision", "data._target_=torchvision.datasets.SVHN", "+data.split=extra"))
    assert str(e.value) == (
        "data.split='extra' is not allowed for data._target_=torchvision.datasets.SVHN: ablate passes split='train' "
        "and split='test', one per split; allowed: no data.split"
    )


EMNIST = ["data=torchvision", "data._target_=torchvision.datasets.EMNIST"]


def test_emnist_takes_its_own_split_and_train_through_its_base_class(tmp_path):
    """EMNIST(root, split, **kwargs) hands train on to MNIST.__init__: ablate finds it down the MRO and
    passes train=True/False; the YAML's split ('balanced') is EMNIST's subset, passed through."""
    raw, rng, written = tmp_path / "EMNIST" / "raw", np.random.default_rng(0), {}
    for split, n in (("train", 47), ("test", 20)):
        images, labels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 47
        write_idx(raw / f"emnist-balanced-{split}-images-idx3-ubyte", images, gz=False)
        write_idx(raw / f"emnist-balanced-{split}-labels-idx1-ubyte", labels, gz=False)
        written[split] = (images, labels)
    cfg = compose_cfg(*EMNIST, f"data.root={tmp_path}", "+data.split=balanced")
    schema.validate(cfg)
    arrays = load_arrays(cfg.data, torch.device("cpu"))
    for split in ("train", "test"):
        images, labels = getattr(arrays, split)
        assert np.array_equal(images[:, 0], written[split][0]) and np.array_equal(labels, written[split][1])
    assert len(arrays.classes) == 47

    refusals = {
        (): "data.split has no value; allowed: a value for torchvision.datasets.EMNIST's parameter split",
        ("+data.split=balanced", "+data.train=false"): (
            "data.train=false is not allowed for data._target_=torchvision.datasets.EMNIST: ablate passes "
            "train=True and train=False, one per split; allowed: no data.train"
        ),
        ("+data.split=balanced", "+data.colour=1"): (
            "data.colour=1 is not allowed; allowed: a key of data (batch_size, val_fraction, train_size, normalize, "
            "split_seed, augment, root, download, test_fraction, split, transform, target_transform)"
        ),
    }
    for overrides, line in refusals.items():
        with pytest.raises(ConfigError) as e:
            schema.validate(compose_cfg(*EMNIST, *overrides))
        assert str(e.value) == line


def test_a_users_class_without_root_train_or_split_trains_from_the_command_line(tmp_path):
    (tmp_path / "my_data.py").write_text(ONE_SET)
    result = user_run(
        tmp_path, "data=torchvision", "data._target_=my_data.Stripes", "+data.n=60", "data.batch_size=10",
        "data.test_fraction=0.25", "trainer.max_epochs=1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["data"]["sizes"] == {"train": 40, "val": 4, "test": 16}  # 25% of each class of 15 (4): test
    assert metrics["data"]["in_shape"] == [1, 6, 6] and metrics["data"]["num_classes"] == 4


@pytest.mark.parametrize(
    "overrides, line",
    [
        (["data._target_=torchvision.datasets.FakeData", "+data.colour=1"],
         ("data.colour=1 is not allowed; allowed: a key of data (batch_size, val_fraction, train_size, normalize, "
          "split_seed, augment, root, download, test_fraction, size, image_size, num_classes, transform, "
          "target_transform, random_offset)")),
        (["data._target_=torchvision.datasets.FakeData", "+data.size=many"],
         "data.size='many' is not allowed; allowed: an integer"),
        (["data._target_=torchvision.datasets.FakeData", "data.test_fraction=1"],
         "data.test_fraction=1 is not allowed; allowed: 0 < test_fraction < 1"),
        (["data._target_=my_data.Needs"], "data.n has no value; allowed: a value for my_data.Needs's parameter n"),
    ],
)  # fmt: skip
def test_what_a_class_cannot_take_is_refused_before_anything_is_written(tmp_path, overrides, line):
    (tmp_path / "my_data.py").write_text(ONE_SET)
    result = user_run(tmp_path, "data=torchvision", *overrides)
    assert (result.returncode, result.stderr) == (2, f"error: {line}\n")
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs").exists()
