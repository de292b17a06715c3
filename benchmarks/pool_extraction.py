"""The frozen-base features of a cold cache, extracted by one worker of a pool.

A pool splits the machine's cores among its workers (``--workers 2`` on 2 cores:
one TensorFlow thread each). Before, the worker that took the extraction ran it
with its own share while the others waited; now it runs it in a process of its
own with every core. Both are timed side by side in one run, as tuner runs them
(``tuner.training.extraction``'s extraction process), on a subset of the clothing
dataset, in alternating order:

- one thread: the extraction process with ``TUNER_THREADS=1``, as the pool worker ran it;
- all threads: the same with every CPU thread, start-up included.

Usage::

    python3 benchmarks/pool_extraction.py [--data PATH] [--train 300] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tuner.assets.datasets import scan_dataset
from tuner.config.build import trial_setup
from tuner.config.spec import load_spec
from tuner.training.extraction import extraction_process
from tuner.training.feature_store import FeatureStore, file_digest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "clothing-dataset-small"


def subset(data: Path, dest: Path, train: int) -> Path:
    """About ``train`` training and ``train // 3`` validation images, as many of each class."""
    classes = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())
    for split, n in (("train", train), ("validation", max(1, train // 3))):
        for cls in classes:
            for f in sorted((data / split / cls).glob("*.jpg"))[: max(1, n // len(classes))]:
                target = dest / split / cls / f.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(f)
    return dest


def extract(job: Path, threads: int, entry: Path) -> float:
    """Wall seconds of the extraction process with ``threads`` CPU threads."""
    shutil.rmtree(entry, ignore_errors=True)
    entry.mkdir(parents=True)
    command, env = extraction_process(job, threads)
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument(
        "--train", type=int, default=300, help="training images (validation: a third)"
    )
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as folder:
        tmp = Path(folder)
        data = subset(args.data, tmp / "data", args.train)
        spec = load_spec("clothing", [f"data.dir={data}", "model.weights=none",
                                      f"cache.dir={tmp / 'cache'}"])  # fmt: skip
        setup, scan = trial_setup(spec), scan_dataset(data)
        entry = FeatureStore(tmp / "cache", "bench").folder / "packs"
        todo = {split: {file_digest(p): p for p in scan.files[split]}
                for split in ("train", "validation")}  # fmt: skip
        job = tmp / "job"
        job.write_bytes(pickle.dumps((setup, todo, tmp / "cache", "bench")))
        times: dict[int, list[float]] = {1: [], cores: []}
        for _ in range(args.repeats):
            for threads in (1, cores) if _ % 2 == 0 else (cores, 1):
                times[threads].append(extract(job, threads, entry))
        images = scan.count("train") + scan.count("validation")
    one, every = min(times[1]), min(times[cores])
    print(f"{images} images at 150x150, Xception, {cores} CPU threads on this machine")
    print(f"one thread (a pool worker's share):  {one:6.1f} s  (runs: {times[1]})")
    print(f"all {cores} threads (the extraction process): {every:6.1f} s  (runs: {times[cores]})")
    print(f"speed-up: {one / every:.2f}x (best of {args.repeats} each, start-up included)")
    print(f"median ratio: {statistics.median(times[1]) / statistics.median(times[cores]):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
