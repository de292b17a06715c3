"""``tuner status`` and ``tuner export`` counted by the database give what reading every
trial gives: counts by state, the top trials, the running ones, the parameters, a tie."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from tests.conftest import MYSQL_URL, PG_URL, _server_reachable, unique_name
from tuner.results.export import best_result
from tuner.results.status import StudySummary, summarize
from tuner.storages.storage import open_storage

LR = {"learning_rate": FloatDistribution(1e-4, 1e-1, log=True)}


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    server = PG_URL if request.param == "postgresql" else MYSQL_URL
    if (reason := _server_reachable(server)) is not None:
        pytest.skip(f"{request.param} server not reachable: {reason}")
    return server


def _study(url: str, direction: str, values: list[float | None]) -> optuna.Study:
    """Trials scoring ``values`` (None: a RUNNING trial), a few PRUNED, FAIL and WAITING."""
    study = optuna.create_study(
        study_name=unique_name("sql"), storage=open_storage(url), direction=direction
    )
    for k, value in enumerate(values):
        state = TrialState.RUNNING if value is None else TrialState.COMPLETE
        params, dists = {"learning_rate": 10 ** -(1 + k % 3)}, dict(LR)
        if k % 4 == 1:  # a parameter that only some trials have
            params["head"], dists["head"] = "dense", CategoricalDistribution(["dense", "none"])
        study.add_trial(create_trial(params=params, distributions=dists, value=value,
                                     state=state))  # fmt: skip
        if k % 5 == 2:
            pruned = create_trial(state=TrialState.PRUNED, params=params, distributions=dists,
                                  intermediate_values={0: 0.1})  # fmt: skip
            study.add_trial(pruned)
            study.add_trial(create_trial(state=TrialState.FAIL))
    study.enqueue_trial({"learning_rate": 0.01})
    return study


def _shape(s: StudySummary) -> tuple:
    best = s.choice.best.number if s.choice else None
    return (s.states, [t.number for t in s.top], [t.number for t in s.running], s.params,
            best, s.tie)  # fmt: skip


VALUES = {
    "spread": [0.5, 0.7, None, 0.7, 0.2, -1.0, 0.9, None, 0.3, 0.9, 0.1],
    "infinite": [0.5, math.inf, -math.inf, 0.2, math.inf, None],
    "tied": [0.25, 0.25, None, 0.25, 0.25],
    "tied-infinite": [math.inf, math.inf, math.inf],
    "none complete": [None, None],
}


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
@pytest.mark.parametrize("case", list(VALUES))
def test_the_database_counts_and_ranks_as_reading_every_trial_does(
    url: str, direction: str, case: str
) -> None:
    study = _study(url, direction, VALUES[case])
    storage = open_storage(url)
    in_memory = summarize(study, top_n=4)
    in_sql = summarize(study, top_n=4, storage=storage)
    assert in_sql.all_trials == [] and in_memory.all_trials  # the SQL path read no trial
    assert _shape(in_sql) == _shape(in_memory)
    if in_memory.choice is None:
        with pytest.raises(Exception) as no_sql:
            best_result(study, storage=storage)
        with pytest.raises(Exception) as no_memory:
            best_result(study)
        assert str(no_sql.value) == str(no_memory.value)
        return
    assert best_result(study, storage=storage).to_json() == best_result(study).to_json()
    assert list(best_result(study, storage=storage).states) == list(best_result(study).states)
    optuna.delete_study(study_name=study.study_name, storage=url)


def test_a_study_of_two_objectives_or_with_max_gap_is_read_in_memory(url: str) -> None:
    study = optuna.create_study(storage=open_storage(url), study_name=unique_name("sql"),
                                directions=["maximize", "minimize"])  # fmt: skip
    study.add_trial(create_trial(values=[0.5, 0.1], params={"learning_rate": 0.01},
                                 distributions=LR))  # fmt: skip
    assert summarize(study, storage=open_storage(url)).all_trials  # read in memory
    optuna.delete_study(study_name=study.study_name, storage=url)
