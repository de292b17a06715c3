"""Dead workers' trials: reaped with a reason, retried first, or reported as given up."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tuner.config.spec import load_spec
from tuner.results.export import best_result
from tuner.results.status import render_status, summarize
from tuner.storages.retries import OWNER_ATTR, RetryOrGiveUp, gave_up, owner_record, reap
from tuner.storages.storage import open_storage

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    spec = load_spec("clothing", ["storage.max_retry=2"])
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", spec.storage)
    return optuna.create_study(study_name="s", storage=storage, direction="maximize")


def _running(study: optuna.Study, owner: dict[str, object] | None) -> optuna.trial.Trial:
    trial = study.ask()
    trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True)
    if owner is not None:
        study._storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, owner)
        trial.set_user_attr("worker", f"{owner['host']}:{owner['pid']}")
    return trial


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_trial_whose_worker_died_here_is_failed_with_a_reason_and_requeued(
    study: optuna.Study,
) -> None:
    trial = _running(study, {**owner_record(), "pid": _dead_pid()})
    reaped = reap(study, grace_period=600)
    assert [t.number for t in reaped] == [trial.number]
    failed = study.get_trials()[trial.number]
    assert failed.state == TrialState.FAIL
    assert "ended while running it" in failed.user_attrs["fail_reason"]
    retry = study.get_trials(states=(TrialState.WAITING,))
    assert retry[0].params == failed.params
    assert retry[0].system_attrs["failed_trial"] == trial.number


def test_a_live_worker_or_another_machines_worker_is_left_alone(study: optuna.Study) -> None:
    _running(study, owner_record())  # this very process: alive
    _running(study, {**owner_record(), "host": "elsewhere", "pid": _dead_pid()})
    assert reap(study, grace_period=600) == []
    assert len(study.get_trials(states=(TrialState.RUNNING,))) == 2


def test_a_trial_claimed_by_a_worker_that_died_at_once_is_reaped_after_the_grace_period(
    study: optuna.Study, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuner.storages import retries

    now = [1000.0]
    monkeypatch.setattr(retries, "_clock", lambda: now[0])
    trial = _running(study, owner=None)  # no owner, no heartbeat: Optuna would never fail it
    # Its start time says nothing: the claimant's clock may be off (ten minutes ahead here).
    import sqlalchemy

    old = datetime.datetime.now() - datetime.timedelta(seconds=700)
    with study._storage._backend.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(
            sqlalchemy.text("UPDATE trials SET datetime_start = :t WHERE trial_id = :i"),
            {"t": old, "i": trial._trial_id},
        )
    assert reap(study, grace_period=600) == []  # first seen now
    now[0] += 599
    assert reap(study, grace_period=600) == []
    now[0] += 2  # watched for longer than the grace period by this process's own clock
    assert [t.number for t in reap(study, grace_period=600)] == [trial.number]
    failed = study.get_trials()[trial.number]
    assert failed.user_attrs["fail_reason"] == "its worker stopped before the trial started"


def test_retries_that_run_out_are_said_recorded_and_listed(study: optuna.Study) -> None:
    said: list[str] = []
    callback = RetryOrGiveUp(max_retry=2, say=said.append)
    study.enqueue_trial({"learning_rate": 0.1}, user_attrs={"warm_start": True})
    for _ in range(3):  # the first attempt and two retries all die
        trial = study.ask()
        trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True)
        trial.set_user_attr("fail_reason", "killed in a test")
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        callback(study, study._storage.get_trial(trial._trial_id))
    assert study.get_trials(states=(TrialState.WAITING,)) == []
    assert len(said) == 1
    assert said[0].startswith("gave up on learning_rate=0.1 after 3 attempts (trials 0, 1, 2)")
    records = gave_up(study)
    assert records == [
        {"trial": 0, "params": {"learning_rate": 0.1}, "attempts": 3, "trials": [0, 1, 2],
         "reason": "killed in a test"}
    ]  # fmt: skip
    good = study.ask()
    good.suggest_float("learning_rate", 1e-4, 1e-1, log=True)
    study.tell(good, 0.5)
    assert best_result(study).to_json()["gave_up"] == records
    from rich.console import Console

    console = Console(record=True, width=160)
    console.print(*render_status(summarize(study)))
    text = console.export_text()
    assert "Given up" in text and "learning_rate=0.1" in text and "0, 1, 2" in text
