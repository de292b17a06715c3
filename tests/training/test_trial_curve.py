"""The per-trial learning-curve PNG, drawn on a figure reused across trials."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tuner.training.trial_curve import write_learning_curve

TRAIN, VAL = [0.3, 0.5, 0.6, 0.7], [0.25, 0.45, 0.5, 0.55]


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_a_curve_is_a_png_with_the_curves_drawn(tmp_path: Path) -> None:
    curve = _pixels(write_learning_curve(tmp_path / "a.png", TRAIN, VAL, 4, "Trial 0: lr=0.1"))
    empty = _pixels(write_learning_curve(tmp_path / "b.png", [], [], 4, "Trial 0: lr=0.1"))
    assert curve.shape[1] > 300
    assert (curve != empty).any(axis=-1).sum() > 500  # the lines and markers


def test_a_trial_draws_on_a_clean_figure_whatever_came_before(tmp_path: Path) -> None:
    first = _pixels(write_learning_curve(tmp_path / "1.png", TRAIN, VAL, 4, "Trial 1"))
    other = [v / 2 for v in VAL]
    _pixels(write_learning_curve(tmp_path / "2.png", TRAIN[:2], other[:2], 4, "Trial 2: long"))
    again = _pixels(write_learning_curve(tmp_path / "3.png", TRAIN, VAL, 4, "Trial 1"))
    np.testing.assert_array_equal(first, again)


def test_epoch_counts_each_get_their_own_axis_and_nan_is_drawn_as_a_gap(tmp_path: Path) -> None:
    short = _pixels(write_learning_curve(tmp_path / "s.png", TRAIN, VAL, 4, "t"))
    long = _pixels(write_learning_curve(tmp_path / "l.png", TRAIN, VAL, 20, "t"))
    assert short.shape == long.shape and (short != long).any()
    write_learning_curve(tmp_path / "n.png", [0.3, float("nan")], [0.2, float("nan")], 4, "t")
    assert _pixels(tmp_path / "n.png").shape == short.shape
