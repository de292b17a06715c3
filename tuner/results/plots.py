"""Plots with matplotlib: the manual sweep's chart and the search's own views.

Each function takes plain data or a study and returns a figure; only
:func:`save_figure` touches the disk. Every chart has one look: white axes,
a light grid, epochs counted from 1, a legend wherever there are several
curves, and markers so that curves that overlap stay apart. Optuna draws the
importances and slices of several hyperparameters, restyled to match.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import optuna
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuner.common.attrs import EPOCH_VALUES
from tuner.study.choice import tied_value

__all__ = [
    "accuracy_vs_rate_figure",
    "epoch_values",
    "history_figure",
    "importances_figure",
    "intermediate_figure",
    "learning_curve_figure",
    "objective_of",
    "pareto_figure",
    "save_figure",
    "slice_figure",
]

# A label for each curve (the values of the parameters that vary) -> (train, validation).
Curves = Mapping[str, tuple[Sequence[float], Sequence[float]]]
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
# Beyond this many trials, the legend names only the best of them.
LEGEND_MAX = 12


def learning_curve_figure(
    curves: Curves, title: str = "Accuracy per epoch", metric: str = "accuracy"
) -> Figure:
    """Train and validation accuracy (or ``metric``) per epoch, a pair of lines per label.

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
        marker = MARKERS[i % len(MARKERS)]  # curves that coincide stay told apart
        ax.plot(range(1, len(val) + 1), val, color=color, marker=marker, label=f"val{sep}{label}")
    ax.set_title(title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    return fig


# How plots name a study's metric; any other is shown as it is logged.
METRIC_NAMES = {
    "val_accuracy": "validation accuracy",
    "val_loss": "validation loss",
    "accuracy": "training accuracy",
    "loss": "training loss",
}


def objective_of(study: optuna.Study) -> tuple[str, bool]:
    """The study's (first) metric as plots name it, and whether higher is better."""
    metric = (study.metric_names or ["val_accuracy"])[0]
    return METRIC_NAMES.get(metric, metric), study.directions[0] == StudyDirection.MAXIMIZE


def epoch_values(trial: FrozenTrial) -> dict[int, float]:
    """The trial's (first) metric per epoch: its reports, or, in a study of two objectives,
    which reports none, its recorded values."""
    if trial.intermediate_values:
        return dict(trial.intermediate_values)
    recorded = trial.user_attrs.get(EPOCH_VALUES) or []
    return {i: float(v) for i, v in enumerate(recorded) if v is not None}


def accuracy_vs_rate_figure(
    trials: Sequence[FrozenTrial], name: str = "validation accuracy"
) -> Figure:
    """Final (or last reported) value of the metric ``name`` against learning rate, log x."""
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
    ax.set_title(f"{name.capitalize()} by learning rate")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel(name)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig


def _last_value(trial: FrozenTrial) -> float | None:
    if trial.values is not None:
        return trial.values[0]
    values = [v for _, v in sorted(epoch_values(trial).items()) if math.isfinite(v)]
    return values[-1] if values else None


def _optuna_figure(
    plot: str, study: optuna.Study, size: tuple[float, float] = (8, 5), **kwargs: Any
) -> Figure:
    if len(study.directions) > 1 and plot != "plot_pareto_front":  # the first objective's
        kwargs |= {"target": lambda t: t.values[0], "target_name": objective_of(study)[0]}
    # Optuna switches matplotlib to its "ggplot" style; the context keeps that to its figure.
    with warnings.catch_warnings(), plt.style.context("default"):
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = getattr(optuna.visualization.matplotlib, plot)(study, **kwargs)
    ax = axes.flat[0] if isinstance(axes, np.ndarray) else axes  # one per parameter
    fig = ax.figure
    fig.set_size_inches(*size)
    fig.set_layout_engine("constrained")
    fig.set_facecolor("white")
    for each in fig.axes:  # tuner's look: white axes and a light grid, as in its own charts
        each.set_facecolor("white")
        each.grid(True, color="#b0b0b0", alpha=0.3)
        each.title.set_fontsize(plt.rcParamsDefault["axes.titlesize"])
    return fig


def _note_figure(title: str, text: str) -> Figure:
    """A figure that says why a plot cannot be drawn yet, in place of the plot."""
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    ax.set_axis_off()
    return fig


def importances_figure(study: optuna.Study) -> Figure:
    """Optuna's hyperparameter importances (PED-ANOVA, its default, over the complete trials)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if (tied := tied_value(complete)) is not None:
        return _note_figure(
            "Hyperparameter importances",
            f"Not available: all {len(complete)} complete trials scored {tied:.4f}, so no "
            "hyperparameter can be ranked above another",
        )
    try:
        fig = _optuna_figure("plot_param_importances", study)
    except (ValueError, RuntimeError) as e:  # too few trials, or none that vary
        reason = " ".join(str(e).split()) or type(e).__name__
        return _note_figure(
            "Hyperparameter importances",
            f"Not available with {len(complete)} complete trials: {reason}",
        )
    ax = fig.axes[0]
    ax.set_xlabel(f"importance for {objective_of(study)[0]}")
    if ax.get_legend() is not None:
        ax.get_legend().remove()  # a single objective: its name says nothing
    return fig


def slice_figure(study: optuna.Study) -> Figure:
    """Optuna's slice plot: the study's metric against each hyperparameter."""
    n = len({name for t in study.get_trials(deepcopy=False) for name in t.params})
    fig = _optuna_figure("plot_slice", study, size=(max(8.0, 3.5 * n), 4.5))
    for ax in fig.axes:
        if ax.get_ylabel() == "Objective Value":
            ax.set_ylabel(objective_of(study)[0])
        if ax.get_xscale() == "log":  # Optuna labels minor ticks too, and they overlap
            ax.xaxis.set_minor_formatter(NullFormatter())
    return fig


def history_figure(study: optuna.Study) -> Figure:
    """Each finished trial's value (its metric), and the best so far, by trial number."""
    name, maximize = objective_of(study)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    for state, marker, label in (
        (TrialState.COMPLETE, "o", "complete"),
        (TrialState.PRUNED, "x", "pruned (last reported epoch)"),
    ):
        points = [(t.number, _last_value(t)) for t in trials if t.state == state]
        points = [(n, v) for n, v in points if v is not None]
        if points:
            ax.scatter(*zip(*points, strict=True), marker=marker, s=40, label=label, zorder=3)
    complete = [(t.number, _last_value(t)) for t in trials if t.state == TrialState.COMPLETE]
    complete = [(n, v) for n, v in complete if v is not None]
    if complete:
        numbers, values = zip(*complete, strict=True)
        best = (np.maximum if maximize else np.minimum).accumulate(values)
        ax.step(numbers, best, where="post", color="tab:red", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Optimization history")
    ax.set_xlabel("trial")
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right" if maximize else "upper right", fontsize="small")
    return fig


def intermediate_figure(study: optuna.Study) -> Figure:
    """The study's metric per epoch (from 1) of every trial; pruned trials stop early.

    Each trial has its own marker and a small sideways offset, so that curves
    that coincide (every rate scores the majority class after epoch 1) stay
    visible; the legend names the trials, or the best of them when there are many.
    """
    series = {t.number: epoch_values(t) for t in study.get_trials(deepcopy=False)}
    trials = [t for t in study.get_trials(deepcopy=False) if series[t.number]]
    trials.sort(key=lambda t: t.number)
    name, maximize = objective_of(study)
    sign = -1.0 if maximize else 1.0
    ranked = sorted(trials, key=lambda t: sign * (_last_value(t) or 0.0))
    named = {t.number for t in ranked[:LEGEND_MAX]}
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    spread = min(0.3, 0.03 * len(trials))
    tab20 = plt.get_cmap("tab20").colors  # its greys (14, 15) are kept for the unnamed trials
    colors = [tab20[i] for i in (*range(0, 20, 2), *range(1, 20, 2)) if i not in (14, 15)]
    shown = 0
    for i, t in enumerate(trials):
        offset = spread * (i / (len(trials) - 1) - 0.5) if len(trials) > 1 else 0.0
        steps = sorted(series[t.number])
        pruned = " (pruned)" if t.state == TrialState.PRUNED else ""
        style: dict[str, object] = {"color": "#b0b0b0", "alpha": 0.6, "zorder": 1}
        if t.number in named:  # its own colour and marker, never one another trial has
            style = {
                "color": colors[shown % len(colors)],
                "marker": MARKERS[shown % len(MARKERS)],
                "markersize": 4,
                "alpha": 0.9,
                "zorder": 2,
            }
            shown += 1
        ax.plot(
            [step + 1 + offset for step in steps],
            [series[t.number][step] for step in steps],
            linestyle=":" if pruned else "-",
            label=f"trial {t.number}{pruned}" if t.number in named else "_nolegend_",
            **style,  # type: ignore[arg-type]
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{name.capitalize()} per epoch")
    ax.set_xlabel("epoch")
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
    if trials:
        more = len(trials) > LEGEND_MAX
        ax.legend(
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
            fontsize="small",
            title=f"best {LEGEND_MAX} of {len(trials)};\nthe others in grey" if more else None,
        )
    return fig


def pareto_figure(study: optuna.Study) -> Figure:
    """Optuna's Pareto front of a study of two objectives, the front's trials highlighted."""
    names = [METRIC_NAMES.get(m, m) for m in study.metric_names or []] or None
    fig = _optuna_figure("plot_pareto_front", study, target_names=names)
    fig.axes[0].set_title("Pareto front")
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a figure as PNG and free it."""
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
