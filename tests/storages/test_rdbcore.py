"""CoreRDBStorage against Optuna's own RDBStorage, call by call, on every RDB backend."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from tests.conftest import MYSQL_URL, PG_URL, _server_reachable, unique_name
from tuner.config.spec import load_spec
from tuner.storages.rdbcore import CoreRDBStorage
from tuner.storages.storage import open_storage


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def rdb_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    url = PG_URL if request.param == "postgresql" else MYSQL_URL
    if (reason := _server_reachable(url)) is not None:
        pytest.skip(f"{request.param} server not reachable at {url}: {reason}")
    return url


@pytest.fixture
def pair(rdb_url: str) -> tuple[CoreRDBStorage, RDBStorage, int]:
    """tuner's storage (as open_storage makes it) and Optuna's, on one new study."""
    core = open_storage(rdb_url, load_spec("clothing").storage)
    assert isinstance(core, CoreRDBStorage)
    optuna_own = RDBStorage(rdb_url)
    study_id = optuna_own.create_new_study([optuna.study.StudyDirection.MAXIMIZE], unique_name())
    yield core, optuna_own, study_id
    optuna_own.delete_study(study_id)


def _comparable(trial: FrozenTrial) -> dict[str, Any]:
    """Everything a FrozenTrial holds, with NaN made equal to itself."""
    fields = dict(vars(trial))
    fields["intermediate_values"] = {
        k: "nan" if math.isnan(v) else v for k, v in trial.intermediate_values.items()
    }
    return fields


PARAMS = {
    "learning_rate": (0.0123, FloatDistribution(1e-4, 1e-1, log=True)),
    "units": (64, IntDistribution(16, 256, step=16)),
    "activation": ("relu", CategoricalDistribution(["relu", "gelu", None])),
}


def _fill(storage: RDBStorage, study_id: int, state: TrialState, steps: list[float]) -> int:
    """A trial with params, steps, attributes and ``state``, written through ``storage``."""
    trial_id = storage.create_new_trial(study_id)
    for name, (value, dist) in PARAMS.items():
        storage.set_trial_param(trial_id, name, dist.to_internal_repr(value), dist)
    for step, value in enumerate(steps):
        storage.set_trial_intermediate_value(trial_id, step, value)
    storage.set_trial_intermediate_value(trial_id, 0, 0.25)  # written twice: the last counts
    storage.set_trial_user_attr(trial_id, "train_accuracy", [0.5, 0.75])
    storage.set_trial_user_attr(trial_id, "gap", None)
    storage.set_trial_user_attr(trial_id, "gap", 0.125)
    storage.set_trial_system_attr(trial_id, "tuner:owner", {"host": "h", "pid": 1})
    if state == TrialState.COMPLETE:
        storage.set_trial_state_values(trial_id, state, [0.875])
    elif state != TrialState.RUNNING:
        storage.set_trial_state_values(trial_id, state)
    return trial_id


STEPS = [0.1, float("inf"), float("-inf"), float("nan"), 0.5]


@pytest.mark.parametrize("writer", ["core", "optuna"])
def test_every_trial_reads_back_as_optuna_reads_it(
    pair: tuple[CoreRDBStorage, RDBStorage, int], writer: str
) -> None:
    core, own, study_id = pair
    storage = core if writer == "core" else own
    states = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING]
    ids = [_fill(storage, study_id, s, STEPS) for s in states]
    waiting = own.create_new_trial(
        study_id, optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={"q": 1})
    )
    ids.append(waiting)
    for trial_id in ids:
        assert _comparable(core.get_trial(trial_id)) == _comparable(own.get_trial(trial_id))
    every = [_comparable(t) for t in own.get_all_trials(study_id)]
    assert [_comparable(t) for t in core.get_all_trials(study_id)] == every
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    assert [_comparable(t) for t in core.get_all_trials(study_id, states=finished)] == [
        _comparable(t) for t in own.get_all_trials(study_id, states=finished)
    ]
    # the incremental reads of Optuna's cache: unfinished trials again, and newer ones
    for again, newer in [({ids[3]}, ids[1]), (set(), ids[2]), ({ids[3], ids[4]}, ids[0])]:
        assert [_comparable(t) for t in core._get_trials(study_id, None, again, newer)] == [
            _comparable(t) for t in own._get_trials(study_id, None, again, newer)
        ]
    first = core.get_trial(ids[0])
    assert first.params == {k: v for k, (v, _) in PARAMS.items()}
    assert first.intermediate_values[0] == 0.25 and first.intermediate_values[1] == math.inf
    assert first.user_attrs == {"train_accuracy": [0.5, 0.75], "gap": 0.125}
    assert first.value == 0.875 and first.datetime_complete is not None


def test_several_attributes_at_once_read_back_as_one_by_one(
    pair: tuple[CoreRDBStorage, RDBStorage, int],
) -> None:
    core, own, study_id = pair
    one_by_one, together = own.create_new_trial(study_id), own.create_new_trial(study_id)
    first = {"gap": None, "train_accuracy": [0.5], "cache": "hit"}
    then = {"gap": 0.125, "train_accuracy": [0.5, 0.75], "epoch_seconds": [0.01, 0.02]}
    for values in (first, then):  # the second write overwrites two keys and adds one
        for key, value in values.items():
            own.set_trial_user_attr(one_by_one, key, value)
        core.set_trial_user_attrs(together, values)
    core.set_trial_user_attrs(together, {})  # nothing to write: no statement, no error
    assert core.get_trial(together).user_attrs == own.get_trial(one_by_one).user_attrs
    assert core.get_trial(together).user_attrs == {**first, **then}


def test_errors_are_optunas(pair: tuple[CoreRDBStorage, RDBStorage, int]) -> None:
    core, own, study_id = pair
    done = _fill(own, study_id, TrialState.COMPLETE, [0.5])
    writes = [
        lambda s, t: s.set_trial_intermediate_value(t, 3, 0.5),
        lambda s, t: s.set_trial_user_attr(t, "k", 1),
        lambda s, t: s.set_trial_system_attr(t, "k", 1),
        lambda s, t: s.set_trial_user_attrs(t, {"k": 1, "j": 2}),
    ]
    for write in writes:
        with pytest.raises(UpdateFinishedTrialError, match=r"Trial#0 has already finished"):
            write(core, done)
        with pytest.raises(KeyError):
            write(core, done + 10_000)
    with pytest.raises(KeyError):
        core.get_trial(done + 10_000)
    with pytest.raises(KeyError):
        core.get_all_trials(study_id + 10_000)
    empty = own.create_new_study([optuna.study.StudyDirection.MAXIMIZE], unique_name())
    try:
        assert core.get_all_trials(empty) == []
    finally:
        own.delete_study(empty)


def test_a_study_runs_the_same_through_either_storage(rdb_url: str) -> None:
    """The same seeded study, through Optuna's storage and through tuner's: the same trials."""

    def run(storage: RDBStorage) -> list[dict[str, Any]]:
        name = unique_name()
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=3, n_startup_trials=3),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        )

        def objective(trial: optuna.Trial) -> float:
            x = trial.suggest_float("x", -3, 3)
            for step in range(4):
                trial.report(-((x - 1) ** 2) - 1 / (step + 1), step)
                if trial.should_prune():
                    raise optuna.TrialPruned()
            trial.set_user_attr("x2", x * x)
            return -((x - 1) ** 2)

        study.optimize(objective, n_trials=12)
        out = [
            {k: v for k, v in _comparable(t).items() if "datetime" not in k} for t in study.trials
        ]
        optuna.delete_study(study_name=name, storage=storage)
        return [{k: v for k, v in t.items() if k not in ("_trial_id",)} for t in out]

    core = open_storage(rdb_url, load_spec("clothing").storage)
    assert run(core) == run(RDBStorage(rdb_url))


def test_heartbeats_and_stale_trials_are_optunas(rdb_url: str) -> None:
    """Beats written by either storage are read alike; stale means older than the grace period."""
    spec = load_spec("clothing")
    core = open_storage(rdb_url, spec.storage)
    assert isinstance(core, CoreRDBStorage)
    # a grace period of 1 s: every running trial with a beat is stale 2 s later
    sets = {"heartbeat_interval": 1, "grace_period": 1}
    own = RDBStorage(rdb_url, **sets)
    core.grace_period, core.heartbeat_interval = 1, 1
    study_id = own.create_new_study([optuna.study.StudyDirection.MAXIMIZE], unique_name())
    try:
        beaten_by_core, beaten_by_optuna, silent = (own.create_new_trial(study_id) for _ in "abc")
        done = own.create_new_trial(study_id)
        core.record_heartbeat(beaten_by_core)
        core.record_heartbeat(beaten_by_core)  # the second beat updates the one row
        own.record_heartbeat(beaten_by_optuna)
        core.record_heartbeat(beaten_by_optuna)
        core.record_heartbeat(done)
        own.set_trial_state_values(done, TrialState.COMPLETE, [1.0])
        # fresh beats; a SQLite storage judges a beat by watching it from this first look on
        assert core._get_stale_trial_ids(study_id) == []
        time.sleep(2.5)  # the databases' clocks may have whole seconds
        stale = sorted([beaten_by_core, beaten_by_optuna])
        assert sorted(core._get_stale_trial_ids(study_id)) == stale
        assert sorted(own._get_stale_trial_ids(study_id)) == stale
        assert silent not in stale
        core.grace_period = 3600
        assert core._get_stale_trial_ids(study_id) == []
    finally:
        own.delete_study(study_id)


def test_rows_of_a_trial_created_between_a_reads_two_queries_wait_for_the_next_read(
    pair: tuple[CoreRDBStorage, RDBStorage, int],
) -> None:
    """PostgreSQL reads in READ COMMITTED: the second query may see trials the first did not."""
    from tuner.storages import rdbcore

    core, own, study_id = pair
    first = _fill(own, study_id, TrialState.RUNNING, [0.5])
    _fill(own, study_id, TrialState.RUNNING, [0.5, 0.75])  # "created since the first query"
    trials_query, _ = rdbcore._reads(rdbcore._TRIALS.c.trial_id == first)
    _, children_query = rdbcore._reads(rdbcore._TRIALS.c.study_id == study_id)
    with core.engine.begin() as conn:
        found = rdbcore._read(conn, trials_query, children_query, {})
    assert [_comparable(t) for t in found] == [_comparable(own.get_trial(first))]
