"""A network stall (a proxy that stops forwarding without closing) is an outage like any other.

Real `tuner worker` processes reach PostgreSQL and MariaDB through a proxy of the
test's own. A stall shorter than ``storage.outage_tolerance`` is ridden out with
the usual two lines; a longer one stops the worker with one `error:` line and
exit 2, and nothing is lost: a rescuer finishes the exact budget.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import sqlalchemy

from tests.conftest import MYSQL_URL, PG_URL, Env, _server_reachable, unique_name
from tests.faultkit import (
    FINISHED,
    StallProxy,
    assert_invariants,
    count,
    start_worker,
    trials,
    wait_until,
)

pytestmark = pytest.mark.slow


# MariaDB's variants run with the soak tests, which CI runs after the default suite.
@pytest.fixture(params=["postgresql", pytest.param("mysql", marks=pytest.mark.soak)])
def proxied(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, StallProxy]]:
    """(direct URL, URL through the proxy, the proxy) for a server of the machine's own."""
    url = PG_URL if request.param == "postgresql" else MYSQL_URL
    if (reason := _server_reachable(url)) is not None:
        pytest.skip(f"{request.param} server not reachable at {url}: {reason}")
    parsed = sqlalchemy.engine.make_url(url)
    proxy = StallProxy((parsed.host or "127.0.0.1", int(parsed.port or 0)))
    try:
        yield url, proxy.url(url), proxy
    finally:
        proxy.close()


def _args(env: Env, name: str, tolerance: float) -> list[str]:
    # trials long enough (300 cached epochs, no pruning) that the stall comes mid-study
    return ["--n-trials", "4", f"--set=study.name={name}", *env.overrides(epochs=300),
            "--set=pruner.kind=none", "--set=storage.heartbeat_interval=1",
            "--set=storage.grace_period=6", "--set=storage.call_timeout=2",
            f"--set=storage.outage_tolerance={tolerance}"]  # fmt: skip


def test_a_stall_past_the_tolerance_stops_the_worker_with_one_line(
    env: Env, proxied: tuple[str, str, StallProxy]
) -> None:
    url, via_proxy, proxy = proxied
    name = unique_name("stall")
    worker = start_worker(env, via_proxy, *_args(env, name, tolerance=5))
    wait_until("a finished trial", lambda: count(url, FINISHED, name) >= 1)
    before = {t.number: t.value for t in trials(url, name) if t.state in FINISHED}
    proxy.stalled.set()
    start = time.monotonic()
    assert worker.wait(90) == 2, worker.output
    took = time.monotonic() - start
    assert took < 45, f"the worker took {took:.0f} s to give up on a stalled storage"
    errors = [line for line in worker.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, worker.output
    assert "unreachable for over 5 s" in errors[0], errors[0]
    assert "no answer within 2 s" in worker.output or "timed out" in worker.output
    assert "Traceback" not in worker.output
    proxy.stalled.clear()
    rescuer = start_worker(env, url, *_args(env, name, tolerance=5))
    assert rescuer.wait(300) == 0, rescuer.output
    assert_invariants(url, 4, [rescuer.output], name)
    after = {t.number: t.value for t in trials(url, name)}
    assert all(after[n] == v for n, v in before.items()), "finished trials changed"


def test_a_short_stall_is_ridden_out(env: Env, proxied: tuple[str, str, StallProxy]) -> None:
    url, via_proxy, proxy = proxied
    name = unique_name("stall")
    worker = start_worker(env, via_proxy, *_args(env, name, tolerance=60))
    wait_until("a finished trial", lambda: count(url, FINISHED, name) >= 1)
    proxy.stalled.set()
    time.sleep(8)
    proxy.stalled.clear()
    assert worker.wait(300) == 0, worker.output
    assert "unreachable" in worker.output and "storage is back after" in worker.output
    assert_invariants(url, 4, [worker.output], name)
