"""The worker loop: a study-wide trial budget, signals, retries and the trial lifecycle.

TensorFlow is imported lazily, inside :func:`run_worker`, after the thread
budget is set, so that the pool's parent process never loads it.
:func:`run_objective` runs the same loop with an objective of the caller's.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from tuner.common import attrs
from tuner.common.attrs import FAIL_REASON, worker_name
from tuner.common.console import say
from tuner.config.build import artifact_store, note_for, open_study, sampler_budget, trial_setup
from tuner.config.spec import StudySpec
from tuner.errors import OverBudget, TrialLost, TunerError
from tuner.runner.announce import Announcer, stored_space
from tuner.runner.fate import Fate, fail_reason, fate_of
from tuner.runner.featurewait import wait_for_features_elsewhere
from tuner.runner.signals import Interrupted, StopSignals
from tuner.runner.startup import preflight
from tuner.space.params import suggest
from tuner.storages.budgetlock import over_budget
from tuner.storages.faults import StorageWatch
from tuner.storages.resilient import ResilientStorage
from tuner.storages.retries import OWNER_ATTR, owner_record, reap
from tuner.storages.storage import budget_lock, fatal_message, redact_url
from tuner.study.phases import PhaseBoard, epoch_progress, features_progress

__all__ = ["Objective", "ObjectiveFor", "WorkerReport", "run_objective", "run_worker"]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_CONSECUTIVE_FAILURES = 3

Objective = Callable[[optuna.Trial], float]
# Given the worker's between-batches check (which raises to stop the trial), the objective.
ObjectiveFor = Callable[[Callable[[], None]], Objective]


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
            f"trial {t.number} ({t.user_attrs.get(attrs.WORKER, 'worker unknown')})"
            for t in running
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
    fate: Fate | None = None  # what the objective's exception means, when it raised
    error: BaseException | None = None


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
    # A trial stopped before its first report is still inside the claim's shared read,
    # which does not hold it as FAIL; read the study as it is.
    getattr(study._storage, "read_afresh", lambda: None)()
    trial = study.get_trials(deepcopy=False)[number]
    if trial.state != TrialState.FAIL:
        return False
    callback = getattr(study._storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    if callback is not None:
        callback(study, trial)
    return True


@dataclass
class _Session:
    """One worker's hold on its study: the storage behind its fault watch, and its signals."""

    spec: StudySpec
    raw: BaseStorage
    url: str
    signals: StopSignals
    board: PhaseBoard
    watch: StorageWatch = field(init=False)
    storage: ResilientStorage = field(init=False)
    run: _Run = field(default_factory=_Run)

    def __post_init__(self) -> None:
        url = self.url
        self.watch = StorageWatch(
            self.spec.storage.outage_tolerance,
            redact_url(url),
            say,
            fatal_message=lambda fault: fatal_message(fault, url),
            check=self.signals.check,
            sleep=self.signals.wait,
        )
        self.storage = ResilientStorage(self.raw, self.watch)

    def check(self) -> None:
        """Between batches: stop on a signal, a storage given up on, or a trial taken away."""
        self.signals.check()
        if self.watch.dead is not None:
            raise self.watch.dead
        run = self.run
        if run.trial_id is not None and self.storage.is_lost(run.trial_id):
            raise TrialLost(f"trial {run.number} was failed by another worker")


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
    joined: str = "",
) -> WorkerReport:
    """Join the spec's study and run trials until it holds the budget of finished trials.

    Args:
        spec: the study spec.
        storage: an opened storage (see :func:`tuner.storages.storage.open_storage`).
        url: the storage URL; it places the budget lock and the artifact store.
        n_trials: stop once the study holds this many complete or pruned trials,
            counted over all workers; defaults to ``search.n_trials``. While other
            workers' trials run, the worker waits for them (or for their retries).
        timeout: start no new trial after this many seconds.
        worker_index: this worker's index in a pool; offsets the sampler seed.
        accept_space_change: continue a study whose stored space differs from the spec.
        signals: the installed SIGINT/SIGTERM flag; one is installed here if not given.
        joined: a line about the study's stored settings this worker took, said after
            the checks.

    Returns:
        A report; its ``exit_code`` is 128 + the signal number after SIGINT or SIGTERM.

    Raises:
        StorageLostError: when the storage stays unreachable for longer than
            ``storage.outage_tolerance``, or has a fatal fault (full, read-only, damaged).
    """
    with _session(spec, storage, url, signals) as s:
        board = s.board
        try:
            study, scan = preflight(
                spec, s.storage, worker_index=worker_index,
                accept_space_change=accept_space_change, check=s.signals.check,
                publish=board.set,
            )  # fmt: skip
            target = sampler_budget(spec, n_trials or spec.search.n_trials)
            if _done(study, target, board, before_start=True):
                return _report([], None)
            say(f"worker joining study {spec.study.name!r} on {redact_url(url)}")
            if joined:  # the study's stored settings it took, now that every check passed
                say(joined)
        except Interrupted as stop:
            say(f"stopped by {stop.name} during start-up; no trial was started")
            return WorkerReport(0, 0, 0, 0, interrupted=stop.signum)
        deadline: Callable[[], bool] | None = None  # --timeout counts from the load on

        def load() -> Objective:
            """TensorFlow, the data and the objective: loaded once a trial can start."""
            nonlocal deadline
            wait_for_features_elsewhere(trial_setup(spec), say, s.signals.check, board.set)
            board.set("loading TensorFlow")
            from tuner.training.devices import device_line  # loads TensorFlow
            from tuner.training.feature_store import Use
            from tuner.training.objective import make_objective, prepare_data

            say(device_line(spec.model.precision))
            s.signals.check()
            board.set("loading data")
            with features_progress(study, note_for(spec), board, s.signals.check) as progress:
                setup = trial_setup(spec)
                use = Use.of(spec.study.name, url)  # so `tuner cache prune` keeps its features
                data = prepare_data(setup, scan, say, progress, use)
            store = artifact_store(url, spec)
            objective = make_objective(setup, data, store, say, check=s.check)
            deadline = _deadline(timeout)
            return objective

        return _trial_loop(
            s, study, load, target, lambda: deadline is not None and deadline(), loads=True
        )


def run_objective(
    spec: StudySpec,
    storage: BaseStorage,
    url: str,
    objective_for: ObjectiveFor,
    *,
    n_trials: int | None = None,
    worker_index: int = 0,
    signals: StopSignals | None = None,
    until: Callable[[], bool] | None = None,
) -> WorkerReport:
    """The worker's trial loop over the spec's study, with an objective of the caller's.

    The study is created or joined as :func:`run_worker` does it (the spec's
    sampler and pruner, seeded for ``worker_index``; the warm-start points queued
    once), and trials run under the same budget, retries and signals; only the
    data, model and weights checks and the training are left to the objective.
    Replaying recorded learning curves through the real search is what it is for.

    Args:
        objective_for: given the worker's between-batches check, the objective.
        n_trials, worker_index, signals: as for :func:`run_worker`.
        until: asked before each trial; once it answers True no new trial starts
            (a budget of the caller's, such as epochs spent).
    """
    with _session(spec, storage, url, signals) as s:
        study = open_study(spec, s.storage, worker_index=worker_index)
        target = sampler_budget(spec, n_trials or spec.search.n_trials)
        if _done(study, target, s.board, before_start=True):
            return _report([], None)
        return _trial_loop(s, study, objective_for(s.check), target, until)


@contextlib.contextmanager
def _session(
    spec: StudySpec, storage: BaseStorage, url: str, signals: StopSignals | None
) -> Iterator[_Session]:
    """The worker's signals installed and its phase published, for as long as it runs."""
    signals = signals or StopSignals()
    board = PhaseBoard(storage, spec.study.name, worker_name())
    with signals.installed(), board:
        yield _Session(spec, storage, url, signals, board)


def _deadline(timeout: float | None) -> Callable[[], bool] | None:
    """``--timeout``: true, said once, when no new trial may start any more."""
    if not timeout:
        return None
    end = time.monotonic() + timeout

    def reached() -> bool:
        if time.monotonic() < end:
            return False
        say(f"--timeout {timeout:g} s reached; starting no new trial")
        return True

    return reached


def _done(
    study: optuna.Study,
    target: int,
    board: PhaseBoard,
    before_start: bool,
    trials: list[FrozenTrial] | None = None,
) -> bool:
    """Whether the study holds its budget of finished trials; says so when it does."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    finished = sum(t.state in FINISHED for t in trials)
    if finished < target:
        return False
    if before_start:  # said before TensorFlow and the data load, which take a while
        say(
            f"study {study.study_name!r} already holds {finished} of {target} finished "
            "trials; nothing to do (give a larger --n-trials to search further)"
        )
    else:
        say(f"study {study.study_name!r} holds {finished} of {target} trials; done")
    board.set("done", f"{finished} of {target} finished")
    return True


def _trial_loop(
    s: _Session,
    study: optuna.Study,
    objective: Objective | Callable[[], Objective],
    target: int,
    until: Callable[[], bool] | None = None,
    loads: bool = False,
) -> WorkerReport:
    """Run trials until the study holds ``target`` finished ones, ``until`` says so, or a stop.

    With ``loads``, ``objective`` is called once, with no argument, to load the
    objective (TensorFlow and the data) when the first trial can start: a worker
    that waits for other workers' trials meanwhile holds no TensorFlow memory.
    """
    load = objective if loads else None
    spec, run, storage, signals = s.spec, s.run, s.storage, s.signals
    lock = budget_lock(
        s.raw,
        s.url,
        study.study_name,
        s.watch,
        lease=float(spec.storage.grace_period),
        check=signals.check,
    )

    def claimed_then_run(trial: optuna.Trial) -> float:
        lock.release()  # the trial is RUNNING now, so it counts towards the budget
        run.number, run.trial_id = trial.number, trial._trial_id
        run.fate = run.error = None
        epochs = epoch_progress(s.raw, trial._trial_id, spec.train.epochs)
        s.board.set(f"training trial {trial.number}", epochs)
        try:
            if not lock.vouched and over_budget(study, trial._trial_id, target):
                _give_way(study, trial)
            storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, owner_record())
            return objective(trial)
        except BaseException as e:
            run.fate, run.error = fate_of(e), e
            ends_here = run.fate is Fate.FAIL or isinstance(e, KeyboardInterrupt)
            if ends_here and not trial.user_attrs.get(FAIL_REASON):  # every FAIL says why
                trial.set_user_attr(FAIL_REASON, fail_reason(e))
            raise

    ran: list[FrozenTrial] = []
    announce = Announcer(study, spec.objective.max_gap)
    waiting = _Waiting(is_heartbeat_enabled(storage), spec.storage.grace_period)
    failures = 0
    try:
        while True:
            signals.check()
            if until is not None and until():
                break
            with lock:
                trials = study.get_trials(deepcopy=False)
                if reap(study, spec.storage.grace_period, trials):
                    trials = study.get_trials(deepcopy=False)
                announce.seen(trials)
                getattr(study.pruner, "seen", lambda trials: None)(trials)
                finished = sum(t.state in FINISHED for t in trials)
                running = [t for t in trials if t.state == TrialState.RUNNING]
                if _done(study, target, s.board, before_start=False, trials=trials):
                    break
                room = finished + len(running) < target
                if room and load is None:
                    run.number = run.trial_id = None
                    # ask and the sampler share the read just made, until the first report
                    with storage.reads_from(study._study_id, trials):
                        _run_one(study, claimed_then_run, ran, run, s.watch, announce)
                    lost = run.fate is Fate.LOSE
                    failed = ran and ran[-1].state == TrialState.FAIL and not lost
                    failures = failures + 1 if failed else 0
                    run.number = run.trial_id = None
                    if failures >= MAX_CONSECUTIVE_FAILURES:
                        reason = ran[-1].user_attrs.get(FAIL_REASON, "see the lines above")
                        raise TunerError(
                            f"stopping after {failures} failed trials in a row (last: {reason}); "
                            "fix the cause and start the worker again"
                        )
                    continue
            if room and load is not None:  # outside the lock: loading takes seconds
                objective, load = load(), None  # type: ignore[call-arg]
                continue
            waiting.on(running, finished, target)
            s.board.set("waiting", f"for trial {', '.join(str(t.number) for t in running)}")
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
    announce: Callable[[optuna.Study, FrozenTrial], None],
) -> None:
    """Run one trial with Optuna's machinery (heartbeat thread, tell, callbacks)."""
    try:
        study.optimize(
            objective,
            n_trials=1,
            catch=(Exception,),
            callbacks=[lambda s, t: ran.append(t), announce],
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
        if run.fate not in (Fate.LOSE, Fate.STOP):
            if not _failed_elsewhere(study, run.trial_id):
                raise
            # Another worker failed it as stale after its last write, and Optuna's tell
            # refused the result ("Cannot tell a FAIL trial"): the trial is lost, not broken.
            run.fate = Fate.LOSE
    # What the objective's exception means was decided by fate_of; here it is done.
    if isinstance(run.error, OverBudget):
        say(
            f"trial {run.number} was claimed after the trials that fill the study's budget "
            "(a frozen worker held the budget lock); not run; going on"
        )
    elif run.fate is Fate.LOSE:
        # Another worker failed this trial as stale while it trained here (its heartbeat
        # could not be written in time), and queued its retry.
        say(
            f"trial {run.number} was failed by another worker while it trained here (no "
            "heartbeat within storage.grace_period); its retry runs instead; going on"
        )
    elif run.fate is Fate.STOP and isinstance(run.error, Exception):
        # A fatal error (files that cannot be written, a storage given up on): stop, and
        # let the trial run again. A signal stops through the Interrupted above instead.
        assert run.number is not None
        _requeue(study, run.number)
        raise run.error


def _give_way(study: optuna.Study, trial: optuna.Trial) -> None:
    """End a trial claimed past the budget without running it; a queued retry queues again."""
    reason = (
        "claimed while another worker held the study's budget lock past its lease, after "
        "the trials that fill the budget; not run"
    )
    if (space := stored_space(study)) is not None:  # a FAIL trial always has its point
        suggest(trial, space)
    study._storage.set_trial_user_attr(trial._trial_id, FAIL_REASON, reason)
    study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    queued = study._storage.get_trial_system_attrs(trial._trial_id)
    if "fixed_params" in queued:  # a retry or an enqueued point: keep it queued
        _requeue(study, trial.number)
    raise OverBudget(f"trial {trial.number} came after the study's budget; not run")


def _failed_elsewhere(study: optuna.Study, trial_id: int | None) -> bool:
    """Whether the trial is FAIL in the storage now, as another worker's reaper leaves it."""
    if trial_id is None:
        return False
    getattr(study._storage, "read_afresh", lambda: None)()
    try:
        return study._storage.get_trial(trial_id).state == TrialState.FAIL
    except Exception:  # the storage cannot say: the original error stands
        return False


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
