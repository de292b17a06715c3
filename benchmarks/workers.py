"""Trial throughput of the cached clothing study: ``--workers 1`` against ``--workers 2``.

Both runs use the real CLI on the full dataset (weights=none, so no download),
with the frozen-feature cache warmed first, so every trial trains only the
Dense head for 10 epochs. Each run gets a fresh SQLite study and the same
number of trials. Two throughputs are shown: over the whole command (process
and TensorFlow start-up included) and in the steady state, from the first
trial's start to the last trial's end, read from the study itself. The
pruner is off by default so that every trial does the same 10 epochs of work.

``--against DIR`` runs the same two commands with another checkout of tuner
(say, the previous release) first on the import path, right after this one's,
and adds its rows and the ratio of the two steady throughputs.

    python3 benchmarks/workers.py                       # 16 trials per run
    python3 benchmarks/workers.py --trials 24 --pruner median
    git worktree add /tmp/before REV && python3 benchmarks/workers.py --against /tmp/before
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

DATA = Path(__file__).resolve().parent.parent.parent / "shared/data/clothing-dataset-small"


def run_worker(
    args: argparse.Namespace, url: str, workers: int, trials: int, log: Path, tree: str | None
) -> dict[str, Any]:
    """Run ``tuner worker`` (from ``tree`` when given); returns its start, wall time, CPU
    time and the load around it."""
    sets = {
        "data.dir": args.data,
        "model.weights": "none",
        "data.image_size": f"[{args.image_size}, {args.image_size}]",
        "train.epochs": args.epochs,
        "pruner.kind": args.pruner,
        "cache.dir": args.cache_dir,
    }
    cmd = [sys.executable, "-m", "tuner", "worker", "--study", "clothing", "--storage", url]
    cmd += ["--workers", str(workers), "--n-trials", str(trials)]
    cmd += [f"--set={k}={v}" for k, v in sets.items()]
    begun, load = datetime.now(), os.getloadavg()[0]
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    # `python -m` puts the working folder first on the import path: run from the tree itself
    env = {**os.environ, "PYTHONPATH": tree} if tree else None
    with log.open("w") as out:
        done = subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tree, check=False
        )
    code = done.returncode
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        where = f" from {tree}" if tree else ""
        sys.exit(
            f"tuner worker --workers {workers}{where} failed ({code}):\n{log.read_text()[-3000:]}"
        )
    used = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    return {"begun": begun, "wall": wall, "cpu": used, "load": (load, os.getloadavg()[0])}


def summarize(url: str, run: dict[str, Any], trials: int) -> dict[str, Any]:
    """Throughputs and trial times, read back from the study."""
    study = optuna.load_study(study_name="clothing", storage=url)
    done = [t for t in study.get_trials() if t.state != TrialState.WAITING]  # queued, not run
    if len(done) != trials or any(t.state != TrialState.COMPLETE for t in done):
        sys.exit(f"expected {trials} complete trials, found {[t.state.name for t in done]}")
    if any(t.user_attrs.get("cache") != "hit" for t in done):
        sys.exit("a trial missed the feature cache; the benchmark needs a warm cache")
    first = min(t.datetime_start for t in done if t.datetime_start)
    last = max(t.datetime_complete for t in done if t.datetime_complete)
    return {
        **run,
        "startup": (first - run["begun"]).total_seconds(),
        "per_min_wall": 60 * trials / run["wall"],
        "per_min_steady": 60 * trials / (last - first).total_seconds(),
        "trial_s": statistics.median(t.duration.total_seconds() for t in done if t.duration),
        "fit_s": statistics.median(sum(t.user_attrs["epoch_seconds"]) for t in done),
    }


def print_table(rows: dict[int, dict[str, Any]], trials: int, code: str = "") -> None:
    """The side-by-side table, in Markdown."""
    base = rows[1]
    if code:
        print(f"\n{code}:")
    print(
        "\n| --workers | wall (s) | start-up (s) | trials/min (whole run) | trials/min (steady) "
        "| speed-up (steady) | median trial (s) | of it fitting (s) | CPU s per trial "
        "| load before/after |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for workers, r in rows.items():
        print(
            f"| {workers} | {r['wall']:.0f} | {r['startup']:.0f} | {r['per_min_wall']:.1f} "
            f"| {r['per_min_steady']:.1f} | {r['per_min_steady'] / base['per_min_steady']:.2f}x "
            f"| {r['trial_s']:.1f} | {r['fit_s']:.1f} | {r['cpu'] / trials:.1f} "
            f"| {r['load'][0]:.1f} / {r['load'][1]:.1f} |"
        )
    speedup = rows[2]["per_min_wall"] / base["per_min_wall"]
    print(f"\nspeed-up over the whole run, start-up included: {speedup:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA), help="the clothing dataset folder")
    parser.add_argument("--trials", type=int, default=16, help="trials per run")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=150)
    parser.add_argument("--pruner", default="none", help="pruner.kind for both runs")
    parser.add_argument(
        "--cache-dir",
        default=str(Path(tempfile.gettempdir()) / "tuner-bench-cache"),
        help="feature cache folder, kept between runs",
    )
    parser.add_argument("--against", metavar="DIR", help="another checkout of tuner to run too")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"{os.cpu_count()} cores; {args.trials} trials of {args.epochs} epochs per run")
    trees: dict[str, str | None] = {"this checkout": None}
    if args.against:
        trees[f"{args.against} (--against)"] = str(Path(args.against).resolve())
    tables: dict[str, dict[int, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="tuner-workers-") as tmp:
        folder = Path(tmp)
        for i, (name, tree) in enumerate(trees.items()):
            warm_url = f"sqlite:///{folder / f'warm{i}.db'}"
            warm = run_worker(args, warm_url, 1, 1, folder / f"warm{i}.log", tree)
            print(f"{name}: cache warmed (and one trial run) in {warm['wall']:.0f} s", flush=True)
            rows = tables[name] = {}
            for workers in (1, 2):
                url = f"sqlite:///{folder / f'w{workers}-{i}.db'}"
                log = folder / f"w{workers}-{i}.log"
                run = run_worker(args, url, workers, args.trials, log, tree)
                rows[workers] = summarize(url, run, args.trials)
                print(f"  --workers {workers}: {run['wall']:.0f} s", flush=True)
    for name, rows in tables.items():
        print_table(rows, args.trials, name if len(tables) > 1 else "")
    if len(tables) > 1:
        ours, theirs = tables.values()
        for workers in (1, 2):
            ratio = ours[workers]["per_min_steady"] / theirs[workers]["per_min_steady"]
            print(f"--workers {workers}: steady throughput {ratio:.1f}x the --against checkout's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
