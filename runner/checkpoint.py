"""Checkpoints: written atomically, loaded with weights_only=True (no pickled code runs)."""

import os
from pathlib import Path

import torch


def save(path: Path, state: dict) -> None:
    """Write `state` to `path` through a temporary file, fsync and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: Path, device: torch.device | str = "cpu") -> dict:
    return torch.load(path, map_location=device, weights_only=True)


def first_difference(old, new, key: str = "") -> tuple[str, object, object] | None:
    """The first key (dotted) where two config trees differ, with both values; None if equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            found = first_difference(old.get(k, "<absent>"), new.get(k, "<absent>"), f"{key}.{k}" if key else str(k))
            if found:
                return found
        return None
    return None if old == new else (key, old, new)


def load_matching(path: Path, config: dict) -> dict | None:
    """The checkpoint at `path` if there is one, after checking it was made with `config`;
    a checkpoint of another config raises ValueError saying where they differ."""
    if not path.exists():
        return None
    state = load(path)
    found = first_difference(state.get("config"), config)
    if found:
        key, old, new = found
        raise ValueError(
            f"{path} holds a checkpoint of another config ({key}={old!r} there, {new!r} now); "
            "allowed: the same config to resume it, or another hydra.run.dir / hydra.sweep.dir"
        )
    return state
