"""Many worker processes on one study: exact budget, trials/s, CPU and overhead per trial."""

from __future__ import annotations

import collections
import resource
import statistics
import time
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from tests.faultkit import cheap_crowd
from tuner.storages.retries import OWNER_ATTR

from .fill import SETS

__all__ = ["CrowdRun", "run_crowd"]


@dataclass(frozen=True)
class CrowdRun:
    """What a crowd of workers did, read back from the study."""

    workers: int
    target: int
    codes: dict[int, int]  # exit code: how many workers
    states: dict[str, int]
    wall_s: float
    cpu_ms: float  # the workers' CPU (user and system) per finished trial
    per_trial_ms: float  # a worker's time per trial, from its first start to its last end

    @property
    def finished(self) -> int:
        return self.states.get("COMPLETE", 0) + self.states.get("PRUNED", 0)

    @property
    def exact(self) -> bool:
        return self.finished == self.target and not self.states.get("RUNNING", 0)


def _counts(url: str, name: str) -> tuple[int, int]:
    """The study's trials, and its finished ones, now (none when it does not exist yet)."""
    try:
        trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    except KeyError:
        return 0, 0
    return len(trials), sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_crowd(
    url: str,
    direct: str,
    name: str,
    workers: int,
    target: int,
    trial_seconds: float = 0.0,
    sets: tuple[str, ...] = (),
) -> CrowdRun:
    """Run ``workers`` forked workers until they have finished ``target`` more trials.

    ``direct`` is the storage as the benchmark reads it back (not through a pooler).
    Trials that were in the study before (a filled study's) are left out of the figures.
    """
    known, before = _counts(direct, name)
    cpu, start = _children_cpu(), time.monotonic()
    codes = cheap_crowd(
        url, workers, before + target, name, sets=[*SETS, *sets], trial_seconds=trial_seconds
    )
    wall, cpu = time.monotonic() - start, _children_cpu() - cpu
    trials = optuna.load_study(study_name=name, storage=direct).get_trials(deepcopy=False)
    ran = trials[known:]  # the crowd's trials, not those that were there before
    states = collections.Counter(t.state.name for t in ran)
    states["RUNNING"] = sum(t.state.name == "RUNNING" for t in trials)
    by_worker: dict[object, list] = collections.defaultdict(list)
    for t in ran:  # the owner record names the worker's process
        if t.datetime_complete is not None:
            by_worker[(t.system_attrs.get(OWNER_ATTR) or {}).get("pid")].append(t)
    spans = []
    for own in by_worker.values():
        if len(own) < 2:
            continue
        first = min(t.datetime_start for t in own)
        last = max(t.datetime_complete for t in own)
        spans.append((last - first).total_seconds() * 1000 / len(own))
    finished = max(states["COMPLETE"] + states["PRUNED"], 1)  # this crowd's
    return CrowdRun(
        workers, target, dict(collections.Counter(codes)), dict(states), wall,
        1000 * cpu / finished, statistics.median(spans) if spans else float("nan"),
    )  # fmt: skip
