"""A worker frozen (SIGSTOP) while it holds the study's budget lock, on every backend.

The other worker must say once whom it waits for, go on without the lock after
the lease (``storage.grace_period``), and finish the study; when the frozen one
wakes, the budget is still exact, nothing is left RUNNING and nobody crashes.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import pytest
import sqlalchemy

from tests.conftest import MYSQL_URL, PG_URL, Env, _server_reachable, unique_name
from tests.faultkit import FINISHED, assert_invariants, count, start_worker, trials

pytestmark = pytest.mark.slow

GRACE = 6


def _key(name: str) -> int:
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFFFFFFFFFF


def _file_lock_held_by(lock_file: Path, pid: int) -> bool:
    """Whether ``pid`` holds a lock on ``lock_file``, read from /proc/locks (takes none)."""
    try:
        inode = lock_file.stat().st_ino
    except FileNotFoundError:
        return False
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        # 1: FLOCK  ADVISORY  WRITE 1234 00:2f:5678 0 EOF
        if len(fields) >= 6 and fields[4] == str(pid) and fields[5].endswith(f":{inode}"):
            return True
    return False


class _ServerLock:
    """Whether the study's advisory lock is granted to anyone, as the server says."""

    def __init__(self, url: str, name: str) -> None:
        self.engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
        key = _key(name)
        if url.startswith("postgresql"):
            self.query = (
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                f"AND classid::bigint = {key >> 32} AND objid::bigint = {key & 0xFFFFFFFF}"
            )
        else:
            self.query = f"SELECT IS_USED_LOCK('tuner{key}') IS NOT NULL"
        self.conn = self.engine.connect()

    def held(self) -> bool:
        return bool(self.conn.exec_driver_sql(self.query).scalar())

    def close(self) -> None:
        self.conn.close()
        self.engine.dispose()


# The servers' variants run with the soak tests, which CI runs after the default suite.
@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.soak),
            pytest.param("mysql", marks=pytest.mark.soak)]
)  # fmt: skip
def backend(request: pytest.FixtureRequest, env: Env) -> tuple[str, str]:
    if request.param == "sqlite":
        return env.url, "clothing"
    url = PG_URL if request.param == "postgresql" else MYSQL_URL
    if (reason := _server_reachable(url)) is not None:
        pytest.skip(f"{request.param} server not reachable at {url}: {reason}")
    return url, unique_name("frozen")


def test_a_frozen_lock_holder_holds_the_others_for_one_lease_only(
    env: Env, backend: tuple[str, str]
) -> None:
    url, name = backend
    target = 8
    args = ["--n-trials", str(target), f"--set=study.name={name}",
            "--set=storage.heartbeat_interval=1", f"--set=storage.grace_period={GRACE}",
            "--set=pruner.kind=none", *env.overrides(epochs=3)]  # fmt: skip
    holder = start_worker(env, url, *args, name="holder")
    pid = holder.proc.pid
    if url == env.url:
        lock_file = Path(f"{url.removeprefix('sqlite:///')}.budget.lock")

        def held() -> bool:
            return _file_lock_held_by(lock_file, pid)

        server = None
    else:
        server = _ServerLock(url, name)
        held = server.held
    try:
        # Catch the holder inside the lock: it takes it before each trial, for a moment.
        frozen = False
        deadline = time.monotonic() + 240
        while not frozen and time.monotonic() < deadline and holder.proc.poll() is None:
            if not held():
                continue
            os.kill(pid, signal.SIGSTOP)
            time.sleep(0.2)
            frozen = held()
            if not frozen:
                os.kill(pid, signal.SIGCONT)
        assert frozen, f"never caught the worker holding the lock:\n{holder.output}"
        assert count(url, FINISHED, name) < target

        other = start_worker(env, url, *args, name="other")
        assert other.wait(300) == 0, other.output
        assert "waiting for the study's budget lock, held by" in other.output, other.output
        assert other.output.count("waiting for the study's budget lock") == 1, other.output
        assert f"budget lock for over {GRACE} s" in other.output, other.output
        assert count(url, FINISHED, name) == target

        os.kill(pid, signal.SIGCONT)  # the frozen one wakes inside its claim
        assert holder.wait(300) == 0, holder.output
    finally:
        holder.kill(signal.SIGCONT)
        holder.kill()
        if server is not None:
            server.close()
    assert_invariants(url, target, [holder.output, other.output], name)
    surplus = [t for t in trials(url, name) if "not run" in t.user_attrs.get("fail_reason", "")]
    for t in surplus:
        assert f"trial {t.number} was claimed after the trials that fill" in holder.output
