"""Replay: search strategies run through tuner's study machinery on recorded curves.

Each run is :func:`tuner.runner.worker.run_objective` on an in-memory study: the
spec's sampler (``sampler.kind``, seeded with the run's seed) and pruner, its
warm-start points queued first, the worker's trial loop and budget. Only the
training is replaced: a trial's point is looked up among the recorded
configurations (the nearest one) and its curve reported epoch by epoch through
tuner's own pruning callback, exactly as a real trial reports, so the pruner
sees what it would see live. A run stops spending once it has used the largest
budget of epochs (``until``), as a worker stops at its trial budget.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.storages import InMemoryStorage

from searchbench.curves import Curves
from tuner.common.console import err_console
from tuner.config.spec import StudySpec, load_spec
from tuner.runner.worker import run_objective
from tuner.space.params import suggest
from tuner.training.callbacks import PruningBeforeLastEpoch

__all__ = ["Strategy", "Trajectory", "replay"]


@dataclass(frozen=True)
class Strategy:
    """A way to spend the budget: spec overrides on top of the study's spec."""

    name: str
    sets: tuple[str, ...]

    def spec(self, study: str, seed: int, budget: int, epochs: int) -> StudySpec:
        # Every trial trains an epoch at least: the budget of epochs bounds the trials.
        sets = [f"sampler.seed={seed}", f"search.n_trials={budget}", f"train.epochs={epochs}"]
        return load_spec(study, [*self.sets, *sets, "study.name=replay"])


@dataclass
class Trajectory:
    """One run: after each finished trial, the epochs spent so far and the best value."""

    spent: list[int] = field(default_factory=list)
    best: list[float] = field(default_factory=list)
    points: list[dict[str, Any]] = field(default_factory=list)

    def best_within(self, budget: int) -> float:
        """The best final validation accuracy of trials completed within ``budget`` epochs."""
        within = [b for s, b in zip(self.spent, self.best, strict=True) if s <= budget]
        return within[-1] if within else 0.0

    def epochs_to_reach(self, target: float) -> int | None:
        """Epochs spent when the best value first reached ``target``; None if never."""
        return next((s for s, b in zip(self.spent, self.best, strict=True) if b >= target), None)


def replay(curves: Curves, strategy: Strategy, seed: int, budget: int) -> Trajectory:
    """Run ``strategy`` with sampler seed ``seed`` until ``budget`` epochs are spent."""
    epochs = curves.epochs
    spec = strategy.spec(curves.study, seed, budget, epochs)
    path = Trajectory()
    spent = 0
    best = 0.0

    def objective_for(check: Callable[[], None]) -> Callable[[optuna.Trial], float]:
        def objective(trial: optuna.Trial) -> float:
            nonlocal spent, best
            point = suggest(trial, spec.search.space)
            curve = curves.nearest(point, spec.search.space)["val_accuracy"]
            pruning = PruningBeforeLastEpoch(trial, "val_accuracy", epochs)
            try:
                for epoch, value in enumerate(curve[:epochs]):
                    check()
                    spent += 1
                    pruning.on_epoch_end(epoch, {"val_accuracy": value})
            except optuna.TrialPruned:
                _record(path, spent, best, point)
                raise
            best = max(best, curve[epochs - 1])
            _record(path, spent, best, point)
            return curve[epochs - 1]

        return objective

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    quiet, err_console.quiet = err_console.quiet, True
    try:
        with contextlib.redirect_stdout(None):
            run_objective(
                spec,
                InMemoryStorage(),
                "memory",
                objective_for,
                worker_index=0,
                until=lambda: spent >= budget,
            )
    finally:
        err_console.quiet = quiet
    return path


def _record(path: Trajectory, spent: int, best: float, point: dict[str, Any]) -> None:
    path.spent.append(spent)
    path.best.append(best)
    path.points.append(point)
