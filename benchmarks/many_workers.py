"""Hundreds of workers on one PostgreSQL server with its default 100 connections.

Starts a PostgreSQL server of its own (``max_connections = 100``, PostgreSQL's
default) and runs ``--workers`` worker processes on one study of
``--trials`` trials, twice: straight to the server, and through a PgBouncer of
its own in transaction mode with ``--pool`` server connections. Each worker is
tuner's trial loop (the budget lock, heartbeats, reaping, the phase board) around
an objective that only talks to the storage, forked from this process.

Prints, for each way: the workers' exit codes, the trials finished (the budget
must be exact, nothing left RUNNING), the peak of server connections in use by the
workers, the wall time and trials per second, and the PSS of a waiting worker.

    python3 benchmarks/many_workers.py                      # 200 workers, 400 trials
    python3 benchmarks/many_workers.py --workers 100 --pool 20 --ways pgbouncer

Needs PostgreSQL's server binaries (initdb, pg_ctl) and PgBouncer (Debian packages
postgresql and pgbouncer).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import optuna
from optuna.trial import TrialState

# What every worker imports, imported once here, so that the forked workers share it.
import tuner.runner.worker  # noqa: F401
from tests.faultkit import (
    cheap_crowd,
    create_role,
    own_pgbouncer,
    own_postgres,
    server_connections,
)


def pss_mb(pid: int) -> float:
    """Proportional set size of one process, in MB (its share of pages it shares)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def run(way: str, url: str, direct: str, server: object, args: argparse.Namespace) -> None:
    name = f"crowd_{way}_{time.time_ns()}"
    peak, pss = 0, []

    def tick(pids: list[int]) -> None:
        nonlocal peak
        peak = max(peak, server_connections(server))  # type: ignore[arg-type]
        if pids and len(pss) < 20:
            pss.append(pss_mb(pids[len(pss) % len(pids)]))

    start = time.monotonic()
    codes = cheap_crowd(url, args.workers, args.trials, name, on_tick=tick)
    wall = time.monotonic() - start
    trials = optuna.load_study(study_name=name, storage=direct).get_trials(deepcopy=False)
    states = collections.Counter(t.state.name for t in trials)
    finished = states[TrialState.COMPLETE.name] + states[TrialState.PRUNED.name]
    reasons = collections.Counter(
        str(t.user_attrs.get("fail_reason", "?"))[:90]
        for t in trials
        if t.state == TrialState.FAIL
    )
    print(
        f"{way:>9}: {args.workers} workers, exit codes {dict(collections.Counter(codes))}, "
        f"trials {dict(states)} ({'exact' if finished == args.trials else 'NOT EXACT'}), "
        f"peak server connections {peak}, {wall:.1f} s ({finished / wall:.1f} trials/s), "
        f"worker PSS median {sorted(pss)[len(pss) // 2] if pss else float('nan'):.0f} MB",
        flush=True,
    )
    for reason, n in reasons.most_common(5):
        print(f"           {n} failed: {reason}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--pool", type=int, default=20, help="PgBouncer's server connections")
    parser.add_argument("--max-connections", type=int, default=100)
    parser.add_argument("--ways", nargs="+", default=["pgbouncer", "direct"],
                        choices=["pgbouncer", "direct"])  # fmt: skip
    args = parser.parse_args()
    with own_postgres(f"-c max_connections={args.max_connections}") as server:
        direct = create_role(server)
        print(f"PostgreSQL of its own: max_connections={args.max_connections}", flush=True)
        for way in args.ways:
            if way == "direct":
                run(way, direct, direct, server, args)
                continue
            with own_pgbouncer(server.port, pool_size=args.pool, roles=("tuner",)) as bouncer:
                run(f"{way}", bouncer.url(), direct, server, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
