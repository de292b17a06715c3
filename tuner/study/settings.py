"""What a study's sampler and pruner are built from (``[sampler]``, ``[pruner]``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DIRECTIONS",
    "GAP",
    "MAX_OBJECTIVES",
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
    "default_direction",
    "lower_is_better",
    "metric_label",
    "metric_problem",
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


GAP = "gap"  # an objective of its own: how much better the first metric is on training data
MAX_OBJECTIVES = 2


@dataclass(frozen=True)
class ObjectiveSettings:
    """``[objective]``: the metric a trial reports every epoch, and which way is better.

    ``metric`` is any name in the model's Keras logs (``val_accuracy``,
    ``val_loss``, ``val_mae``, ...); a trial's value is its final epoch's
    (``reduce = "last"``) or its best epoch's (``"best"``).

    ``metrics`` makes a study of two objectives: two logged metrics, or one and
    ``"gap"``, the first metric on the training data minus on the validation
    data (the other way round for a metric that is better when lower), so a
    larger gap always means more overfitting. ``directions`` defaults to
    minimize for ``gap`` and for losses and errors, else maximize. With
    ``metrics`` given, ``metric`` and ``direction`` read as its first entry.
    ``max_gap`` (above 0) keeps one objective and makes the gap a constraint.
    """

    metric: str = "val_accuracy"
    direction: Direction = "maximize"
    reduce: Reduce = "last"
    metrics: tuple[str, ...] = ()
    directions: tuple[Direction, ...] = ()
    max_gap: float = 0.0

    def __post_init__(self) -> None:
        if self.metrics and self.metrics[0] != GAP:  # the first one is what is pruned on
            object.__setattr__(self, "metric", self.metrics[0])
            if not self.directions:
                ways = tuple(default_direction(m) for m in self.metrics)
                object.__setattr__(self, "directions", ways)
            if self.directions:
                object.__setattr__(self, "direction", self.directions[0])

    @property
    def names(self) -> tuple[str, ...]:
        """The study's objectives, in order: one metric, or the two of ``metrics``."""
        return self.metrics or (self.metric,)

    @property
    def ways(self) -> tuple[Direction, ...]:
        """The direction of each of :attr:`names`."""
        return self.directions if self.metrics else (self.direction,)

    @property
    def multi(self) -> bool:
        """Whether the study has more than one objective (and so no pruning)."""
        return len(self.names) > 1

    @property
    def label(self) -> str:
        """The metric as worker lines and tables show it (``val_acc`` for ``val_accuracy``)."""
        return metric_label(self.metric)

    def train_metric(self) -> str:
        """The first metric on the training data: ``accuracy`` for ``val_accuracy``."""
        return self.metric.removeprefix("val_")

    def gap(self, train: float, val: float) -> float:
        """How much better the first metric is on the training data than on validation."""
        return train - val if self.direction == "maximize" else val - train


def lower_is_better(metric: str) -> bool:
    """Losses and errors (and the gap): a study that maximizes one searches for the worst."""
    name = metric.removeprefix("val_")
    return name in ("loss", GAP) or name.endswith(
        ("_loss", "error", "mae", "mse", "mape", "msle", "crossentropy", "hinge")
    )


def default_direction(metric: str) -> Direction:
    return "minimize" if lower_is_better(metric) else "maximize"


def metric_problem(objective: ObjectiveSettings, logged: Sequence[str]) -> str | None:
    """Why the study's objectives cannot be read from a model that logs ``logged``, or None."""
    key = "objective.metrics" if objective.metrics else "objective.metric"
    logs = ", ".join(logged)
    for name in objective.names:
        if name == GAP and objective.train_metric() not in logged:
            return (
                f"{key} has gap, the training minus the validation {objective.train_metric()}, "
                f"but the model logs no {objective.train_metric()!r} (it logs {logs}); "
                f"put a metric with both logs first"
            )
        if name != GAP and name not in logged:
            return (
                f"{key} {name!r} is not a metric the model logs (it logs {logs}); pick one of "
                "them, or compile the model with that metric in the model recipe"
            )
    return None


def metric_label(metric: str) -> str:
    """A metric's short name in worker lines and tables: ``accuracy`` reads ``acc``."""
    return metric.replace("accuracy", "acc")
