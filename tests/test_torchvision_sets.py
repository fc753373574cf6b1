"""`data=torchvision data._target_=...`: a torchvision data set class (KMNIST, on small files in its
real format) and a class that takes `split=` (as SVHN does), decoded once into ablate's arrays."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from helpers import cli_env, compose_cfg, run_cli, write_mnist_like

from runner.config import schema
from runner.data.batches import load_arrays

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
    run = Path(sys.executable).parent / "run"  # the command a user types, in the folder of their module
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
    assert result.stderr.startswith(f"error: data._target_=torchvision.datasets.mnist.KMNIST with data.root={tmp_path}: ")
    assert "data.download=true" in result.stderr
