"""A storage that rides out database outages: every call goes through a :class:`StorageWatch`.

Workers wrap their storage in :class:`ResilientStorage`, so a database restart
or a dropped connection pauses the trial loop and Optuna's heartbeat thread
alike, instead of killing them, for up to ``storage.outage_tolerance`` seconds.
Each of Optuna's storage methods is one transaction, so running it again after
a fault is safe; the one write whose second run can see its own first
(finishing a trial whose commit went through just before the connection
dropped) is recognised. The heartbeat also notices when another worker has
failed this worker's trial as stale, so the owner can stop it.

Claiming a trial reads the study several times in a few milliseconds: the
worker's loop (for the budget), Optuna's ``ask`` (for a queued trial) and the
sampler (for the search space, then for the points). All of it happens under
the study's budget lock, where no other worker can create or claim a trial, or
moments after it, so :meth:`ResilientStorage.reads_from` lets the later reads
share the loop's read, until the trial first reports.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import StorageError
from tuner.storages.faults import StorageWatch

__all__ = ["FAST_REPORT", "HOLD_AT_MOST", "ResilientStorage"]

# A report this soon after the trial's last is held and written with the next ones.
FAST_REPORT = 0.25
# The longest a held report waits for the trial's next report before it is written.
HOLD_AT_MOST = 1.0


@dataclasses.dataclass
class _Held:
    """A running trial's reports that are not written yet."""

    last: float  # when the trial last reported
    since: float = 0.0  # when the oldest held report came
    values: dict[int, float] = dataclasses.field(default_factory=dict)


# Every public method of Optuna's storage interface, delegated through the watch.
_DELEGATED = [
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id",
    "get_trial_param",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_n_trials",
    "get_best_trial",
    "get_trial_params",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "check_trial_is_updatable",
]


def _delegate(name: str) -> Callable[..., Any]:
    def method(self: ResilientStorage, *args: Any, **kwargs: Any) -> Any:
        inner = getattr(self.inner, name)
        return self.watch.call(lambda: inner(*args, **kwargs))

    method.__name__ = name
    method.__doc__ = f"``{name}`` of the wrapped storage, riding out transient faults."
    return method


class ResilientStorage(BaseStorage, BaseHeartbeat):
    """Optuna storage whose calls survive transient faults; see the module docstring.

    Args:
        inner: the storage to wrap (an RDB storage is wrapped in Optuna's cache first).
        watch: retries transient faults and turns fatal ones into one-line errors.
    """

    def __init__(self, inner: BaseStorage, watch: StorageWatch) -> None:
        self.inner = optuna.storages.get_storage(inner)  # type: ignore[arg-type]
        self.watch = watch
        self.lost: set[int] = set()  # trials of this worker that another worker failed
        self._beating: int | None = None  # the trial of the last heartbeat
        self._lost_lock = threading.Lock()
        self._shared = threading.local()  # the read that reads_from() lends, per thread
        self._held: dict[int, _Held] = {}  # reports not written yet, by trial id

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lost_lock"], state["_shared"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lost_lock = threading.Lock()
        self._shared = threading.local()

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        """Finish or claim a trial; a retry that finds its own earlier write succeeded says so."""
        if state.is_finished() or state == TrialState.WAITING:
            self.write_held(trial_id, finishing=True)
        attempts = 0

        def write() -> bool:
            nonlocal attempts
            attempts += 1
            try:
                return self.inner.set_trial_state_values(trial_id, state, values)
            except UpdateFinishedTrialError:
                if attempts > 1 and self.inner.get_trial(trial_id).state == state:
                    return True  # the first attempt committed before its connection dropped
                raise

        return self.watch.call(write)

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        """The study's trials; the queue (WAITING alone) lists retries of failed trials first.

        Optuna claims the first queued trial it can, so a trial whose worker died is
        finished before queued points that never started, however the budget ends.
        """
        shared = getattr(self._shared, "read", None)
        if shared is not None and shared[0] == study_id:
            found = [t for t in shared[1] if states is None or t.state in states]
            found = copy.deepcopy(found) if deepcopy else found
        else:
            inner = self.inner
            found = self.watch.call(lambda: inner.get_all_trials(study_id, deepcopy, states))
        if states is not None and tuple(states) == (TrialState.WAITING,):
            found.sort(key=lambda t: "failed_trial" not in t.system_attrs)
        return found

    @contextmanager
    def reads_from(self, study_id: int, trials: list[FrozenTrial]) -> Iterator[None]:
        """Inside, this thread's reads of the study filter ``trials`` instead of reading it.

        For claiming a trial and sampling its parameters: ``trials`` must be a read
        of all the study's trials just made under the study's budget lock. The
        block ends at the trial's first report (or at :meth:`read_afresh`), so
        the pruner and the training read the study as it is. The trial this worker
        creates or claims inside is not in ``trials``, which the sampler does not
        need (it leaves out the trial it samples for); a trial that another worker
        finishes or starts in those milliseconds is seen by the next trial, as if
        this one had been sampled a moment earlier.
        """
        self._shared.read = (study_id, trials)
        try:
            yield
        finally:
            self.read_afresh()

    def read_afresh(self) -> None:
        """End this thread's :meth:`reads_from` block early: later reads read the study."""
        self._shared.read = None

    def set_trial_intermediate_value(self, trial_id: int, step: int, value: float) -> None:
        """Report a value; the trial trains now, so this thread's shared read ends.

        A trial's first report is written at once. A report that follows the trial's
        last one within :data:`FAST_REPORT` seconds (a cached head's epochs take
        milliseconds) is held, and written with the others held, at the next slower
        report, once the oldest has waited :data:`HOLD_AT_MOST` seconds, or just before
        the trial finishes: one transaction for ten epochs rather than ten. The pruner
        is not affected: Optuna's ``should_prune`` reads the trial's own values from the
        trial object, and tuner's pruners compare them with finished trials only.
        """
        self.read_afresh()
        now = time.monotonic()
        with self._lost_lock:
            held = self._held.get(trial_id)
            if held is None:  # the first report
                self._held[trial_id] = _Held(last=now)
            else:
                fast, held.last = now - held.last < FAST_REPORT, now
                if not held.values:
                    held.since = now
                held.values[step] = value
                if fast and now - held.since < HOLD_AT_MOST:
                    return
        if held is None:
            inner = self.inner
            self.watch.call(lambda: inner.set_trial_intermediate_value(trial_id, step, value))
        else:
            self.write_held(trial_id)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        """The trial as stored, its held reports written first (Optuna reads them back)."""
        self.write_held(trial_id)
        inner = self.inner
        return self.watch.call(lambda: inner.get_trial(trial_id))

    def write_held(self, trial_id: int, finishing: bool = False) -> None:
        """Write the trial's held reports now (see :meth:`set_trial_intermediate_value`).

        ``finishing``: the trial ends next; forget it, and if another worker has
        failed it meanwhile, drop its held reports, which it no longer takes.
        """
        with self._lost_lock:
            held = self._held.pop(trial_id, None) if finishing else self._held.get(trial_id)
            values = dict(held.values) if held is not None else {}
            if held is not None:
                held.values.clear()
        if not values:
            return
        backend = getattr(self.inner, "_backend", self.inner)  # beneath Optuna's cache
        many = getattr(backend, "set_trial_intermediate_values", None)
        if many is None:  # any other storage: one write each, in one retried call

            def many(trial_id: int, values: dict[int, float]) -> None:
                for step, value in values.items():
                    backend.set_trial_intermediate_value(trial_id, step, value)

        try:
            self.watch.call(lambda: many(trial_id, values))
        except UpdateFinishedTrialError:
            if not finishing:
                raise

    def set_trial_user_attrs(self, trial_id: int, values: Mapping[str, Any]) -> None:
        """Several user attributes of a trial: one transaction where the storage can."""
        backend = getattr(self.inner, "_backend", self.inner)  # beneath Optuna's cache
        many = getattr(backend, "set_trial_user_attrs", None)
        if many is None:
            for key, value in values.items():
                self.set_trial_user_attr(trial_id, key, value)  # type: ignore[attr-defined]
            return
        self.watch.call(lambda: many(trial_id, values))

    def remove_session(self) -> None:
        self.inner.remove_session()

    # Heartbeat: delegated when the wrapped storage has one.
    def record_heartbeat(self, trial_id: int) -> None:
        """Record a heartbeat, and notice a trial that another worker failed as stale.

        Runs in Optuna's heartbeat thread, which must never die of a storage
        fault: once the worker has given up on the storage, the trial loop
        reports it, so this thread only stops beating. A trial's first beat,
        sent as it starts, checks nothing: it cannot have been failed as stale yet.
        """
        assert isinstance(self.inner, BaseHeartbeat)
        heartbeat = self.inner
        try:
            self.watch.call(lambda: heartbeat.record_heartbeat(trial_id))
            with self._lost_lock:
                first, self._beating = trial_id != self._beating, trial_id
            if first:  # just claimed: no worker fails it before a grace period without beats
                return
            state = self.watch.call(lambda: self.inner.get_trial(trial_id).state)
        except StorageError:
            return
        if state != TrialState.RUNNING:
            with self._lost_lock:
                self.lost.add(trial_id)

    def is_lost(self, trial_id: int) -> bool:
        """Whether another worker failed this running trial (its heartbeat seemed stale)."""
        with self._lost_lock:
            return trial_id in self.lost

    def stale_trial_ids(self, study_id: int) -> list[int]:
        """Running trials whose heartbeat is older than the grace period (for the reaper)."""
        assert isinstance(self.inner, BaseHeartbeat)
        heartbeat = self.inner
        return self.watch.call(lambda: heartbeat._get_stale_trial_ids(study_id))

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """None: :func:`tuner.storages.retries.reap` fails stale trials, not Optuna's own pass.

        ``study.optimize`` fails stale trials before each trial too, but without a
        ``fail_reason`` and outside the study's budget lock; the worker's reaper has just
        done it, with both, so Optuna's pass is left nothing to do.
        """
        return []

    def get_heartbeat_interval(self) -> int | None:
        if not isinstance(self.inner, BaseHeartbeat):
            return None
        return self.inner.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(
        self,
    ) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        if not isinstance(self.inner, BaseHeartbeat):
            return None
        return self.inner.get_heartbeat_stale_trial_callback()


for _name in _DELEGATED:
    setattr(ResilientStorage, _name, _delegate(_name))
ResilientStorage.__abstractmethods__ = frozenset()  # filled in by the loop above
