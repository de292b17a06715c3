"""Scale-out for real: `tuner worker` processes on PostgreSQL and MariaDB, and local pools."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import MYSQL_URL, PG_URL, Env, _server_reachable, tuner_cmd, unique_name
from tuner.runner.pool import pool_environment

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _worker(env: Env, url: str, *args: str, **popen: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        tuner_cmd("worker", "--study", "clothing", "--storage", url, *args),
        cwd=env.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,  # type: ignore[call-overload]
    )


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


@pytest.fixture(params=["postgresql", "mysql"])
def server_url(request: pytest.FixtureRequest) -> str:
    url = PG_URL if request.param == "postgresql" else MYSQL_URL
    if (reason := _server_reachable(url)) is not None:
        pytest.skip(f"{request.param} server not reachable at {url}: {reason}")
    return url


@pytest.mark.slow
def test_three_workers_on_a_database_server_finish_the_study(env: Env, server_url: str) -> None:
    name = unique_name("scale")
    args = ["--n-trials", "6", *env.overrides(epochs=1, **{"study.name": name})]
    procs = [_worker(env, server_url, *args) for _ in range(3)]
    logs = [p.communicate(timeout=480)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(logs)
    trials = _trials(server_url, name)
    assert len(trials) == 6
    assert all(t.state in FINISHED for t in trials), [t.state.name for t in trials]
    assert len({t.user_attrs["worker"] for t in trials}) >= 2, "the study was not shared"
    assert not any("Traceback" in log for log in logs), "\n".join(logs)


@pytest.mark.slow
def test_pool_of_two_shares_the_study_with_one_thread_each(env: Env) -> None:
    threads = max(1, (os.cpu_count() or 1) // 2)
    pool = _worker(env, env.url, "--workers", "2", "--n-trials", "6", *env.overrides(epochs=1))
    log = pool.communicate(timeout=480)[0]
    assert pool.returncode == 0, log
    assert f"starting 2 workers, {threads} CPU threads each" in log
    for index in (0, 1):  # each child read its share back from TensorFlow
        assert f"[w{index}] TensorFlow CPU threads: {threads} intra-op" in log, log
    trials = _trials(env.url, "clothing")
    assert len(trials) == 6
    assert all(t.state in FINISHED for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2, "both children ran trials"


def _wait_for_two_running_epochs(env: Env, timeout: float = 300) -> list[int]:
    """Pids of the pool's children once each is inside a trial."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(1)
        if "clothing" not in env.study_names():
            continue
        running = [
            t
            for t in _trials(env.url, "clothing")
            if t.state == TrialState.RUNNING and t.intermediate_values
        ]
        if len(running) == 2:
            return [int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in running]
    raise AssertionError("the pool never had two trials running")


@pytest.mark.slow
def test_ctrl_c_stops_every_child_of_the_pool_cleanly(env: Env) -> None:
    slow = env.overrides(epochs=400, **{"cache.enabled": "false"})
    # Its own process group, so that killpg below is what a terminal's Ctrl-C does.
    args = ["--workers", "2", "--n-trials", "8", *slow]
    pool = _worker(env, env.url, *args, start_new_session=True)
    try:
        children = _wait_for_two_running_epochs(env)
    except AssertionError:
        pool.kill()
        raise AssertionError(pool.communicate()[0]) from None
    os.killpg(pool.pid, signal.SIGINT)
    log = pool.communicate(timeout=120)[0]
    assert pool.returncode == 128 + signal.SIGINT, log
    assert len(re.findall(r"\[w\d\] stopped by SIGINT", log)) == 2, log
    assert "Traceback" not in log, log
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    trials = _trials(env.url, "clothing")
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert len(interrupted) == 2
    assert all("interrupted" in t.user_attrs.get("fail_reason", "") for t in interrupted)


def test_pool_environment_gives_each_worker_its_own_gpu_and_core_share() -> None:
    envs = [pool_environment(i, 2, 2, ["0", "1"]) for i in range(2)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1"]
    assert [e["TUNER_THREADS"] for e in envs] == ["1", "1"]
    assert [e["TUNER_WORKER_INDEX"] for e in envs] == ["0", "1"]
    # More workers than GPUs share them round-robin; the cores are split, never below one.
    envs = [pool_environment(i, 4, 16, ["2", "5"]) for i in range(4)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["2", "5", "2", "5"]
    assert {e["TUNER_THREADS"] for e in envs} == {"4"}
    assert pool_environment(0, 8, 2, [])["TUNER_THREADS"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in pool_environment(0, 2, 2, [])


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    from tuner.runner.pool import visible_gpus as _visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert _visible_gpus() == ["3", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert _visible_gpus() == []
