"""The sampler named by ``sampler.kind``, built from Optuna's own samplers.

Every worker builds the study's sampler itself, seeded with ``sampler.seed``
plus its index in a pool (or its process id), so workers do not repeat each
other. ``grid`` runs the warm-start points and nothing else: its study's budget
is the number of points.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Sequence

from optuna.exceptions import ExperimentalWarning
from optuna.samplers import BaseSampler, GPSampler, QMCSampler, RandomSampler, TPESampler
from optuna.trial import FrozenTrial

from tuner.common.attrs import METRIC_GAP
from tuner.errors import SpecError
from tuner.study.settings import SAMPLER_KINDS, SamplerSettings

__all__ = ["SAMPLER_KINDS", "GapConstraint", "build_sampler", "sampler_budget"]


class GapConstraint:
    """Optuna's constraint for ``objective.max_gap``: feasible when the trial's gap is at most it.

    The gap is the trial's :data:`~tuner.common.attrs.METRIC_GAP` at its last epoch; a
    trial that recorded none (it failed before its first epoch) counts as infeasible.
    """

    def __init__(self, max_gap: float) -> None:
        self.max_gap = max_gap

    def __call__(self, trial: FrozenTrial) -> Sequence[float]:
        gap = trial.user_attrs.get(METRIC_GAP)
        return [math.inf if gap is None else float(gap) - self.max_gap]


def build_sampler(
    settings: SamplerSettings, worker_index: int = 0, max_gap: float = 0.0
) -> BaseSampler:
    """The sampler ``sampler.kind`` names, seeded for this worker.

    ``max_gap`` above 0 gives ``tpe`` and ``gp`` the :class:`GapConstraint`: they
    prefer trials within it. The other samplers do not take constraints; the
    export still picks the best trial within it.

    Raises:
        SpecError: for ``gp`` without PyTorch, which Optuna's ``GPSampler`` needs.
    """
    s = settings
    seed = s.seed + worker_index
    constraints = GapConstraint(max_gap) if max_gap > 0 else None
    if s.kind == "tpe":
        with warnings.catch_warnings():  # constraints_func is experimental in Optuna
            warnings.simplefilter("ignore", ExperimentalWarning)
            return TPESampler(
                seed=seed,
                n_startup_trials=s.n_startup_trials,
                constant_liar=True,
                constraints_func=constraints,
            )
    if s.kind == "gp":
        if importlib.util.find_spec("torch") is None:
            raise SpecError(
                "sampler.kind = gp needs PyTorch, which Optuna's GPSampler uses; install it "
                "with: pip install 'tuner[gp]', or pick sampler.kind=tpe"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return GPSampler(
                seed=seed, n_startup_trials=s.n_startup_trials, constraints_func=constraints
            )
    if s.kind == "qmc":
        with warnings.catch_warnings():  # Optuna calls it experimental; nothing to act on
            warnings.simplefilter("ignore", ExperimentalWarning)
            return QMCSampler(seed=seed, scramble=True)
    return RandomSampler(seed=seed)  # random; grid only ever runs its queued points


def sampler_budget(kind: str, n_trials: int, n_points: int) -> int:
    """The trials a worker aims for: ``grid`` stops after its ``n_points`` warm-start points."""
    if kind == "grid":
        return min(n_trials, n_points)
    return n_trials
