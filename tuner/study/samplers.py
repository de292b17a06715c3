"""The sampler named by ``sampler.kind``, built from Optuna's own samplers.

Every worker builds the study's sampler itself, seeded with ``sampler.seed``
plus its index in a pool (or its process id), so workers do not repeat each
other. ``grid`` runs the warm-start points and nothing else: its study's budget
is the number of points.
"""

from __future__ import annotations

import importlib.util
import warnings

from optuna.exceptions import ExperimentalWarning
from optuna.samplers import BaseSampler, GPSampler, QMCSampler, RandomSampler, TPESampler

from tuner.errors import SpecError
from tuner.study.settings import SAMPLER_KINDS, SamplerSettings

__all__ = ["SAMPLER_KINDS", "build_sampler", "sampler_budget"]


def build_sampler(settings: SamplerSettings, worker_index: int = 0) -> BaseSampler:
    """The sampler ``sampler.kind`` names, seeded for this worker.

    Raises:
        SpecError: for ``gp`` without PyTorch, which Optuna's ``GPSampler`` needs.
    """
    s = settings
    seed = s.seed + worker_index
    if s.kind == "tpe":
        return TPESampler(seed=seed, n_startup_trials=s.n_startup_trials, constant_liar=True)
    if s.kind == "gp":
        if importlib.util.find_spec("torch") is None:
            raise SpecError(
                "sampler.kind = gp needs PyTorch, which Optuna's GPSampler uses; install it "
                "with: pip install 'tuner[gp]', or pick sampler.kind=tpe"
            )
        return GPSampler(seed=seed, n_startup_trials=s.n_startup_trials)
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
