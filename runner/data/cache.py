"""The decoded-data cache: a data set's splits as uint8 arrays in one .npz file, outside the data
folder, so that a run after the first reads them back in a fraction of the decoding's time; and
small JSON records of what is computed from them (runner.data.batches.summarize).

`<cache>/<kind>/<key>.npz`, where <cache> is $ABLATE_CACHE, else $XDG_CACHE_HOME/ablate, else
~/.cache/ablate, and the key names the files it came from (path, size and mtime of each, and how
they were read): any change of the files makes a new one. A cache file that cannot be read is
decoded again and rewritten; one that cannot be written is skipped, never an error. Used by
runner.data.datasets (the IDX and CIFAR files) and runner.data.image_folder. The records are
`<cache>/summaries/<key>.json`, keyed on the arrays' key and how they were split.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from runner import disk

SPLITS = ("train", "test")


def cache_dir() -> Path:
    """$ABLATE_CACHE, else $XDG_CACHE_HOME/ablate, else ~/.cache/ablate."""
    if os.environ.get("ABLATE_CACHE"):
        return Path(os.environ["ABLATE_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "ablate"
    return Path.home() / ".cache" / "ablate"


def files_key(version: str, folder: Path, detail, paths) -> str:
    """sha256 of the decoding's `version`, `folder`, `detail` (what else the decoding depends on) and
    every file's path relative to `folder`, size and mtime."""
    h = hashlib.sha256(f"{version}\n{folder}\n{detail}\n".encode())
    for path in sorted(paths):
        stat = path.stat()
        h.update(f"{path.relative_to(folder).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()


def read_cache(path: Path):
    """(train, test) from a cache file, or None when it is not a readable one."""
    try:
        with np.load(path, allow_pickle=False) as z:
            splits = [(z[f"{s}_images"], z[f"{s}_labels"]) for s in SPLITS]
    except Exception:  # noqa: BLE001 corrupt or truncated: decoded again and rewritten
        return None
    for images, labels in splits:
        if images.dtype != np.uint8 or images.ndim != 4 or labels.dtype != np.int64 or labels.shape != images.shape[:1]:
            return None
    return splits


def read_record(path: Path) -> dict | None:
    """The JSON object in `path`, or None where there is no readable one."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_record(path: Path, record: dict) -> None:
    """`record` as JSON in `path`, atomically (a temporary file, then os.replace); a failure only skips it."""
    try:
        with disk.replacing(path, unique=True) as tmp:
            tmp.write_text(json.dumps(record))
    except OSError:
        pass


def write_cache(path: Path, folder: Path, splits: dict) -> str:
    """Write the decoded splits to `path` atomically (a temporary file, then os.replace); returns
    what happened, for Arrays.source. Never inside the data folder, and a failure only skips it."""
    if path.resolve().is_relative_to(folder):
        return f"decoded; not cached: the cache folder {path.parent} is inside the data folder"
    try:
        with disk.replacing(path, unique=True) as tmp, open(tmp, "wb") as f:
            np.savez(f, **{f"{s}_{part}": a for s in SPLITS for part, a in zip(("images", "labels"), splits[s])})
    except OSError as e:
        return f"decoded; not cached in {path.parent}: {e.strerror or e}"
    return f"decoded, cached in {path}"
