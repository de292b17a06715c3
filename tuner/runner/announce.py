"""The line a worker says as each trial ends: its outcome, the study's best, a tie.

A finished trial never changes, so each is weighed once, as it is first seen
finished: the cost of a line does not grow with the study.
"""

from __future__ import annotations

import math

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.common import attrs
from tuner.common.attrs import FAIL_REASON, SPACE_ATTR
from tuner.common.console import say, warn
from tuner.errors import SpecError
from tuner.space.params import Space, format_params
from tuner.study.choice import TIE_AT, TIE_TOLERANCE, feasible, ranked, tie_line
from tuner.study.opening import study_attr, value_labels
from tuner.study.pruners import pruner_name
from tuner.study.seen import FinishedScan

__all__ = ["Announcer", "stored_space"]


def stored_space(study: optuna.Study) -> Space | None:
    """The study's space, to line up the parameters of the trial lines."""
    try:
        return Space.from_json(study_attr(study, SPACE_ATTR) or {})
    except (SpecError, TypeError, ValueError):  # stored by another version of tuner
        return None


class Announcer:
    """The line that says how each trial ended, and the study's best so far.

    The study's space (to line up the parameters) is read once, and the best
    trial comes from the trials the loop reads anyway before each claim, plus
    the trial just ended: a trial takes well under a second once its head
    trains on cached features, and a query per line would be a few percent of it.
    A finished trial never changes, so each is weighed once (:class:`FinishedScan`):
    the cost of a line does not grow with the study.
    """

    def __init__(self, study: optuna.Study, max_gap: float = 0.0) -> None:
        self.study = study
        self.space = stored_space(study)
        self.labels = value_labels(study)  # val_acc, val_loss, gap, ...
        self.max_gap = max_gap
        self.best: FrozenTrial | None = None
        self.said_best: int | None = None  # the best trial the last line named
        self.scan = FinishedScan()
        self.tie = _Tie()

    def seen(self, trials: list[FrozenTrial]) -> None:
        """The study's trials as just read; the best COMPLETE one is remembered."""
        for trial in self.scan.newly_finished(trials):
            self._consider(trial)

    def _consider(self, trial: FrozenTrial) -> None:
        """The best by tuner.study.choice's rule: by the first value, within max_gap."""
        if trial.state != TrialState.COMPLETE or trial.values is None:
            return
        self.tie.add(trial)
        if self.best is None:
            self.best = trial
            return
        pair = [self.best, trial]
        if self.max_gap > 0:
            within = [t for t in pair if feasible(t, self.max_gap)]
            pair = within or pair
        self.best = ranked(pair, self.study.directions)[0]

    def _values(self, trial: FrozenTrial) -> str:
        return " ".join(
            f"{n}={v:.4f}" for n, v in zip(self.labels, trial.values or [], strict=False)
        )

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna's trial callback: say how ``trial`` ended."""
        self._consider(trial)
        params = format_params(trial.params, self.space)
        if trial.state == TrialState.COMPLETE:
            outcome = f"finished {self._values(trial)}"
        elif trial.state == TrialState.PRUNED:
            reason = trial.user_attrs.get(attrs.PRUNE_REASON) or "pruned by " + pruner_name(
                study.pruner
            )
            epoch = trial.user_attrs.get(attrs.PRUNED_AT_EPOCH)
            after = f"after epoch {epoch + 1}" if isinstance(epoch, int) else "early"
            outcome = f"pruned {after} ({reason})"
        else:
            outcome = f"failed ({trial.user_attrs.get(FAIL_REASON, 'see the log above')})"
        best = self.best
        if best is None:
            best_text = "; no finished trial yet"
        elif best.number != self.said_best:  # said when it changes, not on every line
            self.said_best = best.number
            new = "new best" if best.number == trial.number else "best so far"
            best_text = f"; {new}: trial {best.number}"
            if best.number != trial.number:
                best_text += f" {format_params(best.params)} {self._values(best)}"
        else:
            best_text = ""
        say(f"trial {trial.number} {params} {outcome}{best_text}")
        if self.tie.to_say():
            warn(tie_line(self.tie.count, self.labels[0], self.tie.value))


class _Tie:
    """Whether every complete trial so far scored the same, kept as trials come in."""

    def __init__(self) -> None:
        self.numbers: set[int] = set()
        self.low = self.high = math.nan
        self.said = False

    @property
    def count(self) -> int:
        return len(self.numbers)

    @property
    def value(self) -> float:
        return self.low

    def add(self, trial: FrozenTrial) -> None:
        if trial.number in self.numbers or not trial.values:
            return
        self.numbers.add(trial.number)
        value = trial.values[0]
        self.low = value if self.count == 1 else min(self.low, value)
        self.high = value if self.count == 1 else max(self.high, value)

    def to_say(self) -> bool:
        """True once: the first time :func:`tied_value`'s rule holds for the trials so far."""
        if self.said or self.count < TIE_AT or self.high - self.low > TIE_TOLERANCE:
            return False
        self.said = True
        return True
