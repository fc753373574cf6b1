"""ablate's runner: cli/ (the `run` command), config/ (the config check), engine/ (one run), data/,
analysis/ (summaries, TensorBoard's HPARAMS), tune.py (tuned sweeps); here, the names they share."""

import json

GROUPS = ("data", "model", "activation", "optimizer", "sched", "trainer")  # the config groups of a run


def run_name(choices) -> str:
    """A run's name by its choices: plain-relu-momentum-cosine."""
    return "-".join(str(choices.get(g)) for g in ("model", "activation", "optimizer", "sched"))


def flatten(node, prefix: str = "") -> dict:
    """A config as dotted keys: {"optimizer": {"lr": 0.1}} -> {"optimizer.lr": 0.1}; a list becomes
    its JSON text ("[32, 64]"), an empty mapping no key."""
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: json.dumps(node) if isinstance(node, list) else node}
