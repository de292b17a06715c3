"""Large studies and many workers: does tuner stay fast at 10,000 trials and 200 workers?

Four sections, each with cheap trials (no TensorFlow: an objective that only talks to
the storage, inside tuner's own trial loop):

- ``size``: a study grown to 10,000 trials (filled straight into Optuna's tables, then
  real worker trials run at 100, 1,000 and 10,000): per trial, the worker's wall time,
  its time in storage calls, in SQL statements, and its CPU, on SQLite and PostgreSQL.
- ``workers``: 1 to 200 worker processes on one PostgreSQL study (through PgBouncer
  where it is installed): exit codes, the exact budget, trials/s, CPU per trial.
- ``overhead``: tuner's overhead as a share of a 1 s trial on a 10,000-trial study,
  next to Ray Tune's 14 % at 10,000 trials; what was measured and what is extrapolated
  (from measured CPU per trial) is said on each line.
- ``reads``: ``tuner status``, ``tuner export`` (JSON only) and the dashboard's request
  for the study page on a 10,000-trial study.

    python3 benchmarks/scale.py                       # every section, full size (~15 min)
    python3 benchmarks/scale.py --small               # every section, small (~20 s)
    python3 benchmarks/scale.py --sections size reads --backends sqlite
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import optuna
import sqlalchemy as sa
from scalebench.crowd import run_crowd
from scalebench.fill import fill, new_study
from scalebench.reads import cli_seconds, dashboard_seconds
from scalebench.timed import run_timed

# What every worker imports, imported once here, so that the forked workers share it.
import tuner.runner.worker  # noqa: F401

SECTIONS = ("size", "workers", "overhead", "reads")
RAY_TUNE_SHARE = 14.0  # Ray Tune's overhead on 1 s trials at 10,000 trials, as issue 26 cites
PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
PG_DB = "tuner_scale"


def _sizes(args: argparse.Namespace) -> dict[str, object]:
    if args.small:
        return {"sizes": (50, 300), "timed": 5, "workers": (1, 4), "crowd": 8,
                "big": 300, "overhead_workers": 2, "trial_s": 0.25}  # fmt: skip
    return {"sizes": (100, 1_000, 10_000), "timed": 100, "workers": (1, 10, 50, 100, 200),
            "crowd": 400, "big": 10_000, "overhead_workers": 8, "trial_s": 1.0}  # fmt: skip


def shared_postgres(url: str) -> str | None:
    """The benchmark's own database on the PostgreSQL server at ``url``; None if unreachable."""
    try:
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT",
                                  connect_args={"connect_timeout": 5})  # fmt: skip
        with engine.connect() as conn:
            if (
                conn.exec_driver_sql(
                    f"SELECT 1 FROM pg_database WHERE datname = '{PG_DB}'"
                ).first()
                is None
            ):
                conn.exec_driver_sql(f"CREATE DATABASE {PG_DB}")
        engine.dispose()
    except sa.exc.SQLAlchemyError as e:
        print(f"postgresql: {url} not reachable ({str(e).splitlines()[0]}); skipped")
        return None
    return sa.make_url(url).set(database=PG_DB).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    """Drop the benchmark's database on the shared server, whoever still holds it."""
    with contextlib.suppress(sa.exc.SQLAlchemyError):
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
        engine.dispose()


@contextlib.contextmanager
def storages(args: argparse.Namespace) -> Iterator[list[tuple[str, str]]]:
    """(backend, URL) for each backend asked for: a new SQLite file, the shared server."""
    with tempfile.TemporaryDirectory(prefix="tuner-scale-") as folder:
        found = []
        if "sqlite" in args.backends:
            found.append(("sqlite", f"sqlite:///{Path(folder) / 'study.db'}"))
        if "postgresql" in args.backends and (pg := shared_postgres(args.pg_admin)):
            found.append(("postgresql", pg))
        try:
            yield found
        finally:
            drop_database(args.pg_admin)


def _name(section: str) -> str:
    return f"scale_{section}_{time.time_ns()}"


def _drop(url: str, name: str) -> None:
    """Delete a SQLite study at once; the server's database is dropped as a whole at the end."""
    if url.startswith("sqlite"):
        optuna.delete_study(study_name=name, storage=url)


def section_size(args: argparse.Namespace, urls: list[tuple[str, str]]) -> None:
    n = _sizes(args)
    print(f"\n## size: {n['timed']} real worker trials at each study size, "
          f"sampler {args.sampler} (per trial, ms)")  # fmt: skip
    print("backend    | study size | wall ms | storage ms | SQL ms | CPU ms | exit")
    for backend, url in urls:
        name, rows = _name("size"), []
        study = new_study(url, name, args.sets)
        for size in n["sizes"]:  # type: ignore[attr-defined]
            fill(url, study._study_id, size)
            t = run_timed(url, name, int(n["timed"]), args.sets)  # type: ignore[call-overload]
            rows.append(t)
            print(f"{backend:<10} | {size:>10} | {t.wall_ms:7.1f} | {t.storage_ms:10.1f} | "
                  f"{t.sql_ms:6.1f} | {t.cpu_ms:6.1f} | {t.exit_code}", flush=True)  # fmt: skip
        first, last = rows[0], rows[-1]
        grew = {
            k: getattr(last, k) / getattr(first, k) for k in ("storage_ms", "wall_ms", "cpu_ms")
        }
        print(f"{backend:<10} | largest/smallest: storage {grew['storage_ms']:.2f}x, "
              f"wall {grew['wall_ms']:.2f}x, CPU {grew['cpu_ms']:.2f}x")  # fmt: skip
        _drop(url, name)


def section_workers(args: argparse.Namespace) -> None:
    n = _sizes(args)
    with _crowd_postgres(args) as (url, direct, way):
        print(f"\n## workers: cheap workers on one PostgreSQL study ({way})")
        print("workers | trials | budget | exit codes | wall s | trials/s | CPU ms/trial")
        for workers in n["workers"]:  # type: ignore[attr-defined]
            target = max(int(n["crowd"]), 2 * workers)  # type: ignore[call-overload]
            name = _name("workers")
            r = run_crowd(url, direct, name, workers, target, sets=args.sets)
            print(f"{workers:>7} | {r.finished:>6} | {'exact' if r.exact else 'NOT EXACT':>6} | "
                  f"{r.codes} | {r.wall_s:6.1f} | {r.finished / r.wall_s:8.1f} | "
                  f"{r.cpu_ms:6.1f}", flush=True)  # fmt: skip
            _drop(direct, name)


@contextlib.contextmanager
def _crowd_postgres(args: argparse.Namespace) -> Iterator[tuple[str, str, str]]:
    """Full size: a server of the benchmark's own (max_connections 100, PostgreSQL's default);
    small: the shared server. Through a PgBouncer of its own where one is installed."""
    from tests.faultkit import create_role, own_pgbouncer, own_postgres

    bouncer = Path("/usr/sbin/pgbouncer").exists()
    with contextlib.ExitStack() as stack:
        if args.small:
            direct = shared_postgres(args.pg_admin)
            if direct is None:
                raise SystemExit(1)
            port, role, db = 5432, "postgres", PG_DB
        else:
            server = stack.enter_context(own_postgres("-c max_connections=100"))
            direct, port, role, db = create_role(server), server.port, "tuner", "tuner_faults"
        if not bouncer:
            yield direct, direct, "direct, PgBouncer is not installed"
            return
        pool = stack.enter_context(own_pgbouncer(port, pool_size=20, roles=(role,)))
        yield pool.url(role, db), direct, "through PgBouncer, 20 server connections"


def section_overhead(args: argparse.Namespace, urls: list[tuple[str, str]]) -> None:
    n = _sizes(args)
    big, trial_s, workers = int(n["big"]), float(n["trial_s"]), int(n["overhead_workers"])  # type: ignore[call-overload]
    print(f"\n## overhead: tuner's share of a {trial_s:g} s trial on a {big}-trial study "
          f"(Ray Tune: {RAY_TUNE_SHARE:g} % at 10,000 trials)")  # fmt: skip
    for backend, url in urls:
        name = _name("overhead")
        fill(url, new_study(url, name, args.sets)._study_id, big)
        one = run_timed(url, name, int(n["timed"]), args.sets)
        share = one.wall_ms / (1000 * trial_s + one.wall_ms) * 100
        print(f"{backend}: measured, 1 worker: {one.wall_ms:.1f} ms a trial beside the "
              f"objective ({one.cpu_ms:.1f} ms CPU): {share:.1f} % of a {trial_s:g} s "
              "trial")  # fmt: skip
        target = workers * (3 if args.small else 5)
        r = run_crowd(url, url, name, workers, target, trial_s, args.sets)
        crowd = max(0.0, 1 - 1000 * trial_s / r.per_trial_ms) * 100
        print(f"{backend}: measured, {workers} workers with {trial_s:g} s trials: "
              f"{r.per_trial_ms:.0f} ms a trial per worker, {crowd:.1f} % overhead, "
              f"{r.cpu_ms:.1f} ms worker CPU a trial, budget "
              f"{'exact' if r.exact else 'NOT EXACT'}, exit codes {r.codes}")  # fmt: skip
        # The crowd's CPU figure carries each worker's start-up; the lone worker's does not.
        cores = 200 * one.cpu_ms / (1000 * trial_s + one.wall_ms)
        print(f"{backend}: extrapolated, 200 workers with {trial_s:g} s trials: their CPU "
              f"alone needs {cores:.1f} cores (200 x {one.cpu_ms:.1f} ms a trial, as measured "
              f"for 1 worker), beyond this machine's 2; with those cores and a server that "
              f"keeps up, the share is the {crowd:.1f} % measured for {workers}; not measured "
              "with 200 live workers")  # fmt: skip
        _drop(url, name)


def section_reads(args: argparse.Namespace, urls: list[tuple[str, str]]) -> None:
    big = int(_sizes(args)["big"])  # type: ignore[call-overload]
    print(f"\n## reads: commands on a 10-trial and a {big}-trial study (seconds; the commands "
          "include their start-up, which the 10-trial study shows)")  # fmt: skip
    print("backend    | trials | status s | export s | dashboard cold s | again s | "
          "its read s | read again s")  # fmt: skip
    for backend, url in urls:
        for size in (10, big):
            name = _name("reads")
            fill(url, new_study(url, name, args.sets)._study_id, size)
            status, code_s = cli_seconds(url, name, "status")
            export, code_e = cli_seconds(url, name, "export")
            cold, warm, read, again, http = dashboard_seconds(url, name)
            print(f"{backend:<10} | {size:>6} | {status:8.2f} | {export:8.2f} | {cold:16.2f} | "
                  f"{warm:7.2f} | {read:10.2f} | {again:12.2f} | exit {code_s} {code_e}, "
                  f"HTTP {http}", flush=True)  # fmt: skip
            _drop(url, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"],
                        choices=["sqlite", "postgresql"])  # fmt: skip
    parser.add_argument("--small", action="store_true", help="small sizes, about 20 s in all")
    parser.add_argument("--sampler", default="random", choices=["random", "tpe"],
                        help="random: storage and tuner alone; tpe: clothing's")  # fmt: skip
    parser.add_argument("--pg-admin", default=PG_ADMIN, help="a PostgreSQL server to use")
    args = parser.parse_args(argv)
    args.sets = (f"sampler.kind={args.sampler}",)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    started = time.monotonic()
    with storages(args) as urls:
        print("backends: " + ", ".join(b for b, _ in urls), flush=True)
        for section in args.sections:
            began = time.monotonic()
            if section == "workers":
                section_workers(args)
            else:
                {"size": section_size, "overhead": section_overhead, "reads": section_reads}[
                    section
                ](args, urls)
            print(f"({section}: {time.monotonic() - began:.0f} s)", flush=True)
    print(f"\n{time.monotonic() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
