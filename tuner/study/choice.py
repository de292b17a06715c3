"""Which trial a study's results name as its best: one rule, for status and export alike.

- One objective: the trial with the best value (the earlier one on a tie), as
  Optuna's ``study.best_trial``.
- One objective with ``objective.max_gap``: the best of the complete trials
  whose gap (:data:`~tuner.common.attrs.METRIC_GAP`) is at most ``max_gap``;
  when none is, the best of all, marked infeasible.
- Two objectives: the Pareto front is Optuna's ``study.best_trials``; the best
  is the front's trial with the best first objective (then the best second,
  then the earlier trial). The front is sorted in that order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuner.common.attrs import METRIC_GAP

__all__ = ["TIE_AT", "TIE_TOLERANCE", "Choice", "choose", "ranked", "tie_line", "tied_value"]

TIE_AT = 3  # complete trials that must all score the same before it is said
TIE_TOLERANCE = 1e-9  # values closer than this are the same score


@dataclass(frozen=True)
class Choice:
    """The best trial by the rule above, the Pareto front, and whether the best is feasible."""

    best: FrozenTrial
    front: list[FrozenTrial]  # best first; the best trial alone for one objective
    feasible: bool | None = None  # None: no objective.max_gap
    max_gap: float = 0.0


def ranked(trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection]) -> list:
    """``trials`` ordered best first: by the first value, then the next, then the number."""

    def key(t: FrozenTrial) -> tuple[float, ...]:
        values = t.values or [math.nan] * len(directions)
        signed = [
            -v if d == StudyDirection.MAXIMIZE else v
            for v, d in zip(values, directions, strict=False)
        ]
        return (*signed, t.number)

    return sorted(trials, key=key)


def feasible(trial: FrozenTrial, max_gap: float) -> bool:
    """Whether the trial's gap is at most ``max_gap`` (a trial without one is not)."""
    gap = trial.user_attrs.get(METRIC_GAP)
    return gap is not None and float(gap) <= max_gap


def choose(study: optuna.Study, max_gap: float = 0.0) -> Choice | None:
    """The study's best trial by the module's rule; None when no trial is complete."""
    directions = study.directions
    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values is not None
    ]
    if not complete:
        return None
    if len(directions) > 1:
        front = ranked(study.best_trials, directions)
        return Choice(front[0], front)
    order = ranked(complete, directions)
    if max_gap <= 0:
        return Choice(order[0], [order[0]])
    within = [t for t in order if feasible(t, max_gap)]
    best = within[0] if within else order[0]
    return Choice(best, [best], feasible=bool(within), max_gap=max_gap)


def tied_value(trials: Sequence[FrozenTrial]) -> float | None:
    """The value every complete trial shares, once there are :data:`TIE_AT`; else None."""
    values = [t.values[0] for t in trials if t.state == TrialState.COMPLETE and t.values]
    if len(values) < TIE_AT or max(values) - min(values) > TIE_TOLERANCE:
        return None
    return values[0]


def tie_line(count: int, label: str, value: float) -> str:
    """What a tie means, said once by the worker, and by status and export."""
    return (
        f"all {count} finished trials score {label}={value:.4f}: the search cannot tell their "
        "hyperparameters apart, and the best trial is only the earliest; the model learns "
        "nothing yet (a base with random weights, too few epochs, or a range of rates that "
        "all fail)"
    )
