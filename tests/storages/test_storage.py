"""Every storage backend under real concurrency: SQLite, journal file, PostgreSQL and MariaDB.

No TensorFlow here: each worker is a spawned process that opens the storage with
:func:`tuner.storages.storage.open_storage` and runs a trivial objective through
``study.optimize``, so the tests exercise exactly the storage and study code.
"""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
from alembic.runtime.migration import MigrationContext
from optuna.storages import RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import TrialState

from tests.conftest import MYSQL_URL, PG_URL, fresh_database, unique_name
from tuner.config.build import open_study
from tuner.config.spec import StudySpec, load_spec
from tuner.errors import StorageError
from tuner.space.params import suggest
from tuner.storages.storage import budget_lock, open_storage, redact_url

SPAWN = mp.get_context("spawn")
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
EPOCHS = 10


def _spec(name: str, *overrides: str, study: str = "clothing") -> StudySpec:
    return load_spec(study, [f"study.name={name}", *overrides])


def _objective(spec: StudySpec, pause: float = 0.0) -> Callable[[optuna.Trial], float]:
    """A trivial objective that reports and records like the real one."""

    def objective(trial: optuna.Trial) -> float:
        lr = suggest(trial, spec.search.space)["learning_rate"]
        for epoch in range(EPOCHS):
            trial.report(lr * epoch, epoch)
        trial.set_user_attr("worker", f"pid:{mp.current_process().pid}")
        time.sleep(pause)
        return lr * (EPOCHS - 1)

    return objective


# The bodies of the spawned workers; each returns what it observed, or raises.


def _open_only(spec: StudySpec, url: str) -> dict[str, Any]:
    study = open_study(spec, open_storage(url, spec.storage))
    return {"study": study.study_name}


def _drain_queue(spec: StudySpec, url: str) -> dict[str, Any]:
    """Pop queued trials until none is left; report which slots this process ran."""
    study = open_study(spec, open_storage(url, spec.storage))
    ran: list[int] = []
    inner = _objective(spec, pause=0.01)

    def objective(trial: optuna.Trial) -> float:
        ran.append(trial.user_attrs.get("slot", -1))
        return inner(trial)

    while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        # catch=() : a trial claimed twice would raise "Cannot tell a COMPLETE trial" here.
        study.optimize(objective, n_trials=1, catch=())
    return {"slots": ran}


def _run_one(spec: StudySpec, url: str) -> dict[str, Any]:
    """One trial, as a worker's next step: Optuna fails stale trials first, then asks."""
    study = open_study(spec, open_storage(url, spec.storage))
    study.optimize(_objective(spec), n_trials=1, catch=())
    return {}


def _hang_in_trial(spec: StudySpec, url: str, started: Any) -> dict[str, Any]:
    storage = open_storage(url, spec.storage)
    study = open_study(spec, storage)
    beats = sqlalchemy.text("SELECT COUNT(*) FROM trial_heartbeats WHERE trial_id = :id")

    def objective(trial: optuna.Trial) -> float:
        suggest(trial, spec.search.space)
        trial.report(0.5, 0)
        # Optuna never fails a trial that has no heartbeat yet, so wait for the first one.
        assert isinstance(storage, RDBStorage)
        with storage.engine.connect() as conn:
            while not conn.execute(beats, {"id": trial._trial_id}).scalar():
                conn.rollback()
                time.sleep(0.1)
        started.set()
        time.sleep(600)  # until SIGKILLed
        return 0.0

    study.optimize(objective, n_trials=1)
    return {}


def _budgeted(spec: StudySpec, url: str, target: int) -> dict[str, Any]:
    """The worker loop's claim protocol: count and start a trial under the budget lock."""
    storage = open_storage(url, spec.storage)
    study = open_study(spec, storage)
    lock = budget_lock(storage, url, study.study_name)
    inner = _objective(spec, pause=0.05)
    ran = 0

    def objective(trial: optuna.Trial) -> float:
        lock.release()  # the trial is RUNNING now, so it is counted
        return inner(trial)

    while True:
        with lock:
            if len(study.get_trials(deepcopy=False, states=COUNTED)) >= target:
                return {"ran": ran}
            study.optimize(objective, n_trials=1, catch=())
            ran += 1


def _child(body: str, args: tuple[Any, ...], barrier: Any, results: Any) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    barrier.wait(timeout=120)  # start together, to race for real
    try:
        results.put(("ok", globals()[body](*args)))
    except BaseException:  # report everything; the parent asserts on it
        results.put(("error", traceback.format_exc()))


def _run_together(body: str, n: int, *args: Any, timeout: float = 240) -> list[dict[str, Any]]:
    """Run ``body(*args)`` in ``n`` spawned processes released at the same moment."""
    barrier, results = SPAWN.Barrier(n), SPAWN.Queue()
    procs = [SPAWN.Process(target=_child, args=(body, args, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=timeout) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    errors = [detail for kind, detail in outcomes if kind == "error"]
    assert not errors, "\n".join(errors)
    assert [p.exitcode for p in procs] == [0] * n
    return [detail for _, detail in outcomes]


def _load(spec: StudySpec, url: str) -> optuna.Study:
    return optuna.load_study(study_name=spec.study.name, storage=open_storage(url, spec.storage))


@pytest.mark.slow  # spawns processes
def test_six_processes_create_one_study_and_warm_start_it_once(storage_url: str) -> None:
    spec = _spec(unique_name("create"), study="clothing-head")  # points of three parameters
    _run_together("_open_only", 6, spec, storage_url)
    storage = open_storage(storage_url, spec.storage)
    names = optuna.study.get_all_study_names(storage)
    assert names.count(spec.study.name) == 1
    trials = _load(spec, storage_url).get_trials()
    assert all(t.state == TrialState.WAITING for t in trials)
    queued = [t.system_attrs["fixed_params"] for t in trials]
    assert queued == list(spec.search.warm_start)


@pytest.mark.slow  # spawns processes
def test_no_queued_trial_is_claimed_twice(storage_url: str) -> None:
    spec = _spec(unique_name("queue"), "search.warm_start=[]")
    study = open_study(spec, open_storage(storage_url, spec.storage))
    for slot in range(40):
        study.enqueue_trial({"learning_rate": 1e-4 * (1 + slot)}, user_attrs={"slot": slot})
    outcomes = _run_together("_drain_queue", 8, spec, storage_url)
    ran = Counter(slot for o in outcomes for slot in o["slots"] if slot >= 0)
    assert ran == Counter(range(40)), "a queued trial ran twice or never"
    assert sum(1 for o in outcomes if o["slots"]) >= 2, "the work was not shared"
    trials = _load(spec, storage_url).get_trials()
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    queued = [t for t in trials if "slot" in t.user_attrs]
    assert sorted(t.user_attrs["slot"] for t in queued) == list(range(40))
    for t in queued:
        assert t.params["learning_rate"] == pytest.approx(1e-4 * (1 + t.user_attrs["slot"]))
        assert sorted(t.intermediate_values) == list(range(EPOCHS))


@pytest.mark.slow  # spawns processes
def test_killed_worker_trial_is_failed_and_rerun_with_the_same_params(storage_url: str) -> None:
    fast = ("storage.heartbeat_interval=1", "storage.grace_period=2", "search.warm_start=[]")
    spec = _spec(unique_name("stale"), *fast, study="clothing-head")
    storage = open_storage(storage_url, spec.storage)
    if not isinstance(storage, BaseHeartbeat):
        pytest.skip(
            f"{type(storage).__name__} has no heartbeat in Optuna {optuna.__version__}: a "
            "killed worker's trial stays RUNNING; use an RDB storage for stale-trial retries"
        )
    started = SPAWN.Event()
    victim = SPAWN.Process(target=_hang_in_trial, args=(spec, storage_url, started))
    victim.start()
    assert started.wait(timeout=120), "the victim never started its trial"
    victim.kill()
    victim.join(timeout=30)
    watcher = _load(spec, storage_url)
    killed = watcher.get_trials()[0]
    assert killed.state == TrialState.RUNNING
    # A SQLite storage judges a heartbeat by watching it stand still (no clocks compared):
    # the watcher sees it now, and again after the grace period.
    optuna.storages.fail_stale_trials(watcher)
    time.sleep(spec.storage.grace_period + 1.5)
    optuna.storages.fail_stale_trials(watcher)

    _run_together("_run_one", 1, spec, storage_url)
    trials = _load(spec, storage_url).get_trials()
    assert trials[0].state == TrialState.FAIL
    reruns = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(reruns) == 1
    assert reruns[0].state == TrialState.COMPLETE
    assert reruns[0].params == killed.params
    assert set(killed.params) == {"learning_rate", "size_inner", "droprate"}
    assert not [t for t in trials if t.state == TrialState.RUNNING]


@pytest.mark.slow  # spawns processes
def test_budget_lock_makes_the_study_wide_budget_exact(storage_url: str) -> None:
    spec = _spec(unique_name("budget"))
    target = 14
    outcomes = _run_together("_budgeted", 5, spec, storage_url, target)
    trials = _load(spec, storage_url).get_trials()
    assert len(trials) == target, Counter(t.state.name for t in trials)
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    assert sum(o["ran"] for o in outcomes) == target
    assert sum(1 for o in outcomes if o["ran"]) >= 2, "the work was not shared"


def test_passwords_never_appear_in_urls_or_errors(storage_url: str) -> None:
    spec = _spec(unique_name("secret"))
    if storage_url.startswith(("sqlite", "journal")):
        assert redact_url(storage_url) == storage_url  # file URLs hold no secret to hide
        bad = storage_url.replace("study.db", "missing/study.db").replace(
            "journal.log", "missing/journal.log"
        )
        with pytest.raises(StorageError, match="does not exist"):
            open_storage(bad, spec.storage)
        return
    # Port 1 refuses at once, so opening fails and the error text is checked too.
    url = sqlalchemy.engine.make_url(storage_url).set(password="s3cr3t-pw", port=1)
    secret_url = url.render_as_string(hide_password=False)
    shown = redact_url(secret_url)
    assert "s3cr3t-pw" not in shown
    assert "***" in shown
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        open_storage(secret_url, spec.storage)
    assert "s3cr3t-pw" not in str(caught.value)
    assert "***" in str(caught.value)
    assert time.monotonic() - started < 30, "an unreachable server must fail fast"


def test_rdb_backends_have_the_heartbeat_and_retry_callback(storage_url: str) -> None:
    spec = _spec(unique_name("hb"))
    storage = open_storage(storage_url, spec.storage)
    if not isinstance(storage, RDBStorage):
        pytest.skip(f"{type(storage).__name__} is a file journal: Optuna gives it no heartbeat")
    assert storage.heartbeat_interval == spec.storage.heartbeat_interval
    assert storage.grace_period == spec.storage.grace_period
    callback = storage.get_heartbeat_stale_trial_callback()
    assert isinstance(callback, optuna.storages.RetryHeartbeatStaleTrialCallback)


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A storage with no schema yet: a new SQLite file, or an own, empty server database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    with fresh_database(PG_URL if request.param == "postgresql" else MYSQL_URL) as url:
        yield url


def test_a_schema_created_by_another_process_at_the_same_moment_is_not_an_error(
    fresh_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Optuna's schema stamp (alembic's) reads the stamps, finds none and inserts its own. Plain
    # Optuna and optuna-dashboard take no lock of tuner's, so another process may stamp a fresh
    # storage between the read and the insert: this runs such a process exactly there.
    original = MigrationContext._ensure_version_table
    raced: list[int] = []

    def stamped_by_another_process_first(self: MigrationContext, *args: Any) -> None:
        if not raced:
            other = "import sys, optuna; optuna.storages.RDBStorage(sys.argv[1])"
            raced.append(subprocess.run([sys.executable, "-c", other, fresh_url]).returncode)
        original(self, *args)

    monkeypatch.setattr(
        MigrationContext, "_ensure_version_table", stamped_by_another_process_first
    )
    spec = _spec(unique_name("race"))
    study = open_study(spec, open_storage(fresh_url, spec.storage))
    assert raced == [0]
    assert study.study_name in optuna.study.get_all_study_names(fresh_url)
