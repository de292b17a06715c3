"""Plots with matplotlib: the manual sweep's chart and the search's own views.

Each function takes plain data or a study and returns a figure; only
:func:`save_figure` touches the disk. Optuna draws the search's views
(history, intermediate values, and, with several hyperparameters, their
importances and slices).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import optuna
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "accuracy_vs_rate_figure",
    "history_figure",
    "importances_figure",
    "intermediate_figure",
    "learning_curve_figure",
    "save_figure",
    "slice_figure",
]

# A label for each curve (the values of the parameters that vary) -> (train, validation).
Curves = Mapping[str, tuple[Sequence[float], Sequence[float]]]


def learning_curve_figure(curves: Curves, title: str = "Accuracy per epoch") -> Figure:
    """Train and validation accuracy per epoch, one pair of lines per label, in order.

    A bare value as label gives ``train=0.001`` / ``val=0.001``, as in the manual
    sweep; ``size_inner=100 droprate=0.2`` gives ``train size_inner=100 droprate=0.2``.
    """
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, (train, val)) in enumerate(curves.items()):
        color = colors[i % len(colors)]
        sep = " " if "=" in label else "="
        epochs = range(1, len(train) + 1)
        ax.plot(epochs, train, color=color, linestyle="--", label=f"train{sep}{label}")
        ax.plot(range(1, len(val) + 1), val, color=color, marker="o", label=f"val{sep}{label}")
    ax.set_title(title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    return fig


def accuracy_vs_rate_figure(trials: Sequence[FrozenTrial]) -> Figure:
    """Final (or last reported) validation accuracy against learning rate, log x axis."""
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    for state, marker, label in (
        (TrialState.COMPLETE, "o", "complete"),
        (TrialState.PRUNED, "x", "pruned (last reported epoch)"),
    ):
        points = [
            (t.params["learning_rate"], _last_value(t))
            for t in trials
            if t.state == state and "learning_rate" in t.params and _last_value(t) is not None
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.scatter(xs, ys, marker=marker, s=50, label=label)
    ax.set_xscale("log")
    ax.set_title("Validation accuracy by learning rate")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig


def _last_value(trial: FrozenTrial) -> float | None:
    if trial.value is not None:
        return trial.value
    values = [v for _, v in sorted(trial.intermediate_values.items()) if math.isfinite(v)]
    return values[-1] if values else None


def _optuna_figure(plot: str, study: optuna.Study, size: tuple[float, float] = (8, 5)) -> Figure:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = getattr(optuna.visualization.matplotlib, plot)(study)
    ax = axes.flat[0] if isinstance(axes, np.ndarray) else axes  # one per parameter
    fig = ax.figure
    fig.set_size_inches(*size)
    fig.set_layout_engine("constrained")
    return fig


def _note_figure(title: str, text: str) -> Figure:
    """A figure that says why a plot cannot be drawn yet, in place of the plot."""
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    ax.set_axis_off()
    return fig


def importances_figure(study: optuna.Study) -> Figure:
    """Optuna's hyperparameter importances (fANOVA over the complete trials)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    try:
        fig = _optuna_figure("plot_param_importances", study)
    except (ValueError, RuntimeError) as e:  # too few trials, or none that vary
        reason = " ".join(str(e).split()) or type(e).__name__
        return _note_figure(
            "Hyperparameter importances",
            f"Not available with {len(complete)} complete trials: {reason}",
        )
    ax = fig.axes[0]
    ax.set_xlabel("importance for validation accuracy")
    if ax.get_legend() is not None:
        ax.get_legend().remove()  # a single objective: its name says nothing
    return fig


def slice_figure(study: optuna.Study) -> Figure:
    """Optuna's slice plot: validation accuracy against each hyperparameter."""
    n = len({name for t in study.get_trials(deepcopy=False) for name in t.params})
    fig = _optuna_figure("plot_slice", study, size=(max(8.0, 3.5 * n), 4.5))
    for ax in fig.axes:
        if ax.get_ylabel() == "Objective Value":
            ax.set_ylabel("validation accuracy")
        if ax.get_xscale() == "log":  # Optuna labels minor ticks too, and they overlap
            ax.xaxis.set_minor_formatter(NullFormatter())
    return fig


def history_figure(study: optuna.Study) -> Figure:
    """Optuna's optimization history: each trial's value and the best so far."""
    fig = _optuna_figure("plot_optimization_history", study)
    fig.axes[0].set_ylabel("validation accuracy")
    return fig


def intermediate_figure(study: optuna.Study) -> Figure:
    """Validation accuracy per epoch of every trial; pruned trials stop early."""
    fig = _optuna_figure("plot_intermediate_values", study)
    ax = fig.axes[0]
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (0-based)")
    ax.set_ylabel("validation accuracy")
    if ax.get_legend() is not None:
        ax.get_legend().remove()  # one entry per trial is unreadable; lines speak for themselves
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a figure as PNG and free it."""
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
