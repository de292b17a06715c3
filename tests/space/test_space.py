"""The search space: spec tables, Optuna distributions, warm-start points, display (no TF)."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from tuner.config.build import open_study
from tuner.config.spec import load_spec, spec_from_dict, spec_to_dict
from tuner.errors import SpecError, StudyError
from tuner.space.params import Space, format_params, suggest
from tuner.space.tables import parse_param, parse_warm_start
from tuner.storages.storage import open_storage
from tuner.study.opening import study_attr

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")

HEAD_SPACE = """
[search]
warm_start = [{learning_rate = 1e-3, size_inner = 100}, 1e-2]
[search.size_inner]
choices = [0, 10, 100, 1000]
[search.droprate]
low = 0.0
high = 0.8
step = 0.1
[search.units]
low = 16
high = 256
log = true
[search.activation]
choices = ["relu", "tanh"]
"""


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "space.toml"
    path.write_text('[data]\ndir = "d"\n' + HEAD_SPACE)
    return path


def test_tables_map_to_optuna_distributions(spec_file: Path) -> None:
    space = load_spec(str(spec_file)).search.space
    assert list(space) == ["learning_rate", "size_inner", "droprate", "units", "activation"]
    assert space.distributions() == {
        "learning_rate": FloatDistribution(1e-4, 1e-1, log=True),
        "size_inner": CategoricalDistribution([0, 10, 100, 1000]),
        "droprate": FloatDistribution(0.0, 0.8, step=0.1),
        "units": IntDistribution(16, 256, log=True),
        "activation": CategoricalDistribution(["relu", "tanh"]),
    }


@pytest.mark.parametrize(
    ("table", "kind"),
    [
        ({"low": 1, "high": 5}, "int"),
        ({"low": 1, "high": 5, "step": 2}, "int"),
        ({"low": 1, "high": 5.0}, "float"),
        ({"low": 0, "high": 1, "type": "float"}, "float"),
        ({"choices": [1, 2]}, "categorical"),
        ({"choices": [True, False]}, "categorical"),
    ],
)
def test_the_kind_follows_the_values_or_the_type_key(table: dict, kind: str) -> None:
    assert parse_param("p", table, "f").kind == kind


def test_a_learning_rate_only_study_keeps_its_stored_form() -> None:
    spec = load_spec("clothing")
    assert spec.search.space.to_json() == {
        "learning_rate": {"low": 1e-4, "high": 1e-1, "log": True}
    }
    assert spec.search.learning_rate.low == 1e-4  # the old attribute still reads
    data = spec_to_dict(spec)
    assert data["search"] == {
        "n_trials": 20,
        "warm_start": [1e-4, 1e-3, 1e-2, 1e-1],
        "learning_rate": {"low": 1e-4, "high": 1e-1, "log": True},
    }
    assert spec_from_dict(data) == spec


def test_stored_space_round_trips(spec_file: Path) -> None:
    spec = load_spec(str(spec_file))
    assert Space.from_json(spec.search.space.to_json()) == spec.search.space
    assert spec_from_dict(spec_to_dict(spec)).search == spec.search


def test_set_changes_one_key_of_a_table(spec_file: Path) -> None:
    spec = load_spec(str(spec_file), ["search.droprate.high=0.5", "search.units.high=64"])
    assert spec.search.space["droprate"].high == 0.5
    assert spec.search.space["units"].distribution() == IntDistribution(16, 64, log=True)
    added = load_spec(str(spec_file), ["search.momentum.low=0.5", "search.momentum.high=0.99"])
    assert added.search.space["momentum"].distribution() == FloatDistribution(0.5, 0.99)


def test_a_space_without_a_learning_rate_table_still_has_the_default(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[data]\ndir = "d"\n[search.units]\nchoices = [8, 16]\n')
    space = load_spec(str(path)).search.space
    assert list(space) == ["learning_rate", "units"]
    assert space["learning_rate"].distribution() == FloatDistribution(1e-4, 1e-1, log=True)


def test_warm_start_points_and_plain_rates(spec_file: Path) -> None:
    spec = load_spec(str(spec_file))
    assert spec.search.warm_start == (
        {"learning_rate": 1e-3, "size_inner": 100},
        {"learning_rate": 1e-2},
    )


@pytest.mark.parametrize(
    ("points", "needles"),
    [
        ([{"size": 10}], ["warm_start[0]", "'size'", "does not define", "[search.size]"]),
        ([{"size_inner": 50}], ["warm_start[0]", "size_inner = 50", "{0, 10, 100, 1000}"]),
        ([1e-3, {"droprate": 0.25}], ["warm_start[1]", "droprate = 0.25", "step 0.1"]),
        ([{"droprate": 0.9}], ["droprate = 0.9", "[0, 0.8]"]),
        ([5.0], ["learning_rate = 5.0", "[0.0001, 0.1]"]),
        ([{"units": 20.5}], ["units = 20.5", "integers [16, 256]"]),
        ([{"size_inner": True}], ["size_inner = True"]),
        (["fast"], ["warm_start[0]", "'fast'", "a table of values"]),
        ({"a": 1}, ["must be a list of points"]),
    ],
)
def test_bad_warm_start_points_name_the_point(
    spec_file: Path, points: object, needles: list[str]
) -> None:
    space = load_spec(str(spec_file)).search.space
    with pytest.raises(SpecError) as info:
        parse_warm_start(points, space, "spec.toml")
    for needle in needles:
        assert needle in str(info.value)


@pytest.mark.parametrize(
    ("table", "needles"),
    [
        ({"low": 0.5, "high": 0.1}, ["search.p.low (0.5) must be below .high (0.1)"]),
        ({"low": 0.0, "high": 1.0, "log": True}, ["search.p.low must be > 0 with log = true"]),
        ({"low": 0.0, "high": 1.0, "step": 0.3}, ["not a multiple of step"]),
        ({"low": 1e-3, "high": 1.0, "log": True, "step": 0.1}, ["both log = true and a step"]),
        ({"low": 1, "high": 9, "log": True, "step": 2}, ["both log = true and a step"]),
        ({"low": 0.1}, ["search.p needs search.p.high"]),
        ({"high": 0.1, "choices": [1]}, ["choices and search.p.high"]),
        ({"choices": []}, ["search.p.choices must be a non-empty list"]),
        ({"choices": [1, 1]}, ["lists 1 twice"]),
        ({"choices": [[1, 2]]}, ["choices must be numbers, strings or true/false"]),
        ({"low": "a", "high": 1.0}, ["search.p.low must be a number"]),
        ({"low": 1, "high": 2.5, "type": "int"}, ["search.p.high must be an integer"]),
        ({"lo": 1, "high": 2}, ["unknown key 'search.p.lo'", "search.p.low"]),
        ({"low": 1, "high": 2, "type": "real"}, ["search.p.type must be one of"]),
        (3, ["search.p must be a table"]),
    ],
)
def test_bad_tables_name_the_key_and_the_fix(table: object, needles: list[str]) -> None:
    with pytest.raises(SpecError) as info:
        parse_param("p", table, "spec.toml")
    message = str(info.value)
    assert message.startswith("spec.toml: ") and "; " in message
    for needle in needles:
        assert needle in message


def test_a_set_that_misspells_a_table_names_the_option_and_the_likely_name() -> None:
    with pytest.raises(SpecError) as info:
        load_spec("clothing-head", ["search.size_iner.choices=[1, 2]", "search.droprat.low=0.1"])
    message = str(info.value)
    assert "--set search.droprat.low=0.1" in message and "search.droprate?" in message


def test_suggest_samples_every_parameter_within_its_space(spec_file: Path) -> None:
    spec = load_spec(str(spec_file))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        point = suggest(trial, spec.search.space)
        assert point == trial.params
        assert set(point) == set(spec.search.space)
        assert all(spec.search.space[n].contains(v) for n, v in point.items()), point
        study.tell(trial, 0.0)
    values = {v for t in study.trials for v in [t.params["activation"]]}
    assert values == {"relu", "tanh"}


def test_format_params_is_short_and_lines_up(spec_file: Path) -> None:
    space = load_spec(str(spec_file)).search.space
    points = [
        {"learning_rate": 0.0013, "size_inner": 0, "droprate": 0.2, "units": 16,
         "activation": "relu"},
        {"learning_rate": 0.000123456, "size_inner": 1000, "droprate": 0.7000000000000001,
         "units": 256, "activation": "tanh"},
    ]  # fmt: skip
    lines = [format_params(p, space) + " epoch 3/10" for p in points]
    assert lines[0].startswith("learning_rate=0.0013 ")
    assert "droprate=0.7 " in lines[1] and "learning_rate=0.000123 " in lines[1]
    assert len({line.index("epoch") for line in lines}) == 1  # aligned
    assert [m.start() for m in re.finditer(r"\w+=", lines[0])] == [
        m.start() for m in re.finditer(r"\w+=", lines[1])
    ]
    assert format_params({"learning_rate": 1e-3}) == "learning_rate=0.001"


def test_a_failed_trial_is_retried_with_every_parameter(tmp_path: Path) -> None:
    """What the heartbeat's retry and an interrupted trial's requeue do: the same point."""
    url = f"sqlite:///{tmp_path / 'retry.db'}"
    spec = load_spec("clothing-head", ["search.warm_start=[]"])
    study = open_study(spec, open_storage(url, spec.storage))
    trial = study.ask()
    first = suggest(trial, spec.search.space)
    study.tell(trial, state=TrialState.FAIL)
    RetryHeartbeatStaleTrialCallback(max_retry=3)(study, study.trials[0])
    retry = study.ask()
    assert suggest(retry, spec.search.space) == first
    assert retry.number == 1 and set(first) == {"learning_rate", "size_inner", "droprate"}


def test_each_warm_start_point_is_queued_once_and_completed_by_the_sampler(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'warm.db'}"
    spec = load_spec("clothing-head", ["search.warm_start=[{size_inner = 10}, 0.001]"])
    study = open_study(spec, open_storage(url, spec.storage))
    open_study(spec, open_storage(url, spec.storage))  # a second worker queues nothing more
    points = []
    for _ in range(2):
        trial = study.ask()
        points.append(suggest(trial, spec.search.space))
        study.tell(trial, 0.5)
    assert [p["size_inner"] for p in points[:1]] == [10] and points[1]["learning_rate"] == 1e-3
    assert all(set(p) == set(spec.search.space) for p in points)
    assert all(t.user_attrs["warm_start"] for t in study.trials)
    assert len(study.trials) == 2


def test_a_changed_space_is_refused_naming_what_changed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'join.db'}"
    spec = load_spec("clothing-head")
    open_study(spec, open_storage(url, spec.storage))
    cases = {
        ("search.droprate.high=0.5",): ["droprate in [0, 0.8] step 0.1", "[0, 0.5]"],
        ("search.size_inner.choices=[0, 10]",): ["{0, 10, 100, 1000}", "{0, 10}"],
        ("search.units.low=8", "search.units.high=64"): ["no units", "units in integers"],
    }
    for sets, needles in cases.items():
        other = load_spec("clothing-head", [*sets, "search.warm_start=[]"])
        with pytest.raises(StudyError) as info:
            open_study(other, open_storage(url, other.storage))
        message = str(info.value)
        assert "--accept-space-change" in message and "learning_rate" not in message
        for needle in needles:
            assert needle in message
    study = open_study(
        load_spec("clothing-head", ["search.droprate.high=0.5", "search.warm_start=[]"]),
        open_storage(url, spec.storage),
        accept_space_change=True,
    )
    assert study_attr(study, "tuner:search_space")["droprate"]["high"] == 0.5
