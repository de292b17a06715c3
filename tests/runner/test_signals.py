"""SIGINT and SIGTERM set a flag; the worker acts on it at safe points."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tuner.runner.signals import Interrupted, StopSignals


def test_a_signal_only_sets_the_flag_and_check_raises_at_the_safe_point() -> None:
    signals = StopSignals()
    with signals.installed():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler ran: nothing was raised into this code
        assert signals.signum == signal.SIGTERM
        with pytest.raises(Interrupted) as stop:
            signals.check()
        assert stop.value.name == "SIGTERM" and stop.value.signum == signal.SIGTERM
        # A second signal would stop the process at once: the default is back.
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_signal_cuts_a_wait_short() -> None:
    signals = StopSignals()
    with signals.installed():
        started = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
        signals.wait(10)
        assert time.monotonic() - started < 5
        assert signals.signum == signal.SIGINT


def test_handlers_are_restored_and_nesting_installs_once() -> None:
    before = signal.getsignal(signal.SIGINT)
    signals = StopSignals()
    with signals.installed():
        inner_handler = signal.getsignal(signal.SIGINT)
        with signals.installed():
            assert signal.getsignal(signal.SIGINT) == inner_handler
    assert signal.getsignal(signal.SIGINT) == before
