"""What a study's sampler and pruner are built from (``[sampler]``, ``[pruner]``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DIRECTIONS",
    "PRUNER_KINDS",
    "REDUCTIONS",
    "SAMPLER_KINDS",
    "Direction",
    "ObjectiveSettings",
    "PrunerKind",
    "PrunerSettings",
    "Reduce",
    "SamplerKind",
    "SamplerSettings",
    "metric_label",
]

SamplerKind = Literal["tpe", "gp", "random", "qmc", "grid"]
PrunerKind = Literal["none", "median", "percentile", "hyperband", "patient", "successive-halving"]
Direction = Literal["maximize", "minimize"]
Reduce = Literal["last", "best"]
DIRECTIONS: tuple[Direction, ...] = ("maximize", "minimize")
REDUCTIONS: tuple[Reduce, ...] = ("last", "best")
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


@dataclass(frozen=True)
class ObjectiveSettings:
    """``[objective]``: the metric a trial reports every epoch, and which way is better.

    ``metric`` is any name in the model's Keras logs (``val_accuracy``,
    ``val_loss``, ``val_mae``, ...); a trial's value is its final epoch's
    (``reduce = "last"``) or its best epoch's (``"best"``).
    """

    metric: str = "val_accuracy"
    direction: Direction = "maximize"
    reduce: Reduce = "last"

    @property
    def label(self) -> str:
        """The metric as worker lines and tables show it (``val_acc`` for ``val_accuracy``)."""
        return metric_label(self.metric)


def metric_label(metric: str) -> str:
    """A metric's short name in worker lines and tables: ``accuracy`` reads ``acc``."""
    return metric.replace("accuracy", "acc")
