"""Storage faults: which are transient, which are fatal, and riding out the transient ones.

A database that restarts, a dropped connection or a SQLite file locked for
longer than the busy timeout is *transient*: the same call succeeds once the
server is back. A full disk, a read-only file or a damaged database is
*fatal*: waiting does not help, and the user must act. :func:`classify` tells
them apart from the exception chain, and :class:`StorageWatch` retries
transient faults with backoff for up to ``storage.outage_tolerance`` seconds,
saying once when it starts waiting and once when the storage is back.
"""

from __future__ import annotations

import errno
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from tuner.errors import StorageLostError

__all__ = ["Fault", "StorageWatch", "classify", "crowded_advice", "give_up_line", "outage_line"]

_T = TypeVar("_T")

# psycopg2 SQLSTATE classes and codes: connection exceptions, operator
# intervention (shutdown, crash, "starting up"), resources, and transaction
# rollbacks (serialization failures, deadlocks) pass; a full disk does not.
_PG_TRANSIENT_CLASSES = ("08", "57", "53", "40")
_PG_FULL = ("53100",)
# PyMySQL error numbers: cannot connect, gone away, lost connection, shutdown in
# progress, lock wait timeout, deadlock, killed, idle disconnect.
_MYSQL_TRANSIENT = {0, 1040, 1053, 1205, 1213, 1927, 2002, 2003, 2006, 2013, 2055, 4031}
_MYSQL_FULL = {1021, 1114}
# A server (or a pooler in front of it) with no connection left for one more client:
# PostgreSQL's too_many_connections (at connect time psycopg2 gives no SQLSTATE, only the
# text), PgBouncer's client limit, MySQL's ER_CON_COUNT_ERROR and ER_TOO_MANY_USER_CONNECTIONS.
_PG_CROWDED = "53300"
_CROWDED_TEXT = (
    "too many clients",
    "remaining connection slots are reserved",
    "no more connections allowed",
    "too many connections",
)
_MYSQL_CROWDED = {1040, 1203}


def crowded_advice() -> str:
    """What a user does about a server that has no connection left."""
    return (
        "the server's max_connections is too small for all its clients: raise it, or let "
        "the workers share connections through PgBouncer (README: Many workers)"
    )


@dataclass(frozen=True)
class Fault:
    """A storage fault: ``kind`` is ``transient``, ``full``, ``readonly`` or ``damaged``."""

    kind: str
    reason: str
    crowded: bool = False  # transient: the server has no connection left for this client

    @property
    def fatal(self) -> bool:
        return self.kind != "transient"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, the driver error SQLAlchemy wraps, and the causes behind them."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [getattr(e, "orig", None), e.__cause__, e.__context__]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _sqlite_fault(e: sqlite3.Error) -> Fault | None:
    name = getattr(e, "sqlite_errorname", "")  # Python 3.11+
    text = str(e).lower()
    reason = _first_line(e)
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return Fault("full", "database or disk is full")
    if name.startswith("SQLITE_READONLY") or "readonly database" in text:
        return Fault("readonly", "the database file is read-only")
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or (
        "malformed" in text or "not a database" in text
    ):
        return Fault("damaged", reason)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text or "busy" in text:
        return Fault("transient", reason)
    if name.startswith("SQLITE_IOERR") or "disk i/o error" in text:
        return Fault("full" if "full" in text else "damaged", reason)
    return None


def _server_fault(e: BaseException) -> Fault | None:
    module = type(e).__module__.split(".", 1)[0]
    reason = _first_line(e)
    if module == "psycopg2":
        code = getattr(e, "pgcode", None)
        if code in _PG_FULL:
            return Fault("full", reason)
        if code == _PG_CROWDED or any(t in reason.lower() for t in _CROWDED_TEXT):
            return Fault("transient", reason, crowded=True)
        if code is None and type(e).__name__ in ("OperationalError", "InterfaceError"):
            return Fault("transient", reason)  # refused, closed, or reset connections
        if code and code.startswith(_PG_TRANSIENT_CLASSES):
            return Fault("transient", reason)
    if module == "pymysql" and e.args and isinstance(e.args[0], int):
        if e.args[0] in _MYSQL_FULL:
            return Fault("full", reason)
        if e.args[0] in _MYSQL_CROWDED:
            return Fault("transient", reason, crowded=True)
        if e.args[0] in _MYSQL_TRANSIENT:
            return Fault("transient", reason)
    return None


def classify(exc: BaseException) -> Fault | None:
    """The storage fault behind ``exc``, or None when it is not one (a bug, a bad call).

    Looks through Optuna's ``StorageInternalError`` and SQLAlchemy's wrappers to
    the driver's own error, whose code says what happened.
    """
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            fault: Fault | None = Fault("full", e.strerror or str(e))  # a journal file's disk
        elif isinstance(e, OSError) and e.errno == errno.EROFS:
            fault = Fault("readonly", e.strerror or str(e))
        elif isinstance(e, sqlite3.Error):
            fault = _sqlite_fault(e)
        elif getattr(e, "connection_invalidated", False):
            fault = Fault("transient", _first_line(getattr(e, "orig", None) or e))
        else:
            fault = _server_fault(e)
        if fault is not None:
            return fault
    return None


def outage_line(describe: str, fault: Fault, tolerance: float) -> str:
    """The one line said when a transient fault starts an outage."""
    wait = f"retrying for up to {tolerance:g} s (storage.outage_tolerance)"
    if fault.crowded:
        return (
            f"storage {describe} has no connection left for this worker ({fault.reason}); "
            f"{wait}; {crowded_advice()}"
        )
    return f"storage {describe} unreachable ({fault.reason}); {wait}"


def give_up_line(describe: str, fault: Fault, tolerance: float) -> str:
    """The error once an outage has outlasted ``storage.outage_tolerance``."""
    if fault.crowded:
        return (
            f"storage {describe} had no connection left for this worker for over "
            f"{tolerance:g} s ({fault.reason}); {crowded_advice()}"
        )
    return (
        f"storage {describe} unreachable for over {tolerance:g} s ({fault.reason}); check the "
        "database server, or raise storage.outage_tolerance"
    )


class StorageWatch:
    """Runs storage calls, riding out transient faults for up to ``tolerance`` seconds.

    One watch serves every thread of a worker (the trial loop and Optuna's
    heartbeat thread), so an outage is announced once, however many calls
    wait on it. Once the tolerance has run out, or a fatal fault was seen,
    every later call fails at once with the same :class:`~tuner.errors.StorageLostError`
    (``dead``), so the worker stops instead of waiting again at each step.

    Args:
        tolerance: seconds an outage may last before the worker gives up.
        describe: names the storage in messages (with the password masked).
        say: prints one progress line.
        check: called between retries in the main thread; may raise to stop waiting
            (a signal).
        fatal_message: turns a fatal fault into the user's one-line error.
    """

    def __init__(
        self,
        tolerance: float,
        describe: str,
        say: Callable[[str], None],
        fatal_message: Callable[[Fault], str],
        check: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.tolerance, self.describe, self.say = tolerance, describe, say
        self.fatal_message, self.check = fatal_message, check
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._since: float | None = None
        self.dead: StorageLostError | None = None
        self.outages = 0

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def call(self, fn: Callable[[], _T]) -> _T:
        """``fn()``, retried while the storage has a transient fault.

        Raises:
            StorageLostError: for a fatal fault, or once an outage outlasts the tolerance.
        """
        delay = 0.25
        while True:
            if self.dead is not None:
                raise self.dead
            try:
                result = fn()
            except Exception as e:
                fault = classify(e)
                if fault is None:
                    raise
                self._fault(fault)
            else:
                self._recovered()
                return result
            if threading.current_thread() is threading.main_thread():
                self.check()
            self._sleep(delay)
            # On a full server, a worker that is in asks again within a second: workers
            # still starting ask less often (see storage._open_server), so those that hold
            # trials get the connections that free up and finish them.
            delay = min(delay * 2, 1.0 if fault.crowded else 5.0)

    def _fault(self, fault: Fault) -> None:
        with self._lock:
            if self.dead is not None:
                raise self.dead
            if fault.fatal:
                self.dead = StorageLostError(self.fatal_message(fault))
                raise self.dead from None
            now = self._clock()
            if self._since is None:
                self._since = now
                self.outages += 1
                self.say(outage_line(self.describe, fault, self.tolerance))
            elif now - self._since > self.tolerance:
                self.dead = StorageLostError(give_up_line(self.describe, fault, self.tolerance))
                raise self.dead from None

    def _recovered(self) -> None:
        if self._since is None:  # the common case: no lock needed
            return
        with self._lock:
            if self._since is not None:
                self.say(f"storage is back after {self._clock() - self._since:.1f} s")
                self._since = None
