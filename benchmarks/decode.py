"""Images decoded once against decoded every epoch: a clothing-scratch epoch, side by side.

Each round runs, in its own process and in turn, main's code (a ``git worktree`` of
``--base``, default ``main``) and this tree's, with the decoded images in memory and on disk
(``data.memory_limit_mb=0``). Every run trains the ``clothing-scratch`` study's model
(small-cnn at 64x64, batch 32) for ``--epochs`` epochs through
``tuner.training.objective.make_objective``, on a subset of the clothing dataset copied into a
temporary folder, and times:

- ``prepare``: :func:`tuner.training.objective.prepare_data` (the one decoding pass, now);
- ``epoch``: each epoch after the first (the first also traces the model), wall time;
- ``CPU``: the process's CPU time over the whole trial (every thread), per epoch: decoding
  costs it even where ``tf.data`` overlaps it with training;
- ``input``: one pass over the trial's training batches and the validation batches alone,
  what the input pipeline costs an epoch; its share is ``input / epoch``.

It prints each run's figures and the medians by kind, with the validation accuracy of each
epoch, which must agree between main and this tree.

Usage::

    python3 benchmarks/decode.py [--per-class 100] [--epochs 3] [--rounds 2] [--base main]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = Path(__file__).resolve().parents[1]
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "clothing-dataset-small"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="clothing dataset folder")
    parser.add_argument("--per-class", type=int, default=100, help="train images a class (0: all)")
    parser.add_argument(
        "--val-per-class", type=int, default=30, help="validation, a class (0: all)"
    )
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (first untimed)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three runs")
    parser.add_argument("--base", default="main", help="the git ref to compare against")
    parser.add_argument("--child", nargs=3, metavar=("DATA", "CACHE", "LIMIT"), help="internal")
    return parser.parse_args(argv)


def subset(data: Path, dest: Path, per_class: int, val_per_class: int) -> int:
    """Copy the first images of each class (0: all) into ``dest``; returns the training images."""
    copied = 0
    for split, count in (("train", per_class), ("validation", val_per_class)):
        for folder in sorted(p for p in (data / split).iterdir() if p.is_dir()):
            target = dest / split / folder.name
            target.mkdir(parents=True)
            for image in sorted(folder.iterdir())[: count or None]:
                shutil.copy(image, target / image.name)
                copied += split == "train"
    return copied


def child(data: str, cache: str, limit: str, epochs: int) -> dict[str, object]:
    """One run in this process, with whichever ``tuner`` PYTHONPATH gives."""
    import optuna

    from tuner.assets.datasets import scan_dataset
    from tuner.config.build import trial_setup
    from tuner.config.spec import load_spec
    from tuner.training import objective as objective_module

    sets = [f"data.dir={data}", f"cache.dir={cache}", f"train.epochs={epochs}"]
    sets += ["pruner.kind=none"] + ([f"data.memory_limit_mb={limit}"] if limit != "-" else [])
    setup = trial_setup(load_spec("clothing-scratch", sets))
    scan = scan_dataset(data, decode=False)
    start = time.perf_counter()
    data_ = objective_module.prepare_data(setup, scan, say=lambda _: None)
    prepare = time.perf_counter() - start
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"learning_rate": 1e-3})
    cpu = time.process_time()  # every thread's: decoding costs CPU even where it overlaps
    study.optimize(objective_module.make_objective(setup, data_, say=lambda _: None), 1)
    cpu = time.process_time() - cpu
    trial = study.trials[0]
    inputs = []
    for _ in range(max(2, epochs - 1)):  # the validation batches once first: main caches them
        start = time.perf_counter()
        for _batch in objective_module._train_split(setup, data_, 0):
            pass
        for _batch in data_.val_ds:
            pass
        inputs.append(time.perf_counter() - start)
    return {
        "prepare": prepare,
        "epochs": trial.user_attrs["epoch_seconds"][1:],
        "input": statistics.median(inputs[1:]),
        "cpu": cpu / epochs,
        "val_accuracy": [round(v, 4) for v in trial.intermediate_values.values()],
    }


def run(tree: Path, data: Path, cache: Path, limit: str, epochs: int) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    args = [sys.executable, __file__, "--epochs", str(epochs), "--child"]
    done = subprocess.run(
        [*args, str(data), str(cache), limit], env=env, capture_output=True, text=True, cwd=tree
    )
    if done.returncode != 0:
        sys.exit(f"error: the run in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, epochs=args.epochs)))
        return 0
    with tempfile.TemporaryDirectory(prefix="tuner-decode-") as tmp:
        work = Path(tmp)
        base = work / "base"
        subprocess.run(
            ["git", "worktree", "add", "-q", "--detach", str(base), args.base],
            cwd=HERE,
            check=True,
        )
        try:
            images = subset(args.data, work / "data", args.per_class, args.val_per_class)
            print(f"{images} training images, 64x64, small-cnn, batch 32, {args.epochs} epochs")
            kinds = {"main (decode every epoch)": (base, "-"), "decoded, memory": (HERE, "-")}
            kinds["decoded, disk (memory_limit_mb=0)"] = (HERE, "0")
            results: dict[str, list[dict[str, object]]] = {k: [] for k in kinds}
            for r in range(args.rounds):
                for kind, (tree, limit) in kinds.items():
                    cache = work / f"cache-{r}"  # a fresh disk cache each round: decoded once
                    found = run(tree, work / "data", cache, limit, args.epochs)
                    results[kind].append(found)
                    print(f"round {r + 1} {kind}: {json.dumps(found)}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=HERE)
    head = f"{'run':36} {'prepare s':>9} {'epoch s':>8} {'CPU s':>6} {'input s':>8} {'share':>6}"
    print(f"\n{head}")
    for kind, found in results.items():
        epoch = statistics.median(e for f in found for e in f["epochs"])  # type: ignore[attr-defined]
        inputs = statistics.median(f["input"] for f in found)  # type: ignore[misc]
        prepare = statistics.median(f["prepare"] for f in found)  # type: ignore[misc]
        cpu = statistics.median(f["cpu"] for f in found)  # type: ignore[misc]
        print(
            f"{kind:36} {prepare:9.2f} {epoch:8.2f} {cpu:6.2f} {inputs:8.3f} {inputs / epoch:6.1%}"
        )
    curves = {k: [f["val_accuracy"] for f in v] for k, v in results.items()}
    print("validation accuracy per epoch:", json.dumps(curves))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
