"""The worker loop: a study-wide trial budget, signals, retries and local process pools.

TensorFlow is imported lazily, inside :func:`run_worker`, after the thread
budget is set, so that the pool's parent process never loads it.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
from filelock import FileLock
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from tuner.attrs import SPACE_ATTR
from tuner.console import download_progress, say, warn
from tuner.data import DATASETS, DatasetScan, download_dataset, scan_dataset
from tuner.errors import DataError, SpecError, StorageError, TunerError
from tuner.faults import StorageWatch
from tuner.offline import offline_advice, spec_names_folder
from tuner.phases import PhaseBoard, epoch_progress, features_progress, worker_name
from tuner.pool import CHECKED_DATA_ENV
from tuner.recipes.probe import probe, resolve_checked
from tuner.resilient import ResilientStorage
from tuner.retries import OWNER_ATTR, owner_record, reap
from tuner.samplers import sampler_budget
from tuner.search import check_joinable, open_study, pruner_name
from tuner.signals import Interrupted, StopSignals, TrialLost
from tuner.space import Space, format_params
from tuner.spec import StudySpec
from tuner.storage import BudgetLock, artifact_store_for, fatal_message, redact_url
from tuner.weights import check_weights

__all__ = [
    "CHECKED_DATA_ENV",
    "WorkerReport",
    "configure_threads",
    "ensure_dataset",
    "preflight",
    "run_worker",
]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_CONSECUTIVE_FAILURES = 3

Publish = Callable[..., None]  # (phase, progress="") of a PhaseBoard


def _no_publish(phase: str, progress: object = "") -> None:
    pass


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


def _download(spec: StudySpec, folder: Path, check: Callable[[], None], publish: Publish) -> None:
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
            publish("downloading", f"{100 * done // total}%" if total else f"{done} bytes")
            check()  # a signal stops the download between chunks

        download_dataset(
            spec.data.source,
            folder,
            url=spec.data.url or None,
            progress=progress,
            offline=offline_advice(spec, data_ready=False),
        )


def ensure_dataset(
    spec: StudySpec, check: Callable[[], None] = lambda: None, publish: Publish = _no_publish
) -> DatasetScan:
    """Validate ``data.dir``, downloading the spec's known dataset first if it is missing.

    Only the folder that the spec file itself names is downloaded into: a
    ``--set data.dir`` that does not exist is more likely a typo, and an error.

    ``check`` is called between download chunks, and may raise to stop;
    ``publish`` receives the download's phase (see :class:`tuner.phases.PhaseBoard`).
    """
    folder = Path(spec.data.dir)
    if not folder.exists() and spec.data.source and spec_names_folder(spec):
        # Workers started together download once: the others wait, then find the folder.
        made = [p for p in (folder.parent, *folder.parent.parents) if not p.exists()]
        folder.parent.mkdir(parents=True, exist_ok=True)
        lock = Path(f"{folder}.download.lock")
        try:
            with FileLock(lock):
                if not folder.exists():
                    _download(spec, folder, check, publish)
        finally:
            # A waiting worker finds the folder once it holds the old lock, so it is safe
            # to remove; a failed download leaves no folder behind that it created.
            lock.unlink(missing_ok=True)
            for parent in made if not folder.exists() else ():
                with contextlib.suppress(OSError):  # not empty: something else is there
                    parent.rmdir()
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
    check: Callable[[], None] = lambda: None,
    publish: Publish = _no_publish,
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
    if spec.model.weights not in ("imagenet", "none"):  # a missing file is named as such
        check_weights(spec)
    check_joinable(spec, storage, accept_space_change=accept_space_change)
    recipe = resolve_checked(spec)
    publish("checking data")
    scan = ensure_dataset(spec, check, publish)
    check()
    check_weights(spec, offline=offline_advice(spec, data_ready=True))
    for message in probe(spec, recipe, len(scan.class_names)):
        warn(message)
    study = open_study(
        spec, storage, worker_index=worker_index, accept_space_change=accept_space_change
    )
    return study, scan


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


class _Waiting:
    """Says once what the worker waits for while other workers' trials run."""

    def __init__(self, heartbeat: bool, grace: float) -> None:
        self.heartbeat, self.grace = heartbeat, grace
        self._said: frozenset[int] = frozenset()

    def on(self, running: list[FrozenTrial], finished: int, target: int) -> None:
        numbers = frozenset(t.number for t in running)
        if numbers <= self._said:
            return
        self._said = numbers
        names = ", ".join(
            f"trial {t.number} ({t.user_attrs.get('worker', 'worker unknown')})" for t in running
        )
        if self.heartbeat:
            how = (
                f"a dead worker's trial is failed and retried after {self.grace:g} s without "
                "heartbeat (storage.grace_period)"
            )
        else:
            how = (
                "this storage keeps no heartbeat, so a trial whose worker died on another "
                "machine cannot be told from a slow one"
            )
        say(
            f"study holds {finished} of {target} finished trials; waiting for {names} "
            f"to finish; {how}"
        )


@dataclass
class _Run:
    """The trial loop's view of the trial now running in this worker."""

    number: int | None = None
    trial_id: int | None = None
    stop: Exception | None = None  # why the objective stopped for the worker's sake


def _stopped_line(stop: Interrupted, run: _Run, requeued: bool) -> str:
    if run.number is None:
        return f"stopped by {stop.name} between trials; no trial was running"
    if requeued:
        return f"stopped by {stop.name}: trial {run.number} ended as FAIL and is queued again"
    return (
        f"stopped by {stop.name}: trial {run.number} could not be ended (storage unreachable); "
        "it is failed and retried once its heartbeat is older than storage.grace_period"
    )


def _requeue(study: optuna.Study, number: int) -> bool:
    """Queue an interrupted trial again, the way stale trials are retried; True if done."""
    trial = study.get_trials(deepcopy=False)[number]
    if trial.state != TrialState.FAIL:
        return False
    callback = getattr(study._storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    if callback is not None:
        callback(study, trial)
    return True


def run_worker(
    spec: StudySpec,
    storage: BaseStorage,
    url: str,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    worker_index: int = 0,
    accept_space_change: bool = False,
    signals: StopSignals | None = None,
) -> WorkerReport:
    """Join the spec's study and run trials until it holds the budget of finished trials.

    Args:
        spec: the study spec.
        storage: an opened storage (see :func:`tuner.storage.open_storage`).
        url: the storage URL; it places the budget lock and the artifact store.
        n_trials: stop once the study holds this many complete or pruned trials,
            counted over all workers; defaults to ``search.n_trials``. While other
            workers' trials run, the worker waits for them (or for their retries).
        timeout: start no new trial after this many seconds.
        worker_index: this worker's index in a pool; offsets the sampler seed.
        accept_space_change: continue a study whose stored space differs from the spec.
        signals: the installed SIGINT/SIGTERM flag; one is installed here if not given.

    Returns:
        A report; its ``exit_code`` is 128 + the signal number after SIGINT or SIGTERM.

    Raises:
        StorageError: when the storage stays unreachable for longer than
            ``storage.outage_tolerance``, or has a fatal fault (full, read-only, damaged).
    """
    signals = signals or StopSignals()
    board = PhaseBoard(storage, spec.study.name, worker_name())
    with signals.installed(), board:
        try:
            return _run(spec, storage, url, n_trials, timeout, worker_index,
                        accept_space_change, signals, board)  # fmt: skip
        except Interrupted as stop:
            say(f"stopped by {stop.name} during start-up; no trial was started")
            return WorkerReport(0, 0, 0, 0, interrupted=stop.signum)


def _run(
    spec: StudySpec,
    raw_storage: BaseStorage,
    url: str,
    n_trials: int | None,
    timeout: float | None,
    worker_index: int,
    accept_space_change: bool,
    signals: StopSignals,
    board: PhaseBoard,
) -> WorkerReport:
    watch = StorageWatch(
        spec.storage.outage_tolerance,
        redact_url(url),
        say,
        fatal_message=lambda fault: fatal_message(fault, url),
        check=signals.check,
        sleep=signals.wait,
    )
    storage = ResilientStorage(raw_storage, watch)
    study, scan = preflight(
        spec, storage, worker_index=worker_index, accept_space_change=accept_space_change,
        check=signals.check, publish=board.set,
    )  # fmt: skip
    target = sampler_budget(spec, n_trials or spec.search.n_trials)
    finished = sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))
    if finished >= target:  # said before TensorFlow and the data load, which take a while
        say(
            f"study {study.study_name!r} already holds {finished} of {target} finished trials; "
            "nothing to do (give a larger --n-trials to search further)"
        )
        board.set("done", f"{finished} of {target} finished")
        return _report([], None)
    say(f"worker joining study {spec.study.name!r} on {redact_url(url)}")
    board.set("loading TensorFlow")
    from tuner.objective import make_objective, prepare_data  # loads TensorFlow

    signals.check()
    board.set("loading data")
    with features_progress(study, spec, board, signals.check) as progress:
        data = prepare_data(spec, scan, say, progress)
    run = _Run()

    def check() -> None:
        """Between batches: stop on a signal, a storage given up on, or a trial taken away."""
        signals.check()
        if watch.dead is not None:
            raise watch.dead
        if run.trial_id is not None and storage.is_lost(run.trial_id):
            raise TrialLost(f"trial {run.number} was failed by another worker")

    objective = make_objective(spec, data, artifact_store_for(url, spec), say, check=check)
    lock = BudgetLock(raw_storage, url, study.study_name, watch)

    def claimed_then_run(trial: optuna.Trial) -> float:
        lock.release()  # the trial is RUNNING now, so it counts towards the budget
        run.number, run.trial_id, run.stop = trial.number, trial._trial_id, None
        epochs = epoch_progress(raw_storage, trial._trial_id, spec.train.epochs)
        board.set(f"training trial {trial.number}", epochs)
        try:
            storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, owner_record())
            return objective(trial)
        except (StorageError, TrialLost) as e:
            run.stop = e
            raise
        except Exception as e:  # every FAIL trial says why
            if not trial.user_attrs.get("fail_reason"):
                trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}"[:500])
            raise

    deadline = time.monotonic() + timeout if timeout else math.inf
    ran: list[FrozenTrial] = []
    waiting = _Waiting(is_heartbeat_enabled(storage), spec.storage.grace_period)
    failures = 0
    try:
        while True:
            signals.check()
            if time.monotonic() >= deadline:
                say(f"--timeout {timeout:g} s reached; starting no new trial")
                break
            with lock:
                reap(study, spec.storage.grace_period)
                trials = study.get_trials(deepcopy=False)
                finished = sum(t.state in FINISHED for t in trials)
                running = [t for t in trials if t.state == TrialState.RUNNING]
                if finished >= target:
                    say(f"study {study.study_name!r} holds {finished} of {target} trials; done")
                    board.set("done", f"{finished} of {target} finished")
                    break
                if finished + len(running) < target:
                    run.number = run.trial_id = None
                    _run_one(study, claimed_then_run, ran, run, watch)
                    failures = failures + 1 if ran and ran[-1].state == TrialState.FAIL else 0
                    run.number = run.trial_id = None
                    if failures >= MAX_CONSECUTIVE_FAILURES:
                        reason = ran[-1].user_attrs.get("fail_reason", "see the lines above")
                        raise TunerError(
                            f"stopping after {failures} failed trials in a row (last: {reason}); "
                            "fix the cause and start the worker again"
                        )
                    continue
            waiting.on(running, finished, target)
            board.set("waiting", f"for trial {', '.join(str(t.number) for t in running)}")
            signals.wait(min(2.0, spec.storage.heartbeat_interval))
    except Interrupted as stop:
        requeued = run.number is not None and _requeue(study, run.number)
        if run.number is not None:
            ran.append(study.get_trials(deepcopy=False)[run.number])
        say(_stopped_line(stop, run, requeued))
        return _report(ran, stop.signum)
    return _report(ran, None)


def _run_one(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    ran: list[FrozenTrial],
    run: _Run,
    watch: StorageWatch,
) -> None:
    """Run one trial with Optuna's machinery (heartbeat thread, tell, callbacks)."""
    try:
        study.optimize(
            objective,
            n_trials=1,
            catch=(Exception,),
            callbacks=[lambda s, t: ran.append(t), _announce],
        )
    except Interrupted:
        raise
    except Exception as e:
        if (stop := _interrupted_behind(e)) is not None:
            # A signal came while a storage call waited out an outage inside Optuna's own
            # bookkeeping, whose clean-up then failed too; the signal is what happened.
            raise stop from None
        if watch.dead is not None:  # Optuna's own clean-up failed on the storage too
            raise watch.dead from None
        if run.stop is None:
            raise
    if isinstance(run.stop, TrialLost):
        # Another worker failed this trial as stale while it trained here (its heartbeat
        # could not be written in time), and queued its retry.
        say(
            f"trial {run.number} was failed by another worker while it trained here (no "
            "heartbeat within storage.grace_period); its retry runs instead; going on"
        )
    elif run.stop is not None:  # files could not be written: stop, and let the trial run again
        assert run.number is not None
        _requeue(study, run.number)
        raise run.stop


def _interrupted_behind(error: BaseException) -> Interrupted | None:
    """The :class:`Interrupted` that ``error`` was raised while handling, if any."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, Interrupted):
            return seen
        seen = seen.__context__
    return None


def _report(ran: list[FrozenTrial], signum: int | None) -> WorkerReport:
    states = [t.state for t in ran]
    return WorkerReport(
        ran=len(ran),
        complete=states.count(TrialState.COMPLETE),
        pruned=states.count(TrialState.PRUNED),
        failed=states.count(TrialState.FAIL),
        interrupted=signum,
    )
