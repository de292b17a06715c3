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
        ("objective.metric=val_mae", "not a metric the model logs (it logs val_accuracy, val_loss"),
        ("objective.direction=down", "objective.direction 'down' is not one of"),
        ("objective.reduce=mean", "objective.reduce 'mean' is not one of: last, best"),
        ("objective.metric=val_loss", "set objective.direction=minimize"),
    ],
)
def test_bad_objectives_name_the_key_and_the_fix(setting: str, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        load_spec("clothing", [setting])
    assert "val_loss" in LOGGED_METRICS


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
