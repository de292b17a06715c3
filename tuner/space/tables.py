"""Reading the spec's ``[search.NAME]`` tables and ``search.warm_start`` points.

A table is a float or int range (``low``, ``high``, optional ``log`` or
``step``) or a categorical (``choices``); see :mod:`tuner.space.params`. Every error
names the key and shows what to write. No TensorFlow here.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from tuner.errors import SpecError
from tuner.space.params import KINDS, Param, Space, on_grid, same

__all__ = ["parse_param", "parse_warm_start"]

TABLE_KEYS = ("type", "low", "high", "log", "step", "choices")


def parse_param(name: str, table: Any, where: str, known: Sequence[str] = ()) -> Param:
    """Read one ``[search.NAME]`` table.

    Args:
        name: the hyperparameter's name, as the recipe reads it.
        table: the TOML table.
        where: the file (and ``--set`` option) to name in errors.
        known: the other names under ``[search]``, to suggest one for a misspelt name.

    Raises:
        SpecError: naming ``search.NAME`` and what to write instead.
    """
    key = f"search.{name}"
    if not name.isidentifier():
        raise SpecError(
            f"{where}: {key}: a hyperparameter name must be a Python identifier "
            "(letters, digits, _); rename the table"
        )
    if not isinstance(table, dict):
        raise SpecError(
            f"{where}: {key} must be a table, like [{key}] with low = 0.0 and high = 0.5, "
            "or choices = [...]; write it like --set search.NAME.low=0.0"
        )
    unknown = sorted(set(table) - set(TABLE_KEYS))
    if unknown:
        raise SpecError(
            f"{where}: unknown key '{key}.{unknown[0]}'; allowed keys here: "
            + ", ".join(f"{key}.{k}" for k in TABLE_KEYS)
        )
    kind = table.get("type") or ("categorical" if "choices" in table else _range_kind(table))
    if kind not in KINDS:
        raise SpecError(
            f"{where}: {key}.type must be one of {', '.join(KINDS)}, got {kind!r}; "
            f"or leave it out to infer it"
        )
    if kind == "categorical":
        return _categorical(name, table, where)
    return _range(name, kind, table, where, known)


def _range_kind(table: dict[str, Any]) -> str:
    numbers = [table.get(k) for k in ("low", "high", "step") if table.get(k) is not None]
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in numbers)
    return "int" if numbers and ints else "float"


def _categorical(name: str, table: dict[str, Any], where: str) -> Param:
    key = f"search.{name}"
    extra = sorted(set(table) - {"choices", "type"})
    if extra:
        raise SpecError(
            f"{where}: {key} has choices and {key}.{extra[0]}; a parameter has either "
            "choices or a range (low, high), not both"
        )
    choices = table.get("choices")
    if not isinstance(choices, list) or not choices:
        raise SpecError(
            f"{where}: {key}.choices must be a non-empty list, got {choices!r}; "
            f"write it like {key}.choices=[10, 100]"
        )
    for choice in choices:
        if not isinstance(choice, (bool, int, float, str)):
            raise SpecError(
                f"{where}: {key}.choices holds {choice!r}; choices must be numbers, strings "
                "or true/false"
            )
    for i, choice in enumerate(choices):
        if any(same(choice, c) for c in choices[:i]):
            raise SpecError(f"{where}: {key}.choices lists {choice!r} twice; list each once")
    return Param(name, "categorical", choices=tuple(choices))


def _number(table: dict[str, Any], k: str, key: str, where: str, kind: str) -> Any:
    value = table.get(k)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "int":
        ok = ok and isinstance(value, int)
    if not ok:
        what = "an integer" if kind == "int" else "a number"
        raise SpecError(
            f"{where}: {key}.{k} must be {what}, got {value!r}; write it like "
            f"{key}.{k}={1 if kind == 'int' else 0.5}"
        )
    return value if kind == "int" else float(value)


def _range(
    name: str, kind: str, table: dict[str, Any], where: str, known: Sequence[str] = ()
) -> Param:
    key = f"search.{name}"
    if "choices" in table:
        raise SpecError(f"{where}: {key} has choices and type = {kind!r}; drop one of them")
    for k in ("low", "high"):
        if k not in table:
            close = difflib.get_close_matches(name, [n for n in known if n != name], n=1)
            typo = f" (or did you mean search.{close[0]}?)" if close else ""
            raise SpecError(
                f"{where}: {key} needs {key}.{k}, or choices = [...] for a categorical{typo}; "
                f"write it like {key}.{k}=..."
            )
    low, high = (_number(table, k, key, where, kind) for k in ("low", "high"))
    log = table.get("log", False)
    if not isinstance(log, bool):
        raise SpecError(f"{where}: {key}.log must be true or false, got {log!r}")
    step = _number(table, "step", key, where, kind) if "step" in table else None
    problems = [
        (low < high, f"{key}.low ({low:g}) must be below .high ({high:g}); "
                     f"lower {key}.low or raise {key}.high"),
        (not log or low > 0, f"{key}.low must be > 0 with log = true, got {low:g}; use a "
                             f"positive low such as 1e-4, or set {key}.log=false"),
        (step is None or step > 0, f"{key}.step must be > 0, got {step}"),
        (not log or step is None or (kind == "int" and step == 1),
         f"{key} has both log = true and a step; Optuna samples either on a log scale or on "
         f"a grid, so drop one of them"),
        (step is None or not step > 0 or on_grid(high - low, step),
         f"{key}: high - low ({high - low:g}) is not a multiple of step ({step}); "
         f"adjust {key}.high or {key}.step"),
    ]  # fmt: skip
    for ok, message in problems:
        if not ok:
            raise SpecError(f"{where}: {message}")
    if kind == "int" and step is None:
        step = 1
    return Param(name, kind, low, high, log, step)


def parse_warm_start(points: Any, space: Space, where: str) -> tuple[dict[str, Any], ...]:
    """Read ``search.warm_start``: points (tables), or plain numbers meaning learning rates.

    A point may leave parameters out; the sampler chooses them. Each value must
    be one the space can take.

    Raises:
        SpecError: naming the point and the parameter.
    """
    if not isinstance(points, list):
        raise SpecError(
            f"{where}: search.warm_start must be a list of points, like "
            "[{learning_rate = 1e-3, size_inner = 100}] or [1e-4, 1e-3]"
        )
    out = []
    for i, point in enumerate(points):
        if isinstance(point, (int, float)) and not isinstance(point, bool):
            point = {"learning_rate": float(point)}
        if not isinstance(point, dict) or not point:
            raise SpecError(
                f"{where}: search.warm_start[{i}] is {point!r}; each point is a table of "
                "values, like {learning_rate = 1e-3, size_inner = 100}, or a learning rate"
            )
        out.append(_warm_point(i, point, space, where))
    return tuple(out)


def _warm_point(i: int, point: dict[str, Any], space: Space, where: str) -> dict[str, Any]:
    checked = {}
    for name, value in point.items():
        if name not in space:
            raise SpecError(
                f"{where}: search.warm_start[{i}] sets {name!r}, which the space does not "
                f"define (it has {', '.join(space) or 'nothing'}); add [search.{name}] or "
                "drop it from the point"
            )
        p = space[name]
        if p.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not p.contains(value):
            raise SpecError(
                f"{where}: search.warm_start[{i}] has {name} = {value!r}, outside "
                f"{p.describe()}; widen the range or change the point"
            )
        if p.kind == "categorical":  # the choice itself, so 100.0 is stored as 100
            value = next(c for c in p.choices if same(value, c))
        checked[name] = value
    return checked
