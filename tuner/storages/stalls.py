"""A bound on every storage call, so a network stall becomes an outage.

A connection whose peer stops answering without closing (a proxy or a router
that drops packets, a server frozen mid-answer) would otherwise hold a worker
for ever: the driver waits on its socket with no timeout, and so do the main
thread, the heartbeat thread and the status thread behind it. Each call gets
``storage.call_timeout`` seconds instead; past it, the call fails the way a
dropped connection does, and :class:`~tuner.storages.faults.StorageWatch`
rides it out for ``storage.outage_tolerance`` seconds like any other outage.

- PostgreSQL (psycopg2): libpq has no socket timeout, so tuner waits on the
  socket itself through psycopg2's wait callback (connecting included); a wait
  past the bound raises the ``OperationalError`` of a lost connection, and
  psycopg2 closes the connection.
- MySQL (PyMySQL): the driver's ``read_timeout`` and ``write_timeout``.
- SQLite has no network; its lock waits are bounded by ``storage.busy_timeout``.
"""

from __future__ import annotations

import select
import time
from typing import Any

__all__ = ["bound_postgres_calls", "mysql_call_args"]


def mysql_call_args(timeout: float) -> dict[str, Any]:
    """PyMySQL's connect arguments that bound every read and write of a connection."""
    seconds = max(1, round(timeout))
    return {"read_timeout": seconds, "write_timeout": seconds}


def bound_postgres_calls(timeout: float) -> None:
    """Bound every psycopg2 call of this process (connect, query, ping) by ``timeout`` s.

    The wait callback is process-wide (a worker has one storage); the last call sets it.
    """
    import psycopg2.extensions

    psycopg2.extensions.set_wait_callback(lambda conn: _wait(conn, timeout))


def _wait(conn: Any, timeout: float) -> None:
    """psycopg2's wait loop (``psycopg2.extras.wait_select``) with a deadline."""
    import psycopg2
    import psycopg2.extensions as ext

    deadline = time.monotonic() + timeout
    poller = select.poll()
    registered = False
    while True:
        state = conn.poll()
        if state == ext.POLL_OK:
            return
        events = select.POLLIN if state == ext.POLL_READ else select.POLLOUT
        if state not in (ext.POLL_READ, ext.POLL_WRITE):
            raise psycopg2.OperationalError(f"bad state from poll: {state}")
        if registered:
            poller.modify(conn.fileno(), events)
        else:
            poller.register(conn.fileno(), events)
            registered = True
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(remaining * 1000):
            # psycopg2 closes a connection whose wait callback raised (it holds the
            # connection's lock here, so closing it from this function would deadlock).
            raise psycopg2.OperationalError(
                f"could not receive data from server: no answer within {timeout:g} s "
                "(storage.call_timeout)"
            )
