"""ablate's runner: the Hydra entry point, data on the device, the training loop, logging, reports."""

GROUPS = ("data", "model", "activation", "optimizer", "sched", "trainer")  # the config groups of a run


def run_name(choices) -> str:
    """A run's name by its choices: plain-relu-momentum-cosine."""
    return "-".join(str(choices.get(g)) for g in ("model", "activation", "optimizer", "sched"))
