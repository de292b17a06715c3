"""Data recipes: ``data.recipe = "module:function"``, a study's own training and validation data.

The function is found as a model recipe is (the current folder, the spec's
folder, the installed packages) and called for every trial as
``load_data(params, seed)``: ``params`` are the trial's hyperparameters (so a
batch size or an augmentation strength can be tuned), ``seed`` the trial's
seed. It returns ``(train, validation)``, each one of:

- a ``tf.data.Dataset`` of ``(x, y)`` batches;
- ``(x, y)`` NumPy arrays (or a dict of arrays for several inputs or
  outputs), which tuner batches at ``params["batch_size"]`` if the space has
  it, else at ``data.batch_size``, shuffling the training rows from ``seed``;
- a ``keras.utils.PyDataset``.

The function may carry a ``fingerprint``: a string (or a function of no
arguments returning one) that changes whenever the data does. Nothing here
loads TensorFlow; :mod:`tuner.training.owndata` reads what the function returns.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.errors import RecipeError
from tuner.recipes.user import import_function

__all__ = ["DATA_ADVICE", "DataRecipe", "import_data_recipe", "resolve_data"]

DATA_ADVICE = (
    "write it as load_data(params, seed) returning (train, validation): two tf.data "
    "Datasets of (x, y) batches, two (x, y) tuples of NumPy arrays, or two keras.utils.PyDataset"
)


@dataclass(frozen=True)
class DataRecipe:
    """A data function of the user's, checked to take ``(params, seed)``."""

    name: str
    function: Callable[..., Any]

    def load(self, params: Mapping[str, Any], seed: int) -> Any:
        """What the function returns for one trial, unchecked."""
        return self.function(params, seed)

    @property
    def fingerprint(self) -> str | None:
        """The function's ``fingerprint`` attribute (called when it is a function), or None."""
        found = getattr(self.function, "fingerprint", None)
        if callable(found):
            found = found()
        return None if found is None else str(found)


_resolved: dict[tuple[str, tuple[Path, ...]], DataRecipe] = {}


def resolve_data(name: str, paths: Sequence[Path]) -> DataRecipe:
    """The data recipe named ``name``, imported once per process."""
    key = (name, tuple(paths))
    if key not in _resolved:
        _resolved[key] = import_data_recipe(name, paths)
    return _resolved[key]


def import_data_recipe(name: str, paths: Sequence[Path]) -> DataRecipe:
    """Import ``module:function`` and check that it takes ``(params, seed)``.

    Raises:
        RecipeError: one line naming the module or function and what to do.
    """
    function = import_function(name, paths, "data.recipe", DATA_ADVICE)
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        raise RecipeError(
            f"cannot read the parameters of data.recipe {name!r}; {DATA_ADVICE}"
        ) from None
    params = list(signature.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    required = [
        p
        for p in params
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if (len(positional) < 2 and not varargs) or len(required) > 2:
        shown = f"{name.partition(':')[2]}{signature}"
        raise RecipeError(
            f"data.recipe {name!r} takes {shown}, but tuner calls it with two arguments "
            f"(params, seed); {DATA_ADVICE}"
        )
    return DataRecipe(name, function)
