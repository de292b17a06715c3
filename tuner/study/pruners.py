"""The pruner named by ``pruner.kind``, and a view that spares the storage its reads."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Container, Iterable
from typing import Any, cast

import optuna
from optuna.pruners import (
    BasePruner,
    HyperbandPruner,
    MedianPruner,
    NopPruner,
    PatientPruner,
    PercentilePruner,
    SuccessiveHalvingPruner,
)
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import SpecError
from tuner.study.seen import FinishedScan
from tuner.study.settings import PRUNER_KINDS, PrunerSettings

__all__ = ["CompletedTrialsSnapshot", "build_pruner", "pruner_name", "study_pruner"]


def build_pruner(settings: PrunerSettings, max_resource: int) -> BasePruner:
    """The pruner named by ``pruner.kind``, built from Optuna's own pruners.

    ``max_resource`` is the epochs of a trial (Hyperband's last rung).

    Raises:
        SpecError: for a kind that is not one of ``PRUNER_KINDS``.
    """
    p = settings
    median = MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    builders: dict[str, Any] = {
        "none": NopPruner,
        "median": lambda: median,
        "percentile": lambda: PercentilePruner(
            p.percentile, n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        ),
        "hyperband": lambda: HyperbandPruner(
            min_resource=p.min_resource,
            max_resource=max_resource,
            reduction_factor=p.reduction_factor,
        ),
        "successive-halving": lambda: SuccessiveHalvingPruner(
            min_resource=p.min_resource, reduction_factor=p.reduction_factor
        ),
        "patient": lambda: PatientPruner(median, patience=p.patience),
    }
    if p.kind not in builders:  # load_spec checks too; a spec built in code may not be
        allowed = ", ".join(PRUNER_KINDS)
        raise SpecError(f"pruner.kind {p.kind!r} is not one of: {allowed}; fix pruner.kind")
    return builders[p.kind]()  # type: ignore[no-any-return]


class CompletedTrialsSnapshot(BasePruner):
    """Runs an Optuna pruner against the completed trials as read at most every ``refresh`` s.

    Optuna's median and percentile pruners read the study on every
    ``should_prune``, and with the study's other trials running, each read
    fetches all of those trials with their values and attributes. A cached
    trial checks once per epoch, with epochs of milliseconds, so with eight
    workers on one SQLite file those reads were half of all storage work. The
    decision stays Optuna's: the wrapped pruner gets the study as usual, except
    that its list of COMPLETE trials is as of the trial's start and is read
    again once ``refresh`` seconds have passed. A lone worker therefore decides
    exactly as before (its completed trials change only between its trials);
    with several, a trial that another worker completes is taken into account
    at most ``refresh`` seconds later, a small delay next to the epoch a check
    already follows.

    The worker's loop reads all the study's trials before it claims each one and
    hands that read to :meth:`seen`; the trials completed since its last read are
    added to the list, so the list as of a trial's start costs no read of its own
    and no work that grows with the study. Without such a read (a pruner used
    outside the loop), the trial's first check reads the completed trials.

    Only pruners that read nothing but the completed trials may be wrapped:
    see :func:`_snapshot_safe`.
    """

    def __init__(
        self,
        pruner: BasePruner,
        refresh: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pruner, self.refresh, self._clock = pruner, refresh, clock
        self._trial: int | None = None
        self._read_at = -math.inf
        self._completed: list[FrozenTrial] = []
        self._numbers: set[int] = set()  # of the trials in _completed
        self._scan = FinishedScan()
        self._fed_at: float | None = None  # when seen() last had a read; None: used up

    def seen(self, trials: list[FrozenTrial]) -> None:
        """The study's trials, as just read in full: the completed ones since are added."""
        self._add(t for t in self._scan.newly_finished(trials) if t.state == TrialState.COMPLETE)
        self._fed_at = self._clock()

    def _add(self, trials: Iterable[FrozenTrial]) -> None:
        for t in trials:
            if t.number not in self._numbers:
                self._numbers.add(t.number)
                self._completed.append(t)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        now = self._clock()
        if trial.number != self._trial and self._fed_at is not None:
            self._trial, self._read_at, self._fed_at = trial.number, self._fed_at, None
        elif trial.number != self._trial or now - self._read_at >= self.refresh:
            self._add(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
            self._trial, self._read_at = trial.number, now
        view = cast(optuna.Study, _CompletedView(study, self._completed))
        return self.pruner.prune(view, trial)


class _CompletedView:
    """The study as a pruner sees it: its COMPLETE trials come from a snapshot."""

    def __init__(self, study: optuna.Study, completed: list[FrozenTrial]) -> None:
        self._study, self._completed = study, completed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        if states is None or any(s in states for s in TrialState if s != TrialState.COMPLETE):
            return self._study.get_trials(deepcopy=deepcopy, states=states)
        trials = self._completed if TrialState.COMPLETE in states else []
        return copy.deepcopy(trials) if deepcopy else list(trials)


def _snapshot_safe(pruner: BasePruner) -> bool:
    """Whether ``pruner`` reads only the study's COMPLETE trials (so a snapshot serves it)."""
    if isinstance(pruner, PatientPruner):
        return pruner._wrapped_pruner is None or _snapshot_safe(pruner._wrapped_pruner)
    return isinstance(pruner, PercentilePruner)  # MedianPruner is one


def study_pruner(settings: PrunerSettings, max_resource: int) -> BasePruner:
    """The pruner a worker's study uses: :func:`build_pruner`'s, reading the study sparingly."""
    pruner = build_pruner(settings, max_resource)
    return CompletedTrialsSnapshot(pruner) if _snapshot_safe(pruner) else pruner


def pruner_name(pruner: BasePruner) -> str:
    """The Optuna class name of ``pruner``, looking through :class:`CompletedTrialsSnapshot`."""
    if isinstance(pruner, CompletedTrialsSnapshot):
        pruner = pruner.pruner
    return type(pruner).__name__
