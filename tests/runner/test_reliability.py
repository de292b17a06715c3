"""Faults injected into real `tuner worker` processes, and the invariants checked afterwards.

Each test kills, stops or starves the workers the way production does (SIGKILL,
a database restart, a full disk, SIGTERM at a random moment, a damaged file),
then checks what must always hold: the exact budget of finished trials, nothing
left RUNNING, every failed trial retried to the end or reported as given up,
no traceback, and one clear line per fault.
"""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
import subprocess
import time

import pytest
from optuna.trial import TrialState

from tests.conftest import MYSQL_URL, PG_URL, Env, _server_reachable, run_tuner, unique_name
from tests.faultkit import (
    FINISHED,
    assert_invariants,
    count,
    fill,
    load,
    own_mariadb,
    own_postgres,
    running_with_epoch,
    small_filesystem,
    start_worker,
    trials,
    wait_until,
)

pytestmark = pytest.mark.slow

FAST_HEARTBEAT = ["--set=storage.heartbeat_interval=1", "--set=storage.grace_period=3"]


def _slow(env: Env, epochs: int = 400) -> list[str]:
    """A trial that takes minutes (full pipeline), so it is surely killed mid-trial."""
    return env.overrides(epochs=epochs, **{"cache.enabled": "false"})


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def backend(request: pytest.FixtureRequest, env: Env) -> tuple[str, str]:
    """A storage URL and a fresh study name on each backend (the servers' own databases)."""
    if request.param == "sqlite":
        return env.url, "clothing"
    url = PG_URL if request.param == "postgresql" else MYSQL_URL
    if (reason := _server_reachable(url)) is not None:
        pytest.skip(f"{request.param} server not reachable at {url}: {reason}")
    return url, unique_name("faults")


def test_survivor_waits_for_a_killed_workers_trial_and_runs_its_retry(
    env: Env, backend: tuple[str, str]
) -> None:
    # A long grace period: the survivor must not declare the study done while the dead
    # worker's trial is RUNNING; it sees the worker is gone from this machine and reruns it.
    url, name = backend
    common = ["--n-trials", "4", f"--set=study.name={name}",
              "--set=storage.heartbeat_interval=2", "--set=storage.grace_period=600"]  # fmt: skip
    victim = start_worker(env, url, *common, *_slow(env))
    wait_until("the victim's first epoch", lambda: running_with_epoch(url, name))
    survivor = start_worker(env, url, *common, *env.overrides(epochs=1))
    wait_until("the survivor to wait", lambda: "waiting for trial" in survivor.output)
    assert survivor.proc.poll() is None, survivor.output
    killed = next(t for t in trials(url, name) if t.state == TrialState.RUNNING)
    victim.kill()
    victim.wait()
    assert survivor.wait(240) == 0, survivor.output
    assert_invariants(url, 4, [survivor.output], name)
    failed = trials(url, name)[killed.number]
    assert failed.state == TrialState.FAIL
    assert "ended while running it" in failed.user_attrs["fail_reason"]
    assert f"trial {killed.number} failed:" in survivor.output


def test_a_dead_worker_on_another_machine_is_found_by_its_heartbeat(env: Env) -> None:
    # Another host name: this machine cannot see the process, only its silent heartbeat.
    other_host = ["unshare", "--uts", "sh", "-c", 'hostname other-machine && exec "$@"', "sh"]
    if subprocess.run([*other_host, "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot start a process under another host name here (unshare --uts)")
    victim = start_worker(
        env, env.url, "--n-trials", "3", *_slow(env), *FAST_HEARTBEAT, prefix=tuple(other_host)
    )
    wait_until("the victim's first epoch", lambda: running_with_epoch(env.url))
    victim.kill()
    victim.wait()
    survivor = start_worker(env, env.url, "--n-trials", "3", *env.overrides(epochs=1),
                            *FAST_HEARTBEAT)  # fmt: skip
    assert survivor.wait(240) == 0, survivor.output
    assert_invariants(env.url, 3, [survivor.output])
    failed = [t for t in trials(env.url) if t.state == TrialState.FAIL]
    assert len(failed) == 1
    assert "other-machine" in failed[0].user_attrs["worker"]
    assert "sent no heartbeat for over 3 s" in failed[0].user_attrs["fail_reason"]


@pytest.mark.soak
def test_kill_storm_loses_no_trial(env: Env) -> None:
    # For a minute, a random worker is SIGKILLed every few seconds and started again.
    args = ["--n-trials", "14", *env.overrides(epochs=4, **{"cache.enabled": "false"}),
            *FAST_HEARTBEAT, "--set=storage.max_retry=6"]  # fmt: skip
    workers = [start_worker(env, env.url, *args) for _ in range(2)]
    rng, kills, end = random.Random(7), 0, time.monotonic() + 60
    while time.monotonic() < end:
        time.sleep(rng.uniform(3, 7))
        i = rng.randrange(len(workers))
        if workers[i].proc.poll() is None:
            workers[i].kill()
            workers[i].wait()
            kills += 1
        workers[i] = start_worker(env, env.url, *args)
    logs = []
    for w in workers:
        assert w.wait(420) == 0, w.output
        logs.append(w.output)
    assert kills >= 6
    assert_invariants(env.url, 14, logs)
    warm = [t for t in trials(env.url) if t.user_attrs.get("warm_start") and t.state in FINISHED]
    assert sorted({t.params["learning_rate"] for t in warm}) == [1e-4, 1e-3, 1e-2, 1e-1]


@pytest.mark.soak
def test_sigterm_at_random_moments_is_never_swallowed(env: Env) -> None:
    args = ["--n-trials", "6", *env.overrides(epochs=30), *FAST_HEARTBEAT]
    rng = random.Random(3)
    for attempt in range(8):
        if attempt % 3 == 0:  # sometimes during feature extraction
            subprocess.run(["rm", "-rf", str(env.cache)], check=True)
        worker = start_worker(env, env.url, *args)
        time.sleep(rng.uniform(0.5, 14))
        sent = time.monotonic()
        worker.kill(signal.SIGTERM)
        code = worker.wait(60)
        stopped_in = time.monotonic() - sent
        out = worker.output
        assert code in (0, 128 + signal.SIGTERM), out
        if code:
            assert len(re.findall(r"stopped by SIGTERM", out)) == 1, out
            assert stopped_in < 20, f"took {stopped_in:.0f} s to stop:\n{out}"
        for bad in ("Traceback", "Exception ignored", "internal error"):
            assert bad not in out, out
        assert not [t for t in trials(env.url) if t.state == TrialState.RUNNING], out
    final = start_worker(env, env.url, *args)
    assert final.wait(300) == 0, final.output
    assert_invariants(env.url, 6, [final.output])
    interrupted = [t for t in trials(env.url) if t.state == TrialState.FAIL]
    assert all(t.user_attrs["fail_reason"] == "interrupted by SIGTERM" for t in interrupted)


def test_workers_ride_out_a_database_restart(env: Env) -> None:
    with own_postgres() as server:
        url = server.password_url
        hb = ["--set=storage.heartbeat_interval=2", "--set=storage.grace_period=30"]
        args = ["--n-trials", "10", *env.overrides(epochs=40), *hb]
        workers = [start_worker(env, url, *args) for _ in range(2)]
        wait_until("two finished trials", lambda: count(url, FINISHED) >= 2)
        server.stop("fast")
        time.sleep(8)
        server.start()
        logs = []
        for w in workers:
            assert w.wait(300) == 0, w.output
            logs.append(w.output)
        assert_invariants(url, 10, logs)
        for log in logs:
            assert "unreachable" in log and "storage is back after" in log, log
            assert "s3cret-pw" not in log


def test_workers_ride_out_mariadb_stopped_twice_without_a_traceback(env: Env) -> None:
    # A trial another worker failed as stale during the outage, between its owner's last
    # write and Optuna's tell, once crashed its owner ("Should not reach"); SQLAlchemy's
    # pool printed a traceback when it could not reset a connection the restart broke.
    with own_mariadb() as server:
        url = server.url
        hb = ["--set=storage.heartbeat_interval=1", "--set=storage.grace_period=4"]
        args = ["--n-trials", "12", *env.overrides(epochs=60), *hb,
                "--set=pruner.kind=none", "--set=storage.outage_tolerance=60"]  # fmt: skip
        workers = [start_worker(env, url, *args) for _ in range(2)]
        for finished in (2, 6):
            enough = lambda n=finished: count(url, FINISHED) >= n  # noqa: E731
            wait_until(f"{finished} finished trials", enough)
            server.stop()
            time.sleep(10)
            server.start()
        logs = []
        for w in workers:
            assert w.wait(300) == 0, w.output
            logs.append(w.output)
        assert_invariants(url, 12, logs)
        text = "\n".join(logs)
        assert "unreachable" in text and "storage is back after" in text, text
        assert "Exception during reset" not in text and "Should not reach" not in text


def test_an_outage_beyond_the_tolerance_stops_with_one_line_and_loses_nothing(
    env: Env,
) -> None:
    with own_postgres() as server:
        url = server.password_url
        # trials long enough (300 cached epochs, no pruning) that the outage comes mid-study
        args = ["--n-trials", "6", *env.overrides(epochs=300), *FAST_HEARTBEAT,
                "--set=pruner.kind=none", "--set=storage.outage_tolerance=4"]  # fmt: skip
        worker = start_worker(env, url, *args)
        wait_until("a finished trial", lambda: count(url, FINISHED) >= 1)
        before = {t.number: t.value for t in trials(url) if t.state in FINISHED}
        server.stop("fast")
        assert worker.wait(60) == 2, worker.output
        errors = [line for line in worker.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, worker.output
        assert "unreachable for over 4 s" in errors[0]
        assert "postgres:***@127.0.0.1" in errors[0] and "s3cret-pw" not in worker.output
        assert "Traceback" not in worker.output
        server.start()
        rescuer = start_worker(env, url, *args)
        assert rescuer.wait(300) == 0, rescuer.output
        assert_invariants(url, 6, [rescuer.output])
        after = {t.number: t.value for t in trials(url)}
        assert all(after[n] == v for n, v in before.items()), "finished trials changed"


def test_a_full_disk_is_named_and_loses_nothing(env: Env) -> None:
    with small_filesystem(env.root / "small", "8m") as disk:
        url = f"sqlite:///{disk / 'study.db'}"
        args = ["--n-trials", "12", *env.overrides(epochs=2), *FAST_HEARTBEAT]
        first = run_tuner("worker", "--study", "clothing", "--storage", url, "--n-trials", "2",
                          *args[2:], cwd=env.root)  # fmt: skip
        assert first.returncode == 0, first.stderr
        ballast = fill(disk, leave=200_000)  # room for a trial or two, not for 12
        full = start_worker(env, url, *args)
        assert full.wait(300) == 2, full.output
        errors = [line for line in full.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, full.output
        assert re.search(r"(disk is full|No space left on device)", errors[0]), errors[0]
        assert "Traceback" not in full.output
        ballast.unlink()
        rescuer = start_worker(env, url, *args)
        assert rescuer.wait(600) == 0, rescuer.output
        assert_invariants(url, 12, [rescuer.output])
        for t in trials(url):
            assert t.params or t.state == TrialState.WAITING, f"trial {t.number} has no params"


def test_a_full_disk_at_start_fails_before_tensorflow_loads(env: Env) -> None:
    with small_filesystem(env.root / "small", "1m") as disk:
        fill(disk)
        url = f"sqlite:///{disk / 'study.db'}"
        started = time.monotonic()
        done = run_tuner("worker", "--study", "clothing", "--storage", url,
                         *env.overrides(epochs=1), cwd=env.root)  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [
            f"error: database or disk is full: {disk} has no free space; free space or point "
            "--storage elsewhere"
        ]
        assert time.monotonic() - started < 15


def test_a_damaged_sqlite_file_is_named_before_any_work(env: Env) -> None:
    done = run_tuner("worker", "--study", "clothing", "--storage", env.url, "--n-trials", "2",
                     *env.overrides(epochs=1), cwd=env.root)  # fmt: skip
    assert done.returncode == 0, done.stderr
    size = env.db.stat().st_size
    with sqlite3.connect(env.db) as conn:  # fold the WAL in, so the garbage hits live pages
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with env.db.open("r+b") as f:
        f.seek(size // 2)
        f.write(b"\xde\xad\xbe\xef" * 2048)
    for command in (("worker", *env.overrides(epochs=1)), ("status",)):
        result = run_tuner(command[0], "--study", "clothing", "--storage", env.url,
                           *command[1:], cwd=env.root)  # fmt: skip
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: SQLite file {env.db} is damaged")
        assert "restore it from a backup" in lines[0]


def test_a_pool_names_a_killed_child_and_its_survivor_finishes(env: Env) -> None:
    args = ["--n-trials", "5", "--workers", "2",
            *env.overrides(epochs=3, **{"cache.enabled": "false"}), *FAST_HEARTBEAT]  # fmt: skip
    pool = start_worker(env, env.url, *args)
    wait_until("a child's first epoch", lambda: running_with_epoch(env.url))
    owner = next(t for t in trials(env.url) if t.state == TrialState.RUNNING)
    pid = int(owner.user_attrs["worker"].rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)
    assert pool.wait(300) == 0, pool.output
    assert re.search(rf"worker w\d \(pid {pid}\) killed by SIGKILL; its trial will be retried",
                     pool.output), pool.output  # fmt: skip
    assert_invariants(env.url, 5, [pool.output])


def test_a_trial_failed_by_another_worker_is_stopped_by_its_owner(env: Env) -> None:
    # A false stale: another worker took this live trial for dead (as after a long
    # outage). The owner notices at its next heartbeat, stops it, and goes on.
    owner = start_worker(env, env.url, "--n-trials", "3", *_slow(env, epochs=60),
                         *FAST_HEARTBEAT)  # fmt: skip
    wait_until("the first epoch", lambda: running_with_epoch(env.url))
    study = load(env.url)
    live = next(t for t in study.get_trials() if t.state == TrialState.RUNNING)
    storage = study._storage
    storage.set_trial_user_attr(live._trial_id, "fail_reason", "taken for stale in a test")
    storage.set_trial_state_values(live._trial_id, TrialState.FAIL)
    callback = storage.get_heartbeat_stale_trial_callback()
    callback(study, storage.get_trial(live._trial_id))
    wait_until("the owner to notice", lambda: "was failed by another worker" in owner.output, 60)
    owner.kill(signal.SIGTERM)  # the rest would take minutes; stopping cleanly is enough
    assert owner.wait(60) == 128 + signal.SIGTERM, owner.output
    assert "Cannot tell" not in owner.output and "Traceback" not in owner.output
    retry = [t for t in trials(env.url) if t.system_attrs.get("failed_trial") == live.number]
    assert retry and retry[0].params["learning_rate"] == live.params["learning_rate"]


def test_ctrl_c_during_start_up_exits_130_with_one_line(env: Env) -> None:
    worker = start_worker(env, env.url, "--n-trials", "2", *env.overrides(epochs=1))
    time.sleep(1.0)  # imports and the storage: before the trial loop
    worker.kill(signal.SIGINT)
    assert worker.wait(60) == 130, worker.output
    stopped = [line for line in worker.output.splitlines() if "stopped by SIGINT" in line]
    assert len(stopped) == 1, worker.output
    assert "Traceback" not in worker.output
