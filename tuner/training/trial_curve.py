"""The learning-curve PNG of one trial, drawn in milliseconds on a figure kept per process.

A cached trial trains in well under a second, and drawing its curve the usual
way (pyplot, a fresh figure, a layout engine, every tick label and the legend
laid out again) took a third of it. Everything but the two curves and the
title is the same for every trial with the same number of epochs: the axes,
the fixed accuracy range, the ticks, the grid, the labels and the legend. That
background is therefore drawn once per process and epoch count, kept as
pixels, and each trial only restores it and draws its own lines and title on
it (matplotlib's blitting, on the Agg canvas; no pyplot).

The look is :mod:`tuner.results.plots`': white axes, a light grid, epochs counted from
1, the validation curve with markers and the training curve dashed.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

__all__ = ["write_learning_curve"]

SIZE, DPI = (7.0, 4.0), 80
# zlib's fastest level: a fifth of the encoding time, a PNG a little larger (about 20 kB)
COMPRESS_LEVEL = 1


class _Background:
    """The figure of one epoch count, its static parts drawn once and kept as pixels."""

    def __init__(
        self,
        epochs: int,
        ylabel: str = "accuracy",
        ylim: tuple[float, float] = (-0.02, 1.02),  # the margin keeps markers at 0 and 1 whole
    ) -> None:
        self.figure = Figure(figsize=SIZE, dpi=DPI, facecolor="white")
        self.canvas = FigureCanvasAgg(self.figure)
        ax = self.figure.add_axes((0.09, 0.12, 0.7, 0.78))
        # "animated": left out of the background, drawn per trial
        (self.train,) = ax.plot([], [], color="C0", linestyle="--", label="train", animated=True)
        (self.val,) = ax.plot([], [], color="C0", marker="o", label="validation", animated=True)
        self.title = ax.set_title("", fontsize="medium", animated=True)
        ax.set_xlim(0.5, epochs + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_ylim(*ylim)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
        self.canvas.draw()
        self.pixels = self.canvas.copy_from_bbox(self.figure.bbox)
        self.lock = threading.Lock()

    def write(self, path: Path, train: Sequence[float], val: Sequence[float], title: str) -> None:
        with self.lock:  # one canvas per epoch count; a thread waits for the other's PNG
            self.canvas.restore_region(self.pixels)
            self.train.set_data(range(1, len(train) + 1), list(train))
            self.val.set_data(range(1, len(val) + 1), list(val))
            self.title.set_text(title)
            for artist in (self.train, self.val, self.title):
                self.figure.draw_artist(artist)
            size = self.canvas.get_width_height()
            rgba: Any = self.canvas.buffer_rgba()
            image = Image.frombuffer("RGBA", size, rgba, "raw", "RGBA", 0, 1)
            image.save(path, format="PNG", compress_level=COMPRESS_LEVEL)


_backgrounds: dict[int, _Background] = {}
_made = threading.Lock()


def write_learning_curve(
    path: str | Path,
    train: Sequence[float],
    val: Sequence[float],
    epochs: int,
    title: str,
    metric: str = "accuracy",
) -> Path:
    """Write the PNG of a trial's training and validation accuracy (or ``metric``) per epoch.

    Accuracy has a fixed range, so its background is drawn once per epoch count;
    another metric's range is the trial's own, and its figure is drawn afresh.

    Args:
        path: the PNG to write.
        train: training accuracy per finished epoch.
        val: validation accuracy per finished epoch (a pruned trial has fewer than ``epochs``).
        epochs: the trial's planned epochs: the x axis runs from 1 to it.
        title: the title, such as ``Trial 12: learning_rate=0.00091``.

    Returns:
        ``path``.
    """
    path = Path(path)
    epochs = max(epochs, len(train), len(val), 1)
    if metric != "accuracy":
        seen = [v for v in (*train, *val) if math.isfinite(v)] or [0.0, 1.0]
        low, high = min(seen), max(seen)
        margin = 0.05 * (high - low) or 0.05 * (abs(high) or 1.0)
        _Background(epochs, metric, (low - margin, high + margin)).write(path, train, val, title)
        return path
    with _made:
        background = _backgrounds.get(epochs)
        if background is None:
            background = _backgrounds[epochs] = _Background(epochs)
    background.write(path, train, val, title)
    return path
