"""Checks across the keys of a spec, made once it is typed; no TensorFlow, no imports.

Every message starts with the key to change, so that the error can name the
``--set`` option that gave it its value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.config.values import origin_of
from tuner.errors import SpecError
from tuner.recipes import BASES, BUILTIN, Recipe, name_problem
from tuner.study.settings import DIRECTIONS, PRUNER_KINDS, REDUCTIONS, SAMPLER_KINDS
from tuner.training.settings import LOGGED_METRICS

if TYPE_CHECKING:
    from tuner.config.spec import StudySpec

__all__ = ["PRUNER_KINDS", "SAMPLER_KINDS", "recipe_problems", "validate"]


def _problems(spec: StudySpec) -> list[tuple[bool, str]]:
    pruner, size = spec.pruner, list(spec.data.image_size)
    hb, grace = spec.storage.heartbeat_interval, spec.storage.grace_period
    counts = {
        "train.epochs": spec.train.epochs,
        "search.n_trials": spec.search.n_trials,
        "data.batch_size": spec.data.batch_size,
    }
    recipe = spec.model.recipe
    builtin = recipe in BUILTIN
    return [
        *((v >= 1, f"{k} must be at least 1, got {v}") for k, v in counts.items()),
        (min(size) >= 32, f"data.image_size must be at least [32, 32], got {size}"),
        (
            spec.sampler.kind in SAMPLER_KINDS,
            f"sampler.kind {spec.sampler.kind!r} is not one of: {', '.join(SAMPLER_KINDS)}",
        ),
        (
            spec.sampler.kind != "grid" or len(spec.search.warm_start) > 0,
            "sampler.kind = grid runs the search.warm_start points, and there are none; list "
            "the points in search.warm_start, or pick sampler.kind=tpe",
        ),
        (
            pruner.kind in PRUNER_KINDS,
            f"pruner.kind {pruner.kind!r} is not one of: {', '.join(PRUNER_KINDS)}",
        ),
        (name_problem(recipe) is None, str(name_problem(recipe))),
        (
            spec.objective.metric in LOGGED_METRICS,
            f"objective.metric {spec.objective.metric!r} is not a metric the model logs "
            f"({', '.join(LOGGED_METRICS)})",
        ),
        (
            spec.objective.direction in DIRECTIONS,
            f"objective.direction {spec.objective.direction!r} is not one of: "
            f"{', '.join(DIRECTIONS)}",
        ),
        (
            not (
                _lower_is_better(spec.objective.metric) and spec.objective.direction == "maximize"
            ),
            f"objective.metric {spec.objective.metric!r} is better when lower, but "
            "objective.direction is maximize; set objective.direction=minimize",
        ),
        (
            spec.objective.reduce in REDUCTIONS,
            f"objective.reduce {spec.objective.reduce!r} is not one of: {', '.join(REDUCTIONS)}",
        ),
        (
            spec.model.base in BASES,
            f"model.base {spec.model.base!r} is not one of: {', '.join(BASES)}",
        ),
        (
            0 < pruner.percentile < 100,
            f"pruner.percentile must be in (0, 100), got {pruner.percentile:g}",
        ),
        *(
            (v >= 0, f"pruner.{k} must be at least 0, got {v:g}")
            for k, v in {
                "n_startup_trials": pruner.n_startup_trials,
                "n_warmup_steps": pruner.n_warmup_steps,
                "patience": pruner.patience,
            }.items()
        ),
        (
            pruner.min_resource >= 1,
            f"pruner.min_resource must be at least 1, got {pruner.min_resource}",
        ),
        (
            pruner.reduction_factor >= 2,
            f"pruner.reduction_factor must be at least 2, got {pruner.reduction_factor}",
        ),
        (spec.model.download_timeout > 0, "model.download_timeout must be > 0 seconds"),
        (hb >= 1, f"storage.heartbeat_interval must be >= 1 second, got {hb}"),
        (grace > hb, f"storage.grace_period ({grace}) must exceed .heartbeat_interval ({hb})"),
        (
            spec.storage.outage_tolerance >= 0,
            "storage.outage_tolerance must be at least 0 seconds, "
            f"got {spec.storage.outage_tolerance:g}",
        ),
        (spec.data.dir != "", "data.dir is empty; set it to the dataset folder"),
        *((False, p) for p in _learning_rate_problems(spec)),
        # A built-in recipe is checked here; a user's once it is imported (tuner.runner.worker).
        *((False, p) for p in (recipe_problems(BUILTIN[recipe], spec) if builtin else [])),
    ]


def _lower_is_better(metric: str) -> bool:
    """Losses and errors: a study that maximizes one searches for the worst model."""
    name = metric.removeprefix("val_")
    return name == "loss" or name.endswith(("_loss", "error", "mae", "mse", "mape"))


def recipe_problems(recipe: Recipe, spec: StudySpec) -> list[str]:
    """What is wrong with the spec for ``recipe``: its base, image size and space."""
    return recipe.problems(spec.model.base, spec.data.image_size, spec.search.space)


def _learning_rate_problems(spec: StudySpec) -> list[str]:
    lr = spec.search.space["learning_rate"]
    values = list(lr.choices) if lr.kind == "categorical" else [lr.low, lr.high]
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numbers and all(v > 0 for v in values):
        return []
    return [
        f"search.learning_rate must be positive numbers (Adam's step size), got "
        f"{lr.describe()}; write it like search.learning_rate.low=1e-4"
    ]


def validate(spec: StudySpec, where: str, origins: dict[str, str] | None = None) -> None:
    """Raise the first problem of the spec, naming the ``--set`` option behind its key.

    Raises:
        SpecError: ``FILE: KEY ...; how to fix it``.
    """
    for ok, message in _problems(spec):
        if not ok:
            fix = "" if "; " in message else "; fix it in the spec file or with --set"
            source = origin_of(message.split(" ", 1)[0], origins or {}, where)
            raise SpecError(f"{source}: {message}{fix}")
