"""Frozen-feature cache against the full pipeline, on the clothing dataset, in one run.

It measures, with tuner's own code paths:

- extraction: ``tuner.training.extraction.extract_features`` (Keras's compiled predict step over a
  prefetched pipeline) against a bare ``model.predict`` over the same images, both splits;
- the epoch time of the full pipeline (frozen Xception + head, cache off) against the
  cached head, each trained by ``tuner.training.objective.make_objective``;
- the total time of a 10-trial, 10-epoch study each way (the full total is extrapolated
  from its measured epochs);
- the peak RSS of ``tuner worker`` on the study, with the cache cold, warm and off, and
  whether the warm run reports ``cache = "hit"`` for every trial.

Usage::

    python3 benchmarks/cache_vs_full.py [--data PATH] [--weights none]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import optuna
from rich.console import Console
from rich.table import Table

from tuner.assets.datasets import DatasetScan, load_split, scan_dataset
from tuner.config.build import trial_setup
from tuner.config.spec import StudySpec, load_spec

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "clothing-dataset-small"
GIB = 1024**3
console = Console(width=110)


@dataclass
class WorkerRun:
    """One ``tuner worker`` subprocess: its peak memory and the cache status of its trials."""

    label: str
    seconds: float
    max_rss: int  # bytes
    caches: list[str]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset folder")
    parser.add_argument("--weights", default="none", help="none, imagenet or a .weights.h5 path")
    parser.add_argument("--size", type=int, default=150, help="image height and width")
    parser.add_argument("--full-epochs", type=int, default=3, help="full-pipeline epochs timed")
    parser.add_argument("--trials", type=int, default=10, help="trials of the study compared")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per trial")
    parser.add_argument("--repeats", type=int, default=2, help="extraction passes of each kind")
    parser.add_argument("--worker-trials", type=int, default=3, help="trials per worker run")
    parser.add_argument("--skip-off-worker", action="store_true", help="no cache-off worker run")
    return parser.parse_args(argv)


def make_spec(args: argparse.Namespace, cache: Path, **extra: object) -> list[str]:
    """``--set`` overrides of the clothing study for this benchmark."""
    sets = {
        "data.dir": str(args.data),
        "model.weights": args.weights,
        "data.image_size": f"[{args.size}, {args.size}]",
        "cache.dir": str(cache),
        "train.epochs": args.epochs,
        **extra,
    }
    return [f"{k}={v}" for k, v in sets.items()]


def time_extraction(spec: StudySpec, scan: DatasetScan, repeats: int) -> dict[str, float]:
    """Wall and CPU seconds for both splits: tuner's extraction and a bare ``predict``.

    Both paths are traced once on the validation split first; the timed passes then
    alternate (bare, tuner, tuner, bare, ...) and the best of each is kept. The CPU
    time (all threads of this process) is the figure that other jobs on a shared
    machine disturb least.
    """
    from tuner.training.extraction import extract_features
    from tuner.training.model import build_feature_extractor

    extractor = build_feature_extractor(trial_setup(spec))
    size, batch = spec.data.image_size, spec.data.batch_size

    def tuner_path(splits: tuple[str, ...]) -> list[np.ndarray]:
        return [
            extract_features(extractor, list(scan.files[s]), trial_setup(spec)) for s in splits
        ]

    def bare_predict(splits: tuple[str, ...]) -> list[np.ndarray]:
        return [extractor.predict(load_split(scan, s, size, batch), verbose=0) for s in splits]

    paths = {"tuner": tuner_path, "bare": bare_predict}
    for path in paths.values():
        path(("validation",))
    wall: dict[str, list[float]] = {"tuner": [], "bare": []}
    cpu: dict[str, list[float]] = {"tuner": [], "bare": []}
    outputs: dict[str, list[np.ndarray]] = {}
    for i in range(repeats):
        for name in ("bare", "tuner") if i % 2 == 0 else ("tuner", "bare"):
            start, start_cpu = time.perf_counter(), time.process_time()
            outputs[name] = paths[name](("train", "validation"))
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    pairs = zip(outputs["tuner"], outputs["bare"], strict=True)
    return {
        **{name: min(times) for name, times in wall.items()},
        **{f"{name}_cpu": min(times) for name, times in cpu.items()},
        "max_abs_diff": max(float(np.abs(a - b).max()) for a, b in pairs),
    }


def run_study(spec: StudySpec, scan: DatasetScan, trials: int) -> tuple[list[float], float]:
    """Run ``trials`` trials through tuner's objective in memory; (epoch seconds, wall)."""
    from tuner.training.objective import make_objective, prepare_data

    start = time.perf_counter()
    data = prepare_data(
        trial_setup(spec), scan, say=lambda line: console.print(f"  {line}", style="dim")
    )
    objective = make_objective(trial_setup(spec), data, None, say=lambda _line: None)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    study.optimize(objective, n_trials=trials)
    wall = time.perf_counter() - start
    epochs = [s for t in study.trials for s in t.user_attrs["epoch_seconds"]]
    states = {t.state.name for t in study.trials}
    assert states == {"COMPLETE"}, f"benchmark trials did not complete: {states}"
    return epochs, wall


# Linux counts the RSS a process had at fork/exec in its child's peak, so the worker is
# started by a small launcher, not by this TensorFlow-laden process, and the launcher
# reports its child's peak (ru_maxrss, KiB).
LAUNCHER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def run_worker(label: str, url: str, n_trials: int, sets: list[str], cwd: Path) -> WorkerRun:
    """Run ``tuner worker`` and read its peak RSS.

    ``sets`` must name the study (``study.name=...``); the trials of this run are read from it.
    """
    name = next(s.split("=", 1)[1] for s in sets if s.startswith("study.name="))

    def workers_seen() -> set[str]:
        try:
            trials = optuna.load_study(study_name=name, storage=url).get_trials()
        except KeyError:  # no such study yet
            return set()
        return {t.user_attrs["worker"] for t in trials if "worker" in t.user_attrs}

    before = workers_seen()
    rss_file = cwd / f"rss-{name}-{n_trials}.txt"
    cmd = [sys.executable, "-c", LAUNCHER, str(rss_file), sys.executable, "-m", "tuner"]
    cmd += ["worker", "--study", "clothing", "--storage", url, "--n-trials", str(n_trials)]
    cmd += [f"--set={s}" for s in sets]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: the {label} worker failed (exit {proc.returncode}):\n{proc.stderr}")
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    new = [t for t in trials if t.user_attrs.get("worker", "") not in before | {""}]
    caches = [t.user_attrs["cache"] for t in new]
    return WorkerRun(label, seconds, int(rss_file.read_text()) * 1024, caches)


def workers(args: argparse.Namespace, cache: Path, tmp: Path) -> list[WorkerRun]:
    """Cold then warm on one study (the judged property), then a cache-off run."""
    url = f"sqlite:///{tmp / 'bench.db'}"
    sets = make_spec(args, cache, **{"study.name": "bench"})
    n = args.worker_trials
    runs = [
        run_worker("cache cold (miss)", url, n, sets, tmp),
        run_worker("cache warm (hit)", url, 2 * n, sets, tmp),
    ]
    if not args.skip_off_worker:
        off = make_spec(args, cache, **{"study.name": "off", "cache.enabled": "false"})
        off += ["train.epochs=1"]
        runs.append(run_worker("cache off, 1 epoch", f"sqlite:///{tmp / 'off.db'}", 1, off, tmp))
    return runs


def table_rows(
    args: argparse.Namespace,
    extraction: dict[str, float],
    full: list[float],
    cached: list[float],
    cached_wall: float,
    runs: list[WorkerRun],
) -> list[tuple[str, str]]:
    """The rows of the printed table."""
    full_epoch, cached_epoch = statistics.median(full), statistics.median(cached)
    study = f"{args.trials}x{args.epochs} study"
    ext = extraction
    rows = [
        (
            "extraction, tuner (compiled predict, prefetched)",
            f"{ext['tuner']:.1f} s wall, {ext['tuner_cpu']:.1f} s CPU",
        ),
        (
            "extraction, bare model.predict",
            f"{ext['bare']:.1f} s wall, {ext['bare_cpu']:.1f} s CPU",
        ),
        (
            "tuner vs bare predict (limit +30%)",
            f"{ext['tuner'] / ext['bare'] - 1:+.0%} wall, "
            f"{ext['tuner_cpu'] / ext['bare_cpu'] - 1:+.0%} CPU",
        ),
        ("full-pipeline epoch (median)", f"{full_epoch:.2f} s"),
        ("cached-head epoch (median)", f"{cached_epoch:.4f} s"),
        ("epoch speed-up, medians (target >= 100x)", f"{full_epoch / cached_epoch:.0f}x"),
        (
            "epoch speed-up, means (with each trial's first-epoch tracing)",
            f"{statistics.mean(full) / statistics.mean(cached):.0f}x",
        ),
        (
            f"{study}, full pipeline (extrapolated)",
            f"{args.trials * args.epochs * statistics.mean(full):.0f} s",
        ),
        (f"{study}, cached heads (measured)", f"{cached_wall:.1f} s"),
        (f"{study}, cached incl. one extraction", f"{cached_wall + extraction['tuner']:.1f} s"),
    ]
    rows += [(f"worker peak RSS, {r.label}", f"{r.max_rss / GIB:.2f} GiB") for r in runs]
    return rows


def report(args: argparse.Namespace, scan: DatasetScan, rows: list[tuple[str, str]]) -> None:
    table = Table(title=f"Frozen-feature cache vs full pipeline ({args.size}x{args.size})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(
        f"data: {args.data} ({scan.count('train')} train, {scan.count('validation')} "
        f"validation images); weights={args.weights}; {os.cpu_count()} CPUs"
    )


def details(
    extraction: dict[str, float], full: list[float], cached: list[float], runs: list[WorkerRun]
) -> None:
    """The measured values behind the table, and the judged cache=hit property."""
    console.print(f"full-pipeline epochs (s): {', '.join(f'{s:.1f}' for s in full)}")
    console.print(
        f"cached-head epochs: {len(cached)}, median {statistics.median(cached):.4f} s, "
        f"mean {statistics.mean(cached):.4f} s, max {max(cached):.4f} s"
    )
    console.print(f"features, max |tuner - bare predict| = {extraction['max_abs_diff']:.2e}")
    for run in runs:
        console.print(f"worker {run.label}: {run.seconds:.0f} s, trials' cache = {run.caches}")
    warm = runs[1].caches
    verdict = "yes" if warm and set(warm) == {"hit"} else "NO"
    console.print(f"second worker run reports cache=hit for all its trials: {verdict}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as folder:
        tmp = Path(folder)
        cache = tmp / "cache"
        spec = load_spec("clothing", make_spec(args, cache))
        scan = scan_dataset(args.data)
        console.print("timing extraction (tuner path vs bare predict)")
        extraction = time_extraction(spec, scan, args.repeats)
        console.print("worker runs: cache cold, warm, off (peak RSS)")
        runs = workers(args, cache, tmp)
        console.print(f"cached study: {args.trials} trials x {args.epochs} epochs")
        cached, cached_wall = run_study(spec, scan, args.trials)
        console.print(f"full pipeline: 1 trial x {args.full_epochs} epochs")
        off = load_spec(
            "clothing",
            make_spec(args, cache, **{"cache.enabled": "false", "train.epochs": args.full_epochs}),
        )
        full, _ = run_study(off, scan, 1)
    report(args, scan, table_rows(args, extraction, full, cached, cached_wall, runs))
    details(extraction, full, cached, runs)
    console.print(f"load average: {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
