"""Storage faults: transient or fatal by the driver's own code, and riding out outages."""

from __future__ import annotations

import sqlite3

import pytest
import sqlalchemy
from optuna.exceptions import StorageInternalError

from tuner.errors import StorageError
from tuner.storages.faults import Fault, StorageWatch, classify


def _wrapped(driver_error: Exception) -> Exception:
    """A driver error as Optuna's RDB storage raises it: SQLAlchemy's, then Optuna's."""
    try:
        try:
            raise sqlalchemy.exc.OperationalError("UPDATE trials ...", {}, driver_error)
        except sqlalchemy.exc.SQLAlchemyError as e:
            raise StorageInternalError("An exception is raised during the commit.") from e
    except StorageInternalError as outer:
        return outer


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("database or disk is full", "full"),
        ("attempt to write a readonly database", "readonly"),
        ("database disk image is malformed", "damaged"),
        ("file is not a database", "damaged"),
        ("database is locked", "transient"),
    ],
)
def test_sqlite_errors_are_classified_through_optunas_wrappers(message: str, kind: str) -> None:
    fault = classify(_wrapped(sqlite3.OperationalError(message)))
    assert fault is not None and fault.kind == kind


def test_server_connection_errors_are_transient_and_a_full_server_disk_is_fatal() -> None:
    import psycopg2
    import pymysql

    refused = psycopg2.OperationalError("connection to server at 127.0.0.1 failed: refused")
    assert classify(_wrapped(refused)) == Fault("transient", str(refused))
    gone = pymysql.err.OperationalError(2006, "MySQL server has gone away")
    assert classify(_wrapped(gone)).kind == "transient"  # type: ignore[union-attr]
    full = pymysql.err.OperationalError(1114, "The table 'trials' is full")
    assert classify(_wrapped(full)).kind == "full"  # type: ignore[union-attr]


def test_other_errors_are_not_storage_faults() -> None:
    assert classify(ValueError("Cannot tell a FAIL trial.")) is None
    assert classify(_wrapped(sqlite3.OperationalError("no such table: trials"))) is None


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _watch(lines: list[str], clock: _Clock, tolerance: float = 10) -> StorageWatch:
    return StorageWatch(
        tolerance, "sqlite:///x.db", lines.append, fatal_message=lambda f: f"fatal: {f.reason}",
        clock=clock, sleep=clock.sleep,
    )  # fmt: skip


def _failing(times: int, error: Exception) -> object:
    calls = {"n": 0}

    def call() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise error
        return "done"

    return call


def test_a_transient_outage_is_ridden_out_with_one_line_each_way() -> None:
    lines: list[str] = []
    clock = _Clock()
    watch = _watch(lines, clock)
    locked = sqlite3.OperationalError("database is locked")
    assert watch.call(_failing(4, locked)) == "done"  # type: ignore[arg-type]
    assert len(lines) == 2
    assert lines[0].startswith("storage sqlite:///x.db unreachable (database is locked)")
    assert "retrying for up to 10 s (storage.outage_tolerance)" in lines[0]
    assert lines[1].startswith("storage is back after")
    assert watch.outages == 1 and watch.dead is None


def test_an_outage_beyond_the_tolerance_kills_every_later_call_at_once() -> None:
    lines: list[str] = []
    clock = _Clock()
    watch = _watch(lines, clock, tolerance=3)
    with pytest.raises(StorageError, match="unreachable for over 3 s"):
        watch.call(_failing(100, sqlite3.OperationalError("database is locked")))  # type: ignore[arg-type]
    before = clock.now
    with pytest.raises(StorageError, match="unreachable for over 3 s"):
        watch.call(lambda: "never")
    assert clock.now == before  # no second wait


def test_a_fatal_fault_is_not_retried() -> None:
    lines: list[str] = []
    watch = _watch(lines, _Clock())
    with pytest.raises(StorageError, match="fatal: database or disk is full"):
        watch.call(_failing(1, sqlite3.OperationalError("database or disk is full")))  # type: ignore[arg-type]
    assert lines == []


def test_a_bug_is_raised_as_it_is() -> None:
    watch = _watch([], _Clock())
    with pytest.raises(KeyError):
        watch.call(_failing(1, KeyError("x")))  # type: ignore[arg-type]
    assert watch.dead is None


def test_the_main_threads_check_can_stop_the_wait() -> None:
    class Stop(Exception):
        pass

    def check() -> None:
        raise Stop

    clock = _Clock()
    watch = StorageWatch(60, "db", lambda _: None, lambda f: f.reason, check=check,
                         clock=clock, sleep=clock.sleep)  # fmt: skip
    with pytest.raises(Stop):
        watch.call(_failing(5, sqlite3.OperationalError("database is locked")))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "error",
    [
        "psycopg2:connection to server failed: FATAL:  sorry, too many clients already",
        "psycopg2:FATAL:  remaining connection slots are reserved for roles with SUPERUSER",
        "psycopg2:ERROR:  no more connections allowed (max_client_conn)",  # PgBouncer's
        "pymysql:1040",
    ],
)
def test_a_server_with_no_connection_left_is_a_crowded_outage(error: str) -> None:
    import psycopg2
    import pymysql

    module, text = error.split(":", 1)
    if module == "pymysql":
        driver: Exception = pymysql.err.OperationalError(1040, "Too many connections")
    else:
        driver = psycopg2.OperationalError(text)
    wrapped = sqlalchemy.exc.OperationalError("connect", {}, driver)
    fault = classify(StorageInternalError("An exception is raised during the commit."))
    assert fault is None  # nothing behind it: not a storage fault
    fault = classify(wrapped)
    assert fault is not None and fault.kind == "transient" and fault.crowded, fault
    said: list[str] = []
    watch = StorageWatch(60, "db", said.append, lambda f: f.reason, sleep=lambda s: None)
    calls = iter([wrapped, "ok"])

    def call() -> str:
        answer = next(calls)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert watch.call(call) == "ok"
    assert len(said) == 2 and "has no connection left for this worker" in said[0], said
    assert "max_connections" in said[0] and "PgBouncer" in said[0], said
