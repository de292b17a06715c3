"""Workers whose wall clocks disagree (one 10 minutes ahead, through an LD_PRELOAD shim).

What decides a trial's fate must not compare two machines' clocks: the skewed
worker fails no live trial of the other, and a dead fast-clocked worker's trial
is still found and retried with its own parameters.
"""

from __future__ import annotations

import subprocess

import pytest
from optuna.trial import TrialState

from tests.conftest import PG_URL, Env, _server_reachable, unique_name
from tests.faultkit import (
    assert_invariants,
    running_with_epoch,
    skewed_clock,
    start_worker,
    trials,
    wait_until,
)

pytestmark = pytest.mark.slow

SKEW = 600
FAST = ["--set=storage.heartbeat_interval=1", "--set=storage.grace_period=4"]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, env: Env) -> tuple[str, str]:
    if request.param == "sqlite":
        return env.url, "clothing"
    if (reason := _server_reachable(PG_URL)) is not None:
        pytest.skip(f"postgresql server not reachable at {PG_URL}: {reason}")
    return PG_URL, unique_name("skew")


def test_a_worker_ten_minutes_ahead_fails_no_live_trial(
    env: Env, backend: tuple[str, str]
) -> None:
    url, name = backend
    args = ["--n-trials", "8", f"--set=study.name={name}", "--set=pruner.kind=none",
            *env.overrides(epochs=200), *FAST]  # fmt: skip
    ahead = start_worker(env, url, *args, name="ahead", prefix=skewed_clock(SKEW, env.root))
    normal = start_worker(env, url, *args, name="normal")
    assert ahead.wait(300) == 0, ahead.output
    assert normal.wait(300) == 0, normal.output
    assert_invariants(url, 8, [ahead.output, normal.output], name)
    failed = [t for t in trials(url, name) if t.state == TrialState.FAIL]
    assert not failed, [t.user_attrs.get("fail_reason") for t in failed]
    assert "failed:" not in ahead.output + normal.output


def test_a_dead_fast_clocked_workers_trial_is_found_and_retried(env: Env) -> None:
    other_host = ("unshare", "--uts", "sh", "-c", 'hostname other-machine && exec "$@"', "sh")
    if subprocess.run([*other_host, "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot start a process under another host name here (unshare --uts)")
    args = ["--n-trials", "3", "--set=pruner.kind=none", *FAST]
    prefix = (*other_host, *skewed_clock(SKEW, env.root))
    victim = start_worker(env, env.url, *args, *env.overrides(epochs=400,
                          **{"cache.enabled": "false"}), prefix=prefix)  # fmt: skip
    wait_until("the victim's first epoch", lambda: running_with_epoch(env.url))
    victim.kill()
    victim.wait()
    survivor = start_worker(env, env.url, *args, *env.overrides(epochs=1))
    assert survivor.wait(240) == 0, survivor.output
    assert_invariants(env.url, 3, [survivor.output])
    failed = [t for t in trials(env.url) if t.state == TrialState.FAIL]
    assert len(failed) == 1
    assert "sent no heartbeat for over 4 s" in failed[0].user_attrs["fail_reason"]
    retry = [t for t in trials(env.url) if t.system_attrs.get("failed_trial") == failed[0].number]
    assert retry and retry[0].params == failed[0].params
