"""Recorded learning curves, and the nearest recorded configuration to a point."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.space.params import Space

__all__ = ["Curves", "load_curves"]


@dataclass(frozen=True)
class Curves:
    """One recording: each configuration's per-epoch validation accuracy."""

    study: str
    epochs: int
    runs: list[dict[str, Any]]
    repeats: list[dict[str, Any]]
    meta: dict[str, Any]

    def nearest(self, point: Mapping[str, Any], space: Space) -> dict[str, Any]:
        """The recorded run closest to ``point``.

        Categorical values must match exactly; numeric ones are compared on the
        unit interval of their range (in log scale for a log range).
        """
        best, best_distance = None, math.inf
        for run in self.runs:
            distance = _distance(point, run["params"], space)
            if distance < best_distance:
                best, best_distance = run, distance
        if best is None:
            raise ValueError(f"no recorded configuration matches {dict(point)}")
        return best

    def best_of(self, points: list[Mapping[str, Any]], space: Space) -> float:
        """The best final validation accuracy among the nearest runs to ``points``."""
        return max(self.nearest(p, space)["val_accuracy"][-1] for p in points)

    @property
    def ceiling(self) -> float:
        """The best final validation accuracy of any recorded configuration."""
        return max(run["val_accuracy"][-1] for run in self.runs)


def _distance(point: Mapping[str, Any], recorded: Mapping[str, Any], space: Space) -> float:
    total = 0.0
    for name, p in space.items():
        a, b = point[name], recorded[name]
        if p.kind == "categorical":
            if a != b:
                return math.inf
            continue
        low, high = float(p.low), float(p.high)
        if p.log:
            a, b, low, high = (math.log(v) for v in (a, b, low, high))
        total += ((float(a) - float(b)) / (high - low)) ** 2
    return total


def load_curves(path: Path) -> Curves:
    """Read a recording made by ``benchmarks/search.py record``."""
    raw = json.loads(path.read_text())
    runs, repeats = raw.pop("runs"), raw.pop("repeats", [])
    return Curves(raw["study"], raw["epochs"], runs, repeats, raw)
