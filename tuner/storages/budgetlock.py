"""The study-wide budget lock, with a lease: a frozen holder cannot stall the study.

Counting a study's trials and starting a new one happen as one step under this
lock, which makes the trial budget exact. File storages use a lock file beside
the file (named by its real path, so every name of one file shares it);
PostgreSQL and MySQL use the server's advisory locks, so workers on other
machines take the same lock. An in-memory storage lives in one process, whose
single trial loop needs no lock.

A worker that stops answering while it holds the lock (stopped with SIGSTOP, a
machine that hangs, a connection that stalls) would hold every other worker for
as long as it stays frozen. So the lock has a lease: a waiting worker waits in
short slices and, after ``lease`` seconds (``storage.grace_period``) on the
same holder, says so and goes on without the lock. The budget stays exact
through a rule every worker applies to a trial it claimed without the lock's
guarantee (without the lock, or while holding it for longer than half the
lease): it counts the study's trials created before its own (finished, running
or waiting); when they already fill the budget, its trial is surplus and is not
run (:func:`over_budget`). Of two such claims, the later one sees the earlier,
so exactly one gives way. A holder's time is read on ``CLOCK_BOOTTIME``, which
goes on while the process is stopped or the machine sleeps.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import optuna
import sqlalchemy
from filelock import FileLock
from filelock import Timeout as FileLockTimeout
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import TrialState
from sqlalchemy import exc as sa_exc

from tuner.common.attrs import worker_name
from tuner.common.console import warn
from tuner.errors import StorageLostError
from tuner.storages.faults import StorageWatch

__all__ = ["BudgetLock", "over_budget"]

# How long one wait for the lock lasts before the holder is looked at again.
_SLICE = 2.0
# The states of the trials that fill a study's budget, or will once they run.
_COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


def _now() -> float:
    """Seconds on a clock that goes on while this process is stopped or the machine sleeps."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def over_budget(study: optuna.Study, trial_id: int, target: int) -> bool:
    """Whether trial ``trial_id`` came after the trials that already fill the budget.

    Trials are ordered by their id, which the storage hands out in creation
    order: of two trials claimed at once, the later sees the earlier and gives way.
    """
    getattr(study._storage, "read_afresh", lambda: None)()
    trials = study.get_trials(deepcopy=False)
    ahead = sum(t._trial_id < trial_id and t.state in _COUNTED for t in trials)
    return ahead >= target


class BudgetLock:
    """A lock shared by every worker of one study, held while a trial is being claimed.

    Args:
        storage: the study's storage (its engine for a database).
        path: the lock's file for a file storage (the database's real path), else None.
        study_name: the study, which names the server's advisory lock.
        watch: the storage's fault watch, which waits out outages for the server lock.
        lease: seconds a holder may keep the others waiting before they go on without it.
        say: where the waiting lines go.
        check: called between slices of a wait; may raise to stop waiting (a signal).

    ``release`` may be called early and more than once. After a claim,
    :attr:`vouched` says whether the lock guaranteed it (else see :func:`over_budget`).
    """

    def __init__(
        self,
        storage: BaseStorage,
        path: Path | None,
        study_name: str,
        watch: StorageWatch | None = None,
        lease: float = math.inf,
        say: Callable[[str], None] = warn,
        check: Callable[[], None] = lambda: None,
    ) -> None:
        self._path = path
        self._engine = storage.engine if isinstance(storage, RDBStorage) else None
        digest = hashlib.blake2b(study_name.encode(), digest_size=8).digest()
        self._key = int.from_bytes(digest, "big") & 0x7FFFFFFFFFFFFFFF
        self._file_lock = FileLock(f"{path}.budget.lock") if path is not None else None
        self._owner_file = Path(f"{path}.budget.owner") if path is not None else None
        self._conn: sqlalchemy.engine.Connection | None = None
        self._watch = watch
        self.lease = lease
        self.say, self.check = say, check
        self._held_since: float | None = None
        self._bypassed: str | None = None  # the frozen holder this worker went on without
        self.vouched = True

    # -- taking and giving back ---------------------------------------------------------

    def acquire(self) -> None:
        self.vouched = True
        if self._file_lock is None and self._engine is None:
            return  # in memory: one process
        if self._file_lock is not None:
            got = self._wait(self._try_file_lock, self._file_holder)
        elif self._watch is not None:
            got = self._watch.call(self._acquire_server_lock)
        else:
            got = self._acquire_server_lock()
        self._held_since = _now() if got else None
        self.vouched = got

    def _slice(self) -> float:
        """How long one try waits: briefly while a holder this worker went on without is there."""
        return 0.2 if self._bypassed else _SLICE

    def _try_file_lock(self) -> bool:
        assert self._file_lock is not None and self._owner_file is not None
        try:
            self._file_lock.acquire(timeout=self._slice())
        except FileLockTimeout:
            return False
        record = {"worker": worker_name(), "host": socket.gethostname(), "pid": os.getpid()}
        record["token"] = uuid.uuid4().hex
        with contextlib.suppress(OSError):  # only the waiting lines read it
            part = self._owner_file.with_name(f"{self._owner_file.name}.{os.getpid()}")
            part.write_text(json.dumps(record))
            part.replace(self._owner_file)
        return True

    def _file_holder(self) -> tuple[str, str]:
        """(identity of this hold, who holds it) from the holder's record."""
        assert self._owner_file is not None
        try:
            record = json.loads(self._owner_file.read_text())
            return str(record["token"]), f"{record['worker']} (pid {record['pid']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "", "another worker"

    def _acquire_server_lock(self) -> bool:
        assert self._engine is not None
        self._drop_connection()  # a connection a fault broke mid-acquire
        self._conn = self._engine.connect()
        got = self._wait(self._try_server_lock, self._server_holder)
        if not got:
            self._drop_connection()
        return got

    def _try_server_lock(self) -> bool:
        assert self._conn is not None and self._engine is not None
        if self._engine.dialect.name == "postgresql":
            return self._try_postgres_lock()
        # GET_LOCK answers 0 after its timeout, and MariaDB answers NULL at once to
        # MySQL's "-1 means forever", so wait in bounded slices until it is granted.
        got = self._conn.exec_driver_sql(f"SELECT GET_LOCK('tuner{self._key}', {self._slice():g})")
        answer = got.scalar()
        self._conn.commit()
        if answer is None:
            self._drop_connection()
            raise StorageLostError(
                "the database refused the study's budget lock (GET_LOCK); check the server's log"
            )
        return answer == 1

    def _try_postgres_lock(self) -> bool:
        """Try for the lock for one slice, holding no server connection between tries.

        The lock is the transaction's, held until :meth:`release` ends it: a pooler
        in transaction mode (PgBouncer) gives a transaction one server connection,
        so the lock stays with its holder there too. A wait that blocked in the
        server would hold a server connection as well, and a pool's connections
        would go to the waiting workers while the holder waits for one to claim
        its trial; so a waiting worker asks again and again, briefly, between
        short sleeps, with its transaction ended.
        """
        assert self._conn is not None
        deadline = time.monotonic() + self._slice()
        pause = 0.01
        while True:
            got = self._conn.exec_driver_sql(
                f"SELECT pg_try_advisory_xact_lock({self._key})"
            ).scalar()
            if got:
                return True
            self._conn.rollback()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, pause * random.uniform(0.5, 1.5)))
            pause = min(pause * 2, 0.25)

    def _server_holder(self) -> tuple[str, str]:
        """(identity of this hold, who holds it) as the server sees it."""
        assert self._conn is not None and self._engine is not None
        try:
            return self._ask_server_holder()
        except sa_exc.SQLAlchemyError:
            # Only the waiting line needs the answer. The connection may have died with its
            # transaction open (a server restart): end it here, so the next try for the lock
            # meets the fault itself, which the watch rides out, instead of a transaction
            # SQLAlchemy refuses to use until it is rolled back.
            with contextlib.suppress(sa_exc.SQLAlchemyError):
                self._conn.rollback()
        return "", "another worker"

    def _ask_server_holder(self) -> tuple[str, str]:
        """:meth:`_server_holder`'s query, on this worker's lock connection."""
        assert self._conn is not None and self._engine is not None
        if self._engine.dialect.name == "postgresql":
            row = self._conn.exec_driver_sql(
                "SELECT a.pid, a.application_name, a.client_addr, a.backend_start "
                "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted "
                f"AND l.classid::bigint = {self._key >> 32} "
                f"AND l.objid::bigint = {self._key & 0xFFFFFFFF} AND l.objsubid = 1"
            ).first()
            self._conn.rollback()
            if row is not None:
                pid, app, addr, started = row
                who = app or f"server process {pid}"
                return f"{pid}@{started}", f"{who} (from {addr or 'local socket'})"
        else:
            conn_id = self._conn.exec_driver_sql(
                f"SELECT IS_USED_LOCK('tuner{self._key}')"
            ).scalar()
            self._conn.rollback()
            if conn_id is not None:
                return str(conn_id), f"database connection {conn_id}"
        return "", "another worker"

    def _wait(self, attempt: Callable[[], bool], holder: Callable[[], tuple[str, str]]) -> bool:
        """Take the lock in slices; False once one holder has outlasted the lease."""
        watching: str | None = None
        since = 0.0
        said = False
        while not attempt():
            self.check()
            token, who = holder()
            if token and token == self._bypassed:
                return False  # the same frozen holder as last time: no second wait
            if token != watching:  # the lock changed hands: a new hold, a new lease
                watching, since, said = token, _now(), False
                continue
            waited = _now() - since
            if not said and waited >= min(10.0, self.lease / 3):
                self.say(
                    f"waiting for the study's budget lock, held by {who} for {waited:.0f} s; "
                    f"going on without it after {self.lease:g} s (storage.grace_period)"
                )
                said = True
            if waited >= self.lease:
                self.say(
                    f"{who} has held the study's budget lock for over {self.lease:g} s "
                    "(storage.grace_period) and may be frozen; going on without it (a trial "
                    "claimed over the budget meanwhile is not run)"
                )
                self._bypassed = token or None
                return False
        self._bypassed = None
        return True

    def release(self) -> None:
        held = self._held_since
        self._held_since = None
        if held is not None and _now() - held > self.lease / 2:
            self.vouched = False  # held so long that others may have gone on without it
        if self._file_lock is not None and self._file_lock.is_locked:
            self._file_lock.release()
        elif self._conn is not None:
            self._drop_connection(unlock=True)

    def _drop_connection(self, unlock: bool = False) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        assert self._engine is not None
        with contextlib.suppress(sa_exc.SQLAlchemyError):  # a restarted server holds none
            if self._engine.dialect.name == "postgresql":
                conn.rollback()  # ends the transaction that holds the lock
            elif unlock:
                conn.exec_driver_sql(f"SELECT RELEASE_LOCK('tuner{self._key}')")
        with contextlib.suppress(sa_exc.SQLAlchemyError):
            conn.close()

    def __enter__(self) -> BudgetLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
