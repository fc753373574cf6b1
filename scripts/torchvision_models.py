"""Every classification builder of torchvision.models, as it is, through one real sweep of `run`:
each is built by `_target_` alone (model=torchvision) with the data's class count, takes one training
epoch and the test evaluation on 3x32x32 images (torchvision's FakeData), or is refused in one line
that says why. Prints one line per builder and the count that trains.

    .venv/bin/python scripts/torchvision_models.py                 # all of them (about 15 minutes on 2 cores)
    .venv/bin/python scripts/torchvision_models.py resnet18 vit_b_16
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torchvision

SIZE = 40  # FakeData images: 32 to train on (val_fraction 0, test_fraction 0.2), 8 to test
OVERRIDES = [
    "model=torchvision", "data=torchvision", "data._target_=torchvision.datasets.FakeData",
    f"+data.size={SIZE}", "+data.image_size=[3,32,32]", "data.batch_size=8", "data.val_fraction=0",
    "trainer.max_epochs=1", "trainer.diagnostics=false",
]  # fmt: skip


def builders() -> list[str]:
    """The classification builders: those of torchvision.models itself (not of its detection,
    segmentation, video, optical flow or quantization submodules)."""
    return torchvision.models.list_models(module=torchvision.models)


def outcome(sweep: Path, name: str) -> tuple[str, str]:
    """A builder's status in the sweep and, where it did not complete, its error line."""
    runs = [p for p in sweep.iterdir() if p.is_dir() and p.name.endswith(f"torchvision.models.{name}")]
    metrics = json.loads((runs[0] / "metrics.json").read_text()) if runs and (runs[0] / "metrics.json").exists() else {}
    status = metrics.get("status", "missing")
    return status, "" if status == "completed" else str(metrics.get("error", ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="builders to try (default: every classification builder)")
    parser.add_argument("--out", type=Path, default=Path("outputs/torchvision_models"), help="the sweep directory")
    args = parser.parse_args(argv)
    names = args.names or builders()
    targets = ",".join(f"torchvision.models.{name}" for name in names)
    command = [
        sys.executable,
        "-m",
        "runner",
        "-m",
        *OVERRIDES,
        f"model._target_={targets}",
        f"hydra.sweep.dir={args.out}",
    ]
    subprocess.run(command, check=False)  # exits 1 when some builder is refused: read each one's outcome
    trained = 0
    for name in names:
        status, error = outcome(args.out, name)
        trained += status == "completed"
        print(f"{name:28s} {status:10s} {error}")
    print(f"{trained} of {len(names)} torchvision classification builders train as they are on 3x32x32 images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
