"""A cached clothing trial: Keras ``fit`` (the previous release's path) against headfit.

Every variant runs whole trials through ``tuner.training.objective.make_objective`` on a
real Optuna study (in-memory storage, no pruning, artifacts written to a
folder as the worker writes them), on the full clothing features from the
cache. Only the objective's training function differs between variants:

- ``keras fit``: the previous release's cached branch, kept here only:
  build the head, compile it, ``fit`` the NumPy features with ``shuffle=True``;
- ``keras fit, 1 call/epoch, XLA``: the same with ``steps_per_execution`` equal
  to the steps of an epoch and ``jit_compile=True``;
- ``headfit, no reuse``: tuner.training.headfit's tensors and whole-epoch calls, but
  every trial traces its own function (the kept heads are dropped per trial),
  without and with XLA;
- ``headfit, reused``: one compiled head per architecture, reused, with XLA
  (the first round's default) and without it (what tuner runs).

The variants alternate trial by trial (medians, so a shared machine's load
falls on all of them alike). The first trial of each variant is shown apart:
it traces. Also printed: the FLOP floor of one epoch at the best matmul rate
this process reaches (at the start and at the end), the same floor at one
core's rate (a child process with one TensorFlow thread: a trial's batches form
a chain, each step reading the weights the last one wrote, so one core runs
them), the final accuracies of
``keras fit`` and ``headfit`` trial by trial, and one full-pipeline epoch
(cache off) for scale.

    python3 benchmarks/trial_speed.py --rounds 8
    python3 benchmarks/trial_speed.py --rounds 3 --full-epochs 0 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import optuna
from optuna.artifacts import FileSystemArtifactStore

from tuner.assets.datasets import scan_dataset
from tuner.config.build import trial_setup
from tuner.config.spec import load_spec
from tuner.training import objective as objective_module

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "clothing-dataset-small"
Fit = Callable[..., list[Any]]


def keras_fit(steps_per_execution: int = 1, jit_compile: bool | str = "auto") -> Fit:
    """The previous release's cached branch of ``objective._fit``, with Keras' knobs."""
    import keras

    from tuner.recipes import Params
    from tuner.training.model import build_part

    def fit(spec, data, recipe, point, seed, callbacks):  # type: ignore[no-untyped-def]
        head = build_part(recipe, Params(point), data.feature_dim, data.num_classes)
        head.compile(
            optimizer=keras.optimizers.Adam(learning_rate=point["learning_rate"]),
            loss=keras.losses.CategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            steps_per_execution=steps_per_execution,
            jit_compile=jit_compile,
        )
        fs = data.features
        head.fit(
            fs.features["train"],
            fs.labels["train"],
            batch_size=spec.data.batch_size,
            epochs=spec.train.epochs,
            validation_data=(fs.features["validation"], fs.labels["validation"]),
            shuffle=True,
            verbose=0,
            callbacks=callbacks,
        )
        return list(head.weights)

    return fit


def headfit(reuse: bool, jit: bool) -> Fit:
    """tuner's cached branch with its own trainer; without reuse, every trial traces anew."""
    from tuner.training.headfit import HeadTrainer

    shipped = objective_module._fit
    own: list[HeadTrainer] = []

    def fit(spec, data, recipe, point, seed, callbacks):  # type: ignore[no-untyped-def]
        if not own:
            fs = data.features
            own.append(HeadTrainer(fs.features, fs.labels, spec.data.batch_size, jit))
        if not reuse:
            own[0]._kept.clear()
        data._trainer = own[0]  # the objective trains through data.trainer()
        return shipped(spec, data, recipe, point, seed, callbacks)

    return fit


@contextmanager
def training(fit: Fit) -> Any:
    """Run the objective with ``fit`` as its training function."""
    shipped = objective_module._fit
    objective_module._fit = fit
    try:
        yield
    finally:
        objective_module._fit = shipped


def trial_times(study: optuna.Study, objective: Any, fit: Fit) -> tuple[float, list[float]]:
    """Run one trial with ``fit``; its wall time and its epochs' times."""
    with training(fit):
        start = time.perf_counter()
        study.optimize(objective, n_trials=1)
        wall = time.perf_counter() - start
    trial = study.trials[-1]
    assert trial.state.name == "COMPLETE", trial.state
    return wall, trial.user_attrs["epoch_seconds"]


def matmul_gflops() -> float:
    """The best rate of a 2048-square float32 matmul in this process, GFLOP/s."""
    import tensorflow as tf

    a = tf.random.normal((2048, 2048))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        tf.linalg.matmul(a, a).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best / 1e9


def one_core_gflops() -> float:
    """The best 2048-square matmul rate of a child process with one TensorFlow thread."""
    env = {**os.environ, "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
    code += "from trial_speed import matmul_gflops; print(matmul_gflops())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"error: the one-thread matmul failed: {out.stderr.strip()[-300:]}")
    return float(out.stdout.split()[-1])


def epoch_gflop(train: int, val: int, dim: int, classes: int, inner: int = 0) -> float:
    """Multiply-adds of one epoch of the head (forward 2, backward 4 per weight and row)."""
    weights = dim * inner + inner * classes if inner else dim * classes
    return (6 * train + 2 * val) * weights / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    cache = Path(tempfile.gettempdir()) / "tuner-bench-cache"
    parser.add_argument("--cache-dir", default=str(cache), help="kept between runs")
    parser.add_argument("--rounds", type=int, default=8, help="timed trials of each variant")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--full-epochs", type=int, default=1, help="0 skips the full pipeline")
    parser.add_argument("--profile", action="store_true", help="cProfile one trial of each end")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sets = [
        f"data.dir={args.data}",
        "model.weights=none",
        "data.image_size=[150, 150]",
        f"cache.dir={args.cache_dir}",
        f"train.epochs={args.epochs}",
    ]
    spec = load_spec("clothing", sets)
    loads = [os.getloadavg()[0]]
    rate = matmul_gflops()  # again at the end: the floor takes the better, the hardware's
    scan = scan_dataset(args.data)
    data = objective_module.prepare_data(trial_setup(spec), scan, say=print)
    variants = {
        "keras fit (previous release)": keras_fit(),
        "keras fit, 1 call/epoch, XLA": keras_fit(-(-scan.count("train") // 32), True),
        "headfit, no reuse, no XLA": headfit(reuse=False, jit=False),
        "headfit, no reuse, XLA": headfit(reuse=False, jit=True),
        "headfit, reused, XLA (first round of issue 14)": headfit(reuse=True, jit=True),
        "headfit (tuner now)": headfit(reuse=True, jit=False),
    }
    with tempfile.TemporaryDirectory(prefix="tuner-trial-speed-") as tmp:
        store = FileSystemArtifactStore(tmp)
        objective = objective_module.make_objective(
            trial_setup(spec), data, store, say=lambda _: None
        )
        # The same sampler seed everywhere: trial k of every variant trains at the same rate
        # from the same initial weights, so the variants' final accuracies can be compared.
        studies = {
            name: optuna.create_study(
                direction="maximize",
                sampler=optuna.samplers.RandomSampler(seed=0),
                pruner=optuna.pruners.NopPruner(),
            )
            for name in variants
        }
        first = {name: trial_times(studies[name], objective, f) for name, f in variants.items()}
        walls: dict[str, list[float]] = {name: [] for name in variants}
        epochs: dict[str, list[float]] = {name: [] for name in variants}
        for i in range(args.rounds):
            names = list(variants) if i % 2 == 0 else list(reversed(variants))
            for name in names:
                wall, seconds = trial_times(studies[name], objective, variants[name])
                walls[name].append(wall)
                epochs[name] += seconds
        if args.profile:
            for name in ("keras fit (previous release)", "headfit (tuner now)"):
                profile(studies[name], objective, variants[name], name)
    loads.append(os.getloadavg()[0])
    full = full_epoch(sets, scan, args.full_epochs) if args.full_epochs else None
    loads.append(os.getloadavg()[0])
    rates = (max(rate, matmul_gflops()), one_core_gflops())
    print_table(args, data, studies, first, walls, epochs, full, rates)
    print(f"load average (1 min): {' -> '.join(f'{x:.1f}' for x in loads)}; {os.cpu_count()} CPUs")
    return 0


def profile(study: optuna.Study, objective: Any, fit: Fit, name: str) -> None:
    """The functions one more trial spends most time in, cumulative."""
    profiler = cProfile.Profile()
    profiler.enable()
    trial_times(study, objective, fit)
    profiler.disable()
    print(f"\nprofile of one trial, {name}:")
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


def full_epoch(sets: list[str], scan: Any, epochs: int) -> float:
    """The median epoch of the full pipeline (cache off), trained by the objective."""
    spec = load_spec("clothing", [*sets, "cache.enabled=false", f"train.epochs={epochs}"])
    data = objective_module.prepare_data(trial_setup(spec), scan, say=print)
    objective = objective_module.make_objective(trial_setup(spec), data, None, say=lambda _: None)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    study.optimize(objective, n_trials=1)
    return statistics.median(study.trials[-1].user_attrs["epoch_seconds"])


def print_table(
    args: argparse.Namespace,
    data: Any,
    studies: dict[str, optuna.Study],
    first: dict[str, tuple[float, list[float]]],
    walls: dict[str, list[float]],
    epochs: dict[str, list[float]],
    full: float | None,
    rates: tuple[float, float],
) -> None:
    """The Markdown table: per variant, median epoch and trial, and the first trial."""
    old = statistics.median(walls["keras fit (previous release)"])
    old_epoch = statistics.median(epochs["keras fit (previous release)"])
    train, val = (len(data.features.features[s]) for s in ("train", "validation"))
    gflop = epoch_gflop(train, val, data.feature_dim, data.num_classes)
    rate, core_rate = rates
    floor, core_floor = (gflop / r for r in rates)
    print(f"\n{args.rounds} timed trials of {args.epochs} epochs per variant, alternating\n")
    print("| path | median epoch | median trial | trial speed-up | first trial (traces) |")
    print("|---|---:|---:|---:|---:|")
    for name in walls:
        epoch, trial = statistics.median(epochs[name]), statistics.median(walls[name])
        print(
            f"| {name} | {1000 * epoch:.1f} ms | {1000 * trial:.0f} ms | {old / trial:.1f}x "
            f"| {first[name][0]:.2f} s |"
        )
    now_epoch = statistics.median(epochs["headfit (tuner now)"])
    for label, seconds in (
        (f"FLOP floor: {gflop:.3f} GFLOP per epoch at {rate:.0f} GFLOP/s (2048^2 matmul)", floor),
        (f"FLOP floor at one core's rate: {core_rate:.0f} GFLOP/s (one TF thread)", core_floor),
    ):
        print(f"| {label} | {1000 * seconds:.1f} ms | {1000 * seconds * args.epochs:.0f} ms | | |")
    if full is not None:
        print(f"| full pipeline, cache off (one epoch) | {full:.1f} s | | | |")
    print(
        f"\nepoch: {old_epoch / now_epoch:.1f}x faster than keras fit, "
        f"{now_epoch / floor:.1f}x the FLOP floor ({os.cpu_count()} CPUs), "
        f"{now_epoch / core_floor:.1f}x the one-core floor"
    )
    old_acc, now_acc = (
        [t.value for t in studies[n].trials]
        for n in ("keras fit (previous release)", "headfit (tuner now)")
    )
    diffs = [abs(a - b) for a, b in zip(old_acc, now_acc, strict=True)]
    print(
        f"final val_accuracy, trial by trial (same rate and initial weights, another batch "
        f"order): keras fit mean {statistics.mean(old_acc):.4f}, headfit mean "
        f"{statistics.mean(now_acc):.4f}, |difference| median {statistics.median(diffs):.4f}, "
        f"max {max(diffs):.4f}"
    )


if __name__ == "__main__":
    sys.exit(main())
