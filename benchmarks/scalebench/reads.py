"""How long the commands that read a study take on a large one: status, export, dashboard."""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tuner.config.build import open_spec_storage
from tuner.results import dashboard
from tuner.results.dashboard import make_app

from .fill import SETS

__all__ = ["cli_seconds", "dashboard_seconds"]


def cli_seconds(url: str, name: str, command: str) -> tuple[float, int]:
    """Seconds and exit code of ``tuner status`` or ``tuner export`` (JSON only) on the study."""
    extra: list[str] = []
    with tempfile.TemporaryDirectory() as folder:
        if command == "export":
            extra = ["--out", str(Path(folder) / "best.json")]
        sets = [a for s in (f"study.name={name}", *SETS) for a in ("--set", s)]
        cmd = [sys.executable, "-m", "tuner", command, "--study", "clothing", "--storage", url,
               *sets, *extra]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=folder)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
    return seconds, done.returncode


def dashboard_seconds(url: str, name: str) -> tuple[float, float, float, float, int]:
    """The dashboard's request for the study's page (its trials), cold and again, in-process.

    The app is the one ``tuner dashboard`` serves, over a storage opened as it opens
    it; the request is the one the study page makes (``GET /api/studies/ID``).
    Returns the seconds of the first request, of the second (optuna-dashboard serves
    it from its own cache of a few seconds), of the storage's first read of the trials
    (tuner's part of the first request), of a read again (what each refresh of the page
    reads once that cache expires), and the HTTP status.
    """
    from tuner.config.spec import load_spec

    spec = load_spec("clothing", [f"study.name={name}", *SETS])
    storage = open_spec_storage(url, spec, must_exist=True)
    study_id = storage.get_study_id_from_name(name)
    app = make_app(storage)
    times, status = [], 0
    for _ in range(2):
        got: list[str] = []

        def start_response(status: str, headers: object, exc: object = None) -> None:
            got.append(status)  # noqa: B023  (called before the loop goes on)

        environ = {
            "REQUEST_METHOD": "GET", "PATH_INFO": f"/api/studies/{study_id}",
            "QUERY_STRING": "after=0", "SERVER_NAME": "localhost", "SERVER_PORT": "80",
            "wsgi.input": io.BytesIO(), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
        }  # fmt: skip
        start = time.perf_counter()
        body = b"".join(app(environ, start_response))
        times.append(time.perf_counter() - start)
        status = int(got[0].split()[0]) if got else 0
        assert body, "the dashboard answered nothing"
    reader = getattr(dashboard, "dashboard_storage", lambda s: s)(
        open_spec_storage(url, spec, must_exist=True)
    )
    reads = []
    for _ in range(2):
        start = time.perf_counter()
        reader.get_all_trials(study_id, deepcopy=False)
        reads.append(time.perf_counter() - start)
    return times[0], times[1], reads[0], reads[1], status
