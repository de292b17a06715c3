"""Many workers: on one PostgreSQL server through PgBouncer, and on one SQLite file.

Forty worker processes (tuner's trial loop: the budget lock, heartbeats,
reaping, the phase board; an objective that only talks to the storage) share a
server that allows 20 connections, through a PgBouncer of the test's own that
keeps at most 8. Without it they would need about 100 (2-3 each).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faultkit import (
    assert_invariants,
    cheap_crowd,
    create_role,
    own_pgbouncer,
    own_postgres,
    server_connections,
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
