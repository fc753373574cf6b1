"""Checkpoints: written atomically, loaded with weights_only=True (no pickled code runs); the
final weights of a completed run also as model.safetensors (tensors only, readable anywhere)."""

import pickle
import re
from pathlib import Path

import torch

from runner import disk
from runner.config.rules import show


def save(path: Path, state: dict) -> None:
    """Write `state` to `path` through a temporary file, fsync and rename: the checkpoint before
    stays whole until the new one is. A write that fails (a full disk) is WriteError, the partial
    file removed (runner.disk)."""
    with disk.replacing(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)  # to a Python file, whose OSError a full disk raises (torch's own writer hides it)


def load(path: Path, device: torch.device | str = "cpu") -> dict:
    """The checkpoint at `path`, unpickled with torch's weights-only unpickler: a file that carries
    code (or any object other than tensors and plain values) raises ValueError, and nothing in it runs."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)|Unsupported operand \S+", str(e))
        what = f" ({found.group(1) or found.group(0)})" if found else ""
        raise ValueError(
            f"{path} was refused: it holds pickled code or objects other than tensors{what}, which were not run; "
            "allowed: a checkpoint written by ablate; move the file away to start this run afresh"
        ) from None
    except (RuntimeError, EOFError) as e:
        raise ValueError(
            f"{path} is not a readable checkpoint ({str(e).split('.')[0]}); "
            "allowed: a checkpoint written by ablate; move the file away to start this run afresh"
        ) from None
    if not isinstance(state, dict):
        kind = type(state).__name__
        raise ValueError(f"{path} holds a {kind}, not a checkpoint; allowed: a checkpoint written by ablate")  # noqa: TRY004
    return state


def export_weights(path: Path, model: torch.nn.Module) -> None:
    """The model's state (parameters and buffers) as a safetensors file, written atomically; a
    write that fails is WriteError, as in `save`."""
    from safetensors.torch import save_file

    state = model.state_dict()
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in state.items()}  # no views, no NHWC
    with disk.replacing(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})


# Keys the config gained after checkpoints of its present shape were first written, each with the
# values that train as ablate did before the key: a checkpoint without the key resumes under them
# (the first is the one it trained with).
ADDED_KEYS: dict[str, tuple] = {
    "model.pool_position": ("after_block",),
    "trainer.eval_flip": (False,),
    "trainer.graphs": (False, "auto"),  # it trained without the graph; auto trains so on CPUs, on GPUs it captures
    # it trained with torch's ops; under auto a block with the kernels goes on with them (close, not bit for bit)
    "trainer.fused": (False, "auto"),
    "trainer.freeze": (None,),
}


def first_difference(old, new, key: str = "") -> tuple[str, object, object] | None:
    """The first key (dotted) where two config trees differ, with both values; None if equal. A key
    of ADDED_KEYS that `old` lacks stands for the values it trained with before the key existed."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            at = f"{key}.{k}" if key else str(k)
            if k not in old and at in ADDED_KEYS:
                before, now = ADDED_KEYS[at], new.get(k, "<absent>")
                if any(type(b) is type(now) and b == now for b in before):  # False is not 0
                    continue
                found = (at, before[0], now)
            else:
                found = first_difference(old.get(k, "<absent>"), new.get(k, "<absent>"), at)
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
            f"{path} holds a checkpoint of another config ({key}={show(old)} there, {show(new)} now); "
            "allowed: the same config to resume it, or another hydra.run.dir / hydra.sweep.dir"
        )
    return state
