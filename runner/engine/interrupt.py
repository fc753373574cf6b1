"""SIGINT, SIGTERM and the preemption signal end a run after the current step instead of killing it
mid-write: the Trainer saves a checkpoint and the run exits with 128 + the signal (130, 143, 140).

The preemption signal is the one submitit (hydra/launcher=submitit_slurm) has SLURM send before a
job's time limit or preemption: USR2, or $SUBMITIT_PREEMPT_SIGNAL. After the checkpoint, `pass_on`
gives it to submitit's own handler, which requeues the job; the requeued job resumes from the checkpoint.
"""

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

PREEMPT = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)
SIGNALS = (signal.SIGINT, signal.SIGTERM, PREEMPT)
ECHO_SECONDS = 1.0  # a signal this soon after the first is the same request passed on (torchrun sends Ctrl-C on)


@contextlib.contextmanager
def stop_on_signals(request_stop: Callable[[int], None]) -> Iterator[None]:
    """Within the block, the first of SIGNALS calls `request_stop(signum)`; a second one, a second or
    more later, interrupts at once (KeyboardInterrupt), for a user who does not want to wait. Sooner,
    it is the first passed on again: torchrun sends its processes the Ctrl-C they already got."""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be set from the main thread (e.g. a threads-backend launcher)
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    seen = []

    def handler(signum, frame):
        now = time.monotonic()
        if seen and now - seen[0] >= ECHO_SECONDS:
            raise KeyboardInterrupt
        if not seen:
            seen.append(now)
            request_stop(signum)

    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def pass_on(signum: int) -> None:
    """After the checkpoint, the signal to the handler that was there before stop_on_signals: a
    launcher's (submitit requeues the job and exits). Python's and the system's defaults are left out."""
    handler = signal.getsignal(signum)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signum, None)
