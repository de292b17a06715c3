"""``[objective]``: the metric a study optimizes, its direction, how a trial's value is read."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from tuner.config.build import open_spec_storage, open_study
from tuner.config.join import check_joinable
from tuner.config.spec import load_spec
from tuner.errors import SpecError, StudyError
from tuner.study.settings import ObjectiveSettings
from tuner.training.settings import LOGGED_METRICS


def test_default_is_the_course_objective() -> None:
    assert load_spec("clothing").objective == ObjectiveSettings("val_accuracy", "maximize", "last")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("objective.metric=val_mae", "not a metric the model logs (it logs val_accuracy, val_"),
        ("objective.direction=down", "objective.direction 'down' is not one of"),
        ("objective.reduce=mean", "objective.reduce 'mean' is not one of: last, best"),
        ("objective.metric=val_loss", "set objective.direction=minimize"),
        ('objective.metrics=["gap", "val_accuracy"]', "must start with a logged metric"),
        ('objective.metrics=["val_accuracy", "gap", "val_loss"]', "must list 1 or 2 metrics"),
        ('objective.metrics=["val_accuracy", "val_accuracy"]', "lists a metric twice"),
        ('objective.metrics=["accuracy", "gap"]', "'accuracy' is not a validation metric"),
        ('objective.metrics=["val_accuracy", "gap"]', None),
        ("objective.max_gap=-0.1", "objective.max_gap must be above 0"),
        ('search.optimizer.choices=["adam", "sgd"]', None),
        (
            "search.optimizer={low = 1, high = 2}",
            "search.optimizer must choose among",
        ),
        ("data.recipe=load", "data.recipe 'load' must name a function of yours"),
    ],
)
def test_bad_objectives_name_the_key_and_the_fix(setting: str, message: str | None) -> None:
    settings = setting.split("\n")
    if message is None:  # a good one
        load_spec("clothing", settings)
        return
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        load_spec("clothing", settings)
    assert "val_loss" in LOGGED_METRICS


def test_max_gap_and_two_objectives_are_one_form_or_the_other() -> None:
    both = ['objective.metrics=["val_accuracy", "gap"]', "objective.max_gap=0.1"]
    with pytest.raises(SpecError, match="use one form"):
        load_spec("clothing", both)


def test_two_objectives_take_their_directions_from_their_names() -> None:
    o = load_spec("clothing", ['objective.metrics=["val_accuracy", "gap"]']).objective
    assert (o.names, o.ways, o.multi) == (("val_accuracy", "gap"), ("maximize", "minimize"), True)
    o = load_spec("clothing", ['objective.metrics=["val_loss", "val_accuracy"]']).objective
    assert (o.metric, o.direction, o.ways) == ("val_loss", "minimize", ("minimize", "maximize"))
    assert o.gap(train=0.2, val=0.5) == pytest.approx(0.3)  # a loss: validation minus train


def test_a_two_objective_study_is_named_after_both_and_prunes_nothing(tmp_path: Path) -> None:
    spec = load_spec("clothing", ['objective.metrics=["val_accuracy", "gap"]', "study.name=m"])
    url = f"sqlite:///{tmp_path / 'm.db'}"
    study = open_study(spec, open_spec_storage(url, spec))
    assert study.directions == [
        optuna.study.StudyDirection.MAXIMIZE,
        optuna.study.StudyDirection.MINIMIZE,
    ]
    assert study.metric_names == ["val_accuracy", "gap"]
    assert isinstance(study.pruner, optuna.pruners.NopPruner)


def test_trial_values_come_from_one_epoch() -> None:
    from tuner.training.objective import trial_values

    logs = [
        {"accuracy": 0.6, "val_accuracy": 0.5},
        {"accuracy": 0.9, "val_accuracy": 0.7},
        {"accuracy": 0.99, "val_accuracy": 0.6},
    ]
    two = ObjectiveSettings(metrics=("val_accuracy", "gap"))
    assert trial_values(logs, two) == pytest.approx([0.6, 0.39])
    best = ObjectiveSettings(metrics=("val_accuracy", "gap"), reduce="best")
    assert trial_values(logs, best) == pytest.approx([0.7, 0.2])  # the best epoch's gap


def test_a_minimized_metric_makes_a_minimizing_study_named_after_it(tmp_path: Path) -> None:
    sets = ["objective.metric=val_loss", "objective.direction=minimize", "study.name=o"]
    spec = load_spec("clothing", sets)
    url = f"sqlite:///{tmp_path / 'o.db'}"
    study = open_study(spec, open_spec_storage(url, spec))
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.metric_names == ["val_loss"]
    other = load_spec("clothing", ["study.name=o"])  # maximizes val_accuracy
    with pytest.raises(StudyError, match=r"objective\.metric=val_loss"):
        check_joinable(other, open_spec_storage(url, other))


def test_a_trials_value_is_its_last_or_its_best_epoch() -> None:
    from tuner.training.objective import trial_value

    values = [0.5, 0.3, math.nan, 0.4]
    assert trial_value(values[:2], ObjectiveSettings("val_loss", "minimize", "last")) == 0.3
    assert trial_value(values, ObjectiveSettings("val_loss", "minimize", "best")) == 0.3
    assert trial_value(values, ObjectiveSettings("val_accuracy", "maximize", "best")) == 0.5
