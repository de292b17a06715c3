"""The one place that decides a trial's fate, and the worker acting on it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from tuner.config.build import open_spec_storage
from tuner.config.spec import load_spec
from tuner.errors import (
    DataError,
    FatalError,
    RecipeError,
    StorageConfigError,
    StorageError,
    StorageLostError,
    TrialLost,
    UserError,
)
from tuner.runner.fate import Fate, fail_reason, fate_of
from tuner.runner.signals import Interrupted
from tuner.runner.worker import run_objective


@pytest.mark.parametrize(
    ("error", "fate"),
    [
        (optuna.TrialPruned("epoch 3"), Fate.PRUNE),
        (ValueError("NaN in the loss"), Fate.FAIL),
        (RecipeError("builds no model at size_inner=0"), Fate.FAIL),
        (MemoryError(), Fate.FAIL),
        (TrialLost("trial 4 was failed by another worker"), Fate.LOSE),
        (UpdateFinishedTrialError("Trial#4 has already finished"), Fate.LOSE),
        (StorageLostError("storage unreachable for over 120 s"), Fate.STOP),
        (Interrupted(15), Fate.STOP),
    ],
)
def test_each_kind_of_error_has_one_fate(error: BaseException, fate: Fate) -> None:
    assert fate_of(error) is fate


def test_a_misconfigured_storage_and_a_lost_one_are_different_kinds() -> None:
    config, lost = StorageConfigError("bad URL"), StorageLostError("gone for 120 s")
    assert isinstance(config, UserError) and not isinstance(config, FatalError)
    assert isinstance(lost, FatalError) and not isinstance(lost, UserError)
    assert isinstance(config, StorageError) and isinstance(lost, StorageError)
    assert isinstance(DataError("x"), UserError)


def test_the_reason_is_one_line_and_a_signal_is_named() -> None:
    assert fail_reason(ValueError("a\n  b")) == "ValueError: a b"
    assert len(fail_reason(ValueError("x" * 2000))) < 520
    assert fail_reason(Interrupted(15)) == "interrupted by SIGTERM"


def _run(tmp_path: Path, objective_for: Callable[..., object]) -> optuna.Study:
    spec = load_spec("clothing-scratch", ["study.name=fate", "pruner.kind=none"])
    url = f"sqlite:///{tmp_path / 'fate.db'}"
    run_objective(spec, open_spec_storage(url, spec), url, objective_for, n_trials=3)  # type: ignore[arg-type]
    return optuna.load_study(study_name="fate", storage=url)


def test_a_failing_trial_fails_alone_and_the_worker_goes_on(tmp_path: Path) -> None:
    def objective_for(check: Callable[[], None]) -> Callable[[optuna.Trial], float]:
        def objective(trial: optuna.Trial) -> float:
            lr = trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True)
            if trial.number == 1:
                raise ValueError("the loss is NaN")
            return lr

        return objective

    trials = _run(tmp_path, objective_for).get_trials()
    assert [t.state for t in trials[:2]] == [TrialState.COMPLETE, TrialState.FAIL]
    assert trials[1].user_attrs["fail_reason"] == "ValueError: the loss is NaN"
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3  # the budget, all the same


def test_a_fatal_error_stops_the_worker_and_queues_its_trial_again(tmp_path: Path) -> None:
    def objective_for(check: Callable[[], None]) -> Callable[[optuna.Trial], float]:
        def objective(trial: optuna.Trial) -> float:
            trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True)
            if trial.number == 1:
                raise StorageLostError("cannot write trial files to /full (No space left)")
            return 0.5

        return objective

    with pytest.raises(StorageLostError, match="No space left"):
        _run(tmp_path, objective_for)
    study = optuna.load_study(study_name="fate", storage=f"sqlite:///{tmp_path / 'fate.db'}")
    trials = study.get_trials()
    assert trials[1].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == trials[1].number]
    assert len(retries) == 1 and retries[0].state == TrialState.WAITING
    assert retries[0].params == trials[1].params  # the same point, queued again once
    assert not [t for t in trials if t.state == TrialState.RUNNING]
