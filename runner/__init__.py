"""ablate's runner: the Hydra entry point, data on the device, the training loop, logging, reports."""

GROUPS = ("data", "model", "activation", "optimizer", "sched", "trainer")  # the config groups of a run
