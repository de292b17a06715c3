"""Feature extraction in float32 and bfloat16 (``model.precision``), side by side.

On the clothing dataset (or a subset of it), with the seeded random Xception base
(``model.weights = none``: ImageNet weights cannot be downloaded here), at 150x150:

- cold study runs: ``tuner worker`` on the clothing-head study from an empty cache,
  once per precision: seconds to the first finished trial and to the 20th, next to
  one bare ``model.predict`` pass over the same images (float32 and bfloat16);
- features: relative L2 error of each image's bfloat16 feature vector against
  float32 (median, max), read from the two runs' cache entries;
- heads: the final validation accuracy of the clothing-head study's warm-start
  heads trained (float32, same seed) on each set of features;
- a FLOP floor: Xception's FLOPs at the input size times the images, over the peak
  matmul rate measured here in each precision.

On a base that has learned (``--train-base``: Xception trained here from scratch
on clothing images, see ``benchmarks/learnedbase.py``; or ``--base-weights`` for
one saved before), only the features and heads part runs, at 96x96, through
tuner's own extractor with ``model.weights`` set to the base's file, on images
the base never trained on, and without standardizing the features; the cold
runs and the floor are skipped.

The worker and bare passes are nested (predict f32, worker f32, worker bf16, predict
bf16; ``--reverse`` starts with bfloat16), each in a fresh process, so that on a busy
machine two runs in both orders show how much the load moved the figures.

Usage::

    python3 benchmarks/precision.py [--data PATH] [--train 3068] [--validation 341] [--reverse]
    python3 benchmarks/precision.py --train-base [--base-weights OUT.weights.h5] [--base-epochs 8]
    python3 benchmarks/precision.py --base-weights xception-96.weights.h5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "clothing-dataset-small"
STUDY = Path(__file__).resolve().parents[1] / "studies" / "clothing-head.toml"
PRECISIONS = ("float32", "bfloat16")
SIZE = 150
# The clothing-head study's warm-start heads (studies/clothing-head.toml).
POINTS = [
    {"learning_rate": 1e-3, "size_inner": inner, "droprate": drop}
    for inner, drop in ((10, 0.0), (100, 0.0), (1000, 0.0), (100, 0.2), (100, 0.5), (100, 0.8))
]

# One bare pass in a fresh process: build the extractor, then time model.predict alone.
BARE = """
import json, sys, time
from tuner.assets.datasets import load_split, scan_dataset
from tuner.config.build import trial_setup
from tuner.config.spec import load_spec
from tuner.training.model import build_feature_extractor
data, precision, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
setup = trial_setup(load_spec("clothing", ["model.weights=none", f"data.dir={data}",
                                           f"data.image_size=[{size}, {size}]"]))
scan = scan_dataset(data)
model = build_feature_extractor(setup, precision)
start = time.perf_counter()
for split in ("train", "validation"):
    model.predict(load_split(scan, split, (size, size), 32), verbose=0)
print(json.dumps({"predict": time.perf_counter() - start}))
"""


def subset(data: Path, dest: Path, train: int, validation: int) -> Path:
    """About ``train`` and ``validation`` images, as many of each class, as symlinks."""
    classes = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())
    for split, n in (("train", train), ("validation", validation)):
        for cls in classes:
            files = sorted((data / split / cls).glob("*.jpg"))
            for f in files[: max(1, round(n * len(files) / _count(data / split)))]:
                target = dest / split / cls / f.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(f)
    return dest


def _count(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*/*.jpg"))


def bare_predict(data: Path, precision: str) -> float:
    """Seconds of one bare ``model.predict`` pass over train and validation."""
    out = subprocess.run(
        [sys.executable, "-c", BARE, str(data), precision, str(SIZE)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["predict"])


def cold_worker(data: Path, tmp: Path, precision: str, trials: int) -> dict[str, Any]:
    """``tuner worker`` from an empty cache: seconds to the first and the last finished trial."""
    url = f"sqlite:///{tmp / f'{precision}.db'}"
    sets = {
        "data.dir": data,
        "model.weights": "none",
        "model.precision": precision,
        "cache.dir": tmp / f"cache-{precision}",
        "study.name": f"bench-{precision}",
    }
    cmd = [sys.executable, "-m", "tuner", "worker", "--study", str(STUDY), "--storage", url]
    cmd += ["--n-trials", str(trials), *(f"--set={k}={v}" for k, v in sets.items())]
    start = time.time()
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
    wall = time.time() - start
    if proc.returncode != 0:
        sys.exit(f"error: the {precision} worker failed (exit {proc.returncode}):\n{proc.stderr}")
    study = optuna.load_study(study_name=f"bench-{precision}", storage=url)
    done = sorted(t.datetime_complete.timestamp() for t in study.trials if t.datetime_complete)
    meta = next((tmp / f"cache-{precision}" / "features").glob("*/meta.json"))
    # The warm-start trials (the same points in both runs): their last validation accuracy.
    warm = sorted(study.trials, key=lambda t: t.number)[: len(POINTS)]
    values = [t.intermediate_values[max(t.intermediate_values)] for t in warm]
    return {
        "warm": values,
        "first": done[0] - start,
        "last": done[-1] - start,
        "trials": len(done),
        "wall": wall,
        "extraction": json.loads(meta.read_text())["seconds"],
    }


def cached(tmp: Path, precision: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The (features, labels) of each split from the run's cache entry."""
    entry = next((tmp / f"cache-{precision}" / "features").glob("*/meta.json")).parent
    out = {}
    for split in ("train", "validation"):
        with np.load(entry / f"{split}.npz") as f:
            out[split] = (f["features"], f["labels"])
    return out


def feature_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Each row's relative L2 error of ``b`` against ``a``."""
    return np.linalg.norm(b - a, axis=1) / np.maximum(np.linalg.norm(a, axis=1), 1e-30)


def head_accuracy(
    sets: dict[str, tuple[np.ndarray, np.ndarray]],
    point: dict,
    scale: tuple[np.ndarray, np.ndarray] | None,
) -> float:
    """Final validation accuracy of the xception-head head at ``point``, 10 epochs, seeded."""
    import keras

    from tuner.recipes import BUILTIN, Params
    from tuner.training.model import build_part, compile_model

    keras.utils.set_random_seed(1)
    (x, y), (vx, vy) = sets["train"], sets["validation"]
    # A random base's features are tiny (about 1e-5) and an Adam head barely moves on
    # them; scaled by the float32 training features' statistics (the same for both
    # precisions), they carry what a trained base's would, and the comparison is fair.
    # A trained base's features are used as they come (``scale`` None), as tuner does.
    if scale is not None:
        mean, std = scale
        x, vx = (x - mean) / std, (vx - mean) / std
    head = build_part(BUILTIN["xception-head"], Params(point), x.shape[1], y.shape[1])
    compile_model(head, point["learning_rate"])
    fit = head.fit(x, y, batch_size=32, epochs=10, validation_data=(vx, vy), verbose=0)
    return float(fit.history["val_accuracy"][-1])


def xception_flops(size: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of Xception without its top at ``size`` x ``size``."""
    import keras

    model = keras.applications.Xception(
        include_top=False, weights=None, input_shape=(size, size, 3)
    )
    macs = 0
    for layer in model.layers:
        if not hasattr(layer, "kernel_size"):
            continue
        _, h, w, c_out = layer.output.shape
        c_in = layer.input.shape[-1]
        k = int(np.prod(layer.kernel_size))
        if isinstance(layer, keras.layers.SeparableConv2D):
            macs += h * w * (k * c_in + c_in * c_out)
        elif isinstance(layer, keras.layers.Conv2D):
            macs += h * w * k * c_in * c_out
    keras.backend.clear_session()
    return 2.0 * macs


def peak_flops(dtype: str, n: int = 2048, repeats: int = 5) -> float:
    """The best matmul rate (FLOP/s) on this machine's CPU threads in ``dtype``."""
    import tensorflow as tf

    a = tf.cast(tf.random.uniform((n, n)), dtype)
    b = tf.cast(tf.random.uniform((n, n)), dtype)
    tf.matmul(a, b).numpy()  # warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        tf.matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--train", type=int, default=3068, help="training images")
    parser.add_argument("--validation", type=int, default=341, help="validation images")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--reverse", action="store_true", help="bfloat16 first")
    learned = parser.add_argument_group("on a base trained here (features and heads only)")
    learned.add_argument("--base-weights", type=Path, help="the base's .weights.h5 file")
    learned.add_argument("--train-base", action="store_true", help="train it first (to there)")
    learned.add_argument("--base-epochs", type=int, default=8)
    learned.add_argument("--base-per-class", type=int, default=100, help="its training images")
    learned.add_argument("--head-train", type=int, default=1000, help="the heads' other images")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tuner.training.precision import resolve_precision

    print(f"model.precision = auto resolves to {' ('.join(resolve_precision('auto'))}) here")
    if args.train_base or args.base_weights:
        return learned(args)
    with tempfile.TemporaryDirectory(prefix="precision-") as name:
        tmp = Path(name)
        data = subset(args.data, tmp / "data", args.train, args.validation)
        images = _count(data / "train") + _count(data / "validation")
        print(f"{images} images at {SIZE}x{SIZE}, Xception (random seeded weights), 2 splits")
        bare, runs = {}, {}
        order = PRECISIONS[::-1] if args.reverse else PRECISIONS
        for precision in order:  # predict, worker, then worker, predict: nested alike
            if precision == order[0]:
                bare[precision] = bare_predict(data, precision)
            runs[precision] = cold_worker(data, tmp, precision, args.trials)
            if precision == order[1]:
                bare[precision] = bare_predict(data, precision)
        sets = {p: cached(tmp, p) for p in PRECISIONS}
        report_runs(bare, runs, args.trials)
        report_features(sets)
        report_floor(images, bare, runs)
    return 0


def learned(args: argparse.Namespace) -> int:
    """Features and heads on a base trained here (the cold runs need no repeating)."""
    import learnedbase

    with tempfile.TemporaryDirectory(prefix="precision-") as name:
        tmp = Path(name)
        base_data, heads_data = learnedbase.layout(
            args.data, tmp / "data", args.base_per_class, args.head_train
        )
        weights = args.base_weights or tmp / "xception.weights.h5"
        if args.train_base:
            accuracy, own = learnedbase.train_base(base_data, weights, args.base_epochs)
            print(f"base: {_count(base_data / 'train')} images, {args.base_epochs} epochs,")
            print(f"  final validation accuracy of base + Dense(10): {accuracy:.3f}")
        elif not weights.is_file():
            sys.exit(f"error: no base weights at {weights}; train them with --train-base")
        sets = {p: learnedbase.extract(heads_data, weights, p) for p in PRECISIONS}
        if args.train_base:  # tuner loaded the very base that trained: same features
            gap = np.abs(sets["float32"]["validation"][0] - own).max()
            print(f"  tuner's float32 extractor vs the trained network: max |diff| {gap:.2e}")
    size = learnedbase.SIZE
    images = ", ".join(f"{len(sets['float32'][s][1])} {s}" for s in ("train", "validation"))
    print(f"heads' images (none the base trained on), {size}x{size}: {images}")
    train = sets["float32"]["train"][0]
    print(f"float32 features: mean {train.mean():.3f}, deviation {train.std():.3f}, not rescaled")
    report_features(sets, standardize=False)
    return 0


def report_runs(bare: dict, runs: dict, trials: int) -> None:
    """The cold study runs next to the bare predict passes."""
    print("\ncold cache, `tuner worker` on studies/clothing-head.toml (seconds from its start)")
    head = ("precision", "predict", "extract", "1st trial", f"{trials} trials", "/ f32 predict")
    print("{:<10}{:>9}{:>9}{:>11}{:>11}{:>15}".format(*head))
    for p in PRECISIONS:
        r = runs[p]
        ratio = r["last"] / bare["float32"]
        cells = (p, bare[p], r["extraction"], r["first"], r["last"], ratio)
        print("{:<10}{:>9.1f}{:>9.1f}{:>11.1f}{:>11.1f}{:>14.2f}x".format(*cells))
    for p in PRECISIONS:
        warm = " ".join(f"{v:.3f}" for v in runs[p]["warm"])
        print(f"  {p} warm-start trials' last val_accuracy, as tuner trains them: {warm}")
    extract = runs["float32"]["extraction"] / runs["bfloat16"]["extraction"]
    finished = ", ".join(str(runs[p]["trials"]) for p in PRECISIONS)
    print(
        f"(trials finished: {finished} of {trials}; bfloat16 speed-up: extraction "
        f"{extract:.2f}x, bare predict {bare['float32'] / bare['bfloat16']:.2f}x)"
    )


def report_features(sets: dict, standardize: bool = True) -> None:
    """Feature error, and the heads' accuracy on each set of features."""
    f32, bf16 = sets["float32"], sets["bfloat16"]
    errors = np.concatenate([feature_error(f32[s][0], bf16[s][0]) for s in f32])
    print(
        "\nfeatures, bfloat16 vs float32, relative L2 per image: "
        f"median {np.median(errors):.4f}, max {errors.max():.4f}"
    )
    how = "standardized" if standardize else "raw"
    print(f"head final validation accuracy (10 epochs, seed 1, {how} features), f32, bf16:")
    train = f32["train"][0]
    scale = (train.mean(axis=0), train.std(axis=0) + 1e-12) if standardize else None
    gaps = []
    for point in POINTS:
        acc = {p: head_accuracy(sets[p], point, scale) for p in PRECISIONS}
        gaps.append(acc["bfloat16"] - acc["float32"])
        print(f"  {json.dumps(point):<62} {acc['float32']:.3f}  {acc['bfloat16']:.3f}")
    print(
        f"  mean gap {statistics.mean(gaps):+.3f}, mean |gap| "
        f"{statistics.mean(abs(g) for g in gaps):.3f}, largest {max(gaps, key=abs):+.3f}"
    )


def report_floor(images: int, bare: dict, runs: dict) -> None:
    flops = xception_flops(SIZE)
    print(f"\nFLOP floor: Xception at {SIZE}x{SIZE} is {flops / 1e9:.2f} GFLOP per image")
    for p in PRECISIONS:
        peak = peak_flops(p)
        floor = flops * images / peak
        print(
            f"  {p:<9} peak matmul {peak / 1e9:6.1f} GFLOP/s -> floor {floor:6.1f} s;"
            f" extraction {runs[p]['extraction']:.1f} s ({runs[p]['extraction'] / floor:.1f}x),"
            f" bare predict {bare[p]:.1f} s"
        )


if __name__ == "__main__":
    sys.exit(main())
