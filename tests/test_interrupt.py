"""The signal handler of a run: the first signal asks for a stop, its echo is ignored, a second one
later interrupts at once."""

import os
import signal
import time

import pytest

from runner.engine.interrupt import ECHO_SECONDS, SIGNALS, stop_on_signals


def test_a_signal_asks_once_its_echo_is_ignored_and_a_later_one_interrupts():
    asked = []
    with stop_on_signals(asked.append):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C
        os.kill(os.getpid(), signal.SIGINT)  # torchrun passing the same Ctrl-C on to its processes
        time.sleep(0.05)
        assert asked == [signal.SIGINT]
        time.sleep(ECHO_SECONDS)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)  # the handler runs here
    assert asked == [signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are put back


def test_the_preemption_signal_is_caught_too():
    assert signal.SIGUSR2 in SIGNALS
    asked = []
    with stop_on_signals(asked.append):
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(0.05)
    assert asked == [signal.SIGUSR2]
