"""Checks across the keys of a spec, made once it is typed; no TensorFlow, no imports.

Every message starts with the key to change, so that the error can name the
``--set`` option that gave it its value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.config.values import origin_of
from tuner.errors import SpecError
from tuner.recipes import BASES, BUILTIN, OPTIMIZERS, Recipe, is_user_recipe, name_problem
from tuner.recipes.settings import PRECISIONS
from tuner.study.settings import (
    DIRECTIONS,
    GAP,
    MAX_OBJECTIVES,
    PRUNER_KINDS,
    REDUCTIONS,
    SAMPLER_KINDS,
    lower_is_better,
    metric_problem,
)
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
        *((False, p) for p in _objective_problems(spec)),
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
        (
            spec.model.precision in PRECISIONS,
            f"model.precision {spec.model.precision!r} is not one of: {', '.join(PRECISIONS)}",
        ),
        (hb >= 1, f"storage.heartbeat_interval must be >= 1 second, got {hb}"),
        (grace > hb, f"storage.grace_period ({grace}) must exceed .heartbeat_interval ({hb})"),
        (
            spec.storage.outage_tolerance >= 0,
            "storage.outage_tolerance must be at least 0 seconds, "
            f"got {spec.storage.outage_tolerance:g}",
        ),
        (
            spec.storage.call_timeout > 0,
            f"storage.call_timeout must be > 0 seconds, got {spec.storage.call_timeout:g}",
        ),
        (
            spec.data.memory_limit_mb >= 0,
            f"data.memory_limit_mb must be at least 0, got {spec.data.memory_limit_mb}; give "
            "the megabytes of decoded images a worker keeps in memory (0 keeps them on disk)",
        ),
        (
            spec.data.dir != "" or bool(spec.data.recipe),
            "data.dir is empty; set it to the dataset folder",
        ),
        (
            not spec.data.recipe or is_user_recipe(spec.data.recipe),
            f"data.recipe {spec.data.recipe!r} must name a function of yours as "
            "module:function, like mydata:load_data",
        ),
        *((False, p) for p in _optimizer_problems(spec)),
        *((False, p) for p in _learning_rate_problems(spec)),
        # A built-in recipe is checked here; a user's once it is imported (tuner.runner.worker).
        *((False, p) for p in (recipe_problems(BUILTIN[recipe], spec) if builtin else [])),
    ]


def _objective_problems(spec: StudySpec) -> list[str]:
    """``[objective]``: known directions, at most two metrics, the gap's rules."""
    o = spec.objective
    key = "objective.metrics" if o.metrics else "objective.metric"
    problems: list[str] = []
    # The metrics of a built-in recipe on image folders are known here; others by the probe.
    builtin = spec.model.recipe in BUILTIN and not spec.data.recipe
    if builtin and (problem := metric_problem(o, LOGGED_METRICS)) is not None:
        problems.append(problem)
    problems += [
        f"objective.direction {d!r} is not one of: {', '.join(DIRECTIONS)}"
        for d in (*o.ways, o.direction)
        if d not in DIRECTIONS
    ]
    if o.metrics and not 1 <= len(o.metrics) <= MAX_OBJECTIVES:
        problems.append(
            f"objective.metrics must list 1 or {MAX_OBJECTIVES} metrics, got {len(o.metrics)}"
        )
    if o.names[0] == GAP:
        problems.append(
            "objective.metrics must start with a logged metric, whose gap 'gap' then is, "
            'like objective.metrics=["val_accuracy", "gap"]'
        )
    elif o.metrics and len(o.directions) != len(o.metrics):
        problems.append(
            f"objective.directions must give one direction per metric ({len(o.metrics)}), got "
            f"{len(o.directions)}; leave it out to take minimize for losses, errors and the "
            "gap, maximize for the others"
        )
    if len(set(o.names)) != len(o.names):
        problems.append(f"objective.metrics lists a metric twice: {list(o.names)}")
    if o.metric.removeprefix("val_") == o.metric and GAP in o.names:
        problems.append(
            f"{key} has gap, but {o.metric!r} is not a validation metric; the gap needs one "
            "like val_accuracy, whose training value is its name without val_"
        )
    for name, way in zip(o.names, o.ways, strict=False):
        if lower_is_better(name) and way == "maximize":
            what = "objective.direction" if not o.metrics else "its objective.directions entry"
            problems.append(
                f"{key} {name!r} is better when lower, but {what} is maximize; "
                + ("set objective.direction=minimize" if not o.metrics else "set it to minimize")
            )
    if o.max_gap < 0:
        problems.append(f"objective.max_gap must be above 0 (0 means no limit), got {o.max_gap:g}")
    if o.max_gap and o.multi:
        problems.append(
            "objective.max_gap bounds the gap of a single objective, but objective.metrics "
            "lists two; use one form: drop objective.max_gap, or keep one metric"
        )
    return problems


def _optimizer_problems(spec: StudySpec) -> list[str]:
    if "optimizer" not in spec.search.space:
        return []
    param = spec.search.space["optimizer"]
    choices = list(param.choices) if param.kind == "categorical" else []
    unknown = [c for c in choices if c not in OPTIMIZERS]
    if param.kind != "categorical" or unknown:
        return [
            f"search.optimizer must choose among Keras optimizers ({', '.join(OPTIMIZERS)}), "
            f'got {param.describe()}; write it like search.optimizer.choices=["adam", "sgd"]'
        ]
    return []


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
