"""A recipe checked before any trial: imported, built at sample points, its output checked.

Workers resolve the recipe before the data is read (a built-in needs nothing;
a user's module is imported and its signature checked; see
:func:`tuner.config.build.resolve_checked`), then call :func:`probe` once the
number of classes is known. The probe builds a user's recipe at two points of
the space (every range at its low end and every categorical at its first
choice, then the high ends and last choices), calls the model on one zero
input, and checks that it is a Keras model with one logit per class that reads
only hyperparameters the space defines. Every mistake is one
:class:`~tuner.errors.RecipeError` line, before any study or trial exists.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any

from tuner.errors import RecipeError, SpecError, one_line
from tuner.recipes import (
    BASES,
    HEAD,
    DataRecipe,
    Params,
    Recipe,
    building,
    unread_warning,
)
from tuner.space.params import Space, format_params
from tuner.study.settings import metric_problem
from tuner.training.settings import LOGGED_METRICS

if TYPE_CHECKING:
    from tuner.training.settings import TrialSetup

__all__ = ["CHECKED_RECIPE_ENV", "check_metrics", "probe", "probe_points"]

# Set once a process has probed a recipe; a pool's children inherit it and skip the probe.
CHECKED_RECIPE_ENV = "TUNER_CHECKED_RECIPE"


def probe_points(space: Space) -> list[dict[str, Any]]:
    """Two points at the edges of the space: low ends and first choices, then the other edge."""
    low = {n: p.choices[0] if p.kind == "categorical" else p.low for n, p in space.items()}
    high = {n: p.choices[-1] if p.kind == "categorical" else p.high for n, p in space.items()}
    return [low] if high == low else [low, high]


def _build(recipe: Recipe, point: dict[str, Any], shape: Any, num_classes: int) -> tuple:
    """Build at ``point``; returns the model and the names it read."""
    from tuner.training.model import build_part

    params = Params(point)
    with building(recipe, f"build with {format_params(point)}", "fix the function"):
        model = build_part(recipe, params, shape, num_classes)
    return model, params.read


def _check_output(recipe: Recipe, model: Any, shape: Any, num_classes: int) -> list[str]:
    """Call the model on one zero input; returns warnings, raises on a wrong output."""
    import numpy as np

    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    what = "feature_dim" if recipe.kind == HEAD else "input_shape"
    try:
        out = np.asarray(model(np.zeros((1, *dims), np.float32), training=False))
    except Exception as e:
        raise RecipeError(
            f"model.recipe {recipe.name!r} built a model that cannot take a batch of shape "
            f"{(None, *dims)} ({one_line(e, 300)}); start it with keras.Input(shape=...) made "
            f"from its {what} argument"
        ) from None
    if out.shape != (1, num_classes):
        raise RecipeError(
            f"model.recipe {recipe.name!r} built a model whose output has shape "
            f"{(None, *out.shape[1:])}, but the data has {num_classes} classes; end it with "
            "keras.layers.Dense(num_classes) and no softmax (tuner trains on logits)"
        )
    if num_classes > 1 and np.allclose(out.sum(axis=-1), 1.0) and (out >= 0).all():
        return [
            f"model.recipe {recipe.name!r} seems to end in a softmax; tuner trains on logits "
            "(from_logits=True), so end it with keras.layers.Dense(num_classes) alone"
        ]
    return []


def probe(setup: TrialSetup, recipe: Recipe, num_classes: int) -> list[str]:
    """Check what the recipe builds, once per process (and once per pool); returns warnings.

    Raises:
        RecipeError: naming what is wrong with the recipe and how to fix it.
    """
    space = setup.space
    data = setup.data_recipe.name if setup.data_recipe else ""
    text = f"{recipe.name} {data} {num_classes} {space.to_json()} {setup.objective}"
    key = hashlib.sha256(text.encode()).hexdigest()
    if os.environ.get(CHECKED_RECIPE_ENV) == key:
        return []
    if setup.data_recipe is not None:
        warnings = _probe_own(setup, recipe, setup.data_recipe)
        os.environ[CHECKED_RECIPE_ENV] = key
        return warnings
    if recipe.reads is not None:  # a built-in: known without building it
        check_metrics(setup, LOGGED_METRICS)
        warning = unread_warning(recipe, list(space), recipe.reads)
        os.environ[CHECKED_RECIPE_ENV] = key
        return [warning] if warning else []
    from tuner.common.tfload import quiet_tensorflow

    with quiet_tensorflow():
        import keras
    h, w = setup.data.image_size
    shape = BASES[setup.model.base].feature_dim if recipe.kind == HEAD else (h, w, 3)
    warnings: list[str] = []
    read: set[str] = set()
    for point in probe_points(space):
        model, names = _build(recipe, point, shape, num_classes)
        read |= names
        warnings += _check_output(recipe, model, shape, num_classes)
        warnings += _portability(recipe, model)
        if recipe.kind == HEAD or not model.compiled:
            check_metrics(setup, LOGGED_METRICS)
        else:  # the recipe's own compile: what it logs is known by training one batch
            import numpy as np

            x = np.zeros((2, *shape), np.float32)
            y = np.eye(num_classes, dtype=np.float32)[[0, num_classes - 1]]
            check_metrics(setup, _logged(recipe, None, model, (x, y), (x, y)))
    keras.backend.clear_session()
    if (warning := unread_warning(recipe, list(space), read)) is not None:
        warnings.append(warning)
    os.environ[CHECKED_RECIPE_ENV] = key
    return list(dict.fromkeys(warnings))


def _portability(recipe: Recipe, model: Any) -> list[str]:
    from tuner.training.model import portability_problems

    if problems := portability_problems(model):
        return [
            f"model.recipe {recipe.name!r} uses {', '.join(problems)}; training works, "
            "but tuner export --model will refuse the best model, since plain Keras "
            "cannot load that from a .keras file"
        ]
    return []


def check_metrics(setup: TrialSetup, logged: Any) -> None:
    """Raise when the study's objectives are not among the metrics the model logs."""
    if (problem := metric_problem(setup.objective, list(logged))) is not None:
        raise SpecError(problem)


def _logged(
    recipe: Recipe, data: DataRecipe | None, model: Any, train: tuple, val: tuple
) -> list[str]:
    """The names the compiled ``model`` logs, from training it on one batch."""
    import keras

    names: list[str] = []

    class Logs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            names.extend(logs or {})

    try:
        model.fit(
            *train, validation_data=val, epochs=1, verbose=0, shuffle=False, callbacks=[Logs()]
        )
    except Exception as e:
        if data is None:
            raise RecipeError(
                f"model.recipe {recipe.name!r} built a model that cannot train on one batch "
                f"({one_line(e, 300)}); fix its compile or its layers"
            ) from None
        raise RecipeError(
            f"the data of data.recipe {data.name!r} does not fit the model of model.recipe "
            f"{recipe.name!r} ({one_line(e, 300)}); build the model's inputs from input_shape "
            "and its outputs from the third argument, or fix the data"
        ) from None
    return names


def _check_images(recipe: Recipe, data: DataRecipe, shape: Any, base: str) -> None:
    """A head on a frozen base needs images of classes: (height, width, 3) and class labels."""
    dims = shape.input_shape
    least = BASES[base].min_size
    if isinstance(dims, dict) or len(dims) != 3 or dims[2] != 3 or min(dims[:2]) < least:
        raise SpecError(
            f"model.recipe {recipe.name!r} is a head on the frozen {base} base, which takes "
            f"RGB images of at least {least}x{least}, but data.recipe {data.name!r} gives x of "
            f"shape {dims}; give it images (height, width, 3), 0-255, or use a "
            "build_model(params, input_shape, num_outputs) recipe"
        )
    if shape.labels not in ("classes", "onehot"):
        raise SpecError(
            f"model.recipe {recipe.name!r} is a head that classifies, but data.recipe "
            f"{data.name!r} gives labels that are not classes ({shape.shown()}); give class "
            "integers or one-hot rows, or use a build_model recipe"
        )


def _probe_own(setup: TrialSetup, recipe: Recipe, data: DataRecipe) -> list[str]:
    """A data recipe's study: its data loaded once, the model built at both edges of the
    space, compiled as a trial compiles it and trained on one batch of it."""
    from tuner.common.tfload import quiet_tensorflow

    with quiet_tensorflow():
        import keras
    from tuner.training.model import ensure_compiled
    from tuner.training.owndata import describe, first_batch, load_splits

    points = probe_points(setup.space)
    params = Params(points[0])
    batch = int(points[0].get("batch_size", setup.data.batch_size))
    splits = load_splits(data, params, setup.model.seed, batch)
    shape = describe(splits)
    train, val = first_batch(splits.train), first_batch(splits.validation)
    warnings: list[str] = []
    read: set[str] = set(params.read) | ({"batch_size"} if splits.batched else set())
    if recipe.kind == HEAD:
        _check_images(recipe, data, shape, setup.model.base)
        dim = BASES[setup.model.base].feature_dim
        for point in points:
            model, names = _build(recipe, point, dim, shape.outputs)
            read |= names
            warnings += _check_output(recipe, model, dim, shape.outputs)
        check_metrics(setup, LOGGED_METRICS)
        points = []  # what a head logs is known; the base is not built here
    for point in points:
        model, names = _build(recipe, point, shape.input_shape, shape.outputs)
        read |= names
        ensure_compiled(model, point, shape.labels, recipe.name)
        warnings += _portability(recipe, model)
        check_metrics(setup, _logged(recipe, data, model, train, val))
    keras.backend.clear_session()
    if (warning := unread_warning(recipe, list(setup.space), read)) is not None:
        warnings.append(warning)
    return list(dict.fromkeys(warnings))
