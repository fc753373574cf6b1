"""ablate's runner: the Hydra entry point, data on the device, the training loop, logging."""
