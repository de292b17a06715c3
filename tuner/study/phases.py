"""What each worker is doing, published in the study for ``tuner status`` and the dashboard.

A worker's phase (starting, downloading, computing features, training trial k,
waiting, exited) is a study system attribute ``tuner:worker:HOST:PID``, so every
reader of the study sees it whatever the storage, and optuna-dashboard's table of
the study's own attributes is not flooded with one row per worker that ever ran.
A daemon thread writes it on every change of phase and every few seconds, so
"last seen" tells a live worker from a dead one. Optuna cannot delete a study
attribute; a worker that exits writes the phase ``exited``. While the frozen-base
features are computed, the study note says so too. No TensorFlow here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import BaseStorage

from tuner.common.attrs import worker_name
from tuner.common.console import count_progress
from tuner.study.note import write_note

__all__ = [
    "EXITED",
    "PHASE_PREFIX",
    "PhaseBoard",
    "WorkerPhase",
    "epoch_progress",
    "features_progress",
    "phase_attrs",
    "read_phases",
    "worker_name",
]

PHASE_PREFIX = "tuner:worker:"
EXITED = "exited"
# Written this often while nothing changes; a worker silent for STALE_AFTER is shown as gone.
REFRESH_S = 10.0
# Written at most this often however often the phase changes: a cached trial takes a fraction
# of a second, and two storage calls per trial would be a tenth of its time.
MIN_GAP_S = 1.0
STALE_AFTER_S = 60.0
# Exited or silent workers stay in the table this long, then drop out of it.
FORGET_AFTER_S = 3600.0

Progress = str | Callable[[], str]


@dataclass(frozen=True)
class WorkerPhase:
    """One worker's last published phase, as a reader sees it."""

    worker: str
    phase: str
    progress: str
    seen: dt.datetime  # UTC

    def age(self, now: dt.datetime) -> float:
        return max(0.0, (now - self.seen).total_seconds())

    def alive(self, now: dt.datetime) -> bool:
        return self.phase != EXITED and self.age(now) < STALE_AFTER_S


def phase_attrs(study: optuna.Study) -> dict[str, Any]:
    """The study's attributes that hold worker phases (user ones: earlier versions of tuner)."""
    return {**study.user_attrs, **study._storage.get_study_system_attrs(study._study_id)}


def read_phases(user_attrs: dict[str, Any], now: dt.datetime) -> list[WorkerPhase]:
    """The workers seen within the last hour, live ones first, from a study's user attributes."""
    found = []
    for key, value in user_attrs.items():
        if not key.startswith(PHASE_PREFIX) or not isinstance(value, dict):
            continue
        try:
            seen = dt.datetime.fromisoformat(str(value["time"]))
        except (KeyError, ValueError):
            continue
        phase = WorkerPhase(
            key.removeprefix(PHASE_PREFIX),
            str(value.get("phase", "?")),
            str(value.get("progress", "")),
            seen,
        )
        if phase.age(now) < FORGET_AFTER_S:
            found.append(phase)
    return sorted(found, key=lambda p: (not p.alive(now), p.worker))


class PhaseBoard:
    """Publishes this worker's phase in its study, from a daemon thread.

    Publishing is best effort: a storage error is ignored (the trial loop has its
    own fault handling), and nothing is written while the study does not exist yet.

    Args:
        storage: the storage, unwrapped, so that an outage never blocks the thread.
        study_name: the study to write to, once it exists.
        worker: ``host:pid``, the attribute's name after :data:`PHASE_PREFIX`.
        every: seconds between writes while the phase does not change.
        min_gap: seconds between writes at least; a change within it is written at its end.
        clock: the current UTC time, for tests.
    """

    def __init__(
        self,
        storage: BaseStorage,
        study_name: str,
        worker: str,
        *,
        every: float = REFRESH_S,
        min_gap: float = MIN_GAP_S,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
    ) -> None:
        self.storage, self.study_name, self.key = storage, study_name, PHASE_PREFIX + worker
        self.every, self.min_gap, self.clock = every, min(min_gap, every), clock
        self._phase, self._progress = "starting", ""
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set(self, phase: str, progress: Progress = "") -> None:
        """Change what is shown; a callable ``progress`` is evaluated at each write."""
        with self._lock:
            changed = phase != self._phase
            self._phase, self._progress = phase, progress
        if changed:
            self._changed.set()

    def write(self) -> bool:
        """Write the current phase now; False if the study does not exist or the write failed."""
        with self._lock:
            phase, progress = self._phase, self._progress
        try:
            shown = progress() if callable(progress) else progress
            study_id = self.storage.get_study_id_from_name(self.study_name)
            value = {"phase": phase, "progress": shown, "time": self.clock().isoformat()}
            self.storage.set_study_system_attr(study_id, self.key, value)
        except Exception:  # best effort: the study may not exist yet, or be unreachable
            return False
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.write()
            if self._stop.wait(self.min_gap):
                return
            self._changed.wait(self.every - self.min_gap)
            self._changed.clear()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="tuner-phase", daemon=True)
        self._thread.start()

    def close(self, how: str = "") -> None:
        """Stop the thread and write ``exited``, so that readers stop counting this worker."""
        self._stop.set()
        self._changed.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.set(EXITED, how)
        self.write()

    def __enter__(self) -> PhaseBoard:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.close(self._progress_text() if kind is None else f"stopped: {kind.__name__}")

    def _progress_text(self) -> str:
        with self._lock:
            progress = self._progress
        return progress if isinstance(progress, str) else ""


def epoch_progress(storage: BaseStorage, trial_id: int, epochs: int) -> Callable[[], str]:
    """The running trial's epoch, read from the storage when the phase is written."""

    def text() -> str:
        done = len(storage.get_trial(trial_id).intermediate_values)
        return f"epoch {min(done + 1, epochs)}/{epochs}"

    return text


@contextlib.contextmanager
def features_progress(
    study: optuna.Study,
    note: Callable[[str], str],
    board: PhaseBoard,
    check: Callable[[], None],
) -> Iterator[Callable[[str, int, int], None]]:
    """The feature count's progress: bars or lines, the worker's phase, and the study note.

    The dashboard's charts stay empty until a trial finishes; the note says why,
    from the first image counted until the count ends. ``note(now)`` is the note's
    text with a line about what the workers are doing (none: ``note("")``).
    """
    noted = False
    with count_progress("frozen-base features:", check=check) as bar:

        def progress(part: str, done: int, total: int) -> None:
            nonlocal noted
            if not noted:
                noted = True
                since = time.strftime("%Y-%m-%d %H:%M:%S")
                now = (
                    f"worker {worker_name()} is computing the frozen-base features since "
                    f"{since}; the charts fill once the first trial finishes."
                )
                with contextlib.suppress(Exception):  # the note is for people; never fatal
                    write_note(study, note(now))
            board.set("computing features", f"{part} {done}/{total}")
            bar(part, done, total)

        try:
            yield progress
        finally:
            if noted:
                with contextlib.suppress(Exception):
                    write_note(study, note(""))
