"""The search space: spec tables to Optuna distributions, sampling, storage form and display.

A spec declares one ``[search.NAME]`` table per hyperparameter:

- ``low`` and ``high``, with optional ``log`` or ``step``: a float range, or an
  int range when ``low``, ``high`` (and ``step``) are all integers;
- ``choices``: a categorical over a list of numbers, strings or booleans.

An optional ``type = "float" | "int" | "categorical"`` says the kind outright
(``type = "float"`` with ``low = 0`` and ``high = 1`` is a float range).
This module imports no TensorFlow.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from tuner.errors import SpecError

__all__ = [
    "KINDS",
    "Param",
    "Space",
    "format_params",
    "format_value",
    "parse_param",
    "parse_warm_start",
    "suggest",
]

KINDS = ("float", "int", "categorical")
TABLE_KEYS = ("type", "low", "high", "log", "step", "choices")
Scalar = bool | int | float | str


@dataclass(frozen=True)
class Param:
    """One hyperparameter: a float or int range, or a list of choices."""

    name: str
    kind: str
    low: Any = None  # int or float for a range; None for choices
    high: Any = None
    log: bool = False
    step: Any = None
    choices: tuple[Scalar, ...] = ()

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution that ``suggest`` samples from."""
        if self.kind == "categorical":
            return CategoricalDistribution(self.choices)
        if self.kind == "int":
            return IntDistribution(
                int(self.low), int(self.high), log=self.log, step=self.step or 1
            )
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def to_table(self) -> dict[str, Any]:
        """The spec table that declares this parameter; also its stored form.

        A float range keeps the three keys of a learning-rate-only study
        (``low``, ``high``, ``log``), so studies created before other kinds
        existed still compare equal.
        """
        if self.kind == "categorical":
            return {"choices": list(self.choices)}
        table: dict[str, Any] = {"low": self.low, "high": self.high, "log": self.log}
        if self.kind == "int":
            table = {"type": "int", **table, "step": self.step or 1}
        elif self.step is not None:
            table["step"] = self.step
        return table

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one of the values this parameter can take."""
        if self.kind == "categorical":
            return any(_same(value, c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not isinstance(value, int):
            return False
        if not self.low <= value <= self.high:
            return False
        return self.step is None or _on_grid(value - self.low, self.step)

    def describe(self) -> str:
        """The parameter in words, for errors and notes: ``lr in [0.0001, 0.1] (log)``."""
        if self.kind == "categorical":
            return f"{self.name} in {{{', '.join(format_value(c) for c in self.choices)}}}"
        text = f"{self.name} in [{self.low:g}, {self.high:g}]"
        if self.kind == "int":
            text = f"{self.name} in integers [{self.low}, {self.high}]"
        if self.step is not None and self.step != 1:
            text += f" step {self.step:g}"
        return text + (" (log)" if self.log else "")

    def width(self) -> int:
        """The widest value of this parameter as :func:`format_value` writes it."""
        if self.kind == "categorical":
            return max(len(format_value(c)) for c in self.choices)
        if self.kind == "int" or self.step is not None:
            return max(len(format_value(v)) for v in (self.low, self.high, self.low + self.step))
        ends = [abs(v) for v in (self.low, self.high) if v != 0]
        if not ends:
            return 1
        first, last = (math.floor(math.log10(v)) for v in (min(ends), max(ends)))
        widths = [len(format_value(1.23456 * 10.0**e)) for e in range(first, last + 1)]
        return max(len(format_value(self.low)), *widths) + (1 if self.low < 0 else 0)


def _same(value: Any, choice: Any) -> bool:
    """Equal and of the same kind: ``1`` is not ``True``, ``100.0`` is ``100``."""
    if isinstance(value, bool) or isinstance(choice, bool):
        return type(value) is type(choice) and value == choice
    return value == choice and isinstance(value, str) == isinstance(choice, str)


def _on_grid(offset: float, step: float) -> bool:
    ratio = offset / step
    return abs(ratio - round(ratio)) < 1e-6


class Space(Mapping[str, Param]):
    """The hyperparameters of a study, in the order the spec declares them."""

    def __init__(self, params: tuple[Param, ...] | list[Param] = ()) -> None:
        self._params = {p.name: p for p in params}

    def __getitem__(self, name: str) -> Param:
        return self._params[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Space) and list(self.values()) == list(other.values())

    def __hash__(self) -> int:
        return hash(tuple(self.values()))

    def __repr__(self) -> str:
        return f"Space({list(self.values())!r})"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Space:
        """The space from :meth:`to_json` data, as stored with a study.

        Raises:
            SpecError: for data that no spec table could have made.
        """
        return cls(
            [parse_param(name, dict(table), "the stored space") for name, table in data.items()]
        )

    def distributions(self) -> dict[str, BaseDistribution]:
        """Each parameter's Optuna distribution, by name."""
        return {name: p.distribution() for name, p in self.items()}

    def to_json(self) -> dict[str, dict[str, Any]]:
        """Plain data stored with the study, to detect a changed space when a worker joins."""
        return {name: p.to_table() for name, p in self.items()}

    def describe(self) -> str:
        return "; ".join(p.describe() for p in self.values())


def suggest(trial: optuna.Trial, space: Space) -> dict[str, Any]:
    """Sample one point of ``space`` (or take the trial's fixed values, for queued trials)."""
    point: dict[str, Any] = {}
    for name, p in space.items():
        if p.kind == "categorical":
            point[name] = trial.suggest_categorical(name, list(p.choices))
        elif p.kind == "int":
            point[name] = trial.suggest_int(
                name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log
            )
        else:
            point[name] = trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
    return point


def format_value(value: Any) -> str:
    """A parameter value, short: floats to 3 significant digits, the rest as written."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def format_params(params: Mapping[str, Any], space: Space | None = None) -> str:
    """``learning_rate=0.0013 size_inner=100 droprate=0.2``, for every line that shows a point.

    With ``space``, parameters come in the spec's order and each value is padded
    to the widest it can be, so that the lines of a worker's log line up.
    """
    if space is None:
        return " ".join(f"{k}={format_value(v)}" for k, v in params.items())
    names = [n for n in space if n in params] + [n for n in params if n not in space]
    parts = []
    for name in names:
        text = format_value(params[name])
        width = space[name].width() if name in space else 0
        parts.append(f"{name}={text:<{width}}")
    return " ".join(parts)


# ---------------------------------------------------------------- reading spec tables


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
        if any(_same(choice, c) for c in choices[:i]):
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
        (step is None or not step > 0 or _on_grid(high - low, step),
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
            value = next(c for c in p.choices if _same(value, c))
        checked[name] = value
    return checked
