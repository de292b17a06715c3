"""The worker loop: a study-wide trial budget, signals, retries and local process pools.

TensorFlow is imported lazily, inside :func:`run_worker`, after the thread
budget is set, so that the pool's parent process never loads it.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import optuna
from filelock import FileLock
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from tuner.attrs import SPACE_ATTR
from tuner.console import count_progress, download_progress, say, warn
from tuner.data import DATASETS, DatasetScan, download_dataset, scan_dataset
from tuner.errors import DataError, SpecError, TunerError
from tuner.recipes.probe import probe, resolve_checked
from tuner.search import check_joinable, open_study, pruner_name
from tuner.space import Space, format_params
from tuner.spec import StudySpec
from tuner.storage import BudgetLock, artifact_store_for, redact_url
from tuner.weights import check_weights

__all__ = [
    "Interrupted",
    "WorkerReport",
    "configure_threads",
    "ensure_dataset",
    "preflight",
    "run_pool",
    "run_worker",
]

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
MAX_CONSECUTIVE_FAILURES = 3


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread on SIGINT or SIGTERM, to end the current trial."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass(frozen=True)
class WorkerReport:
    """What one worker did."""

    ran: int
    complete: int
    pruned: int
    failed: int
    interrupted: int | None = None  # the signal number, when stopped by one

    @property
    def exit_code(self) -> int:
        return 128 + self.interrupted if self.interrupted else 0


def configure_threads(threads: int | None) -> None:
    """Give TensorFlow a fixed number of CPU threads; call before any TF op runs."""
    if not threads:
        return
    inter = max(1, min(2, threads))
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = str(inter)
    import tensorflow as tf

    with contextlib.suppress(RuntimeError):  # already initialised: keep its setting
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    # Read back, so the log shows what TensorFlow really uses.
    say(
        f"TensorFlow CPU threads: {tf.config.threading.get_intra_op_parallelism_threads()} "
        f"intra-op, {tf.config.threading.get_inter_op_parallelism_threads()} inter-op"
    )


def _download(spec: StudySpec, folder: Path) -> None:
    """Download the spec's known dataset into ``folder``, with a progress bar."""
    if spec.data.source not in DATASETS:
        raise DataError(
            f"data.source {spec.data.source!r} is not a known dataset "
            f"({', '.join(DATASETS)}); fix data.source or download the data by hand"
        )
    message = f"{folder} is missing; downloading the {spec.data.source} dataset"
    with download_progress(spec.data.source) as bar:

        def progress(done: int, total: int | None) -> None:
            nonlocal message  # said once bytes arrive: a failed start leaves one line
            if message:
                say(message)
                message = ""
            bar(done, total)

        download_dataset(spec.data.source, folder, url=spec.data.url or None, progress=progress)


# Set by a pool for its children: a data folder whose images all decoded a moment ago.
CHECKED_DATA_ENV = "TUNER_CHECKED_DATA"


def ensure_dataset(spec: StudySpec) -> DatasetScan:
    """Validate ``data.dir``, downloading the spec's known dataset first if it is missing."""
    folder = Path(spec.data.dir)
    if not folder.exists() and spec.data.source:
        # Workers started together download once: the others wait, then find the folder.
        folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{folder}.download.lock"):
            if not folder.exists():
                _download(spec, folder)
    # A pool's parent has just decoded every image; its children need not do it again.
    checked = os.environ.get(CHECKED_DATA_ENV) == str(folder.resolve())
    scan = scan_dataset(folder, skip_bad_files=spec.data.skip_bad_files, decode=not checked)
    if scan.bad_files:
        names = ", ".join(str(p) for p in scan.bad_files[:5])
        more = f" and {len(scan.bad_files) - 5} more" if len(scan.bad_files) > 5 else ""
        warn(f"skipping {len(scan.bad_files)} unreadable files: {names}{more}")
    return scan


def preflight(
    spec: StudySpec,
    storage: BaseStorage,
    *,
    worker_index: int = 0,
    accept_space_change: bool = False,
) -> tuple[optuna.Study, DatasetScan]:
    """Check the study, recipe, data and weights, then join the study, before training starts.

    A mistake in any of them thus fails at once, with one error line, and no
    trial is started. A user's recipe module is imported and its signature
    checked before the data is read, then the recipe is built once at the edges
    of the space (see :mod:`tuner.recipes.probe`); built-in recipes need no
    TensorFlow here. The study is created only once all of this passed, so a
    first run that fails leaves no study behind with its settings.

    Raises:
        StudyError, RecipeError, DataError, WeightsError: naming what is wrong and
            how to fix it.
    """
    check_joinable(spec, storage, accept_space_change=accept_space_change)
    recipe = resolve_checked(spec)
    scan = ensure_dataset(spec)
    check_weights(spec)
    for message in probe(spec, recipe, len(scan.class_names)):
        warn(message)
    study = open_study(
        spec, storage, worker_index=worker_index, accept_space_change=accept_space_change
    )
    return study, scan


class _SignalGuard:
    """SIGINT/SIGTERM interrupt a running objective at once, and otherwise stop the loop.

    Outside the objective (while Optuna creates or finishes a trial) a signal only
    sets ``stop``, so the storage is never left half-written.
    """

    def __init__(self) -> None:
        self.armed = False
        self.stop: int | None = None

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.stop = signum
        # Restore the defaults so that a second signal stops the process at once.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if self.armed:
            raise Interrupted(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[_SignalGuard]:
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {s: signal.signal(s, self._handle) for s in signals}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        if self.stop is not None:
            raise Interrupted(self.stop)
        self.armed = True
        try:
            yield
        finally:
            self.armed = False


def _stored_space(study: optuna.Study) -> Space | None:
    """The study's space, to line up the parameters of the trial lines."""
    try:
        return Space.from_json(study.user_attrs.get(SPACE_ATTR) or {})
    except (SpecError, TypeError, ValueError):  # stored by another version of tuner
        return None


def _announce(study: optuna.Study, trial: FrozenTrial) -> None:
    params = format_params(trial.params, _stored_space(study))
    if trial.state == TrialState.COMPLETE:
        outcome = f"finished val_acc={trial.value:.4f}"
    elif trial.state == TrialState.PRUNED:
        reason = trial.user_attrs.get("prune_reason") or "pruned by " + pruner_name(study.pruner)
        epoch = trial.user_attrs.get("pruned_at_epoch")
        after = f"after epoch {epoch + 1}" if isinstance(epoch, int) else "early"
        outcome = f"pruned {after} ({reason})"
    else:
        outcome = f"failed ({trial.user_attrs.get('fail_reason', 'see the log above')})"
    try:
        best = study.best_trial
        best_text = f"best so far: trial {best.number} {format_params(best.params)} "
        best_text += f"val_acc={best.value:.4f}"
    except ValueError:
        best_text = "no finished trial yet"
    say(f"trial {trial.number} {params} {outcome}; {best_text}")


def _retry_interrupted(study: optuna.Study, storage: BaseStorage, number: int) -> None:
    """Queue an interrupted trial again, the way stale trials are retried."""
    trial = study.get_trials(deepcopy=False)[number]
    if trial.state == TrialState.FAIL:
        callback = getattr(storage, "heartbeat_stale_trial_callback", None)
        callback = callback or RetryHeartbeatStaleTrialCallback(max_retry=3)
        callback(study, trial)


def run_worker(
    spec: StudySpec,
    storage: BaseStorage,
    url: str,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    worker_index: int = 0,
    accept_space_change: bool = False,
) -> WorkerReport:
    """Join the spec's study and run trials until the study-wide budget is reached.

    Args:
        spec: the study spec.
        storage: an opened storage (see :func:`tuner.storage.open_storage`).
        url: the storage URL; it places the budget lock and the artifact store.
        n_trials: stop once the study holds this many complete, pruned or running
            trials, counted over all workers; defaults to ``search.n_trials``.
        timeout: start no new trial after this many seconds.
        worker_index: this worker's index in a pool; offsets the sampler seed.
        accept_space_change: continue a study whose stored space differs from the spec.

    Returns:
        A report; its ``exit_code`` is 128 + the signal number after SIGINT or SIGTERM.
    """
    study, scan = preflight(
        spec, storage, worker_index=worker_index, accept_space_change=accept_space_change
    )
    say(f"worker joining study {spec.study.name!r} on {redact_url(url)}")
    from tuner.objective import make_objective, prepare_data  # loads TensorFlow

    target = n_trials or spec.search.n_trials
    with count_progress("frozen-base features:") as progress:
        data = prepare_data(spec, scan, say, progress)
    objective = make_objective(spec, data, artifact_store_for(url, spec), say)
    lock = BudgetLock(storage, url, study.study_name)
    guard = _SignalGuard()
    current: list[int] = []

    def claimed_then_run(trial: optuna.Trial) -> float:
        lock.release()  # the trial is RUNNING now, so it counts towards the budget
        current.append(trial.number)
        with guard.interruptible():
            return objective(trial)

    deadline = time.monotonic() + timeout if timeout else math.inf
    ran: list[FrozenTrial] = []
    failures = 0
    with guard.installed():
        while guard.stop is None and time.monotonic() < deadline:
            with lock:
                # A killed worker's trial stays RUNNING until failed; do it before counting.
                optuna.storages.fail_stale_trials(study)
                held = len(study.get_trials(deepcopy=False, states=COUNTED))
                if held >= target:
                    say(f"study {study.study_name!r} holds {held} of {target} trials; done")
                    break
                try:
                    study.optimize(
                        claimed_then_run,
                        n_trials=1,
                        catch=(Exception,),
                        callbacks=[lambda s, t: ran.append(t), _announce],
                    )
                except Interrupted:
                    break
            failures = failures + 1 if ran and ran[-1].state == TrialState.FAIL else 0
            if failures >= MAX_CONSECUTIVE_FAILURES:
                warn(f"stopping after {failures} failed trials in a row; see the errors above")
                break
    if guard.stop is not None:
        name = signal.Signals(guard.stop).name
        if current:
            _retry_interrupted(study, storage, current[-1])
        say(f"stopped by {name}; no trial is left RUNNING (an interrupted one is queued again)")
    states = [t.state for t in ran]
    return WorkerReport(
        ran=len(ran),
        complete=states.count(TrialState.COMPLETE),
        pruned=states.count(TrialState.PRUNED),
        failed=states.count(TrialState.FAIL),
        interrupted=guard.stop,
    )


def _visible_gpus() -> list[str]:
    if (env := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def pool_environment(index: int, workers: int, cores: int, gpus: Sequence[str]) -> dict[str, str]:
    """The environment of pool worker ``index``: its CPU share, and its own GPU if any."""
    env = {
        "TUNER_WORKER_INDEX": str(index),
        "TUNER_THREADS": str(max(1, cores // workers)),
    }
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return env


def check_pool_size(workers: int) -> None:
    """Refuse a pool larger than the cores (or GPUs) that its workers would share.

    Raises:
        TunerError: naming the most workers this machine can give a core or GPU each.
    """
    cores, gpus = os.cpu_count() or 1, _visible_gpus()
    limit = max(cores, len(gpus))
    if workers > limit:
        what = f"{cores} CPU cores" + (f" and {len(gpus)} GPUs" if gpus else "")
        raise TunerError(
            f"--workers {workers} is more than this machine's {what}, so workers would "
            f"fight over them; use --workers {limit} or fewer, and start more workers on "
            "other machines against the same --storage"
        )


def run_pool(argv: Sequence[str], workers: int, checked: DatasetScan | None = None) -> int:
    """Run ``tuner worker`` ``workers`` times in child processes; forward Ctrl-C and SIGTERM.

    ``checked`` is the dataset as this process just validated it: when all its
    images decoded, the children skip decoding them again.

    Returns:
        0 when every child exited 0, else the first non-zero exit code.
    """
    cores = os.cpu_count() or 1
    gpus = _visible_gpus()
    say(
        f"starting {workers} workers, {max(1, cores // workers)} CPU threads each"
        + (f", GPUs {', '.join(gpus)}" if gpus else "")
    )
    children = []
    for i in range(workers):
        env = {**os.environ, **pool_environment(i, workers, cores, gpus)}
        if checked is not None and not checked.bad_files:
            env[CHECKED_DATA_ENV] = str(checked.root.resolve())
        cmd = [sys.executable, "-m", "tuner", "worker", *argv, "--workers", "1"]
        # Own sessions: a terminal's Ctrl-C reaches only this parent, which forwards it
        # once. A second signal would stop a child at once, perhaps mid-write.
        children.append(subprocess.Popen(cmd, env=env, start_new_session=True))

    def forward(signum: int, _frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [child.wait() for child in children]
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return next((c for c in codes if c != 0), 0)
