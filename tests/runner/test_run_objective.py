"""The worker's trial loop with an objective of the caller's (``run_objective``), in memory."""

from __future__ import annotations

import math
from collections.abc import Callable

import optuna
import pytest
from optuna.storages import InMemoryStorage
from optuna.trial import TrialState

from tuner.config.spec import load_spec
from tuner.runner.worker import run_objective

SETS = ["pruner.kind=median", "pruner.n_startup_trials=2", "pruner.n_warmup_steps=1"]


def curve_objective(check: Callable[[], None]) -> Callable[[optuna.Trial], float]:
    """Learns best near 1e-3; rates far from it stay at chance: easy to prune."""

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True)
        top = 0.9 - 0.2 * abs(math.log10(lr) + 3)
        value = 0.0
        for epoch in range(5):
            check()
            value = top * (epoch + 1) / 5
            trial.report(value, epoch)
            if epoch < 4 and trial.should_prune():
                raise optuna.TrialPruned()
        return value

    return objective


def run(n_trials: int, sets: list[str] = SETS, index: int = 0) -> optuna.Study:
    spec = load_spec("clothing-scratch", [*sets, "study.name=replay"])
    storage = InMemoryStorage()
    report = run_objective(
        spec, storage, "memory", curve_objective, n_trials=n_trials, worker_index=index
    )
    assert report.exit_code == 0 and report.ran == len(storage.get_all_trials(0))
    return optuna.load_study(study_name="replay", storage=storage)


def test_warm_start_first_then_the_sampler_to_the_exact_budget() -> None:
    study = run(12)
    trials = study.get_trials()
    assert len(trials) == 12
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert [t.params["learning_rate"] for t in trials[:4]] == [1e-4, 1e-3, 1e-2, 1e-1]
    assert any(t.state == TrialState.PRUNED for t in trials)  # the spec's pruner is in force
    assert study.best_params["learning_rate"] == 1e-3 or study.best_value >= 0.9 - 1e-9


def test_same_seed_same_search_and_other_index_another() -> None:
    lrs = [[t.params["learning_rate"] for t in run(10, index=i).get_trials()] for i in (0, 0, 1)]
    assert lrs[0] == lrs[1]
    assert lrs[0][4:] != lrs[2][4:]


def test_grid_kind_runs_the_warm_start_points_and_stops() -> None:
    study = run(20, [*SETS, "sampler.kind=grid", "pruner.kind=none"])
    assert [t.params["learning_rate"] for t in study.get_trials()] == [1e-4, 1e-3, 1e-2, 1e-1]


def test_until_stops_before_the_next_trial() -> None:
    spec = load_spec("clothing-scratch", [*SETS, "study.name=replay"])
    storage = InMemoryStorage()
    seen: list[int] = []

    def objective_for(check: Callable[[], None]) -> Callable[[optuna.Trial], float]:
        inner = curve_objective(check)

        def objective(trial: optuna.Trial) -> float:
            seen.append(trial.number)
            return inner(trial)

        return objective

    report = run_objective(
        spec, storage, "memory", objective_for, n_trials=50, until=lambda: len(seen) >= 6
    )
    assert report.ran == 6 and len(storage.get_all_trials(0)) == 6


def test_timeout_is_a_deadline_before_each_trial() -> None:
    import time

    from tuner.runner.worker import _deadline

    assert _deadline(None) is None and _deadline(0) is None
    reached = _deadline(0.2)
    assert reached is not None and not reached()
    time.sleep(0.25)
    assert reached()


def test_a_trial_is_claimed_and_sampled_on_one_read_and_trains_on_fresh_ones() -> None:
    """The loop's read under the budget lock serves Optuna's ask and the TPE sampler too.

    Without the shared read, a trial past the sampler's start-up read the study four
    times before its first report (the loop, ask's queue, the sampler's search space
    and its points); with it, once. From its first report on, reads are fresh again.
    """
    spec = load_spec("clothing-scratch", ["pruner.kind=none", "study.name=reads"])
    storage = InMemoryStorage()
    reads: list[str] = []
    real = storage.get_all_trials

    def counted(*args: object, **kwargs: object) -> list[optuna.trial.FrozenTrial]:
        reads.append("read")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    storage.get_all_trials = counted  # type: ignore[method-assign]
    before_report: list[int] = []
    after_report: list[list[int]] = []

    def objective_for(check: Callable[[], None]) -> Callable[[optuna.Trial], float]:
        def objective(trial: optuna.Trial) -> float:
            lr = trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True)
            before_report.append(len(reads))
            trial.report(lr, 0)
            running = trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            after_report.append([t.number for t in running])
            reads.append("objective")
            return lr

        return objective

    n = 14  # the 4 warm-start points, the sampler's start-up trials, then TPE's own
    assert run_objective(spec, storage, "memory", objective_for, n_trials=n).exit_code == 0
    assert after_report == [[i] for i in range(n)]  # a fresh read sees the trial itself
    marks = [i for i, r in enumerate(reads) if r == "objective"]
    # from the end of one trial's objective to the next one's first report: the trial
    # loop's read alone
    assert [b - m - 1 for m, b in zip(marks[:-1], before_report[1:], strict=True)] == [1] * (n - 1)
    assert len(storage.get_all_trials(0)) == n


def test_a_trial_failed_elsewhere_at_its_tell_is_lost_and_the_worker_goes_on(
    tmp_path: object, capsys: object
) -> None:
    """A false stale between the trial's last write and Optuna's tell: no crash."""
    from pathlib import Path

    from tuner.storages.storage import open_storage

    spec = load_spec("clothing-scratch", ["study.name=tell", "search.warm_start=[]"])
    url = f"sqlite:///{Path(str(tmp_path)) / 'tell.db'}"
    storage = open_storage(url, spec.storage)
    other = optuna.storages.RDBStorage(url)  # another worker's connection: the reaper

    def objective_for(check: Callable[[], None]) -> Callable[[optuna.Trial], float]:
        def objective(trial: optuna.Trial) -> float:
            trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True)
            if trial.number == 0:  # failed as stale by another worker, just before tell
                other.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            return 0.5

        return objective

    report = run_objective(spec, storage, url, objective_for, n_trials=2)
    assert report.exit_code == 0
    states = [t.state for t in optuna.load_study(study_name="tell", storage=url).trials]
    assert states[0] == TrialState.FAIL and states.count(TrialState.COMPLETE) == 2
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    assert "trial 0 was failed by another worker" in err and "Traceback" not in err


@pytest.mark.parametrize("warm_start", [False, True])
def test_a_claim_past_the_budget_is_failed_with_its_point_and_not_run(
    tmp_path: object, capsys: object, monkeypatch: object, warm_start: bool
) -> None:
    """A claim the lock did not vouch for, found after the trials that fill the budget.

    A queued point (here the warm start's second) is queued again, not lost."""
    from pathlib import Path

    from tuner.storages import budgetlock
    from tuner.storages.storage import open_storage

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    sets = ["study.name=surplus", *([] if warm_start else ["search.warm_start=[]"])]
    spec = load_spec("clothing-scratch", sets)
    url = f"sqlite:///{Path(str(tmp_path)) / 'surplus.db'}"
    storage = open_storage(url, spec.storage)
    clock = iter(range(0, 10**9, 10**6))  # every hold of the lock outlasts the lease
    monkeypatch.setattr(budgetlock, "_now", lambda: float(next(clock)))
    asked: list[int] = []

    def over_budget(study: optuna.Study, trial_id: int, target: int) -> bool:
        asked.append(trial_id)
        return len(asked) == 2  # the second claim came after the budget was filled

    monkeypatch.setattr("tuner.runner.worker.over_budget", over_budget)
    ran: list[int] = []

    def objective_for(check: Callable[[], None]) -> Callable[[optuna.Trial], float]:
        def objective(trial: optuna.Trial) -> float:
            ran.append(trial.number)
            trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True)
            return 0.5

        return objective

    report = run_objective(spec, storage, url, objective_for, n_trials=2)
    assert report.exit_code == 0
    trials = optuna.load_study(study_name="surplus", storage=url).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert [t.number for t in complete] == [0, ran[1]] and len(ran) == 2
    assert trials[1].state == TrialState.FAIL and 1 not in ran
    assert trials[1].params, "a trial claimed past the budget keeps its point"
    assert trials[1].user_attrs["fail_reason"].endswith("not run")
    assert (complete[1].params == trials[1].params) is warm_start  # a queued point queues again
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    assert "trial 1 was claimed after the trials that fill the study's budget" in err
    assert "Traceback" not in err and "failed by another worker" not in err
