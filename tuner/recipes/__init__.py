"""Model recipes: one registry for the built-in names and ``module:function`` plug-ins.

:func:`resolve` resolves a ``model.recipe`` name once per process: a
built-in by name, or the user's function by importing its module (see
:mod:`tuner.recipes.user`). Nothing here loads TensorFlow, unless the user's
module does; building a recipe's network does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tuner.errors import SpecError
from tuner.recipes.bases import BASES, Base
from tuner.recipes.builtin import BUILTIN
from tuner.recipes.data import DataRecipe, resolve_data
from tuner.recipes.protocol import (
    HEAD,
    MODEL,
    OPTIMIZERS,
    TUNER_READS,
    Params,
    Recipe,
    RecipeKind,
    UnknownHyperparameter,
    building,
)
from tuner.recipes.user import import_recipe, is_user_recipe, search_path

__all__ = [
    "BASES",
    "BUILTIN",
    "HEAD",
    "MODEL",
    "OPTIMIZERS",
    "TUNER_READS",
    "Base",
    "DataRecipe",
    "Params",
    "Recipe",
    "RecipeKind",
    "UnknownHyperparameter",
    "building",
    "is_user_recipe",
    "name_problem",
    "resolve",
    "resolve_data",
    "search_path",
    "unread_warning",
]

_resolved: dict[tuple[str, tuple[Path, ...]], Recipe] = {}


def name_problem(name: str) -> str | None:
    """Why ``model.recipe`` cannot name a recipe, or None when it can (checked without import)."""
    if name in BUILTIN or is_user_recipe(name):
        return None
    return (
        f"model.recipe {name!r} is neither a built-in recipe ({', '.join(BUILTIN)}) nor a "
        "module:function of your own, like mypkg.models:build_head"
    )


def resolve(name: str, paths: Sequence[Path] = ()) -> Recipe:
    """The recipe named ``name``; a ``module:function`` is imported once per process.

    Raises:
        SpecError: for a name that is neither.
        RecipeError: when the user's module or function does not fit.
    """
    key = (name, tuple(paths))
    if key not in _resolved:
        if (problem := name_problem(name)) is not None:
            raise SpecError(problem)
        _resolved[key] = BUILTIN[name] if name in BUILTIN else import_recipe(name, paths)
    return _resolved[key]


def unread_warning(
    recipe: Recipe, space: Sequence[str], read: set[str] | frozenset[str]
) -> str | None:
    """A warning for hyperparameters the space defines and the recipe never reads, or None."""
    unread = [n for n in space if n not in read and n not in TUNER_READS]
    if not unread:
        return None
    names, it = ", ".join(unread), "it" if len(unread) == 1 else "them"
    tables = ", ".join(f"[search.{n}]" for n in unread)
    return (
        f"the search space defines {names}, which model.recipe {recipe.name!r} never reads, "
        f"so tuning {it} changes nothing; remove {tables} or read {it} in the recipe"
    )
