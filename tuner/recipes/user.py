"""Recipes of the user's own: ``model.recipe = "module:function"``, imported like a plug-in.

The module is imported with the current folder and the spec file's folder at
the front of ``sys.path`` (as ``uvicorn`` and ``pytest`` do), so a package
beside the spec, or in the folder the worker starts in, needs no installing.
Importing it runs its code, as with any Python plug-in. The function's
second parameter says what it builds:

- ``build_head(params, feature_dim, num_classes)``: a head on the pooled
  features of the frozen ``model.base`` (the feature cache applies);
- ``build_model(params, input_shape, num_classes)``: a whole model, trained
  on raw 0-255 RGB images of ``input_shape`` = (height, width, 3).

Either returns an uncompiled ``keras.Model`` that outputs ``num_classes``
logits; tuner compiles it with Adam at the trial's ``learning_rate``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.errors import RecipeError, one_line
from tuner.recipes.bases import BASES, Base
from tuner.recipes.protocol import HEAD, MODEL

if TYPE_CHECKING:
    import keras

    from tuner.space.params import Space

__all__ = ["UserRecipe", "import_function", "import_recipe", "is_user_recipe", "search_path"]

SHAPES = {"feature_dim": HEAD, "input_shape": MODEL}
ADVICE = (
    "write it as build_head(params, feature_dim, num_classes) for a head on a frozen base, or "
    "build_model(params, input_shape, num_classes) for a whole model"
)


def is_user_recipe(name: str) -> bool:
    """Whether ``model.recipe`` names a function, ``module:function``, rather than a built-in."""
    module, sep, function = name.partition(":")
    return bool(sep) and all(p.isidentifier() for p in [*module.split("."), function])


@dataclass(frozen=True)
class UserRecipe:
    """A recipe function of the user's, checked to fit the protocol."""

    name: str
    function: Callable[..., Any]
    kind: str

    @property
    def reads(self) -> frozenset[str] | None:
        return None  # known only by building it, see tuner.training.probe

    def problems(self, base: str, image_size: tuple[int, int], space: Space) -> list[str]:
        known, size = self.base(base), list(image_size)
        if known is not None and min(size) < known.min_size:
            return [
                f"data.image_size must be at least [{known.min_size}, {known.min_size}] for a "
                f"head on the {known.name} base, got {size}"
            ]
        return []

    def base(self, base: str) -> Base | None:
        return BASES[base] if self.kind == HEAD else None

    def build(
        self, params: Mapping[str, Any], shape: int | tuple[int, ...], num_classes: int
    ) -> keras.Model:
        return self.function(params, shape, num_classes)


def search_path(spec_file: str) -> list[Path]:
    """Where a recipe's module is looked for first: the current folder, the spec's folder."""
    paths = [Path.cwd()]
    if spec_file:
        paths.append(Path(spec_file).resolve().parent)
    return list(dict.fromkeys(paths))


def import_recipe(name: str, paths: Sequence[Path]) -> UserRecipe:
    """Import ``module:function`` and check its signature; TensorFlow-heavy work comes later.

    Raises:
        RecipeError: one line naming the module or function and what to do.
    """
    function = import_function(name, paths, "model.recipe", ADVICE)
    return UserRecipe(name, function, _kind(name, function))


def import_function(name: str, paths: Sequence[Path], key: str, advice: str) -> Callable[..., Any]:
    """The function ``module:function`` names, for the spec key ``key``.

    Raises:
        RecipeError: one line naming the module or function and what to do.
    """
    module_name, _, function_name = name.partition(":")
    for path in reversed(paths):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    importlib.invalidate_caches()  # a package written since the process started is found too
    module = _import(module_name, f"{key} {name!r}", paths)
    function = getattr(module, function_name, None)
    if function is None:
        found = sorted(
            n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_")
        )
        raise RecipeError(
            f"module {module_name} ({module.__file__}) has no function {function_name!r} "
            f"({key} = {name!r}); its functions: {', '.join(found) or 'none'}"
        )
    if not callable(function):
        raise RecipeError(
            f"{key} {name!r} names a {type(function).__name__}, not a function; {advice}"
        )
    return function  # type: ignore[no-any-return]


def _import(module_name: str, what: str, paths: Sequence[Path]) -> Any:
    from tuner.common.tfload import quiet_tensorflow, require_tensorflow

    require_tensorflow()  # a recipe module's imports fail on it with a less helpful line
    try:
        with quiet_tensorflow():  # the module likely imports keras: keep TF's start-up log out
            return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        parts = module_name.split(".")
        if e.name not in {".".join(parts[: i + 1]) for i in range(len(parts))}:
            raise RecipeError(
                f"importing {module_name} for {what} failed: {e}; install "
                f"{e.name} or fix the import in the module"
            ) from None
        where = " and ".join(str(p) for p in paths)
        raise RecipeError(
            f"cannot import module {module_name} for {what} ({e}); tuner looks "
            f"in {where} and the installed packages: start the worker in your project folder, "
            "put the spec beside your package, or pip install it"
        ) from None
    except (Exception, SystemExit) as e:
        message = " ".join(str(e).split()) or "no message"
        filename = os.path.basename(str(getattr(e, "filename", None) or ""))
        where = f" in {filename}" if filename and filename not in message else ""
        raise RecipeError(
            f"importing {module_name} for {what} failed{where}: {one_line(e)}; fix the module"
        ) from None


def _kind(name: str, function: Callable[..., Any]) -> str:
    """HEAD or MODEL, from the name of the function's second parameter."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        raise RecipeError(f"cannot read the parameters of {name!r}; {ADVICE}") from None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = list(signature.parameters.values())
    first = [p for p in params if p.kind in positional][:3]
    required = [
        p
        for p in params
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    shown = f"{name.partition(':')[2]}{signature}"
    if len(first) < 3 or any(p not in first for p in required):
        raise RecipeError(
            f"model.recipe {name!r} takes {shown}, but tuner calls it with three arguments; "
            + ADVICE
        )
    kind = SHAPES.get(first[1].name)
    if kind is None:
        raise RecipeError(
            f"model.recipe {name!r} takes {shown}: its second parameter must be named "
            f"feature_dim or input_shape, to say what it builds; {ADVICE}"
        )
    return kind
