"""SIGINT and SIGTERM end a run after the current step instead of killing it mid-write: the
Trainer saves a checkpoint and the run exits with 128 + the signal (130 or 143)."""

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals(request_stop: Callable[[int], None]) -> Iterator[None]:
    """Within the block, the first SIGINT or SIGTERM calls `request_stop(signum)`; a second one
    interrupts at once (KeyboardInterrupt), for a user who does not want to wait."""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be set from the main thread (e.g. a threads-backend launcher)
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    seen = []

    def handler(signum, frame):
        if seen:
            raise KeyboardInterrupt
        seen.append(signum)
        request_stop(signum)

    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
