"""A worker's real trials, timed: its storage calls, its SQL and its CPU, per trial.

The worker is tuner's own trial loop (:func:`tuner.runner.worker.run_objective`:
the budget lock, reaping, the sampler, the pruner, the trial lines) in this
process, around the cheap workers' objective of ``tests/faultkit.py`` (a
learning rate, three reports, one attribute), so that what a trial costs is
tuner's and the storage's, not a model's.
"""

from __future__ import annotations

import functools
import itertools
import logging
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from tuner.common.console import err_console
from tuner.runner import worker as worker_module
from tuner.runner.worker import run_objective
from tuner.storages.storage import open_storage

from .fill import spec_for

__all__ = ["Timing", "cheap_objective", "run_timed"]


@dataclass(frozen=True)
class Timing:
    """Per trial (the median), in ms: wall time, storage calls, SQL statements, worker CPU."""

    trials: int
    wall_ms: float
    storage_ms: float
    sql_ms: float
    cpu_ms: float
    exit_code: int


def cheap_objective(trial: optuna.Trial) -> float:
    """The cheap workers' objective: its parameter, three reports (each asking the pruner,
    as a real trial's epochs do), one attribute."""
    lr = trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True)
    for epoch in range(3):
        trial.report(lr, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()
    trial.set_user_attr("gap", 0.0)
    return lr


class _Clock:
    """Seconds spent inside the calls it wraps; a call made inside another counts once."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._depth = threading.local()

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(self._depth, "n", 0)
            self._depth.n = depth + 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth.n = depth
                if depth == 0:
                    self.seconds += time.perf_counter() - start

        return timed


def _clock_storage(storage: BaseStorage) -> _Clock:
    """Time every public storage method of ``storage`` (its instance's own attributes), and
    the trial read that Optuna's cache in front of it calls."""
    clock = _Clock()
    for name in dir(type(storage)):
        attr = getattr(type(storage), name, None)
        if (
            (name.startswith("_") and name != "_get_trials")
            or not callable(attr)
            or isinstance(attr, type)
        ):
            continue
        setattr(storage, name, clock.wrap(getattr(storage, name)))
    return clock


def _clock_sql(engine: sa.Engine) -> _Clock:
    """Time every statement the engine sends (the budget lock's included)."""
    clock = _Clock()
    started: dict[int, float] = {}

    def before(conn: Any, cursor: Any, *args: Any) -> None:
        started[id(cursor)] = time.perf_counter()

    def after(conn: Any, cursor: Any, *args: Any) -> None:
        clock.seconds += time.perf_counter() - started.pop(id(cursor), time.perf_counter())

    sa.event.listen(engine, "before_cursor_execute", before)
    sa.event.listen(engine, "after_cursor_execute", after)
    return clock


def run_timed(url: str, name: str, trials: int, sets: tuple[str, ...] = ()) -> Timing:
    """Run ``trials`` more trials on the study in this process, and time them.

    Each figure is the median over the trials after the first, each measured from
    the end of the trial before: the worker's start (it reads the whole study once)
    is left out, as a cost paid once.
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.disable(logging.WARNING)
    err_console.quiet = True  # the trial lines stay, as work; only their printing goes
    spec = spec_for(name, sets)
    storage = open_storage(url, spec.storage, hold_connections=True)
    engine = getattr(storage, "engine", None)
    sql = _clock_sql(engine) if engine is not None else _Clock()
    calls = _clock_storage(storage)
    have = _complete(storage, name)
    marks: list[tuple[float, float, float, float]] = []
    run_one = worker_module._run_one

    def marked(*args: Any, **kwargs: Any) -> None:
        try:
            run_one(*args, **kwargs)
        finally:
            marks.append((time.perf_counter(), time.process_time(), calls.seconds, sql.seconds))

    worker_module._run_one = marked  # type: ignore[assignment]
    try:
        report = run_objective(
            spec, storage, url, lambda check: cheap_objective, n_trials=have + trials
        )
    finally:
        worker_module._run_one = run_one  # type: ignore[assignment]
        if engine is not None:
            engine.dispose()
    # The median trial: the machine is shared, and a trial that waited for a core is noise.
    steps = [[1000 * (b - a) for a, b in zip(one, two, strict=True)]
             for one, two in itertools.pairwise(marks)] or [[0.0] * 4]  # fmt: skip
    medians = (statistics.median(column) for column in zip(*steps, strict=True))
    wall, cpu, store, statements = medians
    return Timing(report.ran, wall, store, statements, cpu, report.exit_code)


def _complete(storage: BaseStorage, name: str) -> int:
    study_id = storage.get_study_id_from_name(name)
    return len(storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,)))
