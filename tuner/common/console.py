"""Terminal output: progress lines and bars with rich, on stderr so stdout stays data."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

__all__ = [
    "LOG_FORMATS",
    "LOG_FORMAT_ENV",
    "PlainProgress",
    "count_progress",
    "download_progress",
    "err_console",
    "say",
    "warn",
]

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
# Bars redraw in place, which a log file or a container's output cannot show; there a
# plain line is printed instead, at most this often and at least every 10 %.
PLAIN_EVERY_S = 5.0


# How progress lines are stamped: "time" (13:45:02), "iso" (the date, the time with its
# zone: 2026-12-05T13:45:02+0000) or "plain" (none, the default outside `tuner worker`,
# whose --log-format sets it, "time" unless told). Pool children inherit it.
LOG_FORMAT_ENV = "TUNER_LOG_FORMAT"
LOG_FORMATS = ("time", "iso", "plain")


def _stamp() -> str:
    kind = os.environ.get(LOG_FORMAT_ENV, "plain")
    if kind == "plain":
        return ""
    if kind == "iso":
        return time.strftime("%Y-%m-%dT%H:%M:%S%z ")
    return time.strftime("%H:%M:%S ")


def _prefix() -> str:
    index = os.environ.get("TUNER_WORKER_INDEX")
    return f"[w{index}] " if index is not None else ""


def say(message: str) -> None:
    """One progress line: the time (see :data:`LOG_FORMAT_ENV`), the worker's index inside
    a pool, the message."""
    err_console.print(f"{_stamp()}{_prefix()}{message}", markup=False)


def warn(message: str) -> None:
    """A warning line."""
    err_console.print(f"{escape(_stamp() + _prefix())}[yellow]warning:[/yellow] ", end="")
    err_console.print(message, markup=False)


class PlainProgress:
    """Progress as plain lines, for output that is not a terminal.

    A line is printed on the first update, then whenever ``every`` seconds have
    passed or another tenth of the total is done, and on the last update.
    """

    def __init__(
        self,
        label: str,
        write: Callable[[str], None],
        *,
        every: float = PLAIN_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
        unit: Callable[[int], str] = str,
    ) -> None:
        self.label, self.write, self.every = label, write, every
        self.clock, self.unit = clock, unit
        self._last: float | None = None
        self._tenth = -1
        self._start = clock()

    def update(self, done: int, total: int | None) -> None:
        now = self.clock()
        tenth = done * 10 // total if total else -1
        final = total is not None and done >= total
        due = self._last is None or now - self._last >= self.every or tenth > self._tenth
        if not (due or final) or (final and self._tenth == 10):
            return
        self._last, self._tenth = now, max(tenth, self._tenth)
        if total:
            amount = f"{self.unit(done)}/{self.unit(total)} ({100 * done // total}%)"
        else:
            amount = self.unit(done)
        self.write(f"{self.label} {amount}, {now - self._start:.0f} s")


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@contextmanager
def download_progress(label: str) -> Iterator[Callable[[int, int | None], None]]:
    """A download bar; yields the callback that ``tuner.assets.datasets.download_dataset`` takes.

    The bar appears with the first bytes, so a download that cannot start
    leaves only its error line. Output that is not a terminal gets plain lines.
    """
    if not err_console.is_terminal:
        yield PlainProgress(f"downloading {label}:", say, unit=_megabytes).update
        return
    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    progress = Progress("{task.description}", *columns, console=err_console)
    task = progress.add_task(label, total=None)

    def update(done: int, total: int | None) -> None:
        if not progress.live.is_started:
            progress.start()
        progress.update(task, completed=done, total=total)

    try:
        yield update
    finally:
        if progress.live.is_started:
            progress.stop()


@contextmanager
def count_progress(
    label: str, check: Callable[[], None] = lambda: None
) -> Iterator[Callable[[str, int, int], None]]:
    """One bar per part of a long count, such as the images of each split.

    Yields the callback ``(part, done, total)`` that
    :func:`tuner.training.features.load_or_compute` takes. Nothing shows until it is called.
    ``check`` runs at every update and may raise to stop the count (a signal).
    Output that is not a terminal gets plain lines (see :class:`PlainProgress`).
    """
    if not err_console.is_terminal:
        plain: dict[str, PlainProgress] = {}

        def line(part: str, done: int, total: int) -> None:
            if part not in plain:
                plain[part] = PlainProgress(f"{label} {part}", say)
            plain[part].update(done, total)
            check()

        yield line
        return
    columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    progress = Progress("{task.description}", *columns, console=err_console)
    tasks: dict[str, object] = {}

    def update(part: str, done: int, total: int) -> None:
        if not progress.live.is_started:
            progress.start()
        if part not in tasks:
            tasks[part] = progress.add_task(f"{_prefix()}{label} {part}", total=total)
        progress.update(tasks[part], completed=done)  # type: ignore[arg-type]
        check()

    try:
        yield update
    finally:
        if progress.live.is_started:
            progress.stop()
