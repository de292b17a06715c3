"""The search space: spec tables to Optuna distributions, sampling, storage form and display.

A spec declares one ``[search.NAME]`` table per hyperparameter (read by
:mod:`tuner.space.tables`):

- ``low`` and ``high``, with optional ``log`` or ``step``: a float range, or an
  int range when ``low``, ``high`` (and ``step``) are all integers;
- ``choices``: a categorical over a list of numbers, strings or booleans.

An optional ``type = "float" | "int" | "categorical"`` says the kind outright
(``type = "float"`` with ``low = 0`` and ``high = 1`` is a float range).
This module imports no TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

__all__ = [
    "KINDS",
    "Param",
    "Space",
    "format_params",
    "format_value",
    "on_grid",
    "same",
    "suggest",
]

KINDS = ("float", "int", "categorical")
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
            return any(same(value, c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not isinstance(value, int):
            return False
        if not self.low <= value <= self.high:
            return False
        return self.step is None or on_grid(value - self.low, self.step)

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


def same(value: Any, choice: Any) -> bool:
    """Equal and of the same kind: ``1`` is not ``True``, ``100.0`` is ``100``."""
    if isinstance(value, bool) or isinstance(choice, bool):
        return type(value) is type(choice) and value == choice
    return value == choice and isinstance(value, str) == isinstance(choice, str)


def on_grid(offset: float, step: float) -> bool:
    """Whether ``offset`` is a whole number of steps, up to float rounding."""
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
        from tuner.space.tables import parse_param  # it builds on this module

        return cls([parse_param(n, dict(t), "the stored space") for n, t in data.items()])

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
