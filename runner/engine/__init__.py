"""The training engine: one run, from its parts to its run directory."""
