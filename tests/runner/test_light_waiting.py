"""A worker with nothing to train yet holds no TensorFlow.

Worker A trains the study's only trial; worker B, started meanwhile, waits for
it without loading TensorFlow (its memory map holds no TensorFlow library; its
PSS is printed). When A dies, B reaps the trial, loads TensorFlow and runs the
retry: the budget is exact.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.conftest import Env
from tests.faultkit import assert_invariants, running_with_epoch, start_worker, wait_until

pytestmark = pytest.mark.slow


def _loaded_tensorflow(pid: int) -> bool:
    return "libtensorflow" in Path(f"/proc/{pid}/maps").read_text()


def _pss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def test_a_waiting_worker_holds_no_tensorflow_until_it_has_a_trial(env: Env) -> None:
    hb = ["--set=storage.heartbeat_interval=1", "--set=storage.grace_period=3"]
    slow = env.overrides(epochs=400, **{"cache.enabled": "false"})
    a = start_worker(env, env.url, "--n-trials", "1", *slow, *hb, name="a")
    wait_until("A's first epoch", lambda: running_with_epoch(env.url))
    b = start_worker(env, env.url, "--n-trials", "1", *env.overrides(epochs=1), *hb, name="b")
    wait_until("B to wait", lambda: "waiting for trial 0" in b.output, timeout=120)
    assert not _loaded_tensorflow(b.proc.pid), b.output
    waiting, training = _pss_mb(b.proc.pid), _pss_mb(a.proc.pid)
    print(f"PSS: waiting worker {waiting:.0f} MB, training worker {training:.0f} MB")
    assert waiting < training / 2, (waiting, training)
    a.kill(signal.SIGKILL)
    a.wait(30)
    assert b.wait(300) == 0, b.output
    assert "TensorFlow" in b.output and "trains on" in b.output, b.output  # loaded, then trained
    assert_invariants(env.url, 1, [b.output])


def test_a_worker_waits_for_another_workers_features_without_tensorflow(env: Env) -> None:
    from filelock import FileLock

    from tuner.config.build import trial_setup
    from tuner.config.spec import load_spec
    from tuner.runner.featurewait import light_parts
    from tuner.training.feature_store import FeatureStore

    sets = env.overrides(epochs=1)
    setup = trial_setup(load_spec("clothing", [s.removeprefix("--set=") for s in sets]))
    parts = light_parts(setup)
    assert parts is not None
    # Another worker computing this model part's features: its store, its lock, its name.
    store = FeatureStore(env.cache, "f" * 32)
    store.create({**parts, "precision": "float32", "version": 2})
    store.holder_path.write_text("other-host:4242")
    lock = FileLock(str(store.lock_path))
    lock.acquire()
    try:
        w = start_worker(env, env.url, "--n-trials", "1", *sets, name="w")
        wait_until("the wait", lambda: "before loading TensorFlow" in w.output, timeout=120)
        assert "worker other-host:4242 computes into" in w.output, w.output
        time.sleep(1)
        assert not _loaded_tensorflow(w.proc.pid), w.output
        print(f"PSS: worker waiting for the features {_pss_mb(w.proc.pid):.0f} MB")
    finally:
        lock.release()
    assert w.wait(300) == 0, w.output
    assert w.output.count("waiting for the frozen-base features") == 1, w.output
    assert_invariants(env.url, 1, [w.output])
