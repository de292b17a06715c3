"""Storage URLs, the only place that knows them: SQLite, PostgreSQL, MySQL and journal files.

SQLite is hardened for many workers on one machine. Every connection uses WAL
and a busy timeout, and every transaction starts with ``BEGIN IMMEDIATE``.
SQLite has no row locks and ignores ``SELECT ... FOR UPDATE``, so without that
two workers can both read a WAITING trial and both claim it. With the write
lock taken at the start of the transaction, the read-check-write in Optuna's
``set_trial_state_values`` is atomic, as it is on PostgreSQL and MySQL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import importlib.util
import os
import random
import re
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy
from filelock import FileLock
from filelock import Timeout as FileLockTimeout
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import NullPool

from tuner.common.attrs import worker_name
from tuner.common.console import say
from tuner.common.paths import nearest_existing, probe_writable
from tuner.errors import StorageConfigError
from tuner.storages.budgetlock import BudgetLock
from tuner.storages.faults import Fault, StorageWatch, classify, give_up_line, outage_line
from tuner.storages.rdbcore import CoreRDBStorage
from tuner.storages.retries import RetryOrGiveUp
from tuner.storages.settings import StorageSettings
from tuner.storages.sqlite import SQLiteStorage
from tuner.storages.stalls import bound_postgres_calls, mysql_call_args

__all__ = [
    "BudgetLock",
    "artifact_folder",
    "artifact_store_for",
    "budget_lock",
    "fatal_message",
    "open_storage",
    "redact_url",
    "resolve_url",
    "retry_transient",
]

JOURNAL_PREFIX = "journal://"
# The drivers each bare scheme may use, SQLAlchemy's default first.
_DRIVERS = {
    "postgresql": (("psycopg", "psycopg"), ("psycopg2", "psycopg2")),
    "mysql": (("mysqldb", "MySQLdb"), ("pymysql", "pymysql")),
    "mariadb": (("mysqldb", "MySQLdb"), ("pymysql", "pymysql")),
}
_T = TypeVar("_T")


def resolve_url(study_name: str, spec_url: str = "", cli_url: str | None = None) -> str:
    """The storage URL by precedence: ``--storage``, then ``TUNER_STORAGE``, then the spec's.

    Without any, the study's own SQLite file ``NAME.db``. A relative file in the
    spec's URL (``sqlite:///clothing.db``) lies in ``TUNER_HOME`` when that is
    set, else in the current folder; a URL given on the command line or in
    ``TUNER_STORAGE`` is taken as it is.
    """
    given = cli_url or os.environ.get("TUNER_STORAGE")
    return given or _at_home(spec_url or f"sqlite:///{study_name}.db")


def _at_home(url: str) -> str:
    home = os.environ.get("TUNER_HOME")
    for prefix in ("sqlite:///", JOURNAL_PREFIX):
        path = url[len(prefix) :] if url.startswith(prefix) else ""
        if home and path and not path.startswith(("/", "~", ":memory:", "file:")):
            return prefix + str(Path(home).expanduser() / path)
    return url


def where_studies_live() -> str:
    """Where a spec's relative storage file is looked for, for messages."""
    home = os.environ.get("TUNER_HOME")
    if home:
        return f"TUNER_HOME={home} ({Path(home).expanduser().absolute()})"
    return f"the current folder {Path.cwd()} (set TUNER_HOME to look elsewhere)"


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, safe to print or log."""
    if url.startswith(JOURNAL_PREFIX):
        return url
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except (sa_exc.ArgumentError, ValueError):
        # Not a URL SQLAlchemy can read; still hide whatever sits between "user:" and "@".
        return re.sub(r"(://[^/@:]*:).*@", r"\1***@", url)


def _scrub(message: str, url: str) -> str:
    """Remove the password of ``url`` from an error message."""
    try:
        password = sqlalchemy.engine.make_url(url).password
    except (sa_exc.ArgumentError, ValueError):
        return message
    return message.replace(str(password), "***") if password else message


def _parse(url: str) -> sqlalchemy.engine.URL:
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        raise StorageConfigError(
            f"malformed storage URL {redact_url(url)!r}; use sqlite:///FILE.db, "
            "postgresql://USER@HOST/DB, mysql+pymysql://USER@HOST/DB or journal://FILE.log"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql", "mysql", "mariadb"):
        raise StorageConfigError(
            f"unknown storage scheme {parsed.drivername!r} in {redact_url(url)!r}; "
            "use sqlite, postgresql, mysql+pymysql or journal"
        )
    return parsed


def _with_installed_driver(url: str) -> str:
    """``postgresql://`` and ``mysql://`` with a driver that is installed.

    SQLAlchemy picks psycopg 3 and mysqlclient for bare schemes, but tuner's
    extras install psycopg2 and PyMySQL.
    """
    parsed = _parse(url)
    choices = _DRIVERS.get(parsed.drivername, ())
    for driver, module in choices:
        if importlib.util.find_spec(module) is not None:
            chosen = parsed.set(drivername=f"{parsed.drivername}+{driver}")
            return chosen.render_as_string(hide_password=False)
    return url


def _bare_engine(url: str, timeout: float) -> sqlalchemy.engine.Engine:
    """An engine that keeps no connection, each bounded by ``timeout`` to connect."""
    seconds = max(1, round(timeout))
    args: dict[str, Any] = {"connect_timeout": seconds}
    if _parse(url).get_backend_name() in ("mysql", "mariadb"):
        # PyMySQL's connect_timeout ends at the TCP connect; bound the handshake as well.
        args.update(read_timeout=seconds, write_timeout=seconds)
    return sqlalchemy.create_engine(url, connect_args=args, poolclass=NullPool)


def _probe_server(url: str, timeout: float) -> None:
    """Connect once, with no retries, so a server that is down fails within ``timeout``."""
    engine = _bare_engine(url, timeout)
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


# Names the PostgreSQL advisory lock under which one worker creates the schema.
_SCHEMA_LOCK = int.from_bytes(b"tunerdb", "big")


@contextlib.contextmanager
def _schema_creation(url: str, timeout: float) -> Iterator[None]:
    """On PostgreSQL, one worker at a time creates Optuna's tables.

    Optuna's first-time set-up reads on a second connection while its first
    holds a transaction. Behind a pooler with N server connections, N workers
    starting at once on an empty database would each hold one and wait for
    another; under this lock only one sets up, and the others find it done.
    The lock is the transaction's, and a worker waiting for it holds no
    connection between its tries: on a server with few connections left, the
    waiting workers would otherwise hold the ones the set-up needs.
    """
    if _parse(url).get_backend_name() != "postgresql":
        yield
        return
    engine = _bare_engine(url, timeout)
    pause = 0.05
    try:
        while True:
            with engine.connect() as conn:
                if conn.exec_driver_sql(
                    f"SELECT pg_try_advisory_xact_lock({_SCHEMA_LOCK})"
                ).scalar():
                    try:
                        yield
                    finally:
                        conn.rollback()
                    return
            if _schema_ready(url, timeout):  # set up by the worker that held the lock
                yield
                return
            time.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(pause * 2, 1.0)
    finally:
        engine.dispose()


def _schema_ready(url: str, timeout: float) -> bool:
    """Whether the database holds Optuna's tables, stamped with a schema version."""
    engine = _bare_engine(url, timeout)
    try:
        with engine.connect() as conn:
            return (
                conn.exec_driver_sql("SELECT version_num FROM alembic_version").first() is not None
            )
    except sa_exc.ProgrammingError:  # no such table yet
        return False
    finally:
        engine.dispose()


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL, or None for other storages."""
    if not url.startswith("sqlite"):
        return None
    database = _parse(url).database
    return Path(database) if database and database != ":memory:" else None


def real_path(path: Path) -> Path:
    """The file's one real name, symlinks resolved: every name of one database file shares
    its budget lock and its artifact folder."""
    return path.resolve()


def journal_path(url: str) -> Path | None:
    """The log file of a ``journal://`` URL, or None for other storages."""
    return Path(url[len(JOURNAL_PREFIX) :]) if url.startswith(JOURNAL_PREFIX) else None


def _check_writable_folder(path: Path, url: str) -> None:
    folder = path.resolve().parent
    if not folder.is_dir():
        blocker = nearest_existing(folder) or folder
        what = f"{blocker} is a file, not a folder" if blocker.is_file() else "it does not exist"
        raise StorageConfigError(
            f"cannot use folder {folder} for storage {redact_url(url)!r}: {what}; "
            "create the folder first, or pick another path with --storage"
        )
    try:
        probe_writable(folder)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise StorageConfigError(
                f"database or disk is full: {folder} has no free space; free space or point "
                "--storage elsewhere"
            ) from None
        raise StorageConfigError(
            f"folder {folder} for storage {redact_url(url)!r} is not writable "
            f"({e.strerror or e}); pick a writable path with --storage"
        ) from None


def retry_transient(fn: Callable[[], _T], attempts: int = 8) -> _T:
    """Run ``fn``, retrying database errors that come from concurrent creation.

    Two processes that create the same schema or study at once both find it
    missing and both insert it; the loser's insert fails, and its retry finds
    what the winner made. A fatal fault (a full disk, a read-only or damaged
    file) is raised at once, since waiting cannot mend it.
    """
    for attempt in range(attempts):
        try:
            return fn()
        except (sa_exc.OperationalError, sa_exc.IntegrityError, sa_exc.ProgrammingError) as e:
            if attempt == attempts - 1 or ((fault := classify(e)) is not None and fault.fatal):
                raise
            time.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")


def fatal_message(fault: Fault, url: str) -> str:
    """The one-line error for a storage fault that waiting cannot mend."""
    where = sqlite_path(url) or journal_path(url)
    reason = _scrub(fault.reason, url)
    if fault.kind == "full":
        if where is not None:
            return f"database or disk is full: {where}; free space or point --storage elsewhere"
        return (
            f"the database server of {redact_url(url)!r} is out of space ({reason}); "
            "free space on the server"
        )
    if fault.kind == "readonly":
        return (
            f"storage {where or redact_url(url)} is read-only ({reason}); make it writable, "
            "or point --storage elsewhere"
        )
    what = f"storage {redact_url(url)!r}"
    if where is not None:
        what = f"SQLite file {where}" if url.startswith("sqlite") else f"journal file {where}"
    return (
        f"{what} is damaged ({reason}); restore it from a backup, or point --storage at a new file"
    )


def _sqlite_ready(path: Path, busy_timeout: float) -> bool:
    """Whether the file is in WAL mode and holds Optuna's tables, stamped with a version."""
    if not path.is_file():
        return False
    try:
        uri = f"{path.resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=busy_timeout)) as conn:
            wal = conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            stamped = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            return wal and stamped is not None
    except sqlite3.Error:  # no tables yet, or a file to look at under the lock
        return False


def _check_sqlite_file(path: Path, url: str, busy_timeout: float) -> None:
    """Refuse a SQLite file that is damaged, before any work starts.

    SQLite reads only the pages a query touches, so garbage in the middle of a
    file would otherwise surface minutes later, in the middle of a trial.
    """
    with contextlib.closing(sqlite3.connect(path, timeout=busy_timeout)) as conn:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(3)")]
    if problems != ["ok"]:
        raise sqlite3.DatabaseError(f"database disk image is malformed: {problems[0]}")


def _rdb_storage(url: str, settings: StorageSettings) -> CoreRDBStorage:
    parsed = _parse(url)
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": parsed.get_backend_name() != "sqlite"}
    if parsed.get_backend_name() == "sqlite":
        engine_kwargs["connect_args"] = {"timeout": settings.busy_timeout}
    else:
        # Fail fast on an unreachable server instead of hanging on TCP retries.
        args: dict[str, Any] = {"connect_timeout": int(settings.connect_timeout)}
        if parsed.get_backend_name() == "postgresql":
            args["application_name"] = f"tuner {worker_name()}"[:63]  # in pg_stat_activity
            bound_postgres_calls(settings.call_timeout)
        else:
            args.update(mysql_call_args(settings.call_timeout))
        engine_kwargs["connect_args"] = args
        # A worker's connections, opened at start and kept (see _hold_connections).
        engine_kwargs.update(pool_size=WORKER_CONNECTIONS, max_overflow=0)
    with warnings.catch_warnings():  # the heartbeat and its callback are "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        options: dict[str, Any] = {
            "engine_kwargs": engine_kwargs,
            "heartbeat_interval": settings.heartbeat_interval,
            "grace_period": settings.grace_period,
            "heartbeat_stale_trial_callback": RetryOrGiveUp(settings.max_retry),
        }
        if parsed.get_backend_name() == "sqlite":
            return SQLiteStorage(url, settings.busy_timeout, **options)
        # Optuna's own check reads the schema's version on a second connection while its
        # session holds a transaction on the first: behind a pooler with N server
        # connections, N workers starting at once each hold one and wait for another.
        storage = CoreRDBStorage(url, skip_compatibility_check=True, **options)
        _check_schema(storage)
        return storage


# The most connections a worker uses at once: its trial loop, the budget lock held while it
# claims a trial, Optuna's heartbeat thread and the phase board's thread.
WORKER_CONNECTIONS = 4


def _hold_connections(storage: CoreRDBStorage) -> None:
    """Open all of a worker's server connections now, and keep them in its pool.

    A worker that opened its connections as it needed them could hold three,
    find the server full when it needs its fourth, and wait; with every worker
    in that state, none would finish and free any. With all of them open from
    the start, a worker that is in never waits for the server: a full server
    turns away only workers that are starting, which wait until a whole worker
    stops (see :func:`_open_server`).
    """
    held: list[sqlalchemy.engine.Connection] = []
    try:
        for _ in range(WORKER_CONNECTIONS):
            held.append(storage.engine.connect())
    except BaseException:
        for conn in held:
            conn.close()
        storage.engine.dispose()  # a start that waits for the server holds nothing meanwhile
        raise
    for conn in held:
        conn.close()  # back to the pool, which keeps them open


def _check_schema(storage: CoreRDBStorage) -> None:
    """Optuna's schema compatibility check, one connection at a time."""
    manager = storage._version_manager
    if manager.get_current_version() != manager.get_head_version():
        manager.check_table_schema_compatibility()  # raises with Optuna's advice


# PostgreSQL's answers while it starts, stops or recovers (the server exists; it will be back).
_SERVER_THERE = re.compile(
    r"the database system is (starting up|shutting down|in recovery|not yet accepting)"
)


def _open_server(
    server_url: str, url: str, settings: StorageSettings, check: Callable[[], None], hold: bool
) -> CoreRDBStorage:
    """Open a server's storage, waiting while the server has no connection left.

    A server that is down fails at once (a mistyped host should not wait two
    minutes). A server that is full is an outage: more workers than its
    ``max_connections`` allows, which ends as soon as one of them stops, so the
    worker waits for up to ``storage.outage_tolerance``, saying so once. So is a
    server that says it is starting or stopping, and one that goes away while the
    worker waits for it (a restart).
    """
    since: float | None = None
    delay = 0.5
    while True:
        try:
            _probe_server(server_url, settings.connect_timeout)
            if _schema_ready(server_url, settings.connect_timeout):
                storage = retry_transient(lambda: _rdb_storage(server_url, settings))
            else:
                with _schema_creation(server_url, settings.connect_timeout):
                    storage = retry_transient(lambda: _rdb_storage(server_url, settings))
            if hold:
                _hold_connections(storage)
        except (sa_exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
            fault = classify(e)
            if fault is None or fault.fatal:
                raise
            # Down, as far as this worker knows, fails at once; but a server that was full a
            # moment ago, or says it is starting or stopping, is there: an outage.
            there = since is not None or _SERVER_THERE.search(fault.reason) is not None
            if not (fault.crowded or there):
                raise
            fault = dataclasses.replace(fault, reason=_scrub(fault.reason, url))
            now = time.monotonic()
            if since is None:
                since = now
                say(outage_line(redact_url(url), fault, settings.outage_tolerance))
            elif now - since > settings.outage_tolerance:
                raise StorageConfigError(
                    give_up_line(redact_url(url), fault, settings.outage_tolerance)
                ) from None
            check()
            # Workers that are in and hold trials ask again within a second (StorageWatch);
            # one that is starting gives way to them, asking every 5-15 s.
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 10.0)
            continue
        if since is not None:
            say(f"storage is back after {time.monotonic() - since:.1f} s")
        return storage


def open_storage(
    url: str,
    settings: StorageSettings | None = None,
    *,
    must_exist: bool = False,
    first: str = "a worker",
    check: Callable[[], None] = lambda: None,
    hold_connections: bool = False,
) -> BaseStorage:
    """Open the storage behind ``url`` with tuner's guarantees for shared use.

    Args:
        url: ``sqlite:///FILE``, ``postgresql://...``, ``mysql+pymysql://...`` or
            ``journal://FILE``.
        settings: the heartbeat, grace period, retries and timeouts (``[storage]``).
        must_exist: for commands that only read: a storage file that does not exist
            is an error, rather than created empty behind a mistyped path.
        first: what the user runs first to create it, for that error.
        check: called while waiting for a full server; may raise to stop (a signal).
        hold_connections: a worker's storage: open all its server connections now and
            keep them (see :func:`_hold_connections`); a command that only reads opens
            them as it needs them.

    Returns:
        An Optuna storage; RDB storages have the heartbeat and stale-trial retries on.

    Raises:
        StorageConfigError: for a malformed URL, an unknown scheme, a missing driver, a
            folder that is not writable, or a server that cannot be reached.
    """
    path = sqlite_path(url) or journal_path(url)
    if path is not None and path.is_dir():
        raise StorageConfigError(f"storage {redact_url(url)!r} is a folder; name a file in it")
    if must_exist and path is not None and not path.is_file():
        looked = "" if path.is_absolute() else f" (relative files: {where_studies_live()})"
        raise StorageConfigError(
            f"storage file {path.absolute()} does not exist{looked}; run "
            f"`{first}` first, or check --storage / TUNER_STORAGE / TUNER_HOME"
        )
    if (journal := journal_path(url)) is not None:
        _check_writable_folder(journal, url)
        try:
            return JournalStorage(JournalFileBackend(str(journal)))
        except OSError as e:
            raise StorageConfigError(
                f"cannot open journal file {journal} ({e.strerror or e}); "
                "point journal:// at a readable file or a new one"
            ) from None
        except (ValueError, KeyError, AssertionError):  # lines that are not journal entries
            raise StorageConfigError(
                f"{journal} is not an Optuna journal file; point journal:// at a journal "
                "file or at a new file"
            ) from None
    settings = settings or StorageSettings()
    busy_timeout = settings.busy_timeout
    db_file = sqlite_path(url)
    if db_file is None and url.startswith("sqlite"):
        raise StorageConfigError(
            f"storage {url!r} names no database file, and workers cannot share an in-memory "
            "one; use sqlite:///FILE.db"
        )
    try:
        if db_file is None:
            server_url = _with_installed_driver(url)  # messages show the URL as given
            return _open_server(server_url, url, settings, check, hold_connections)
        _check_writable_folder(db_file, url)
        if _sqlite_ready(db_file, busy_timeout):
            # Set up already: opening only reads, and many workers open it at once.
            _check_sqlite_file(db_file, url, busy_timeout)
            return retry_transient(lambda: _rdb_storage(url, settings))
        # Only one tuner process creates the schema of a fresh file. Plain Optuna and
        # optuna-dashboard take no such lock: a race with them is retried.
        with FileLock(f"{db_file}.lock", timeout=busy_timeout):
            with contextlib.closing(sqlite3.connect(db_file, timeout=busy_timeout)) as conn:
                conn.execute("PRAGMA journal_mode = WAL")
            _check_sqlite_file(db_file, url, busy_timeout)
            return retry_transient(lambda: _rdb_storage(url, settings))
    except FileLockTimeout:
        raise StorageConfigError(
            f"another process has held {db_file}.lock for over {busy_timeout:g} s; wait for it, "
            "or raise storage.busy_timeout"
        ) from None
    except ImportError as e:
        extra = "postgres" if "postgres" in url else "mysql"
        raise StorageConfigError(
            f"no database driver for {redact_url(url)!r} ({e}); "
            f"install it with: pip install 'tuner[{extra}]'"
        ) from None
    except (sa_exc.SQLAlchemyError, sqlite3.Error, optuna.exceptions.StorageInternalError) as e:
        if (fault := classify(e)) is not None and fault.fatal:
            raise StorageConfigError(fatal_message(fault, url)) from None
        cause = fault.reason if fault is not None else str(getattr(e, "orig", None) or e)
        reason = _scrub(cause.strip().splitlines()[0], url)
        fix = (
            f"check that {db_file} is a writable SQLite database, or pick another file"
            if db_file is not None
            else "check that the database server is running and the URL is right"
        )
        raise StorageConfigError(
            f"cannot open storage {redact_url(url)!r}: {reason}; {fix}"
        ) from None


def artifact_folder(url: str, study_name: str, artifacts: str = "") -> Path:
    """Where trial files go: ``artifacts`` (``storage.artifacts``), else beside the storage.

    That is ``FILE-artifacts/`` beside a storage file, or ``NAME-artifacts/`` in the
    current folder for a database server.
    """
    if artifacts:
        return Path(artifacts)
    if (path := sqlite_path(url) or journal_path(url)) is not None:
        path = real_path(path)
        return path.with_name(path.stem + "-artifacts")
    return Path(f"{study_name}-artifacts")


def artifact_store_for(
    url: str, study_name: str, artifacts: str = "", *, create: bool = True
) -> FileSystemArtifactStore:
    """The study's artifact store; ``create=False`` for commands that only read."""
    folder = artifact_folder(url, study_name, artifacts)
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))


def budget_lock(
    storage: BaseStorage,
    url: str,
    study_name: str,
    watch: StorageWatch | None = None,
    **options: Any,
) -> BudgetLock:
    """The study's budget lock for the storage behind ``url`` (see :mod:`.budgetlock`).

    A file storage's lock lies beside the database's real path, so every name of one
    file shares it. ``options`` go to :class:`BudgetLock` (``lease``, ``say``, ``check``).
    """
    path = sqlite_path(url) or journal_path(url)
    return BudgetLock(storage, real_path(path) if path else None, study_name, watch, **options)
