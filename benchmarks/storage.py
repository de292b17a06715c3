"""Storage overhead: trials per second with a trivial objective, on every backend.

Each worker is a spawned process that opens the storage with
:func:`tuner.storages.storage.open_storage` and runs the worker's own trial loop,
:func:`tuner.runner.worker.run_objective`: the clothing spec's study (TPE sampler,
median pruner), the budget lock, reaping, the phase board, the trial lines.
Only the objective is trivial. It does no training but talks to the storage
exactly like a real cached trial: the sampled parameters, ``cache`` and
``worker``, 10 epochs each with ``trial.report`` and (but the last)
``should_prune``, then the contract's seven per-epoch attributes written once
(together, where the measured checkout writes them together), and the two
artifacts (the weights and the learning curve) uploaded with Optuna's
``upload_artifact`` (tiny files: writing the real ones is part of the
cached trial's time).

Three figures per trial. The wall time per trial (wall time / trials) with
every worker hammering the storage is the inverse of the storage's capacity:
the fastest a study can go. The worker CPU per trial is all the CPU time the
workers spend (Python, the driver and the database file, the sampler, the
pruner and the trial loop; waiting for a lock costs none), over the whole run
and in the steady state (from each worker's second trial on). Of the steady
state, the part spent inside the storage's calls, in every thread (the
heartbeat's and the phase board's included), is the storage time, shown
against the wall time of one cached clothing trial: 10 epochs of the Dense
head on 3068x2048 features, batch 32, timed through ``tuner.training.objective`` on
synthetic features of that shape in the same run (or given with
``--trial-seconds``). A database server's own CPU time is not counted.
``--against DIR`` measures another checkout of tuner (say, the last release)
alternately with this one.

    python3 benchmarks/storage.py                  # every backend, 1, 4 and 8 workers
    python3 benchmarks/storage.py --backends sqlite --workers 8 --trials 96 --by-call
    git worktree add /tmp/before REV && python3 benchmarks/storage.py --against /tmp/before
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from tuner.common.console import err_console
from tuner.config.build import open_study, trial_setup
from tuner.config.spec import StudySpec, load_spec
from tuner.runner.worker import run_objective
from tuner.space.params import suggest
from tuner.storages.storage import open_storage

BACKENDS = ("sqlite", "journal", "postgresql", "mysql")
SERVERS = {
    "postgresql": os.environ.get(
        "TUNER_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
    ),
    "mysql": os.environ.get("TUNER_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}
EPOCHS = 10
SPAWN = mp.get_context("spawn")


def trivial_objective(spec: StudySpec, folder: Path) -> Callable[[optuna.Trial], float]:
    """No training, but every storage call that a real cached trial makes."""
    store = FileSystemArtifactStore(str(folder / "artifacts"))
    (folder / "artifacts").mkdir(exist_ok=True)
    blob = folder / f"artifact-{os.getpid()}.bin"
    blob.write_bytes(b"0" * 64)

    def objective(trial: optuna.Trial) -> float:
        suggest(trial, spec.search.space)
        set_attrs(trial, {"cache": "hit", "worker": f"{socket.gethostname()}:{os.getpid()}"})
        for epoch in range(EPOCHS):
            trial.report(0.5, epoch)  # equal everywhere, so the median pruner never prunes
            # tuner.training.objective.PruningBeforeLastEpoch does not ask after the last epoch
            if epoch + 1 < EPOCHS and trial.should_prune():
                raise optuna.TrialPruned()
        # tuner.training.callbacks.EpochRecorder writes the per-epoch record once at the end of
        # a cached trial (its epochs take milliseconds; it flushes at most every 5 s).
        lists = ("train_accuracy", "val_loss", "epoch_values", "train_values", "epoch_seconds")
        set_attrs(trial, {"gap": 0.0, "metric_gap": 0.0, **{k: [0.5] * EPOCHS for k in lists}})
        # the head's weights and the learning-curve PNG, as tuner.training.objective uploads them
        for attr in ("weights_artifact", "curve_artifact"):
            artifact = upload_artifact(
                artifact_store=store, file_path=str(blob), study_or_trial=trial
            )
            trial.set_user_attr(attr, artifact)
        return 0.5

    return objective


def set_attrs(trial: optuna.Trial, values: dict[str, Any]) -> None:
    """Several attributes, written as the measured checkout's objective writes them."""
    try:
        from tuner.common.attrs import set_attrs as together
    except ImportError:  # a checkout from before it wrote them in one transaction
        for key, value in values.items():
            trial.set_user_attr(key, value)
        return
    together(trial, values)


class StorageClock:
    """Adds up the CPU time spent inside a storage's calls, in every thread of the worker.

    A call made from inside another (Optuna's cache reading through the RDB
    storage's private helpers, say) is counted once, in the outer call.
    """

    PRIVATE = ("_get_trials", "_set_trial_param", "_get_best_trial_id", "_get_stale_trial_ids")

    def __init__(self, storage: BaseStorage) -> None:
        self.by_call: dict[str, tuple[float, int]] = {}  # CPU seconds and calls, by name
        self._lock = threading.Lock()
        self._depth = threading.local()
        public = [n for n in dir(BaseStorage) if not n.startswith("_")]
        for name in [
            *public,
            *self.PRIVATE,
            "record_heartbeat",
            "set_trial_user_attrs",
            "set_trial_intermediate_values",
        ]:
            method = getattr(storage, name, None)
            if callable(method):
                setattr(storage, name, self._timed(name, method))

    @property
    def total(self) -> float:
        """CPU seconds inside storage calls so far."""
        with self._lock:  # other threads (the heartbeat's) add calls
            return sum(spent for spent, _ in self.by_call.values())

    def _timed(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(self._depth, "n", 0)
            self._depth.n = depth + 1
            start = time.thread_time()
            try:
                return method(*args, **kwargs)
            finally:
                self._depth.n = depth
                if depth == 0:
                    spent = time.thread_time() - start
                    with self._lock:
                        was, n = self.by_call.get(name, (0.0, 0))
                        self.by_call[name] = (was + spent, n + 1)

        return timed


def worker(
    spec: StudySpec, url: str, folder: Path, target: int, barrier: Any, results: Any
) -> None:
    """One worker process: tuner's trial loop around the trivial objective.

    Reports its CPU time over the whole run, the part of it spent inside storage
    calls, and both in the steady state: from the start of its second trial on,
    once the process has imported, compiled and cached what a worker does once
    (its first trial), not once per trial.
    """
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    err_console.quiet = True  # the trial lines cost a terminal's time, not the storage's
    storage = open_storage(url, spec.storage)
    clock = StorageClock(storage)
    inner = trivial_objective(spec, folder)
    steady: list[tuple[float, float]] = []  # CPU time and storage CPU at each trial's start
    calls: dict[str, tuple[float, int]] = {}  # clock.by_call at the second trial's start

    def objective(trial: optuna.Trial) -> float:
        steady.append((time.process_time(), clock.total))
        if len(steady) == 2:
            with clock._lock:
                calls.update(clock.by_call)
        return inner(trial)

    barrier.wait()
    start, cpu = time.time(), time.process_time()
    run_objective(spec, storage, url, lambda check: objective, n_trials=target)
    end = time.process_time()
    if len(steady) > 1:
        warm = (end - steady[1][0], clock.total - steady[1][1], len(steady) - 1)
        by_call = {
            k: (spent - calls.get(k, (0.0, 0))[0], n - calls.get(k, (0.0, 0))[1])
            for k, (spent, n) in clock.by_call.items()
        }
    else:
        warm, by_call = (0.0, 0.0, 0), {}
    results.put((start, time.time(), end - cpu, *warm, by_call))


def measure(
    kind: str, url: str, workers: int, trials: int, folder: Path, tree: str | None = None
) -> dict[str, float]:
    """Run ``trials`` trials with ``workers`` processes; check the study afterwards.

    ``tree``: a checkout of another version of tuner, measured by this script run
    again with that tree first on its path (its spawned workers inherit the path).
    """
    if tree:
        command = [sys.executable, __file__, "--measure-one", kind, url, str(workers)]
        command += [str(trials), str(folder)]
        env = {**os.environ, "PYTHONPATH": tree}
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"the run against {tree} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]
    name = f"bench_{kind}_{workers}_{os.getpid()}_{time.time_ns()}"
    spec = load_spec("clothing", [f"study.name={name}", "search.warm_start=[]"])
    open_study(spec, open_storage(url, spec.storage))  # created once, outside the timing
    barrier, results = SPAWN.Barrier(workers), SPAWN.Queue()
    args = (spec, url, folder, trials, barrier, results)
    procs = [SPAWN.Process(target=worker, args=args) for _ in range(workers)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        raise SystemExit(f"a worker failed on {kind} with {workers} workers")
    wall = max(o[1] for o in outcomes) - min(o[0] for o in outcomes)
    storage = open_storage(url, spec.storage)
    states = [t.state for t in optuna.load_study(study_name=name, storage=storage).trials]
    if len(states) != trials or set(states) != {TrialState.COMPLETE}:
        raise SystemExit(f"{kind}, {workers} workers: expected {trials} complete trials")
    if kind in SERVERS:
        optuna.delete_study(study_name=name, storage=storage)  # the databases are shared
    cpu = sum(o[2] for o in outcomes) / trials
    counted = max(1, sum(o[5] for o in outcomes))
    by_call: dict[str, tuple[float, float]] = {}  # CPU and number of calls, per trial
    for o in outcomes:
        for name, (spent, n) in o[6].items():
            was = by_call.get(name, (0.0, 0.0))
            by_call[name] = (was[0] + spent / counted, was[1] + n / counted)
    return {
        "by_call": by_call,
        "per_second": trials / wall,
        "wall_s": wall / trials,
        "cpu_s": cpu,
        "steady_s": sum(o[3] for o in outcomes) / counted,
        "storage_s": sum(o[4] for o in outcomes) / counted,
    }


def cached_trial_seconds(repeats: int = 5) -> float:
    """Median time of one cached clothing trial, on synthetic features of the real shape."""
    import numpy as np
    from optuna.artifacts import FileSystemArtifactStore

    from tuner.assets.datasets import DatasetScan
    from tuner.training.features import FeatureSet
    from tuner.training.objective import TrialData, make_objective

    rng = np.random.default_rng(0)
    shapes = {"train": 3068, "validation": 341}
    feats = {s: rng.random((n, 2048), dtype=np.float32) for s, n in shapes.items()}
    labels = {s: np.eye(10, dtype=np.float32)[rng.integers(0, 10, n)] for s, n in shapes.items()}
    classes = tuple(f"class{i}" for i in range(10))
    data = TrialData(
        DatasetScan(Path("."), classes, {}),
        "hit",
        features=FeatureSet(feats, labels, "hit", "synthetic"),
    )
    spec = load_spec("clothing", ["model.weights=none", "pruner.kind=none"])
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        objective = make_objective(
            trial_setup(spec), data, FileSystemArtifactStore(tmp), say=lambda _: None
        )
        study = optuna.create_study(direction="maximize")
        for _ in range(repeats + 1):  # the first traces the head's epoch: not timed
            study.enqueue_trial({"learning_rate": 1e-3})
            start = time.perf_counter()
            study.optimize(objective, n_trials=1)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def backend_urls(kinds: list[str], folder: Path) -> dict[str, str]:
    """The URL of each backend to measure; unreachable servers are reported and left out."""
    import sqlalchemy

    urls = {}
    for kind in kinds:
        if kind == "sqlite":
            urls[kind] = f"sqlite:///{folder / 'bench.db'}"
        elif kind == "journal":
            urls[kind] = f"journal://{folder / 'bench.log'}"
        else:
            try:
                sqlalchemy.create_engine(SERVERS[kind]).connect().close()
                urls[kind] = SERVERS[kind]
            except Exception as e:  # report any reason and go on with the rest
                print(f"skipping {kind}: {type(e).__name__}: {str(e).splitlines()[0]}")
    return urls


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--measure-one"]:  # one measurement, for --against: JSON on stdout
        kind, url, workers, trials, folder = argv[1:]
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        warnings.simplefilter("ignore")
        print(json.dumps(measure(kind, url, int(workers), int(trials), Path(folder))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--trials", type=int, default=48, help="trials per measurement")
    parser.add_argument("--trial-seconds", type=float, help="a cached trial's time, if known")
    parser.add_argument(
        "--against",
        metavar="DIR",
        help="a checkout of another version (git worktree add DIR REV), measured alternately",
    )
    parser.add_argument(
        "--by-call", action="store_true", help="also the storage time per trial of each call"
    )
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")
    print(f"{os.cpu_count()} cores; {args.trials} trials of {EPOCHS} epochs per measurement")
    rows = []
    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as tmp:
        for kind, url in backend_urls(args.backends, Path(tmp)).items():
            for n in args.workers:
                trees = (
                    [(f"{kind} ({Path(args.against).name})", args.against)] if args.against else []
                )
                for label, tree in [*trees, (kind, None)]:
                    rows.append((label, n, measure(kind, url, n, args.trials, Path(tmp), tree)))
                    print(f"  {label} x{n}: {rows[-1][2]['per_second']:.1f} trials/s", flush=True)
    trial_s = args.trial_seconds or cached_trial_seconds()
    print(f"\none cached clothing trial: {trial_s:.2f} s\n")
    print(
        "| storage | workers | trials/s | wall per trial | worker CPU per trial, whole run "
        "| steady | of which in storage calls | storage share of a cached trial |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind, n, r in rows:
        print(
            f"| {kind} | {n} | {r['per_second']:.1f} | {1000 * r['wall_s']:.0f} ms "
            f"| {1000 * r['cpu_s']:.0f} ms ({100 * r['cpu_s'] / trial_s:.1f}%) "
            f"| {1000 * r['steady_s']:.0f} ms ({100 * r['steady_s'] / trial_s:.1f}%) "
            f"| {1000 * r['storage_s']:.0f} ms | {100 * r['storage_s'] / trial_s:.1f}% |"
        )
    if args.by_call:
        print(
            "\nstorage CPU per steady trial by call: ms (calls); calls inside another count in it"
        )
        for kind, n, r in rows:
            ranked = sorted(r.get("by_call", {}).items(), key=lambda kv: -kv[1][0])
            shown = ", ".join(f"{k} {1000 * t:.1f} ({c:.1f})" for k, (t, c) in ranked if t > 5e-4)
            print(f"- {kind} x{n}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
