"""SQLite for many workers: writes take the lock at BEGIN, reads never do, pickling keeps it."""

from __future__ import annotations

import pickle
import sqlite3
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tuner.config.spec import load_spec
from tuner.storages.sqlite import SQLiteStorage
from tuner.storages.storage import open_storage


def _open(path: Path) -> SQLiteStorage:
    storage = open_storage(
        f"sqlite:///{path}", load_spec("clothing", ["storage.busy_timeout=2"]).storage
    )
    assert isinstance(storage, SQLiteStorage)
    return storage


def test_a_read_held_open_does_not_block_a_writer(tmp_path: Path) -> None:
    storage = _open(tmp_path / "s.db")
    study = optuna.create_study(study_name="s", storage=storage)
    with storage.engine.connect() as reader:  # a read transaction left open, as a dashboard's
        reader.exec_driver_sql("SELECT COUNT(*) FROM trials").scalar()
        assert reader.in_transaction()
        started = time.monotonic()
        study.enqueue_trial({"x": 1.0})
        assert time.monotonic() - started < 1.0


def test_a_write_holds_the_lock_from_its_begin(tmp_path: Path) -> None:
    storage = _open(tmp_path / "s.db")
    optuna.create_study(study_name="s", storage=storage)
    statements: list[str] = []
    import sqlalchemy

    @sqlalchemy.event.listens_for(storage.engine, "before_cursor_execute")
    def _seen(_c, _cur, statement, *_a) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    study_id = storage.get_study_id_from_name("s")
    statements.clear()
    storage.create_new_trial(study_id)
    storage.get_all_trials(study_id)
    begins = [s for s in statements if s.startswith("BEGIN")]
    assert begins[0] == "BEGIN IMMEDIATE" and begins[-1] == "BEGIN"


def test_a_pickled_storage_keeps_its_hardening(tmp_path: Path) -> None:
    storage = pickle.loads(pickle.dumps(_open(tmp_path / "s.db")))
    study = optuna.create_study(study_name="s", storage=storage)
    study.enqueue_trial({"x": 1.0})
    # Another connection holds the write lock: a claim must wait for it, not race past it.
    other = sqlite3.connect(tmp_path / "s.db", timeout=5)
    other.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    try:
        storage.create_new_trial(storage.get_study_id_from_name("s"))
    except optuna.exceptions.StorageInternalError:
        pass  # the busy timeout (2 s) ran out while the lock was held: it did wait
    finally:
        other.rollback()
        other.close()
    assert time.monotonic() - started >= 1.5
    assert study.get_trials(states=(TrialState.WAITING,))


def test_opening_a_storage_prints_no_experimental_warning(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _open(tmp_path / "s.db")
    assert not [w for w in caught if issubclass(w.category, optuna.exceptions.ExperimentalWarning)]


def test_skewed_heartbeat_clocks_never_make_a_live_trial_stale(tmp_path: Path) -> None:
    """Each worker's beat carries its own clock; staleness is judged by watching it move."""
    url = f"sqlite:///{tmp_path / 'skew.db'}"
    spec = load_spec("clothing", ["storage.heartbeat_interval=1", "storage.grace_period=2"])
    storage = open_storage(url, spec.storage)
    assert isinstance(storage, SQLiteStorage)
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "skew")
    live, dead = storage.create_new_trial(study_id), storage.create_new_trial(study_id)
    beat = "UPDATE trial_heartbeats SET heartbeat = datetime('now', ?) WHERE trial_id = ?"
    for trial_id in (live, dead):
        storage.record_heartbeat(trial_id)

    def skewed(trial_id: int, offset: str) -> None:  # a worker whose clock is off
        with sqlite3.connect(tmp_path / "skew.db") as conn:
            conn.execute(beat, (offset, trial_id))

    skewed(live, "-10 minutes")  # the live trial's worker runs 10 minutes behind
    skewed(dead, "+10 minutes")  # the dead one's ran 10 minutes ahead, then stopped
    assert storage._get_stale_trial_ids(study_id) == []
    for step in range(3):
        time.sleep(1.1)
        skewed(live, f"-{10 + step} minutes")  # it beats on, with its own clock
        stale = storage._get_stale_trial_ids(study_id)
        assert live not in stale
    assert stale == [dead]


def test_opening_a_file_set_up_already_takes_no_lock(tmp_path: Path) -> None:
    # A worker that holds the set-up lock (or one stopped while it held it) must not keep
    # the others from starting once the file is set up: 64 workers would queue behind it.
    from filelock import FileLock

    from tuner.storages.settings import StorageSettings
    from tuner.storages.storage import open_storage

    db = tmp_path / "study.db"
    url = f"sqlite:///{db}"
    open_storage(url, StorageSettings())
    with FileLock(f"{db}.lock"):
        started = time.monotonic()
        opened = open_storage(url, StorageSettings(busy_timeout=2))
        assert time.monotonic() - started < 2
    assert opened.get_all_studies() == []
