"""Fault injection for the reliability tests: worker processes, a PostgreSQL server of the
test's own, a small filesystem, and the invariants every fault must leave intact."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from tests.conftest import Env, tuner_cmd

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
BAD_OUTPUT = ("Traceback", "Exception ignored", "internal error", "Cannot tell")


@dataclass
class Worker:
    """A ``tuner worker`` process whose output goes to a file (read it at any time)."""

    proc: subprocess.Popen[str]
    log: Path

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = 300) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self, signum: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signum)


def start_worker(
    env: Env, url: str, *args: str, name: str = "w", prefix: tuple[str, ...] = ()
) -> Worker:
    log = env.root / f"{name}-{time.monotonic_ns()}.log"
    cmd = [*prefix, *tuner_cmd("worker", "--study", "clothing", "--storage", url, *args)]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=env.root, stdout=out, stderr=subprocess.STDOUT, text=True)
    return Worker(proc, log)


def load(url: str, name: str = "clothing") -> optuna.Study:
    from tuner.config.spec import load_spec
    from tuner.storages.storage import open_storage

    return optuna.load_study(
        study_name=name, storage=open_storage(url, load_spec("clothing").storage)
    )


def trials(url: str, name: str = "clothing") -> list[FrozenTrial]:
    for _ in range(50):  # the study may still be being created
        try:
            return load(url, name).get_trials()
        except Exception:  # the study (or its schema) may still be being created
            time.sleep(0.3)
    return []


def wait_until(
    what: str, condition: Callable[[], bool], timeout: float = 240, every: float = 0.3
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def count(url: str, states: tuple[TrialState, ...], name: str = "clothing") -> int:
    return sum(t.state in states for t in trials(url, name))


def running_with_epoch(url: str, name: str = "clothing") -> bool:
    return any(t.state == TrialState.RUNNING and t.intermediate_values for t in trials(url, name))


def assert_invariants(url: str, target: int, logs: list[str], name: str = "clothing") -> None:
    """Exact budget, nothing RUNNING, every failed trial retried to the end or given up."""
    from tuner.storages.retries import gave_up

    study = load(url, name)
    all_trials = study.get_trials()
    text = "\n".join(logs)
    for bad in BAD_OUTPUT:
        assert bad not in text, f"{bad!r} in the workers' output:\n{text[-4000:]}"
    assert sum(t.state in FINISHED for t in all_trials) == target, text[-3000:]
    assert not [t.number for t in all_trials if t.state == TrialState.RUNNING], text[-3000:]
    given_up = {r["trials"][0] for r in gave_up(study)}
    for t in all_trials:
        if t.state != TrialState.FAIL:
            continue
        assert t.user_attrs.get("fail_reason"), f"trial {t.number} failed without a reason"
        if t.user_attrs["fail_reason"].endswith("not run"):  # claimed past the budget
            assert t.params, f"surplus trial {t.number} has no parameters"
            continue
        root = t.system_attrs.get("failed_trial", t.number)
        chain = [u for u in all_trials if u.system_attrs.get("failed_trial") == root]
        assert root in given_up or any(u.state in FINISHED for u in chain), (
            f"trial {t.number} (chain from {root}) was neither finished by a retry nor given up"
        )
        retried_with = [u.params for u in chain if u.state in FINISHED]
        if t.params and retried_with:
            assert retried_with[0] == t.params


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OwnPostgres:
    """A PostgreSQL server of the test's own, on a free port, that the test may stop."""

    bindir: Path
    data: Path
    port: int
    log: Path
    password_url: str = field(init=False)

    def __post_init__(self) -> None:
        self.password_url = (
            f"postgresql+psycopg2://postgres:s3cret-pw@127.0.0.1:{self.port}/tuner_faults"
        )

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            _as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.data), *args),
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    settings: tuple[str, ...] = ()  # "-c NAME=VALUE" server settings, such as max_connections

    def start(self) -> None:
        options = " ".join(
            [f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data}", *self.settings]
        )
        self._ctl("-o", options, "-l", str(self.log), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "stop")

    def reset_database(self) -> None:
        import sqlalchemy

        admin = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"
        engine = sqlalchemy.create_engine(admin, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql("DROP DATABASE IF EXISTS tuner_faults WITH (FORCE)")
            conn.exec_driver_sql("CREATE DATABASE tuner_faults")
        engine.dispose()


def _as_postgres(*cmd: str) -> list[str]:
    """PostgreSQL's tools refuse to run as root: run them as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)


@contextlib.contextmanager
def own_postgres(*settings: str) -> Iterator[OwnPostgres]:
    """Start a PostgreSQL server in a fresh folder (outside pytest's private tmp folders,
    which the postgres user cannot enter), on a free port; stop and remove it after."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found and not shutil.which("initdb"):
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) are installed")
    bindir = found[-1].parent if found else Path(shutil.which("initdb") or "").parent
    root = Path(tempfile.mkdtemp(prefix="tuner-pg-"))
    root.chmod(0o755)
    data = root / "pgdata"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
    init = subprocess.run(
        _as_postgres(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if init.returncode != 0:
        pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
    server = OwnPostgres(bindir, data, free_port(), root / "postgres.log", settings)
    server.start()
    try:
        server.reset_database()
        yield server
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class OwnMariaDB:
    """A MariaDB server of the test's own, on a free port, that the test may stop."""

    root: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/tuner_faults"

    def start(self) -> None:
        server = shutil.which("mariadbd") or shutil.which("mysqld") or "mariadbd"
        with (self.root / "server.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [server, "--no-defaults", f"--datadir={self.root / 'data'}",
                 f"--port={self.port}", "--bind-address=127.0.0.1",
                 f"--socket={self.root / 'sock'}", "--user=root", "--skip-log-bin"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.2)
        raise AssertionError(f"MariaDB did not start:\n{(self.root / 'server.log').read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # a clean shutdown, as an administrator's restart
            self.proc.wait(timeout=60)
            self.proc = None


@contextlib.contextmanager
def own_mariadb() -> Iterator[OwnMariaDB]:
    """Start a MariaDB server in a fresh folder on a free port; stop and remove it after."""
    install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    if install is None or not (shutil.which("mariadbd") or shutil.which("mysqld")):
        pytest.skip("no MariaDB server binaries (mariadb-install-db, mariadbd) are installed")
    root = Path(tempfile.mkdtemp(prefix="tuner-maria-"))
    init = subprocess.run(
        [install, "--no-defaults", f"--datadir={root / 'data'}", "--user=root",
         "--auth-root-authentication-method=normal", "--skip-test-db"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"mariadb-install-db failed: {init.stderr.strip()[-300:]}")
    server = OwnMariaDB(root, free_port())
    server.start()
    try:
        import sqlalchemy

        admin = sqlalchemy.create_engine(f"mysql+pymysql://root@127.0.0.1:{server.port}/")
        with admin.connect() as conn:
            conn.exec_driver_sql("CREATE DATABASE tuner_faults")
        admin.dispose()
        yield server
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            server.stop()
        if server.proc is not None:
            server.proc.kill()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def small_filesystem(where: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where``; skips the test where mounting is refused."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True, text=True,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the filesystem of ``folder`` up to ``leave`` free bytes with a ballast file."""
    ballast = folder / "ballast"
    free = shutil.disk_usage(folder).free - leave
    with ballast.open("wb") as f:
        chunk = bytes(1 << 16)
        while free > 0:
            try:
                f.write(chunk[: min(len(chunk), free)])
                f.flush()
            except OSError:
                break
            free -= len(chunk)
    return ballast


class StallProxy:
    """A TCP proxy of the test's own in front of a database server, which can stop
    forwarding bytes (both ways, new connections included) without closing anything."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.stalled = threading.Event()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's."""
        import sqlalchemy

        parsed = sqlalchemy.engine.make_url(url)
        return parsed.set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            self._sockets += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                while self.stalled.is_set() and not self._closed.is_set():
                    time.sleep(0.05)  # hold the bytes: the peer waits for an answer
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


def skewed_clock(seconds: int, where: Path) -> tuple[str, ...]:
    """A command prefix that runs a process with its wall clock ``seconds`` off
    (``tests/shims/skewclock.c``, compiled here and loaded with LD_PRELOAD)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the skewed-clock shim")
    shim = where / "skewclock.so"
    source = Path(__file__).parent / "shims" / "skewclock.c"
    built = subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(shim), str(source), "-ldl"],
        capture_output=True, text=True,
    )  # fmt: skip
    if built.returncode != 0:
        pytest.skip(f"cannot build the skewed-clock shim: {built.stderr.strip()[-300:]}")
    return ("env", f"LD_PRELOAD={shim}", f"TUNER_TEST_SKEW={seconds}")


def create_role(server: OwnPostgres, role: str = "tuner") -> str:
    """A login role that is no superuser (the reserved slots stay the test's), owning the
    server's test database; returns its URL (trust auth: no password)."""
    import sqlalchemy

    admin = f"postgresql+psycopg2://postgres@127.0.0.1:{server.port}/postgres"
    engine = sqlalchemy.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        conn.exec_driver_sql(f"ALTER DATABASE tuner_faults OWNER TO {role}")
    engine.dispose()
    return f"postgresql+psycopg2://{role}@127.0.0.1:{server.port}/tuner_faults"


@dataclass
class OwnPgBouncer:
    """PgBouncer in transaction mode in front of a server, on a free port."""

    port: int
    root: Path

    def url(self, role: str = "tuner", database: str = "tuner_faults") -> str:
        return f"postgresql+psycopg2://{role}@127.0.0.1:{self.port}/{database}"

    @property
    def log(self) -> str:
        return (self.root / "pgbouncer.log").read_text(errors="replace")


@contextlib.contextmanager
def own_pgbouncer(
    server_port: int, pool_size: int, max_client_conn: int = 1000, roles: tuple[str, ...] = ()
) -> Iterator[OwnPgBouncer]:
    """Start PgBouncer (Debian package ``pgbouncer``) with ``pool_size`` server connections
    per database and role, in transaction mode; stop and remove it after."""
    exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(exe).exists():
        pytest.skip("PgBouncer is not installed (Debian package pgbouncer)")
    root = Path(tempfile.mkdtemp(prefix="tuner-pgbouncer-"))
    root.chmod(0o755)
    users = root / "users.txt"  # auth_type trust still looks names up here
    users.write_text("".join(f'"{r}" ""\n' for r in ("postgres", *roles)))
    port = free_port()
    ini = root / "pgbouncer.ini"
    ini.write_text(
        f"[databases]\n* = host=127.0.0.1 port={server_port}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {users}\n"
        f"pool_mode = transaction\ndefault_pool_size = {pool_size}\n"
        f"max_db_connections = {pool_size}\nmax_client_conn = {max_client_conn}\n"
        f"logfile = {root / 'pgbouncer.log'}\npidfile = {root / 'pgbouncer.pid'}\n"
        "admin_users = postgres\nlog_connections = 0\nlog_disconnections = 0\n"
    )
    if os.geteuid() == 0:
        for path in (root, users, ini):
            shutil.chown(path, "postgres")
    proc = subprocess.Popen(_as_postgres(exe, str(ini)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_until("PgBouncer to listen", lambda: _listening(port), timeout=30)
        yield OwnPgBouncer(port, root)
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        proc.kill()
        shutil.rmtree(root, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def server_connections(server: OwnPostgres, role: str = "tuner") -> int:
    """How many server processes serve ``role`` now (through the superuser's reserved slot)."""
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=server.port, user="postgres",
                            dbname="postgres")  # fmt: skip
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,))
            return int(cur.fetchone()[0])  # type: ignore[index]
    finally:
        conn.close()


def _cheap_worker(
    spec_sets: list[str], url: str, target: int, start: Any, trial_seconds: float = 0.0
) -> None:
    """A forked worker: tuner's trial loop around an objective that only talks to the storage."""
    import logging

    from tuner.common.console import err_console
    from tuner.config.spec import load_spec
    from tuner.runner.worker import run_objective
    from tuner.storages.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.disable(logging.WARNING)
    err_console.quiet = True
    spec = load_spec("clothing", spec_sets)
    start.wait()

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True)
        for epoch in range(3):
            time.sleep(trial_seconds / 3)
            trial.report(lr, epoch)
        trial.set_user_attr("gap", 0.0)
        return lr

    storage = open_storage(url, spec.storage, hold_connections=True)
    report = run_objective(spec, storage, url, lambda check: objective,
                           n_trials=target)  # fmt: skip
    os._exit(report.exit_code)


def cheap_crowd(
    url: str,
    workers: int,
    target: int,
    name: str,
    on_tick: Callable[[list[int]], None] = lambda pids: None,
    sets: Sequence[str] = (),
    trial_seconds: float = 0.0,
) -> list[int]:
    """Run ``workers`` forked worker processes on one study until ``target`` trials are
    done, each trial taking ``trial_seconds`` (asleep); ``on_tick`` gets their pids every half
    second meanwhile. Returns their exit codes."""
    import multiprocessing as mp

    sets = [f"study.name={name}", "search.warm_start=[]", "storage.outage_tolerance=300", *sets]
    fork = mp.get_context("fork")
    start = fork.Event()
    procs = [fork.Process(target=_cheap_worker, args=(sets, url, target, start, trial_seconds))
             for _ in range(workers)]  # fmt: skip
    for p in procs:
        p.start()
    start.set()
    while any(p.is_alive() for p in procs):
        on_tick([p.pid for p in procs if p.pid is not None and p.is_alive()])
        time.sleep(0.5)
    return [p.exitcode if p.exitcode is not None else -1 for p in procs]
