"""The image and the compose stack, built and run for real on a Docker engine.

These are marked ``docker`` and are not part of the default run. Prepare the engine and
the base images, then run them (as root, or as a member of the ``docker`` group):

    ../shared/containers/build-base-images        # once per machine, as root
    python3 -m pytest -m docker

Where no engine answers, or the base images are missing, every test here is skipped with
the reason. Each test cleans up its containers, networks, volumes and databases, also on
failure. The image is built once per run as ``tuner:test``; the tag is kept so that the
next build reuses the cached dependency layer (TensorFlow) and takes seconds.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import FrozenTrial, TrialState

from tests.conftest import (
    PG_URL,
    REPO,
    TINY_SIZE,
    fresh_database,
    make_subset,
    unique_name,
)

# A cold build (TensorFlow) is part of the first test.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

IMAGE = "tuner:test"
BASE_IMAGES = ("python:3.11-slim", "postgres:16")
BUILD_BASES = "../shared/containers/build-base-images"
STUDY = "clothing"
UID = 1000  # the image's user
# Fast trials on the tiny data mounted at the spec's data.dir.
TINY = {
    "model.weights": "none",
    "data.image_size": f"[{TINY_SIZE}, {TINY_SIZE}]",
    "data.batch_size": 8,
    "storage.artifacts": "/app/artifacts",
}


def _run(*cmd: str, timeout: float = 300, check: bool = True, **kw: Any) -> Any:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


def _engine_problem(*tools: str) -> str | None:
    """None when the engine, ``tools`` and the base images are there, else what is missing."""
    for tool in ("docker", *tools):
        if _run("sh", "-c", f"command -v {tool}", check=False).returncode != 0:
            return f"no `{tool}` on PATH; run {BUILD_BASES} as root"
    info = _run("docker", "info", "--format", "{{.ServerVersion}}", check=False, timeout=30)
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["no answer"])[-1]
        return f"no Docker engine answers ({reason}); run {BUILD_BASES} as root"
    for base in BASE_IMAGES:
        if _run("docker", "image", "inspect", base, check=False).returncode != 0:
            return f"base image {base} is missing (no registry is reachable); run {BUILD_BASES}"
    return None


@pytest.fixture(scope="module")
def image() -> str:
    """The repository's Dockerfile, built once per run."""
    if (reason := _engine_problem()) is not None:
        pytest.skip(reason)
    started = time.monotonic()
    _run("docker", "build", "--network", "host", "-t", IMAGE, str(REPO), timeout=1500)
    print(f"\nimage {IMAGE} built in {time.monotonic() - started:.0f} s")
    return IMAGE


def _sets(**extra: object) -> list[str]:
    return [f"--set={k}={v}" for k, v in {**TINY, **extra}.items()]


def _tiny_data(root: Path) -> Path:
    """A ``data/`` folder holding the spec's data.dir, a few real images per class."""
    make_subset(root / "data" / "clothing-dataset-small")
    return root / "data"


def _writable_by_the_image(folder: Path) -> Path:
    """A host folder the image's user can write to, as the README asks of ./data."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(folder, UID, UID)
    else:
        folder.chmod(0o777)
    return folder


def _free_port(preferred: int | None = None) -> int:
    with socket.socket() as s:
        # As Docker binds: a port whose last connections linger in TIME_WAIT is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):
            if preferred:
                s.bind(("127.0.0.1", preferred))
                return preferred
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def _wait_for(
    what: str,
    check: Callable[[], Any],
    timeout: float,
    on_fail: Callable[[], str],
    every: float = 1,
) -> Any:
    """Poll ``check`` until it returns something truthy; returns that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if found := check():
                return found
        time.sleep(every)
    raise AssertionError(f"{what} did not happen in {timeout:.0f} s\n{on_fail()}")


def _own_address() -> str | None:
    """This machine's address on its main interface, if it has one besides loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        with contextlib.suppress(OSError):
            s.connect(("192.0.2.1", 9))  # no packet is sent; it only picks the interface
        own = s.getsockname()[0]
    return None if own in ("0.0.0.0", "127.0.0.1") else own


def _docker_time(stamp: str) -> datetime.datetime:
    """Docker's RFC 3339 time (UTC, in nanoseconds) as Optuna records times in the containers."""
    return datetime.datetime.fromisoformat(stamp[:26].rstrip("Z"))


def _trials(url: str) -> list[FrozenTrial]:
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    try:
        return optuna.load_study(study_name=STUDY, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.remove_session()
        storage.engine.dispose()


def _assert_complete_and_consistent(trials: list[FrozenTrial], budget: int) -> None:
    """The budget is met, nothing is RUNNING or queued, and every failed trial ran again."""
    states = collections.Counter(t.state for t in trials)
    summary = {s.name: n for s, n in states.items()}
    assert states[TrialState.RUNNING] == 0, summary
    assert states[TrialState.WAITING] == 0, summary
    assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == budget, summary
    retried = {n for t in trials for n in RetryFailedTrialCallback.retry_history(t)}
    lost = [t.number for t in trials if t.state == TrialState.FAIL and t.number not in retried]
    assert not lost, f"failed trials never queued again: {lost}; {summary}"


# --- one container against the shared PostgreSQL ------------------------------------------------


@pytest.fixture
def host_database() -> Iterator[str]:
    """An own, empty database on the shared PostgreSQL; dropped afterwards."""
    with fresh_database(PG_URL) as url:
        yield url


def test_image_answers_help_as_its_own_user(image: str) -> None:
    help_ = _run("docker", "run", "--rm", image, "--help", timeout=120)
    assert "worker" in help_.stdout and "dashboard" in help_.stdout, help_.stdout
    user = _run("docker", "run", "--rm", "--entrypoint", "id", image).stdout
    assert user.startswith(f"uid={UID}(tuner)"), user
    drivers = "import psycopg2, pymysql, tensorflow; print(tensorflow.__version__)"
    _run("docker", "run", "--rm", "--entrypoint", "python", image, "-c", drivers, timeout=120)


def test_worker_container_runs_its_trials_against_postgres(
    image: str, host_database: str, tmp_path: Path
) -> None:
    data = _tiny_data(tmp_path)
    artifacts = _writable_by_the_image(tmp_path / "artifacts")
    name = unique_name("tuner-test").replace("_", "-")
    cache = f"{name}-cache"
    try:
        worker = _run(
            "docker", "run", "--name", name, "--network", "host",  # reaches 127.0.0.1:5432
            "-e", f"TUNER_STORAGE={host_database}",  # keeps the URL out of the command line
            "-v", f"{data}:/app/data", "-v", f"{artifacts}:/app/artifacts",
            "-v", f"{cache}:/cache",
            image, "worker", "--study", STUDY, "--n-trials", "4", *_sets(**{"train.epochs": 1}),
            timeout=600, check=False,
        )  # fmt: skip
        log = worker.stdout + worker.stderr
        assert worker.returncode == 0, log
        assert "worker done: 4 trials" in log, log
        hostname = _run("docker", "inspect", "-f", "{{.Config.Hostname}}", name).stdout.strip()
        # The volumes: what the worker wrote there belongs to the image's user.
        in_cache = _run(
            "docker", "run", "--rm", "-v", f"{cache}:/cache", "--entrypoint", "find", image,
            "/cache", "-type", "f", "-printf", "%U %p\\n",
        ).stdout.split("\n")  # fmt: skip
    finally:
        _run("docker", "rm", "-f", name, check=False)
        _run("docker", "volume", "rm", "-f", cache, check=False)
    trials = _trials(host_database)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4, [t.state for t in trials]
    assert {t.user_attrs["worker"].split(":")[0] for t in trials} == {hostname}
    written = [p for p in artifacts.rglob("*") if p.is_file()]
    assert written, "the worker wrote no trial files into the artifacts volume"
    assert {p.stat().st_uid for p in written} == {UID}
    in_cache = [line for line in in_cache if line]
    assert any("/features/" in line for line in in_cache), in_cache
    assert {line.split()[0] for line in in_cache} == {str(UID)}, in_cache
    assert not list(data.glob("*.lock")), "the mounted data was already there: no download"


# --- the compose stack -------------------------------------------------------------------------


class Stack:
    """``docker-compose`` with the repository's compose.yaml and a test override."""

    def __init__(self, root: Path, budget: int, epochs: int, **sets: object) -> None:
        self.project = unique_name("tunertest").replace("_", "")
        self.budget = budget
        self.dashboard_port = _free_port(preferred=8080)
        self.pg_port = _free_port()  # never the host's 5432
        self.url = f"postgresql+psycopg2://tuner:tuner@127.0.0.1:{self.pg_port}/tuner"
        data = _tiny_data(root)
        mounts = [f"{data}:/app/data", "artifacts:/app/artifacts", "cache:/cache"]
        worker = ["worker", "--study", STUDY, "--n-trials", str(budget)]
        worker += _sets(**{"train.epochs": epochs, **sets})
        tuner = {"image": IMAGE, "volumes": mounts}
        override = {
            "services": {
                # Published on the loopback only, for the test's own reads of the study.
                "postgres": {"ports": [f"127.0.0.1:{self.pg_port}:5432"]},
                "data": tuner,
                "dashboard": tuner,
                "worker": {**tuner, "command": worker},
            }
        }
        self.override = root / "compose.test.yaml"
        self.override.write_text(yaml.safe_dump(override))
        self.env = {
            **os.environ,
            "TUNER_DASHBOARD_PORT": str(self.dashboard_port),
            "COMPOSE_HTTP_TIMEOUT": "300",
        }

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> Any:
        files = ["-f", str(REPO / "compose.yaml"), "-f", str(self.override)]
        return _run(
            "docker-compose", "-p", self.project, *files, *args,
            timeout=timeout, check=check, env=self.env,
        )  # fmt: skip

    def ids(self, service: str) -> list[str]:
        """The containers of a service, running or not."""
        labels = [f"com.docker.compose.project={self.project}"]
        labels += [f"com.docker.compose.service={service}"]
        filters = [arg for label in labels for arg in ("--filter", f"label={label}")]
        return _run("docker", "ps", "-aq", "--no-trunc", *filters).stdout.split()

    def inspect(self, container: str, template: str) -> str:
        return _run("docker", "inspect", "-f", template, container).stdout.strip()

    def logs(self) -> str:
        return self("logs", "--no-color", "--tail", "60", check=False).stdout

    def wait_exited(self, service: str, timeout: float = 600) -> dict[str, int]:
        """Wait until every container of ``service`` has exited; their exit codes by host name."""

        def exited() -> dict[str, int] | None:
            ids = self.ids(service)
            states = [self.inspect(c, "{{.State.Status}} {{.State.ExitCode}}") for c in ids]
            if not ids or any(not s.startswith("exited ") for s in states):
                return None
            hosts = [self.inspect(c, "{{.Config.Hostname}}") for c in ids]
            return {h: int(s.split()[1]) for h, s in zip(hosts, states, strict=True)}

        return _wait_for(f"every {service} exiting", exited, timeout, self.logs)

    def leftovers(self) -> list[str]:
        label = f"label=com.docker.compose.project={self.project}"
        found = []
        for kind, every in (("container", ["-a"]), ("network", []), ("volume", [])):
            listing = _run("docker", kind, "ls", "-q", *every, "--filter", label).stdout
            found += [f"{kind} {x}" for x in listing.split()]
        return found


@pytest.fixture
def stack(image: str, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Makes a compose stack; takes it down with its volumes afterwards, also on failure."""
    if (reason := _engine_problem("docker-compose")) is not None:
        pytest.skip(reason)
    made: list[Stack] = []

    def make(budget: int, epochs: int, **sets: object) -> Stack:
        made.append(Stack(tmp_path, budget, epochs, **sets))
        return made[-1]

    yield make
    for s in made:
        s("down", "-v", "--remove-orphans", "-t", "5", check=False)


def _up(stack: Stack) -> None:
    started = time.monotonic()
    stack("build")  # compose's own build: cached by the image fixture's, but it must work
    stack("up", "-d")
    print(f"\n{stack.project}: built and up in {time.monotonic() - started:.0f} s")


def _finished(stack: Stack) -> int:
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in _trials(stack.url))


def test_compose_runs_the_study_and_serves_it_on_loopback(stack: Callable[..., Stack]) -> None:
    s = stack(budget=6, epochs=2)
    _up(s)
    started = time.monotonic()
    codes = s.wait_exited("worker")
    print(f"\nworkers done in {time.monotonic() - started:.0f} s")
    assert len(codes) == 2 and set(codes.values()) == {0}, f"{codes}\n{s.logs()}"
    _assert_complete_and_consistent(_trials(s.url), s.budget)

    api = f"http://127.0.0.1:{s.dashboard_port}/api/studies"
    listing = _wait_for(
        "the dashboard serving the study",
        lambda: json.loads(_get(api)[1]),
        120,
        s.logs,
    )
    assert [study["study_name"] for study in listing["study_summaries"]] == [STUDY]
    (dashboard,) = s.ids("dashboard")
    published = _run("docker", "port", dashboard, "8080/tcp").stdout.split()
    assert published == [f"127.0.0.1:{s.dashboard_port}"], published
    if (own := _own_address()) is not None:
        with pytest.raises(OSError):  # refused from the machine's other address
            socket.create_connection((own, s.dashboard_port), timeout=5).close()
    log = s("logs", "--no-color", "dashboard").stdout
    assert f"open http://127.0.0.1:{s.dashboard_port}/dashboard/studies/1" in log, log

    (worker, *_) = s.ids("worker")
    owners = _run(
        "docker", "run", "--rm", "--volumes-from", worker, "--entrypoint", "find", IMAGE,
        "/app/artifacts", "/cache", "-type", "f", "-printf", "%U\\n",
    ).stdout.split()  # fmt: skip
    assert owners and set(owners) == {str(UID)}, owners

    s("down", "-v", "-t", "5")
    assert s.leftovers() == []


def _in_training(stack: Stack, hosts: set[str], epochs: range) -> FrozenTrial | None:
    """A RUNNING trial of a worker in ``hosts`` that has reported a number of epochs in range."""
    for t in _trials(stack.url):
        host = str(t.user_attrs.get("worker", "")).split(":")[0]
        if (
            t.state == TrialState.RUNNING
            and host in hosts
            and len(t.intermediate_values) in epochs
        ):
            return t
    return None


def _hosts(stack: Stack) -> dict[str, str]:
    """The workers' host names (what trials record), with their container ids."""
    return {stack.inspect(c, "{{.Config.Hostname}}"): c for c in stack.ids("worker")}


def test_workers_ride_out_a_database_restart(stack: Callable[..., Stack]) -> None:
    # Cached epochs take a few milliseconds, and fast epochs' values are written together about
    # once a second: 3,000 epochs keep a trial reporting for over ten seconds, and a trial found
    # before its 1,000th epoch still has seconds of storage calls ahead when the restart starts.
    s = stack(budget=4, epochs=3000, **{"pruner.kind": "none"})
    _up(s)
    victim = _wait_for(
        "a trial in training",
        lambda: _in_training(s, set(_hosts(s)), range(1, 1000)),
        300,
        s.logs,
        every=0.2,
    )
    (postgres,) = s.ids("postgres")
    before = s.inspect(postgres, "{{.State.StartedAt}}")
    started = time.monotonic()
    s("restart", "postgres")
    print(f"\npostgres restarted in {time.monotonic() - started:.1f} s")
    # The database was down from its old run's end to its new run's start (and a bit beyond).
    down = _docker_time(s.inspect(postgres, "{{.State.FinishedAt}}"))
    up = _docker_time(s.inspect(postgres, "{{.State.StartedAt}}"))
    assert _docker_time(before) < down < up

    codes = s.wait_exited("worker")
    trials = _trials(s.url)
    begun, ended = trials[victim.number].datetime_start, trials[victim.number].datetime_complete
    assert begun is not None and begun < down and (ended is None or ended > up), (
        f"trial {victim.number} ran from {begun} to {ended}, not through the outage from "
        f"{down} to {up}"
    )
    assert len(codes) == 2 and set(codes.values()) == {0}, f"{codes}\n{s.logs()}"
    _assert_complete_and_consistent(trials, s.budget)


def test_docker_stop_fails_the_trial_and_another_worker_reruns_it(
    stack: Callable[..., Stack],
) -> None:
    # Cached epochs take milliseconds: trials long enough, and a window wide enough, that the
    # poll finds one mid-training and the stop lands before it ends.
    s = stack(budget=4, epochs=2000, **{"pruner.kind": "none"})
    _up(s)
    hosts = _hosts(s)
    victim = _wait_for(
        "a trial in training",
        lambda: _in_training(s, set(hosts), range(1, 1000)),
        300,
        s.logs,
        every=0.2,
    )
    host = victim.user_attrs["worker"].split(":")[0]
    stop_timeout = 10  # docker stop's default
    started = time.monotonic()
    _run("docker", "stop", "-t", str(stop_timeout), hosts[host])
    took = time.monotonic() - started
    print(f"\nworker {host} stopped in {took:.1f} s")
    code = int(s.inspect(hosts[host], "{{.State.ExitCode}}"))
    # Ended by its SIGTERM handler (0, or 128 + 15 for "stopped by a signal"), not killed.
    assert code in (0, 143), f"exit {code} after {took:.1f} s\n{s.logs()}"
    assert took < stop_timeout

    codes = s.wait_exited("worker")
    others = {h: c for h, c in codes.items() if h != host}
    assert len(others) == 1 and set(others.values()) == {0}, f"{codes}\n{s.logs()}"
    trials = _trials(s.url)
    stopped = trials[victim.number]
    assert stopped.state == TrialState.FAIL, stopped.state
    assert "SIGTERM" in str(stopped.user_attrs.get("fail_reason")), stopped.user_attrs
    (rerun,) = [t for t in trials if victim.number in RetryFailedTrialCallback.retry_history(t)]
    assert rerun.state == TrialState.COMPLETE, rerun.state
    assert rerun.params == stopped.params
    assert rerun.user_attrs["worker"].split(":")[0] in others
    _assert_complete_and_consistent(trials, s.budget)
