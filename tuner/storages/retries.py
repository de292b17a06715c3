"""Dead workers' trials: found, failed with a reason, retried, or reported as given up.

A trial whose worker died stays RUNNING until someone fails it. Before each
trial, under the study's budget lock, a worker :func:`reap` s the study: a
trial whose heartbeat is older than ``storage.grace_period`` (Optuna's
heartbeat), or whose worker ran on this machine and is gone (no need to wait
for the grace period then), is marked FAIL with a ``fail_reason`` and queued
again with the same parameters by Optuna's ``RetryHeartbeatStaleTrialCallback``.
When a trial's retries run out, :class:`RetryOrGiveUp` says so and records it
on the study, where ``tuner status`` and ``tuner export`` list it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from tuner.common.attrs import FAIL_REASON, WORKER
from tuner.common.console import warn
from tuner.space.params import format_params

__all__ = [
    "GAVE_UP_PREFIX",
    "OWNER_ATTR",
    "RetryOrGiveUp",
    "gave_up",
    "owner_record",
    "reap",
]

# A study attribute per trial whose retries ran out, keyed by the first attempt's number.
GAVE_UP_PREFIX = "tuner:gave_up:"
# A trial's system attribute: host, pid and boot of the worker that claimed it.
OWNER_ATTR = "tuner:owner"


def _boot_id() -> str:
    """This boot of this machine: process ids compare only within one (and one host name)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def owner_record() -> dict[str, Any]:
    """Who runs a trial, precisely enough to tell later whether that process still lives."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "boot": _boot_id()}


def _process_gone(pid: int) -> bool:
    """Whether process ``pid`` of this machine has ended (a zombie counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def _dead_here(trial: FrozenTrial, me: dict[str, Any]) -> bool:
    owner = trial.system_attrs.get(OWNER_ATTR)
    if not isinstance(owner, dict) or not me["boot"]:
        return False
    same_machine = owner.get("host") == me["host"] and owner.get("boot") == me["boot"]
    return same_machine and owner.get("pid") != me["pid"] and _process_gone(int(owner["pid"]))


# When this process first saw each running trial that has no owner record: a trial is judged
# never started by how long this process has watched it, on its own monotonic clock, so a
# worker whose wall clock is off cannot fail another's trial that has just been claimed.
_FIRST_SEEN: dict[int, float] = {}
_clock = time.monotonic


def _never_started(trial: FrozenTrial, grace: float) -> bool:
    """A trial claimed by a worker that died before its first heartbeat or attribute.

    Optuna's heartbeat only ever fails trials with a heartbeat on record, so such
    a trial would block the study's budget for ever. It counts as dead once this
    process has seen it without an owner record for longer than ``grace``.
    """
    if OWNER_ATTR in trial.system_attrs:
        _FIRST_SEEN.pop(trial._trial_id, None)
        return False
    first = _FIRST_SEEN.setdefault(trial._trial_id, _clock())
    return _clock() - first > grace


def _stale_ids(storage: BaseStorage, study: optuna.Study) -> set[int]:
    if not is_heartbeat_enabled(storage):
        return set()
    assert isinstance(storage, BaseHeartbeat)
    stale = getattr(storage, "stale_trial_ids", storage._get_stale_trial_ids)
    return set(stale(study._study_id))


def reap(
    study: optuna.Study, grace_period: float, trials: list[FrozenTrial] | None = None
) -> list[FrozenTrial]:
    """Fail the study's trials whose workers are gone, and queue them again.

    Call it under the study's budget lock, before counting the trials.

    Args:
        study: the study.
        grace_period: seconds without heartbeat after which a trial's worker counts as dead.
        trials: the study's trials as just read under the lock, which spares a read.

    Returns:
        The trials this call failed (another worker may have reaped some first).
    """
    if trials is None:
        trials = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if not running:
        return []
    storage = study._storage
    stale = _stale_ids(storage, study)
    me = owner_record()
    reaped = []
    for trial in running:
        worker = trial.user_attrs.get(WORKER, "a worker")
        if trial._trial_id in stale:
            reason = (
                f"{worker} sent no heartbeat for over {grace_period:g} s (storage.grace_period)"
            )
        elif _dead_here(trial, me):
            reason = f"{worker} ended while running it"
        elif _never_started(trial, grace_period):
            reason = "its worker stopped before the trial started"
        else:
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, FAIL_REASON, reason)
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:  # its owner finished it, or another worker reaped it
            continue
        failed = storage.get_trial(trial._trial_id)
        reaped.append(failed)
        warn(f"trial {failed.number} failed: {reason}; it will be retried")
        callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
        if callback is not None:
            callback(study, failed)
    return reaped


class RetryOrGiveUp(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of failed trials, which reports a trial whose retries have run out.

    Optuna's callback drops such a trial without a word; this one says so in one
    line and records it on the study (see :func:`gave_up`).
    """

    def __init__(self, max_retry: int, say: Callable[[str], None] = warn) -> None:
        super().__init__(max_retry=max_retry, inherit_intermediate_values=False)
        self.say = say

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        if self._max_retry is not None and len(history) > self._max_retry:
            params = trial.params or trial.system_attrs.get("fixed_params", {})
            record = {
                "params": params,
                "attempts": len(history),
                "trials": history,
                "reason": trial.user_attrs.get(FAIL_REASON),
            }
            study.set_user_attr(f"{GAVE_UP_PREFIX}{history[0]}", record)
            self.say(
                f"gave up on {format_params(params) or 'trial ' + str(history[0])} after "
                f"{len(history)} attempts (trials {', '.join(map(str, history))}), each "
                "ended by a failure or a signal; listed by `tuner status` and `tuner export` "
                "(raise storage.max_retry to try more)"
            )
            return
        super().__call__(study, trial)


def gave_up(study: optuna.Study) -> list[dict[str, Any]]:
    """The study's trials whose retries ran out, oldest first."""
    records = [
        {"trial": int(key[len(GAVE_UP_PREFIX) :]), **value}
        for key, value in study.user_attrs.items()
        if key.startswith(GAVE_UP_PREFIX) and isinstance(value, dict)
    ]
    return sorted(records, key=lambda r: r["trial"])
