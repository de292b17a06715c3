"""SQLite made safe for many workers on one machine, with Optuna's storage semantics kept.

Every connection uses WAL and a busy timeout. SQLite has no row locks and
ignores ``SELECT ... FOR UPDATE``, so two workers could both read a WAITING
trial and both claim it. Each of Optuna's writes reads the row it changes
first (claiming a queued trial, finishing a trial, creating a study), so a
write takes SQLite's write lock at its ``BEGIN`` (``BEGIN IMMEDIATE``): its
read and its write are then one atomic step, as with PostgreSQL's row locks,
and a concurrent writer waits for the busy timeout instead of failing on a
stale snapshot. Reads start a plain deferred transaction and never take the
write lock, so a reader (the dashboard, ``tuner status``, a second connection
of the same thread) never blocks the workers.

SQLite has no server, so its ``CURRENT_TIMESTAMP`` is the clock of whichever
worker writes a heartbeat, and two workers' clocks may disagree (a machine
with a skewed clock sharing the file over a network filesystem). A trial is
therefore judged stale by watching, never by comparing clocks: this process
notes when it first saw each running trial's heartbeat value, on its own
monotonic clock, and counts the trial stale once the value has not changed for
``grace_period`` seconds. Skew between workers cannot make a live trial look
dead, and a dead worker's trial is found after ``grace_period`` of watching,
whatever its clock said.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy

from tuner.storages.rdbcore import RUNNING_BEATS, CoreRDBStorage

__all__ = ["SQLiteStorage"]

# RDBStorage's methods that write; the private ones are what Optuna's cache calls.
_WRITES = [
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "create_new_trial",
    "_create_new_trial",
    "set_trial_param",
    "_set_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_intermediate_values",
    "set_trial_user_attr",
    "set_trial_user_attrs",
    "set_trial_system_attr",
    "record_heartbeat",
]


# Reads that open a connection of their own. Optuna's writes call get_trial inside their
# transaction (for an error message); on a second connection, a read must not ask for the
# write lock that the first holds.
_READS = ["get_trial", "_get_trials", "_get_stale_trial_ids"]


def _with_intent(method: Callable[..., Any], write: bool) -> Callable[..., Any]:
    """``method`` with its transactions begun for writing (IMMEDIATE) or for reading."""

    @functools.wraps(method)
    def wrapper(self: SQLiteStorage, *args: Any, **kwargs: Any) -> Any:
        outer = getattr(self._intent, "write", False)
        self._intent.write = write
        try:
            return method(self, *args, **kwargs)
        finally:
            self._intent.write = outer

    return wrapper


class SQLiteStorage(CoreRDBStorage):
    """Optuna's RDB storage on a SQLite file, hardened as the module docstring says.

    Args:
        url: ``sqlite:///FILE``.
        busy_timeout: seconds a write waits for another writer's lock.
        **kwargs: passed on to :class:`optuna.storages.RDBStorage`.
    """

    def __init__(self, url: str, busy_timeout: float, **kwargs: Any) -> None:
        self.busy_timeout = busy_timeout
        self._intent = threading.local()
        # study id -> trial id -> (the heartbeat last read, when this process first read it)
        self._beats_seen: dict[int, dict[int, tuple[Any, float]]] = {}
        self._beats_lock = threading.Lock()
        super().__init__(url, **kwargs)
        self._harden()

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        del state["_intent"], state["_beats_lock"]
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        # A restored storage (a spawned process, joblib) gets a new engine: harden it too.
        self._intent = threading.local()
        self._beats_lock = threading.Lock()
        super().__setstate__(state)
        self._harden()

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Running trials whose heartbeat this process has watched stand still for the grace
        period (see the module docstring): no comparison between two workers' clocks."""
        assert self.heartbeat_interval is not None
        grace = self.grace_period if self.grace_period is not None else 2 * self.heartbeat_interval
        with self.engine.begin() as conn:
            beats = conn.execute(RUNNING_BEATS, {"study_id": study_id}).all()
        now = time.monotonic()
        stale = []
        with self._beats_lock:
            before = self._beats_seen.get(study_id, {})
            watched = {}  # only the study's running trials stay watched
            for trial_id, beat in beats:
                seen = before.get(trial_id)
                if seen is None or seen[0] != beat:
                    seen = (beat, now)
                elif now - seen[1] > grace:
                    stale.append(trial_id)
                watched[trial_id] = seen
            self._beats_seen[study_id] = watched
        return stale

    def _harden(self) -> None:
        ms = int(self.busy_timeout * 1000)
        intent = self._intent

        @sqlalchemy.event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy, not pysqlite, emit BEGIN, so a write's can be IMMEDIATE.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {ms}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.close()

        @sqlalchemy.event.listens_for(self.engine, "begin")
        def _on_begin(connection: Any) -> None:
            write = getattr(intent, "write", False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        # Connections opened while Optuna created the tables predate the listeners.
        self.engine.dispose()


for _names, _write in ((_WRITES, True), (_READS, False)):
    for _name in _names:
        setattr(SQLiteStorage, _name, _with_intent(getattr(SQLiteStorage, _name), _write))
