"""SIGINT and SIGTERM as a flag that the worker acts on at safe points.

The handler only records the signal; it never raises into whatever code
happens to run (a garbage-collection callback, a storage write, a C call),
where Python may drop the exception or leave a write half-done. The worker
calls :meth:`StopSignals.check` where stopping is safe: after every training
or validation batch, every feature-extraction batch and download chunk,
between trials, and while it waits. A second signal stops the process at
once, as users expect from pressing Ctrl-C twice.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["Interrupted", "StopSignals"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Raised at a safe point after SIGINT or SIGTERM."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class StopSignals:
    """Records SIGINT and SIGTERM; :meth:`check` raises :class:`Interrupted` once one came."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._event = threading.Event()
        self._active = False

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = signum
        self._event.set()
        for s in _SIGNALS:  # a second signal stops the process at once
            signal.signal(s, signal.SIG_DFL)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        """Handle the signals inside the block (main thread only), then restore the old ones."""
        if self._active or threading.current_thread() is not threading.main_thread():
            yield self  # already installed by an outer block, or not possible here
            return
        previous = {s: signal.signal(s, self._handle) for s in _SIGNALS}
        self._active = True
        try:
            yield self
        finally:
            self._active = False
            for s, handler in previous.items():
                signal.signal(s, handler)

    def install(self) -> None:
        """Handle the signals from now on (main thread), for a process that is a worker.

        Used before the heavy imports, so that a signal in a worker's first moments
        is handled like any other; :meth:`installed` then finds the handlers in place.
        """
        if threading.current_thread() is threading.main_thread() and not self._active:
            for s in _SIGNALS:
                signal.signal(s, self._handle)
            self._active = True

    def check(self) -> None:
        """Raise :class:`Interrupted` if a signal has come."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``; a signal cuts it short."""
        self._event.wait(seconds)
