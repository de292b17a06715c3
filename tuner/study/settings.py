"""What a study's sampler and pruner are built from (``[sampler]``, ``[pruner]``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "PRUNER_KINDS",
    "SAMPLER_KINDS",
    "PrunerKind",
    "PrunerSettings",
    "SamplerKind",
    "SamplerSettings",
]

SamplerKind = Literal["tpe", "gp", "random", "qmc", "grid"]
PrunerKind = Literal["none", "median", "percentile", "hyperband", "patient", "successive-halving"]
SAMPLER_KINDS: tuple[SamplerKind, ...] = ("tpe", "gp", "random", "qmc", "grid")
PRUNER_KINDS: tuple[PrunerKind, ...] = (
    "none",
    "median",
    "percentile",
    "hyperband",
    "patient",
    "successive-halving",
)


@dataclass(frozen=True)
class SamplerSettings:
    """``[sampler]``: one of :data:`SAMPLER_KINDS`, seeded (each worker adds its index)."""

    kind: SamplerKind = "tpe"
    seed: int = 42
    n_startup_trials: int = 4


@dataclass(frozen=True)
class PrunerSettings:
    """``[pruner]``: one of :data:`PRUNER_KINDS` and the settings of Optuna's pruners."""

    kind: PrunerKind = "median"
    n_startup_trials: int = 4
    n_warmup_steps: int = 2
    percentile: float = 25.0
    min_resource: int = 1
    reduction_factor: int = 3
    patience: int = 2
