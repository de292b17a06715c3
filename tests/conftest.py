"""Shared fixtures: tiny datasets, spec overrides, CLI runners and storage backends."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import random
import shutil
import socketserver
import sqlite3
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
REAL_DATA = Path(
    os.environ.get("TUNER_REAL_DATA", REPO.parent / "shared" / "data" / "clothing-dataset-small")
)
SPLITS = {"train": 4, "validation": 2, "test": 2}
TINY_SIZE = 71  # Xception's smallest input


def make_subset(dest: Path, per_class: dict[str, int] = SPLITS, classes: int = 10) -> Path:
    """Copy a few real images per class into ``dest``; synthesise them when the data is absent."""
    if REAL_DATA.is_dir():
        for split, n in per_class.items():
            for folder in sorted((REAL_DATA / split).iterdir())[:classes]:
                target = dest / split / folder.name
                target.mkdir(parents=True, exist_ok=True)
                for image in sorted(folder.iterdir())[:n]:
                    shutil.copy(image, target / image.name)
        return dest
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for c in range(classes):
            target = dest / split / f"class{c:02d}"
            target.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
                pixels[..., c % 3] = 25 * c  # a class-dependent colour
                Image.fromarray(pixels).save(target / f"img{i}.jpg")
    return dest


@contextlib.contextmanager
def serving(server: socketserver.BaseServer) -> Iterator[int]:
    """Run a bound server in a daemon thread; yields its port, then shuts it down."""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def serve_archive(tmp: Path, dataset: Path) -> Iterator[str]:
    """Serve ``dataset`` zipped like the public archive; yields the archive's URL."""
    site = tmp / "site"
    site.mkdir(exist_ok=True)
    from tuner.assets.datasets import DATASETS

    folder = DATASETS["clothing"].folder
    with zipfile.ZipFile(site / "clothing.zip", "w") as zf:
        for path in sorted(dataset.rglob("*")):
            if path.is_file() and path.parent.parent.name in ("train", "validation"):
                zf.write(path, f"{folder}/{path.relative_to(dataset)}")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    with serving(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)) as port:
        yield f"http://127.0.0.1:{port}/clothing.zip"


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)


@pytest.fixture(autouse=True)
def _fresh_recipe_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """A recipe probed in-process marks the environment; keep that from leaking to other tests."""
    monkeypatch.setenv("TUNER_CHECKED_RECIPE", "")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny clothing subset: 4 train, 2 validation and 2 test images per class."""
    return make_subset(tmp_path_factory.mktemp("data") / "clothing")


@dataclass
class Env:
    """One isolated place to run tuner: data, cache, storage and working folder."""

    root: Path
    data: Path
    cache: Path

    @property
    def db(self) -> Path:
        return self.root / "study.db"

    @property
    def url(self) -> str:
        return f"sqlite:///{self.db}"

    def study_names(self) -> list[str]:
        """Study names read straight from the file, without creating it or its schema: a
        poller that created them would race the workers that do."""
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as c:
                return [row[0] for row in c.execute("SELECT study_name FROM studies")]
        except sqlite3.Error:
            return []

    def overrides(self, epochs: int = 1, **extra: object) -> list[str]:
        """``--set`` arguments for fast TensorFlow runs on the tiny data."""
        sets = {
            "data.dir": str(self.data),
            "model.weights": "none",
            "train.epochs": epochs,
            "data.image_size": f"[{TINY_SIZE}, {TINY_SIZE}]",
            "data.batch_size": 8,
            "cache.dir": str(self.cache),
            **extra,
        }
        return [f"--set={k}={v}" for k, v in sets.items()]


@pytest.fixture
def env(tmp_path: Path, tiny_data: Path) -> Env:
    return Env(root=tmp_path, data=tiny_data, cache=tmp_path / "cache")


def tuner_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tuner", *args]


def run_tuner(
    *args: str, cwd: Path | None = None, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a subprocess, as a user would."""
    return subprocess.run(
        tuner_cmd(*args),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


# The ``cli`` fixture: tuner's command line called in-process, as (exit code, stdout, stderr).
Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Iterator[Cli]:
    """Call ``tuner.cli.main`` in-process; returns (exit code, stdout, stderr)."""
    from tuner.cli import main

    def call(*args: str) -> tuple[int, str, str]:
        stamp = os.environ.get("TUNER_LOG_FORMAT")
        try:
            code = main(list(args))
        finally:  # `tuner worker` sets it for its pool; another test's call starts afresh
            if stamp is None:
                os.environ.pop("TUNER_LOG_FORMAT", None)
            else:
                os.environ["TUNER_LOG_FORMAT"] = stamp
        out, err = capsys.readouterr()
        return code, out, err

    yield call


# Storage backends: every storage test runs against each one that is reachable.
PG_URL = os.environ.get(
    "TUNER_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("TUNER_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")


def _server_reachable(url: str) -> str | None:
    """None when the server answers, else the reason it does not."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0]}"
    return None


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}_{os.getpid()}_{random.Random().randrange(10**9)}"


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """The URL of an own, empty database on the server of ``server_url``; dropped afterwards.

    Skips the test, with the reason, when the server does not answer.
    """
    import sqlalchemy

    if (reason := _server_reachable(server_url)) is not None:
        pytest.skip(f"server not reachable at {server_url}: {reason}")
    name = unique_name("tuner_fresh")
    url = sqlalchemy.engine.make_url(server_url)
    force = " WITH (FORCE)" if url.get_backend_name() == "postgresql" else ""
    admin = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
        admin.dispose()


@pytest.fixture(params=["sqlite", "journal", "postgresql", "mysql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage URL of each backend; server backends are skipped, with the reason, if absent."""
    kind = request.param
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    if kind == "journal":
        return f"journal://{tmp_path / 'journal.log'}"
    url = PG_URL if kind == "postgresql" else MYSQL_URL
    if (reason := _server_reachable(url)) is not None:
        pytest.skip(f"{kind} server not reachable at {url}: {reason}")
    return url
