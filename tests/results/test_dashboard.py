"""`tuner dashboard`: its HTTP API on every backend, exposure, errors, no locks, a real browser."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import Env, run_tuner, serving, tuner_cmd, unique_name
from tuner.config.build import artifact_store, open_spec_storage, open_study
from tuner.config.spec import StudySpec, load_spec
from tuner.results.dashboard import is_loopback, make_app
from tuner.space.params import suggest
from tuner.storages.storage import open_storage

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")

# Made-up learning curves: (train accuracy, validation accuracy) per epoch for each trial.
CURVES = [
    ([0.30, 0.50, 0.70], [0.25, 0.40, 0.55]),
    ([0.20, 0.35, 0.45], [0.20, 0.30, 0.35]),
    ([0.40, 0.60, 0.90], [0.30, 0.45, 0.50]),
]


@dataclass
class Finished:
    """A finished study in a SQLite file, and where to run commands on it."""

    root: Path
    url: str
    name: str


def _app(spec: StudySpec, url: str) -> object:
    """The app as ``tuner dashboard`` builds it: the workers' storage, the artifacts."""
    storage = open_spec_storage(url, spec, must_exist=True)
    return make_app(storage, artifact_store(url, spec, create=False))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 30) -> tuple[int, bytes, str]:
    """(HTTP status, body, content type); a refused or reset connection raises OSError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), ""


def _json(url: str) -> Any:
    status, body, _ = _get(url)
    assert status == 200, f"GET {url}: HTTP {status}: {body[:300]!r}"
    return json.loads(body)


def _study_id(base: str, name: str) -> int:
    summaries = _json(f"{base}/api/studies")["study_summaries"]
    ids = [s["study_id"] for s in summaries if s["study_name"] == name]
    assert ids, f"study {name!r} not listed: {[s['study_name'] for s in summaries]}"
    return int(ids[0])


def _attrs(trial: dict[str, Any]) -> dict[str, str]:
    return {a["key"]: a["value"] for a in trial["user_attrs"]}


def _spec(name: str, epochs: int = 3, study: str = "clothing") -> StudySpec:
    return load_spec(study, [f"study.name={name}", f"train.epochs={epochs}"])


def _build_study(spec: StudySpec, url: str) -> optuna.Study:
    """A study as workers leave it, through tuner's own creation path (note included)."""
    study = open_study(spec, open_storage(url, spec.storage))
    for train, val in CURVES:
        trial = study.ask()
        suggest(trial, spec.search.space)
        for step, value in enumerate(val):
            trial.report(value, step)
        trial.set_user_attr("train_accuracy", train)
        trial.set_user_attr("val_loss", [1.0 - v for v in val])
        trial.set_user_attr("gap", train[-1] - val[-1])
        trial.set_user_attr("epoch_seconds", [0.5, 0.25, 0.25])
        trial.set_user_attr("cache", "hit")
        trial.set_user_attr("worker", "host:123")
        study.tell(trial, val[-1])
    return study


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _in_process(app: Any) -> Iterator[str]:
    """Serve a WSGI app on a free loopback port in a thread; yields the base URL."""
    with serving(make_server("127.0.0.1", 0, app, handler_class=_Quiet)) as port:
        yield f"http://127.0.0.1:{port}"


class Dashboard:
    """`tuner dashboard` in a subprocess, with its stderr in a file."""

    def __init__(self, study: Finished, *args: str, port: int | None = None) -> None:
        self.port = port or _free_port()
        self.log = study.root / f"dashboard-{self.port}.log"
        cmd = ["dashboard", "--storage", study.url, f"--set=study.name={study.name}"]
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                tuner_cmd(*cmd, "--port", str(self.port), *args),
                cwd=study.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )

    def wait_ready(self, timeout: float = 60) -> str:
        """Wait for the printed URL; returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := re.search(r"open (http://\S+)", self.output()):
                return found.group(1)
            assert self.proc.poll() is None, f"dashboard exited:\n{self.output()}"
            time.sleep(0.1)
        raise AssertionError(f"dashboard did not start in {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        """Ctrl-C, as a user stops it; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@contextlib.contextmanager
def _dashboard(study: Finished, *args: str) -> Iterator[tuple[Dashboard, str]]:
    dash = Dashboard(study, *args)
    try:
        yield dash, dash.wait_ready()
    finally:
        dash.stop()


def _listening(port: int) -> list[str]:
    """The local addresses that listen on ``port``, read from Linux's /proc/net/tcp{,6}."""
    found = []
    for table in ("tcp", "tcp6"):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            if sys.byteorder == "little":  # the kernel prints each 32-bit word in host order
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.append(str(ipaddress.ip_address(raw)))
    return found


# --- the API, on every backend, in-process ---------------------------------------------------


def test_api_shows_study_attributes_intermediate_values_and_note(
    storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # server storages keep their artifacts in the working folder
    spec = _spec(unique_name("dash"), study="clothing-head")  # three hyperparameters
    _build_study(spec, storage_url)
    try:
        with _in_process(_app(spec, storage_url)) as base:
            study_id = _study_id(base, spec.study.name)
            detail = _json(f"{base}/api/studies/{study_id}")
    finally:
        optuna.delete_study(
            study_name=spec.study.name, storage=open_storage(storage_url, spec.storage)
        )
    assert detail["name"] == spec.study.name
    finished = [t for t in detail["trials"] if t["state"] == "Complete"]
    assert len(finished) == len(CURVES)
    for trial, (train, val) in zip(finished, CURVES, strict=True):
        attrs = _attrs(trial)
        assert json.loads(attrs["train_accuracy"]) == train
        assert json.loads(attrs["epoch_seconds"]) == [0.5, 0.25, 0.25]
        assert float(attrs["gap"]) == pytest.approx(train[-1] - val[-1])
        assert attrs["cache"] == "hit"
        steps = [(v["step"], v["value"]) for v in trial["intermediate_values"]]
        assert steps == list(enumerate(val))
        assert trial["values"] == [val[-1]]
        params = {p["name"]: p["param_external_value"] for p in trial["params"]}
        assert set(params) == {"learning_rate", "size_inner", "droprate"}
    warm = [dict(p) for p in spec.search.warm_start[: len(CURVES)]]
    shown = [{p["name"]: p["param_external_value"] for p in t["params"]} for t in finished]
    assert [{k: json.loads(str(v)) for k, v in s.items()} for s in shown] == warm
    assert {p["name"] for p in detail["union_search_space"]} == set(spec.search.space)
    keys = {a["key"] for a in detail["union_user_attrs"]}
    assert {"train_accuracy", "gap", "epoch_seconds", "cache"} <= keys
    assert detail["has_intermediate_values"] is True
    note = detail["note"]["body"]
    assert note.startswith(f"# {spec.study.name}")
    for line in (
        "learning_rate in [0.0001, 0.1] (log)",
        "size_inner in {0, 10, 100, 1000}",
        "droprate in [0, 0.8] step 0.1",
        "learning_rate=0.001 size_inner=10 droprate=0",
    ):
        assert line in note, note
    assert "3 epochs per trial" in note
    assert f"tuner export --study {spec.study.name} --out {spec.study.name}.json" in note


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# --- the command, on a finished SQLite study --------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Finished:
    root = tmp_path_factory.mktemp("dashboard")
    study = Finished(root, f"sqlite:///{root / 'study.db'}", "watched")
    _build_study(_spec(study.name), study.url)
    return study


@pytest.mark.slow  # spawns processes
def test_dashboard_listens_on_loopback_only_by_default(finished: Finished) -> None:
    with _dashboard(finished) as (dash, url):
        assert re.fullmatch(rf"http://127\.0\.0\.1:{dash.port}/dashboard/studies/\d+", url)
        assert _listening(dash.port) == ["127.0.0.1"] or not Path("/proc/net/tcp").exists()
        base = f"http://127.0.0.1:{dash.port}"
        assert _get(url)[0] == 200  # the printed URL serves the dashboard page
        assert _study_id(base, finished.name) == int(url.rsplit("/", 1)[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            with contextlib.suppress(OSError):
                s.connect(("192.0.2.1", 9))  # no packet is sent; it only picks the interface
            own = s.getsockname()[0]
        if not ipaddress.ip_address(own).is_loopback and own != "0.0.0.0":
            with pytest.raises(OSError):  # refused from the machine's other address
                socket.create_connection((own, dash.port), timeout=5).close()
    assert dash.stop() == 0
    out = dash.output()
    assert "warning" not in out
    assert "dashboard stopped" in out


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.slow  # spawns processes
@pytest.mark.parametrize(
    ("host", "warned"), [("0.0.0.0", True), ("127.0.0.2", False), ("::1", False)]
)
def test_host_other_than_loopback_warns(finished: Finished, host: str, warned: bool) -> None:
    if host == "::1" and not _ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback")
    with _dashboard(finished, "--host", host) as (dash, url):
        assert _listening(dash.port) in ([host], [])
        reach = "127.0.0.1" if host == "0.0.0.0" else host
        shown = f"[{reach}]" if ":" in reach else reach
        assert _get(f"http://{shown}:{dash.port}/api/studies")[0] == 200
    out = dash.output()
    assert ("no authentication" in out) is warned, out
    if warned:
        assert f"warning: listening on {host}" in out
        assert "SSH tunnel" in out
        assert socket.gethostname() in url  # a wildcard address is shown as the host name


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def _run_dashboard(study: Finished, *args: str, timeout: float = 60) -> Any:
    return run_tuner(
        "dashboard",
        "--storage",
        study.url,
        f"--set=study.name={study.name}",
        *args,
        cwd=study.root,
        timeout=timeout,
    )


@pytest.mark.slow  # spawns processes
def test_busy_port_is_one_error_line(finished: Finished) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _one_error_line(_run_dashboard(finished, "--port", str(port)))
    assert f"port {port} on 127.0.0.1 is already in use" in line
    assert "--port" in line


@pytest.mark.slow  # spawns processes
@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("nosuch.invalid", "cannot resolve --host 'nosuch.invalid'"),
        ("203.0.113.7", "cannot listen"),
    ],
)
def test_host_that_cannot_be_bound_is_one_error_line(
    finished: Finished, host: str, reason: str
) -> None:
    result = _run_dashboard(finished, "--host", host, "--port", str(_free_port()))
    assert reason in _one_error_line(result)  # and no exposure warning for what never listened


@pytest.mark.slow  # spawns processes
def test_unknown_study_is_one_error_line(finished: Finished) -> None:
    line = _one_error_line(_run_dashboard(finished, "--set=study.name=nosuch", "--port", "1"))
    assert "study 'nosuch' does not exist" in line
    assert finished.name in line  # it names the studies that are there


@pytest.mark.slow  # spawns processes
def test_missing_storage_file_is_an_error_and_stays_missing(finished: Finished) -> None:
    missing = finished.root / "typo.db"
    line = _one_error_line(
        run_tuner("dashboard", "--storage", f"sqlite:///{missing}", cwd=finished.root)
    )
    assert str(missing) in line
    assert not missing.exists()


@pytest.mark.slow  # spawns processes
@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg2://postgres:secret@127.0.0.1:1/test",
        "postgresql://postgres:secret@127.0.0.1:1/test",
        "mysql+pymysql://root:secret@127.0.0.1:1/test",
    ],
)
def test_unreachable_storage_fails_fast_without_printing_the_password(
    tmp_path: Path, url: str
) -> None:
    start = time.monotonic()
    result = run_tuner("dashboard", "--storage", url, cwd=tmp_path, timeout=60)
    elapsed = time.monotonic() - start
    line = _one_error_line(result)
    assert "secret" not in result.stdout + result.stderr
    assert "***" in line
    assert elapsed < 15, f"took {elapsed:.1f} s"
    assert not list(tmp_path.iterdir())  # nothing created for a storage that is not there


# --- real workers (TensorFlow) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def worked(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Finished:
    """A study that one real tiny worker finished: 2 trials of 2 epochs, with artifacts."""
    root = tmp_path_factory.mktemp("dashboard-worked")
    env = Env(root=root, data=tiny_data, cache=root / "cache")
    study = Finished(root, env.url, "worked")
    overrides = env.overrides(epochs=2, **{"study.name": study.name})
    result = run_tuner(
        "worker", "--storage", env.url, "--n-trials", "2", *overrides, cwd=root, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return study


@pytest.mark.slow
def test_learning_curves_of_a_real_worker_are_listed_and_served(
    worked: Finished, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(worked.root)
    spec = _spec(worked.name)
    with _in_process(_app(spec, worked.url)) as base:
        study_id = _study_id(base, worked.name)
        trials = _json(f"{base}/api/studies/{study_id}")["trials"]
        finished = [t for t in trials if t["state"] == "Complete"]
        assert len(finished) == 2
        for trial in finished:
            attrs = _attrs(trial)
            assert len(json.loads(attrs["train_accuracy"])) == 2
            assert len(json.loads(attrs["epoch_seconds"])) == 2
            assert attrs["cache"] in ("hit", "miss")
            assert float(attrs["gap"]) == pytest.approx(
                json.loads(attrs["train_accuracy"])[-1] - trial["values"][0], abs=1e-6
            )
            assert [v["step"] for v in trial["intermediate_values"]] == [0, 1]
            curves = [a for a in trial["artifacts"] if a["filename"] == "learning_curve.png"]
            assert len(curves) == 1, trial["artifacts"]
            assert curves[0]["mimetype"] == "image/png"
            assert attrs["curve_artifact"] == curves[0]["artifact_id"]
            path = f"/artifacts/{study_id}/{trial['trial_id']}/{curves[0]['artifact_id']}"
            status, body, content_type = _get(base + path)
            assert (status, content_type) == (200, "image/png")
            assert body.startswith(b"\x89PNG\r\n\x1a\n")
            assert len(body) > 10_000  # a rendered figure, not an empty file


def _poll(base: str, name: str, study_id: int, failures: list[str]) -> set[str]:
    """One poll of the list and the detail; returns the trial states seen."""
    try:
        names = [s["study_name"] for s in _json(f"{base}/api/studies")["study_summaries"]]
        if name not in names:
            failures.append(f"/api/studies does not list {name!r}: {names}")
        return {t["state"] for t in _json(f"{base}/api/studies/{study_id}")["trials"]}
    except (AssertionError, OSError, ValueError) as e:
        failures.append(f"{type(e).__name__}: {e}")
        return set()


@pytest.mark.slow
def test_polling_dashboard_beside_two_workers_causes_no_lock_errors(env: Env) -> None:
    # The dashboard is up before the workers start, and trials outlast several polls (a
    # cached epoch on the tiny data takes a few milliseconds), so polls overlap running
    # trials however slowly the machine starts the dashboard. No pruner: on the tiny data a
    # median pruner may stop a trial, and this test counts finished trials to prove that none
    # was lost to a lock.
    sets = env.overrides(epochs=400, **{"pruner.kind": "none"})
    first = subprocess.run(
        tuner_cmd("worker", "--storage", env.url, "--n-trials", "1", *sets),
        cwd=env.root,
        capture_output=True,
        text=True,
    )
    assert first.returncode == 0, first.stdout + first.stderr
    study = Finished(env.root, env.url, "clothing")
    args = ["worker", "--storage", env.url, "--n-trials", "7", *sets]
    logs = [env.root / f"worker{i}.log" for i in range(2)]
    workers: list[subprocess.Popen[bytes]] = []
    failures: list[str] = []
    states: set[str] = set()
    polls = 0
    with _dashboard(study) as (dash, url):
        base = url.split("/dashboard")[0]
        study_id = int(url.rsplit("/", 1)[1])
        for log in logs:
            with log.open("w") as out:
                workers.append(
                    subprocess.Popen(tuner_cmd(*args), cwd=env.root, stdout=out, stderr=out)
                )
        deadline = time.monotonic() + 420
        while any(w.poll() is None for w in workers) and time.monotonic() < deadline:
            states |= _poll(base, "clothing", study_id, failures)
            polls += 1
            time.sleep(0.2)
        states |= _poll(base, "clothing", study_id, failures)
    codes = [w.wait(timeout=30) for w in workers]
    texts = [log.read_text() for log in logs] + [dash.output()]
    assert codes == [0, 0], "\n".join(texts)
    assert failures == [], failures[:5]
    assert polls >= 20, f"only {polls} polls while the workers ran"
    assert "Running" in states, "no poll overlapped a running trial"
    for text in texts:
        assert "database is locked" not in text.lower(), text
    assert "Traceback" not in dash.output()
    trials = optuna.load_study(study_name="clothing", storage=env.url).get_trials()
    assert not [t.number for t in trials if t.state == TrialState.FAIL]
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 7


# --- a real browser ---------------------------------------------------------------------------


class _Text(HTMLParser):
    """The visible text of an HTML document, without scripts and styles."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self._skip -= tag in ("script", "style") and self._skip > 0

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def _rendered_text(chromium: str, url: str, profile: Path) -> str:
    """The page's text after its scripts ran, from headless Chromium's DOM dump."""
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=15000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    parser = _Text()
    parser.feed(result.stdout)
    return " ".join(" ".join(parser.parts).split())


@pytest.mark.slow
@pytest.mark.browser
def test_browser_shows_the_study_and_its_trials(worked: Finished, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed: apt-get install -y chromium")
    trials = optuna.load_study(study_name=worked.name, storage=worked.url).get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    with _dashboard(worked) as (_, url):
        study_id = url.rsplit("/", 1)[1]
        page = _rendered_text(chromium, url, tmp_path / "profile")
        listing = _rendered_text(chromium, f"{url}/trials", tmp_path / "profile")
    assert f"{worked.name} (id={study_id})" in page, page[:2000]
    assert "Best Trial" in page, page[:2000]
    assert f"{len(trials)} Trials" in listing, listing[:2000]
    for trial in done:
        assert f"Trial {trial.number} Complete" in listing, listing[:2000]
    for text in ("train_accuracy", "epoch_seconds", "learning_curve.png"):
        assert text in listing, listing[:2000]
