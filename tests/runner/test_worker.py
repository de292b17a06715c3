"""Workers sharing one SQLite study: sharing, warm start under load, kills, signals, readers."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from tests.conftest import REPO, Env, run_tuner, tuner_cmd

pytestmark = pytest.mark.slow

WARM = (1e-4, 1e-3, 1e-2, 1e-1)


def _load(env: Env, name: str = "clothing") -> optuna.Study:
    from tuner.config.spec import load_spec
    from tuner.storages.storage import open_storage

    # Through tuner's storage, so this reader shares the workers' schema lock.
    return optuna.load_study(
        study_name=name, storage=open_storage(env.url, load_spec("clothing").storage)
    )


def _start(env: Env, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        tuner_cmd("worker", "--study", "clothing", "--storage", env.url, *args),
        cwd=env.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_all(procs: list[subprocess.Popen[str]], timeout: float = 420) -> list[str]:
    logs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        logs.append(out)
    return logs


def test_three_workers_share_one_fresh_sqlite_study(env: Env) -> None:
    procs = [_start(env, "--n-trials", "6", *env.overrides(epochs=2)) for _ in range(3)]
    logs = _wait_all(procs)
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(logs)
    trials = _load(env).get_trials()
    states = [t.state for t in trials]
    assert len(trials) == 6
    assert states.count(TrialState.FAIL) == 0
    assert states.count(TrialState.RUNNING) == 0
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6
    # Every worker took part, so the search really was shared.
    assert len({t.user_attrs["worker"] for t in trials}) >= 2
    for t in trials:
        assert set(t.intermediate_values) == set(range(len(t.intermediate_values)))
        if t.state == TrialState.COMPLETE:
            assert t.value == t.intermediate_values[max(t.intermediate_values)]
            assert len(t.user_attrs["train_accuracy"]) == 2
            assert len(t.user_attrs["val_loss"]) == 2
            assert len(t.user_attrs["epoch_seconds"]) == 2
            assert math.isclose(
                t.user_attrs["gap"], t.user_attrs["train_accuracy"][-1] - t.value, abs_tol=1e-6
            )
            assert t.user_attrs["cache"] in ("hit", "miss")
            assert t.user_attrs["worker"].rsplit(":", 1)[1].isdigit()
    assert min(t.params["learning_rate"] for t in trials) >= 1e-4
    assert max(t.params["learning_rate"] for t in trials) <= 1e-1


def test_eight_workers_run_each_warm_start_rate_exactly_once(env: Env) -> None:
    procs = [_start(env, "--n-trials", "8", *env.overrides(epochs=1)) for _ in range(8)]
    logs = _wait_all(procs)
    assert [p.returncode for p in procs] == [0] * 8, "\n".join(logs)
    assert not any("Cannot tell" in log or "database is locked" in log for log in logs)
    trials = _load(env).get_trials()
    assert len(trials) == 8
    warm = [t for t in trials if t.user_attrs.get("warm_start")]
    assert sorted(t.params["learning_rate"] for t in warm) == list(WARM)
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)


def _wait_for_running_epoch(env: Env, timeout: float = 240) -> optuna.trial.FrozenTrial:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if not env.db.exists():
            continue
        try:
            running = _load(env).get_trials(states=(TrialState.RUNNING,))
        except (KeyError, ValueError, sqlalchemy.exc.OperationalError):
            # The study (or the schema, which this plain Optuna reader may race to
            # create beside the worker) is not there yet.
            continue
        if running and running[0].intermediate_values:
            return running[0]
    raise AssertionError("no trial reached its first epoch in time")


def test_killed_worker_trial_fails_and_is_retried_elsewhere(env: Env) -> None:
    fast_heartbeat = ["--set=storage.heartbeat_interval=1", "--set=storage.grace_period=3"]
    slow = env.overrides(epochs=400, **{"cache.enabled": "false"})
    victim = _start(env, "--n-trials", "5", *slow, *fast_heartbeat)
    killed = _wait_for_running_epoch(env)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    time.sleep(4)  # past the grace period

    rescuer = run_tuner(
        "worker", "--study", "clothing", "--storage", env.url, "--n-trials", "5",
        *env.overrides(epochs=1), *fast_heartbeat, cwd=env.root,
    )  # fmt: skip
    assert rescuer.returncode == 0, rescuer.stderr
    trials = _load(env).get_trials()
    assert trials[killed.number].state == TrialState.FAIL
    retries = [
        t
        for t in trials
        if t.system_attrs.get("failed_trial") == killed.number and t.state == TrialState.COMPLETE
    ]
    assert len(retries) == 1
    assert retries[0].params == killed.params
    assert retries[0].user_attrs["worker"] != killed.user_attrs["worker"]
    assert not [t for t in trials if t.state == TrialState.RUNNING]


def test_sigterm_ends_the_trial_cleanly_and_exits_non_zero(env: Env) -> None:
    slow = env.overrides(epochs=400, **{"cache.enabled": "false"})
    worker = _start(env, "--n-trials", "5", *slow)
    running = _wait_for_running_epoch(env)
    worker.send_signal(signal.SIGTERM)
    out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 128 + signal.SIGTERM, out
    assert "Traceback" not in out
    trials = _load(env).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    stopped = trials[running.number]
    assert stopped.state == TrialState.FAIL
    assert stopped.user_attrs["fail_reason"] == "interrupted by SIGTERM"
    assert stopped.intermediate_values  # the epochs it did finish are kept
    requeued = [t for t in trials if t.state == TrialState.WAITING and t.params == stopped.params]
    assert requeued, "the interrupted trial is queued again"


def test_optuna_cli_reads_the_study_and_agrees_with_export(env: Env) -> None:
    done = run_tuner(
        "worker", "--study", "clothing", "--storage", env.url, "--n-trials", "3",
        *env.overrides(epochs=1), cwd=env.root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    optuna_cli = [str(Path(sys.executable).with_name("optuna"))]
    common = ["--study-name", "clothing", "--storage", env.url, "-f", "json"]
    trials = subprocess.run([*optuna_cli, "trials", *common], capture_output=True, text=True)
    assert trials.returncode == 0, trials.stderr
    listed = json.loads(trials.stdout)
    # The fourth warm-start rate is still queued: 3 trials ran, 4 exist.
    assert [t["state"] for t in listed].count("COMPLETE") == 3
    assert [t["state"] for t in listed].count("WAITING") == 1
    best = subprocess.run([*optuna_cli, "best-trial", *common], capture_output=True, text=True)
    assert best.returncode == 0, best.stderr
    best_trial = json.loads(best.stdout)
    exported = run_tuner("export", "--study", "clothing", "--storage", env.url, cwd=env.root)
    assert exported.returncode == 0, exported.stderr
    result = json.loads(exported.stdout)
    assert result["best_trial"] == best_trial["number"]
    # The study names its metric, so Optuna's CLI shows the value under that name.
    assert best_trial["value"] == {"val_accuracy": pytest.approx(result["best_value"])}
    assert result["best_params"] == best_trial["params"]
    assert result["n_trials"] == 4
    assert result["states"] == {"COMPLETE": 3, "WAITING": 1}


def test_worker_resumes_until_the_study_holds_n_trials(env: Env) -> None:
    args = ["worker", "--study", "clothing", "--storage", env.url, *env.overrides(epochs=1)]
    first = run_tuner(*args, "--n-trials", "2", cwd=env.root)
    assert first.returncode == 0, first.stderr
    again = run_tuner(*args, "--n-trials", "2", cwd=env.root)
    assert again.returncode == 0, again.stderr
    assert "already holds 2 of 2 finished trials; nothing to do" in again.stderr
    more = run_tuner(*args, "--n-trials", "3", cwd=env.root)
    assert more.returncode == 0, more.stderr
    ran = _load(env).get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(ran) == 3


def test_progress_lines_name_rate_epoch_accuracy_and_best(env: Env) -> None:
    done = run_tuner(
        "worker", "--study", "clothing", "--storage", env.url, "--n-trials", "2",
        *env.overrides(epochs=2), cwd=env.root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # The time, then every parameter by name, padded so that the columns of the log line up.
    stamp = r"^\d\d:\d\d:\d\d "
    assert re.search(stamp + r"trial 0 learning_rate=0\.0001 +epoch 1/2 ", done.stderr, re.M)
    assert re.search(r"epoch 1/2 acc=\S+ val_acc=\S+ \(\d+(ms|\.\ds)\)$", done.stderr, re.M)
    assert re.search(stamp + r"trial 1 learning_rate=0\.001 +finished val_acc=", done.stderr, re.M)
    assert "new best: trial" in done.stderr or "best so far: trial" in done.stderr
    plain = run_tuner(
        "worker", "--study", "clothing", "--storage", env.url, "--n-trials", "3",
        "--log-format", "plain", *env.overrides(epochs=1), cwd=env.root,
    )  # fmt: skip
    assert re.search(r"^trial 2 learning_rate=", plain.stderr, re.M), plain.stderr


def test_worker_downloads_a_missing_dataset_first(env: Env, zip_server: str) -> None:
    # Only the folder that the spec file names is downloaded into, never a --set one.
    target = env.root / "downloaded"
    spec = env.root / "clothing.toml"
    text = (REPO / "studies" / "clothing.toml").read_text()
    spec.write_text(text.replace('"data/clothing-dataset-small"', f'"{target}"'))
    sets = [a for a in env.overrides(epochs=1) if not a.startswith("--set=data.dir=")]
    done = run_tuner(
        "worker", "--study", str(spec), "--storage", env.url, "--n-trials", "1", *sets,
        f"--set=data.url={zip_server}", cwd=env.root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "downloading the clothing dataset" in done.stderr
    assert (target / "train").is_dir() and (target / "validation").is_dir()
    assert _load(env).get_trials()[0].state == TrialState.COMPLETE


@pytest.fixture
def zip_server(tmp_path: Path, tiny_data: Path) -> Iterator[str]:
    from tests.conftest import serve_archive

    with serve_archive(tmp_path, tiny_data) as url:
        yield url


def test_the_trial_line_names_the_best_trial_from_the_loops_reads_and_the_trial_itself(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tuner.runner.announce import Announcer

    study = optuna.create_study(direction="maximize")
    for value in (0.5, 0.75, 0.25):
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": value},
                distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
                value=value,
            )
        )
    announce = Announcer(study)
    frozen = study.trials
    announce(study, frozen[0])  # before any read: only the trial itself is known
    assert "finished val_acc=0.5000; new best: trial 0" in capsys.readouterr().err
    announce.seen(frozen)
    announce(study, frozen[2])
    assert "trial 2 x=0.25 finished val_acc=0.2500; best so far: trial 1 x=0.75" in (
        capsys.readouterr().err.replace("\n", " ")
    )
    pruned = optuna.trial.create_trial(state=TrialState.PRUNED, intermediate_values={0: 0.9})
    announce(study, pruned)
    assert "best so far" not in capsys.readouterr().err  # said once, when it changed
    tie = optuna.trial.create_trial(
        params={"x": 0.75},
        distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
        value=0.75,
    )
    tie.number = 9
    announce(study, tie)
    assert "best" not in capsys.readouterr().err  # a tie keeps the earlier trial
