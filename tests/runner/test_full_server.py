"""A database server with no connection left is an outage, not a crash.

A PostgreSQL server of the test's own, with ``max_connections = 6``, is filled
by connections the test holds; a ``tuner worker`` started then waits, says once
that the server has no connection left (naming the server's message and
``max_connections``), and runs its budget once the test lets the connections go.
A worker whose wait outlasts ``storage.outage_tolerance`` stops with one line.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import psycopg2
import pytest

from tests.conftest import Env
from tests.faultkit import OwnPostgres, assert_invariants, own_postgres, start_worker, wait_until

pytestmark = pytest.mark.slow

CROWDED = "has no connection left for this worker"


@contextlib.contextmanager
def every_connection(server: OwnPostgres) -> Iterator[int]:
    """Hold every connection the server allows; yields how many that was."""
    held = []
    try:
        while True:
            try:
                held.append(psycopg2.connect(
                    host="127.0.0.1", port=server.port, user="postgres", dbname="tuner_faults"
                ))  # fmt: skip
            except psycopg2.OperationalError as e:
                assert "too many clients" in str(e), e
                break
            assert len(held) < 50, "the server takes more connections than it was given"
        yield len(held)
    finally:
        for conn in held:
            conn.close()


def test_a_worker_waits_for_a_full_server_and_goes_on_once_a_connection_frees(env: Env) -> None:
    settings = ("-c max_connections=6", "-c superuser_reserved_connections=0")
    with own_postgres(*settings) as server:
        url = server.password_url
        args = ["--n-trials", "2", *env.overrides(epochs=1)]

        with every_connection(server) as held:
            assert held == 6
            short = start_worker(env, url, *args, "--set=storage.outage_tolerance=3")
            assert short.wait(120) == 2, short.output
            lines = [line for line in short.output.splitlines() if line.startswith("error:")]
            assert len(lines) == 1 and "Traceback" not in short.output, short.output
            assert "had no connection left for this worker for over 3 s" in lines[0]
            assert "too many clients" in lines[0] and "max_connections" in lines[0], lines

            patient = start_worker(env, url, *args, "--set=storage.outage_tolerance=300")
            wait_until("the worker to wait", lambda: CROWDED in patient.output, timeout=120)
            time.sleep(5)  # a few retries, each refused
            assert patient.proc.poll() is None, patient.output
        # The connections are free now: the waiting worker goes on and runs the budget.
        assert patient.wait(300) == 0, patient.output
        log = patient.output
        said = [line for line in log.splitlines() if CROWDED in line]
        assert len(said) == 1, log
        assert "too many clients" in said[0] and "max_connections" in said[0], said
        assert "check that the database server is running" not in log
        assert "storage is back after" in log, log
        assert_invariants(url, 2, [log])
