"""The study's budget lock: its lease, the line that names its holder, and the surplus rule."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tuner.storages import budgetlock
from tuner.storages.budgetlock import over_budget
from tuner.storages.storage import budget_lock


def _study(tmp_path: Path) -> tuple[optuna.Study, str]:
    url = f"sqlite:///{tmp_path / 'lock.db'}"
    return optuna.create_study(study_name="s", storage=url), url


def test_a_waiter_names_the_holder_once_and_goes_on_after_the_lease(tmp_path: Path) -> None:
    study, url = _study(tmp_path)
    said: list[str] = []
    holder = budget_lock(study._storage, url, "s")
    waiter = budget_lock(study._storage, url, "s", lease=1.5, say=said.append)
    holder.acquire()
    start = time.monotonic()
    waiter.acquire()
    assert 1.5 <= time.monotonic() - start < 6
    assert not waiter.vouched
    assert len(said) == 2, said
    assert said[0].startswith("waiting for the study's budget lock, held by ")
    assert "(pid " in said[0] and "going on without it after 1.5 s" in said[0]
    assert "has held the study's budget lock for over 1.5 s" in said[1]
    waiter.release()
    # The same frozen holder again: no second wait, no second line.
    start = time.monotonic()
    waiter.acquire()
    assert time.monotonic() - start < 1 and not waiter.vouched and len(said) == 2
    waiter.release()
    holder.release()
    waiter.acquire()
    assert waiter.vouched
    waiter.release()


def test_a_hold_longer_than_half_the_lease_is_not_vouched_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, url = _study(tmp_path)
    lock = budget_lock(study._storage, url, "s", lease=10)
    now = [100.0]
    monkeypatch.setattr(budgetlock, "_now", lambda: now[0])
    with lock:
        now[0] += 4
    assert lock.vouched
    with lock:
        now[0] += 6  # frozen for longer than half the lease: others may have gone on
    assert not lock.vouched


def test_of_two_claims_past_the_budget_the_later_gives_way(tmp_path: Path) -> None:
    study, _ = _study(tmp_path)
    for _ in range(2):
        study.tell(study.ask(), 0.5)
    study.enqueue_trial({"x": 1.0})  # waiting trials fill the budget too
    earlier, later = study.ask(), study.ask()
    assert earlier.number == 2 and later.number == 3  # the queued one was claimed first
    assert not over_budget(study, earlier._trial_id, 3)
    assert over_budget(study, later._trial_id, 3)
    study.tell(earlier, state=TrialState.FAIL)  # a failed trial fills nothing
    assert not over_budget(study, later._trial_id, 3)


@pytest.mark.parametrize("server", ["postgresql", "mysql"])
def test_a_waiter_whose_connection_dies_as_it_asks_for_the_holder_rides_it_out(
    server: str,
) -> None:
    # A server restart can cut the waiter's connection between its try for the lock and its
    # question about who holds it. The question's failure must leave the connection usable by
    # the next try, which then meets the fault and rides it out, not a transaction SQLAlchemy
    # refuses to run until it is rolled back.
    import sqlalchemy

    from tests.conftest import MYSQL_URL, PG_URL, fresh_database
    from tuner.storages.faults import StorageWatch

    with fresh_database(PG_URL if server == "postgresql" else MYSQL_URL) as url:
        storage = optuna.storages.RDBStorage(url)
        optuna.create_study(study_name="s", storage=storage)
        said: list[str] = []
        watch = StorageWatch(30, "db", said.append, lambda f: f.reason)
        holder = budget_lock(storage, url, "s")
        waiter = budget_lock(storage, url, "s", watch, lease=60)
        admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
        ask, cut = waiter._ask_server_holder, []

        def cut_then_ask() -> tuple[str, str]:
            if not cut:  # end the waiter's own server session, as a restart would
                assert waiter._conn is not None
                me = waiter._conn.exec_driver_sql(
                    "SELECT pg_backend_pid()"
                    if server == "postgresql"
                    else "SELECT CONNECTION_ID()"
                ).scalar()
                waiter._conn.rollback()
                kill = "SELECT pg_terminate_backend({})" if server == "postgresql" else "KILL {}"
                with admin.connect() as conn:
                    conn.exec_driver_sql(kill.format(me))
                cut.append(me)
            return ask()

        waiter._ask_server_holder = cut_then_ask  # type: ignore[method-assign]
        holder.acquire()
        errors: list[BaseException] = []

        def wait() -> None:
            try:
                waiter.acquire()
            except BaseException as e:
                errors.append(e)

        import threading

        thread = threading.Thread(target=wait)
        thread.start()
        deadline = time.monotonic() + 20
        while not cut and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1)
        holder.release()
        thread.join(30)
        assert cut and not thread.is_alive() and not errors, (cut, errors, said)
        assert waiter.vouched
        waiter.release()
        admin.dispose()
        storage.engine.dispose()
