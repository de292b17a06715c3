"""Many workers: on one PostgreSQL server through PgBouncer, and on one SQLite file.

Forty worker processes (tuner's trial loop: the budget lock, heartbeats,
reaping, the phase board; an objective that only talks to the storage) share a
server that allows 20 connections, through a PgBouncer of the test's own that
keeps at most 8. Without it they would need about 100 (2-3 each).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.faultkit import (
    OwnPostgres,
    assert_invariants,
    cheap_crowd,
    create_role,
    own_pgbouncer,
    own_postgres,
    server_connections,
    trials,
)
from tuner.storages.settings import StorageSettings
from tuner.storages.storage import open_storage

pytestmark = pytest.mark.slow


def test_forty_workers_share_eight_server_connections_through_pgbouncer() -> None:
    with own_postgres("-c max_connections=20") as server:
        direct = create_role(server)
        with own_pgbouncer(server.port, pool_size=8, roles=("tuner",)) as bouncer:
            peak = 0

            def tick(pids: list[int]) -> None:
                nonlocal peak
                peak = max(peak, server_connections(server))

            codes = cheap_crowd(bouncer.url(), workers=40, target=80, name="crowd", on_tick=tick)
            assert codes == [0] * 40, (codes, bouncer.log[-3000:])
            assert_invariants(direct, 80, [], name="crowd")
            assert 0 < peak <= 8, peak


def test_sixty_four_workers_started_at_once_on_one_sqlite_file_all_finish(tmp_path: Path) -> None:
    # Opening a file whose schema exists takes no lock: starts do not queue behind each other.
    url = f"sqlite:///{tmp_path / 'study.db'}"
    open_storage(url, StorageSettings())  # the first worker, which set the file up
    codes = cheap_crowd(url, workers=64, target=128, name="crowd")
    assert codes == [0] * 64, codes
    assert_invariants(url, 128, [], name="crowd")


def _finished(server: OwnPostgres, name: str) -> int:
    """Trials of study ``name`` that ended COMPLETE or PRUNED, read as the superuser."""
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=server.port, user="postgres",
                            dbname="tuner_faults")  # fmt: skip
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
                "WHERE s.study_name = %s AND t.state IN ('COMPLETE', 'PRUNED')",
                (name,),
            )
            return int(cur.fetchone()[0])  # type: ignore[index]
    except psycopg2.Error:  # the schema is not there yet, or the server is restarting
        return 0
    finally:
        conn.close()


@pytest.mark.parametrize("way", ["pgbouncer", "direct"])
def test_a_crowd_rides_out_a_server_restart_and_killed_workers(way: str) -> None:
    # Sixty workers on a server with PostgreSQL's default 100 connections, straight or
    # through PgBouncer. A quarter of the way in, three workers are killed (their trials are
    # found by their silent heartbeats and run again); at half way the server restarts (the
    # workers ride it out within storage.outage_tolerance). After: the exact budget, nothing
    # RUNNING, every failed trial retried.
    workers, target = 60, 120
    with own_postgres() as server:
        direct = create_role(server)
        with contextlib.ExitStack() as stack:
            url = direct
            if way == "pgbouncer":
                bouncer = stack.enter_context(own_pgbouncer(server.port, 10, roles=("tuner",)))
                url = bouncer.url()
            killed: list[int] = []
            restarted = False

            def tick(pids: list[int]) -> None:
                nonlocal restarted
                done = _finished(server, "crowd")
                if not killed and done >= target // 4 and len(pids) > 3:
                    for pid in pids[:3]:
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                if killed and not restarted and done >= target // 2:
                    server.stop("fast")  # every connection is cut, open transactions roll back
                    time.sleep(2)
                    server.start()
                    restarted = True

            codes = cheap_crowd(
                url, workers, target, name="crowd", on_tick=tick, trial_seconds=0.6,
                sets=["storage.heartbeat_interval=1", "storage.grace_period=4"],
            )  # fmt: skip
            assert killed and restarted, (killed, restarted)
            assert codes.count(-signal.SIGKILL) == 3, codes
            assert [c for c in codes if c != -signal.SIGKILL] == [0] * (workers - 3), codes
            assert_invariants(direct, target, [], name="crowd")
            failed = [t for t in trials(direct, "crowd") if t.state == TrialState.FAIL]
            assert any("heartbeat" in str(t.user_attrs.get("fail_reason")) for t in failed), [
                t.user_attrs.get("fail_reason") for t in failed
            ]
