"""A study of 10,000 trials: does a trial cost more as the study grows?

Runs ``--workers`` worker processes (tuner's trial loop around an objective
that only talks to the storage: its parameter, three reports, one attribute)
on one new study until it holds ``--trials`` trials, then reads the trials'
start and end times back from the study and prints, for each block of
``--block`` trials, how many trials a second the study finished and the median
time one trial took from its start to its end. Optuna's RDB storage was
measured about 10x slower per trial at 83,000 trials (optuna issue 3053).

    python3 benchmarks/large_study.py                                   # SQLite, 10,000 trials
    python3 benchmarks/large_study.py --storage postgresql+psycopg2://postgres@127.0.0.1/test
    python3 benchmarks/large_study.py --sampler random                  # the storage alone
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import optuna

import tuner.runner.worker  # noqa: F401  (imported once; the forked workers share it)
from tests.faultkit import cheap_crowd


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--block", type=int, default=1000)
    parser.add_argument("--storage", default="", help="a server URL; default: a new SQLite file")
    parser.add_argument("--sampler", default="tpe", choices=["tpe", "random"])
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="tuner-large-"))
    url = args.storage or f"sqlite:///{folder / 'study.db'}"
    name = f"large_{time.time_ns()}"
    started = time.monotonic()
    codes = cheap_crowd(
        url, args.workers, args.trials, name, sets=[f"sampler.kind={args.sampler}"]
    )
    wall = time.monotonic() - started
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    done = sorted((t for t in trials if t.datetime_complete), key=lambda t: t.datetime_complete)
    print(f"{len(done)} trials by {args.workers} workers on {url.split(':')[0]} "
          f"({args.sampler}), exit codes {sorted(set(codes))}, {wall:.0f} s in all")  # fmt: skip
    print("trials       | trials/s | median trial (start to end)")
    for first in range(0, len(done), args.block):
        block = done[first : first + args.block]
        span = (block[-1].datetime_complete - block[0].datetime_complete).total_seconds()
        each = statistics.median(
            (t.datetime_complete - t.datetime_start).total_seconds() for t in block
        )
        rate = (len(block) - 1) / span if span > 0 else float("nan")
        print(f"{first:>5}-{first + len(block) - 1:<6} | {rate:8.1f} | {each * 1000:.0f} ms")
    if args.storage:
        optuna.delete_study(study_name=name, storage=url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
