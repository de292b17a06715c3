"""benchmarks/search.py's replay: the real study machinery on recorded curves, reproducibly."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from tuner.space.params import Space

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from searchbench.curves import Curves, load_curves
from searchbench.record import log_grid
from searchbench.replay import Strategy, replay

pytestmark = pytest.mark.slow  # the pruning callback imports Keras


@pytest.fixture
def curves(tmp_path: Path) -> Curves:
    """31 rates; the best near 1.6e-3, the largest stuck at chance from the first epoch."""
    runs = []
    for k, lr in enumerate(log_grid(1e-4, 1e-1, 10)):
        top = max(0.238, 0.62 - 0.12 * (math.log10(lr) + 2.8) ** 2)
        curve = [round(0.238 + (top - 0.238) * min(1, (e + 1) / 6), 4) for e in range(10)]
        runs.append({"params": {"learning_rate": lr}, "seed": 1234 + k, "val_accuracy": curve})
    path = tmp_path / "curves.json"
    path.write_text(json.dumps({"study": "clothing-scratch", "epochs": 10, "runs": runs}))
    return load_curves(path)


GRID = Strategy("grid", ("sampler.kind=grid", "pruner.kind=none"))
TPE = Strategy("tpe", ())


def test_grid_is_the_manual_sweep(curves: Curves) -> None:
    path = replay(curves, GRID, 0, 160)
    assert path.spent == [10, 20, 30, 40]
    assert [p["learning_rate"] for p in path.points] == [1e-4, 1e-3, 1e-2, 1e-1]
    best = max(curves.nearest(p, _space())["val_accuracy"][-1] for p in path.points)
    assert path.best_within(40) == best


def test_same_seed_same_trajectory_and_the_budget_holds(curves: Curves) -> None:
    first, again, other = (replay(curves, TPE, seed, 80) for seed in (3, 3, 4))
    assert (first.spent, first.best, first.points) == (again.spent, again.best, again.points)
    assert first.points != other.points
    assert first.spent[-2] < 80 <= first.spent[-1]  # no trial starts once 80 epochs are spent
    assert any(b - a < 10 for a, b in zip([0, *first.spent], first.spent, strict=False))  # pruned


def _space() -> Space:
    from tuner.config.spec import load_spec

    return load_spec("clothing-scratch").search.space
