"""Python's cyclic garbage collector, kept off the run's way.

Importing torch and Hydra and composing the config make about 220,000 Python objects that live as
long as the process, and each full collection walks all of them: a run of experiment=fmnist_speed
took four, three while it started (0.14 s) and one while it trained (0.1 s). `command()` (the `run`
program) switches the collector off while the process starts; before a process's first training
step, `settle()` freezes what exists by then (gc.freeze: no collection walks it again) and switches
the collector on, so that what training leaves in cycles is collected as usual.
"""

import functools
import gc


def off_while_starting() -> None:
    gc.disable()


@functools.cache  # once per process: what later jobs of a sweep leave behind is collected as usual
def settle() -> None:
    gc.freeze()
    gc.enable()
