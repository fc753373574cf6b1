"""experiment=fmnist_speed written the way a Lightning user writes it: a LightningModule, torchvision's
FashionMNIST through DataLoaders with ToTensor, RandomHorizontalFlip and Normalize, and Lightning's
Trainer in bf16-mixed. The same net (BN CNN of 16 and 48 channels pooling right after each conv, a
hidden layer of 128), the same recipe (SGD with Nesterov momentum 0.9 at lr 0.2, a linear warmup over
a quarter epoch from 0.02, then cosine to zero per step, batches of 256, 3 epochs on all 60,000
training images mirrored at random, the first block frozen after 1.5 epochs and the second after 2.5)
and the test images scored with their mirror images. Prints one JSON line: the test accuracy and
the seconds of training.

    .venv/bin/python benchmarks/peers/lightning_fmnist.py --seed 0 [--root DIR] [--workers 2]

Needs the `peers` extra (`pip install -e '.[peers]'`: Lightning). --root holds FashionMNIST/raw/
(torchvision's layout); by default the files of Debian's dataset-fashion-mnist, unpacked once into
~/.cache/ablate-peers in that layout.
"""

import argparse
import gzip
import json
import math
import os
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530  # of Fashion-MNIST's training images
FREEZE = {0: 1.5, 1: 2.5}  # block -> the epoch at which its parameters stop training


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(cout), nn.ReLU()
    )


class FashionNet(L.LightningModule):
    def __init__(self, lr: float = 0.2, warmup_epochs: float = 0.25, epochs: int = 3, steps_per_epoch: int = 234):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            block(1, 16),
            block(16, 48),
            nn.Flatten(),
            nn.Linear(48 * 7 * 7, 128, bias=False),
            nn.BatchNorm1d(128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def on_train_batch_start(self, batch, batch_idx):
        for index, epochs in FREEZE.items():
            if self.global_step == round(epochs * self.hparams.steps_per_epoch):
                self.net[index].requires_grad_(False)

    def test_step(self, batch, batch_idx):
        x, y = batch
        logits = (self(x).float() + self(x.flip(3)).float()) / 2  # each test image and its mirror image
        self.log("test_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9, nesterov=True)
        warmup = round(self.hparams.warmup_epochs * self.hparams.steps_per_epoch)
        total = self.hparams.epochs * self.hparams.steps_per_epoch

        def factor(step: int) -> float:
            if step < warmup:
                return 0.1 + 0.9 * step / warmup
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def debian_root() -> str:
    """A folder in torchvision's layout (FashionMNIST/raw/, the files unpacked as its download leaves
    them) made once from Debian's Fashion-MNIST files, as a user keeps a data set on disk."""
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ablate-peers"
    raw = root / "FashionMNIST" / "raw"
    if not raw.is_dir():
        staging = Path(tempfile.mkdtemp(dir=root.parent if root.parent.exists() else None))
        for file in DEBIAN.glob("*.gz"):
            (staging / file.stem).write_bytes(gzip.decompress(file.read_bytes()))
        raw.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(raw)
    return str(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", help="a folder with FashionMNIST/raw/ (default: Debian's files, unpacked once)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    L.seed_everything(args.seed, workers=True)
    root = args.root or debian_root()
    normalize = transforms.Normalize((MEAN,), (STD,))
    train_set = datasets.FashionMNIST(
        root, train=True, download=False,
        transform=transforms.Compose([transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]),
    )  # fmt: skip
    test_set = datasets.FashionMNIST(
        root, train=False, download=False, transform=transforms.Compose([transforms.ToTensor(), normalize])
    )
    loader = {"num_workers": args.workers, "persistent_workers": args.workers > 0}
    train = DataLoader(train_set, batch_size=256, shuffle=True, drop_last=True, **loader)
    test = DataLoader(test_set, batch_size=256, **loader)
    model = FashionNet(epochs=args.epochs, steps_per_epoch=len(train))
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="auto",
        precision="bf16-mixed",
        logger=L.pytorch.loggers.TensorBoardLogger(tempfile.mkdtemp(prefix="lightning-")),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(model, train)
    train_seconds = time.perf_counter() - start
    (result,) = trainer.test(model, test, verbose=False)
    print(json.dumps({"test_acc": result["test_acc"], "train_seconds": round(train_seconds, 2), "workers": args.workers,
                      "threads": torch.get_num_threads(), "lightning": L.__version__, "pid": os.getpid()}))  # fmt: skip


if __name__ == "__main__":
    main()
