"""The workers' storage: calls ride out faults, the queue lists retries first, lost trials."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from tuner.config.spec import load_spec
from tuner.storages.faults import StorageWatch
from tuner.storages.resilient import ResilientStorage
from tuner.storages.storage import open_storage

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")


class _Flaky:
    """Makes the next ``n`` calls of one storage method fail as a dropped connection does."""

    def __init__(self, storage: Any, method: str, n: int, after: bool = False) -> None:
        self.real = getattr(storage, method)
        self.n, self.after = n, after
        setattr(storage, method, self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.n > 0:
            self.n -= 1
            if self.after:  # the write commits, then the answer is lost
                self.real(*args, **kwargs)
            error = sqlite3.OperationalError("database is locked")
            raise sqlalchemy.exc.OperationalError("stmt", {}, error)
        return self.real(*args, **kwargs)


@pytest.fixture
def parts(tmp_path: Path) -> tuple[ResilientStorage, list[str]]:
    spec = load_spec("clothing", ["storage.heartbeat_interval=1", "storage.grace_period=2"])
    lines: list[str] = []
    watch = StorageWatch(30, "test", lines.append, lambda f: f.reason, sleep=lambda _: None)
    storage = ResilientStorage(open_storage(f"sqlite:///{tmp_path / 's.db'}", spec.storage), watch)
    return storage, lines


def test_every_call_rides_out_a_transient_fault(parts: tuple[ResilientStorage, list[str]]) -> None:
    storage, lines = parts
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    backend = storage.inner._backend  # type: ignore[attr-defined]
    _Flaky(backend, "set_trial_intermediate_value", 3)
    _Flaky(backend, "record_heartbeat", 2)
    study.optimize(lambda t: (t.report(0.5, 0), 0.5)[1], n_trials=1)
    assert study.trials[0].state == TrialState.COMPLETE
    assert study.trials[0].intermediate_values == {0: 0.5}
    assert lines[0].startswith("storage test unreachable") and "back after" in lines[-1]


def test_several_attributes_are_one_write_that_rides_out_a_fault(
    parts: tuple[ResilientStorage, list[str]],
) -> None:
    from tuner.common.attrs import set_attrs

    storage, _ = parts
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    trial = study.ask()
    backend = storage.inner._backend  # type: ignore[attr-defined]
    backend.set_trial_user_attr = lambda *a: pytest.fail("written one by one")
    flaky = _Flaky(backend, "set_trial_user_attrs", 1)
    set_attrs(trial, {"cache": "hit", "gap": 0.25})
    assert flaky.n == 0  # failed once, then written
    assert trial.user_attrs == {"cache": "hit", "gap": 0.25}  # the trial's own view too
    assert study.trials[0].user_attrs == {"cache": "hit", "gap": 0.25}


def test_finishing_a_trial_whose_commit_went_through_before_the_drop_succeeds(
    parts: tuple[ResilientStorage, list[str]],
) -> None:
    storage, _ = parts
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    trial = study.ask()
    _Flaky(storage.inner._backend, "set_trial_state_values", 1, after=True)  # type: ignore[attr-defined]
    assert storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [0.5])
    assert study.trials[0].state == TrialState.COMPLETE


def test_the_queue_lists_retries_before_points_that_never_started(
    parts: tuple[ResilientStorage, list[str]],
) -> None:
    storage, _ = parts
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.enqueue_trial({"x": 1.0})
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING, system_attrs={"failed_trial": 0, "retry_history": [0]}
        )
    )
    queue = storage.get_all_trials(study._study_id, states=(TrialState.WAITING,))
    assert [t.number for t in queue] == [1, 0]
    assert [t.number for t in storage.get_all_trials(study._study_id)] == [0, 1]


def test_the_heartbeat_notices_a_trial_another_worker_failed(
    parts: tuple[ResilientStorage, list[str]],
) -> None:
    storage, _ = parts
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    assert not storage.is_lost(trial._trial_id)
    storage.inner.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    storage.record_heartbeat(trial._trial_id)
    assert storage.is_lost(trial._trial_id)


def test_the_heartbeat_stops_quietly_once_the_storage_is_given_up(
    parts: tuple[ResilientStorage, list[str]],
) -> None:
    storage, _ = parts
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    trial = study.ask()
    from tuner.errors import StorageError

    storage.watch.dead = StorageError("gone")
    storage.record_heartbeat(trial._trial_id)  # no exception: the trial loop reports it
    with pytest.raises(StorageError, match="gone"):
        storage.get_trial(trial._trial_id)


def test_reads_from_lends_one_read_to_its_thread_until_read_afresh(
    parts: tuple[ResilientStorage, list[str]],
) -> None:
    storage, _ = parts
    sid = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "shared")
    done = storage.create_new_trial(sid)
    storage.set_trial_state_values(done, TrialState.COMPLETE, [0.5])
    storage.create_new_trial(sid)  # RUNNING
    trials = storage.get_all_trials(sid, deepcopy=False)
    reads = _Counting(storage.inner)
    with storage.reads_from(sid, trials):
        storage.create_new_trial(sid)  # made inside: not in the lent read
        assert storage.get_all_trials(sid, deepcopy=False) == trials
        complete = storage.get_all_trials(sid, deepcopy=False, states=(TrialState.COMPLETE,))
        assert [t._trial_id for t in complete] == [done] and complete[0] is trials[0]
        copied = storage.get_all_trials(sid, deepcopy=True)
        assert copied == trials and copied[0] is not trials[0]
        assert reads.n == 0
        other: list[int] = []  # another thread (the heartbeat's, say) reads the study
        thread = threading.Thread(target=lambda: other.append(len(storage.get_all_trials(sid))))
        thread.start()
        thread.join()
        assert other == [3] and reads.n == 1
        storage.read_afresh()  # the objective starts: its reads see the study as it is
        assert len(storage.get_all_trials(sid)) == 3 and reads.n == 2
    assert len(storage.get_all_trials(sid)) == 3 and reads.n == 3


class _Counting:
    """Counts the calls of ``get_all_trials`` on a storage."""

    def __init__(self, storage: Any) -> None:
        self.n, self.real = 0, storage.get_all_trials
        storage.get_all_trials = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.n += 1
        return self.real(*args, **kwargs)


class _Counted:
    """Counts the calls of one storage method, and makes them."""

    def __init__(self, storage: Any, method: str) -> None:
        self.real, self.calls = getattr(storage, method), 0
        setattr(storage, method, self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.real(*args, **kwargs)


def test_fast_reports_are_held_and_written_together_before_the_trial_ends(
    parts: tuple[ResilientStorage, list[str]],
) -> None:
    storage, _ = parts
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    backend = storage.inner._backend  # type: ignore[attr-defined]
    one, many = (
        _Counted(backend, "set_trial_intermediate_value"),
        _Counted(backend, "set_trial_intermediate_values"),
    )

    def objective(trial: optuna.Trial) -> float:
        for epoch in range(10):  # epochs of no time at all, as a cached head's
            trial.report(0.1 * epoch, epoch)
        if trial.number == 1:
            raise optuna.TrialPruned()
        return 0.5

    study.optimize(objective, n_trials=2)
    assert (one.calls, many.calls) == (2, 2)  # each trial's first report, then the rest at once
    done, pruned = study.trials
    assert done.intermediate_values == {e: pytest.approx(0.1 * e) for e in range(10)}
    assert pruned.state == TrialState.PRUNED and pruned.value == pytest.approx(0.9)  # its last
    assert storage._held == {}


def test_a_slow_report_is_written_at_once_with_those_held(
    parts: tuple[ResilientStorage, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tuner.storages.resilient as resilient

    storage, _ = parts
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    trial = study.ask()
    trial.report(0.1, 0)  # the first: written
    trial.report(0.2, 1)  # fast: held
    seen = optuna.load_study(study_name="s", storage=storage.inner._backend)  # type: ignore[attr-defined]
    assert seen.trials[0].intermediate_values == {0: 0.1}
    monkeypatch.setattr(resilient, "FAST_REPORT", 0.0)  # the next epoch took its time
    trial.report(0.3, 2)
    seen = optuna.load_study(study_name="s", storage=storage.inner._backend)  # type: ignore[attr-defined]
    assert seen.trials[0].intermediate_values == {0: 0.1, 1: 0.2, 2: 0.3}


def test_held_reports_of_a_trial_another_worker_failed_are_dropped(
    parts: tuple[ResilientStorage, list[str]],
) -> None:
    from optuna.exceptions import UpdateFinishedTrialError

    storage, _ = parts
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    trial = study.ask()
    trial.report(0.1, 0)
    trial.report(0.2, 1)  # held
    backend = storage.inner._backend  # type: ignore[attr-defined]
    backend.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # as a reaper would
    with pytest.raises(UpdateFinishedTrialError):  # finishing it fails as it always did
        storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [0.2])
    assert storage._held == {}
    assert study.trials[0].intermediate_values == {0: 0.1}
