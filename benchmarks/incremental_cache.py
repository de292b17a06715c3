"""One image added to the data: the time to the next trial, this checkout against another.

A study runs with a warm feature cache; then one image is added to ``train/``
and a worker is started for one more trial. The layout-1 cache (one entry per
whole dataset) computes every image's features again; layout 2 (rows per image
content hash) computes the new image only. Each round adds one image and runs
both versions' workers, in alternating order, each with its own cache and study
file, on the same data: a subset of the clothing dataset (symbolic links),
``clothing-head`` with ``model.weights=none`` and one epoch per trial.

Measured is the wall time of ``tuner worker --n-trials N+1``: start-up (Python,
TensorFlow), the scan, the features, and one trial. Usage::

    git worktree add --detach /tmp/base-cache main
    python3 benchmarks/incremental_cache.py --against /tmp/base-cache --train 30 --validation 10
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
# $TUNER_REAL_DATA, else the shared data beside the checkout (or a worktree's parent folder).
DATA = Path(os.environ.get("TUNER_REAL_DATA") or next(
    (p / "shared" / "data" / "clothing-dataset-small" for p in HERE.parents
     if (p / "shared" / "data" / "clothing-dataset-small").is_dir()),
    HERE.parent / "shared" / "data" / "clothing-dataset-small",
))  # fmt: skip


def subset(data: Path, dest: Path, per_class: dict[str, int]) -> list[Path]:
    """Link ``per_class`` images of each class into ``dest``; returns train images left out."""
    spare = []
    for split, n in per_class.items():
        for cls in sorted(p for p in (data / split).iterdir() if p.is_dir()):
            images = sorted(cls.glob("*.jpg"))
            for image in images[:n]:
                target = dest / split / cls.name / image.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(image)
            if split == "train":
                spare += images[n:]
    return spare


def run_worker(checkout: Path, tmp: Path, name: str, data: Path, trials: int) -> tuple[float, str]:
    """Wall seconds of one worker run until the study holds ``trials`` trials, and its log."""
    sets = {
        "data.dir": data,
        "model.weights": "none",
        "train.epochs": 1,
        "cache.dir": tmp / f"cache-{name}",
    }
    command = [sys.executable, "-m", "tuner", "worker", "--study", "clothing-head",
               "--storage", f"sqlite:///{tmp / f'{name}.db'}", "--n-trials", str(trials),
               "--log-format", "plain", *(f"--set={k}={v}" for k, v in sets.items())]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(checkout), "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{name} worker failed:\n{done.stderr[-2000:]}")
    return seconds, done.stdout + done.stderr


def features_line(log: str) -> str:
    found = re.search(r"(computing frozen-base features.*?) into|(feature cache hit)", log)
    return (found.group(1) or found.group(2)) if found else "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", type=Path, required=True, help="the baseline checkout")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--train", type=int, default=30, help="training images per class")
    parser.add_argument("--validation", type=int, default=10, help="per class")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    versions = {"baseline": args.against.resolve(), "this": HERE}
    with tempfile.TemporaryDirectory(prefix="tuner-incremental-") as folder:
        tmp = Path(folder)
        data = tmp / "data"
        spare = subset(args.data, data, {"train": args.train, "validation": args.validation})
        n = sum(1 for _ in data.rglob("*.jpg"))
        print(f"{n} images ({args.train} train and {args.validation} validation per class)")
        for name, checkout in versions.items():  # a warm cache, as a running study has
            seconds, log = run_worker(checkout, tmp, name, data, 1)
            print(f"  cold start {name:8s} {seconds:6.1f} s  ({features_line(log)})")
        times: dict[str, list[float]] = {name: [] for name in versions}
        for r in range(args.rounds):
            image = spare[r * 37 % len(spare)]  # a different class each round
            (data / "train" / image.parent.name / image.name).symlink_to(image)
            order = list(versions) if r % 2 == 0 else list(reversed(versions))
            for name in order:
                seconds, log = run_worker(versions[name], tmp, name, data, r + 2)
                times[name].append(seconds)
                print(f"  round {r + 1} {name:8s} {seconds:6.1f} s  ({features_line(log)})")
        base, this = (statistics.median(times[k]) for k in ("baseline", "this"))
        print(f"one image added to {n}: time to the next trial (median of {args.rounds})")
        print(f"  baseline {args.against}: {base:.1f} s")
        print(f"  this checkout:  {this:.1f} s")
        print(f"  ratio: {base / this:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
