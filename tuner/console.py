"""Terminal output: progress lines and bars with rich, on stderr so stdout stays data."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

__all__ = ["count_progress", "download_progress", "err_console", "say", "warn"]

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _prefix() -> str:
    index = os.environ.get("TUNER_WORKER_INDEX")
    return f"[w{index}] " if index is not None else ""


def say(message: str) -> None:
    """One progress line, prefixed with the worker's index inside a pool."""
    err_console.print(f"{_prefix()}{message}", markup=False)


def warn(message: str) -> None:
    """A warning line."""
    err_console.print(f"{_prefix()}[yellow]warning:[/yellow] ", end="")
    err_console.print(message, markup=False)


@contextmanager
def download_progress(label: str) -> Iterator[Callable[[int, int | None], None]]:
    """A download bar; yields the callback that ``tuner.data.download_dataset`` takes.

    The bar appears with the first bytes, so a download that cannot start
    leaves only its error line.
    """
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
    :func:`tuner.features.load_or_compute` takes. Nothing shows until it is called.
    ``check`` runs at every update and may raise to stop the count (a signal).
    """
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
