"""Plots and dashboard read as one set: one look, epochs from 1, legends, the metric named."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import optuna
from optuna._warnings import optuna_warn
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from tuner.results import plots


def _study(n: int = 4) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    dists = {
        "learning_rate": FloatDistribution(1e-4, 1e-1, log=True),
        "size_inner": CategoricalDistribution([10, 100]),
    }
    for i in range(n):
        pruned = i % 3 == 2
        values = {0: 0.24, 1: 0.3 + 0.05 * i} if pruned else {0: 0.24, 1: 0.4, 2: 0.5 + 0.01 * i}
        study.add_trial(create_trial(
            params={"learning_rate": 10 ** -(1 + i % 4), "size_inner": [10, 100][i % 2]},
            distributions=dists,
            value=None if pruned else values[2],
            intermediate_values=values,
            state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
        ))  # fmt: skip
    return study


def test_intermediate_values_count_epochs_from_1_with_a_legend_and_markers() -> None:
    fig = plots.intermediate_figure(_study())
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert len(lines) == 4
    xs = [x for line in lines for x in line.get_xdata()]
    assert 0.8 < min(xs) < 1.2 and max(xs) < 3.2  # epochs 1..3, offset a little
    assert len({line.get_xdata()[0] for line in lines}) == 4  # coinciding points kept apart
    assert len({line.get_marker() for line in lines}) == 4
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["trial 0", "trial 1", "trial 2 (pruned)", "trial 3"]
    assert ax.get_xlabel() == "epoch"
    plt.close(fig)


def test_a_long_legend_names_the_best_trials_only() -> None:
    fig = plots.intermediate_figure(_study(30))
    legend = fig.axes[0].get_legend()
    assert len(legend.get_texts()) == plots.LEGEND_MAX
    assert legend.get_title().get_text() == f"best {plots.LEGEND_MAX} of 30;\nthe others in grey"
    plt.close(fig)


def test_history_shows_trials_and_the_best_so_far() -> None:
    fig = plots.history_figure(_study())
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(labels) == ["best so far", "complete", "pruned (last reported epoch)"]
    [best] = ax.get_lines()
    assert list(best.get_ydata()) == [0.5, 0.51, 0.53]
    plt.close(fig)


def test_optunas_views_take_tuners_look_and_leave_the_style_alone() -> None:
    before = dict(plt.rcParams)
    for make in (plots.slice_figure, plots.importances_figure):
        fig = make(_study(6))
        assert all(ax.get_facecolor()[:3] == (1.0, 1.0, 1.0) for ax in fig.axes)
        plt.close(fig)
    assert plt.rcParams["axes.facecolor"] == before["axes.facecolor"]  # no ggplot leaking
    fig = plots.learning_curve_figure({"0.001": ([0.3, 0.5], [0.25, 0.45])})
    assert fig.axes[0].get_facecolor()[:3] == (1.0, 1.0, 1.0)
    assert list(fig.axes[0].get_lines()[1].get_xdata()) == [1, 2]
    plt.close(fig)


def test_the_dashboard_names_the_metric_val_accuracy() -> None:
    from tuner.config.build import open_study
    from tuner.config.spec import load_spec

    storage = optuna.storages.InMemoryStorage()
    spec = load_spec("clothing", ["model.weights=none"])
    assert open_study(spec, storage).metric_names == ["val_accuracy"]
    assert optuna.load_study(study_name="clothing", storage=storage).metric_names == [
        "val_accuracy"
    ]


def test_the_dashboard_keeps_ped_anova_warnings_out_of_the_terminal(tmp_path: Path) -> None:
    from tuner.results.dashboard import make_app
    from tuner.storages.storage import open_storage

    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="clothing", storage=url)
    make_app(open_storage(url))
    with warnings.catch_warnings(record=True) as caught:
        optuna_warn(
            "The number of trials is too small to compute importances. "
            "Parameter importances will be equal."
        )
        optuna_warn("something else")
    assert [str(w.message) for w in caught] == ["something else"]
