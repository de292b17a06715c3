"""A study's trial counts and best trials, counted and ranked by the database.

``tuner status`` and ``tuner export`` once read every trial of the study (its
parameters, values, reports and attributes) to count them by state and pick
the best few: seconds on a study of 10,000 trials. On an RDB storage the
database answers the same questions with a few aggregate queries on Optuna's
tables, and only the trials that are shown are read. The rules are those of
:mod:`tuner.study.choice` for one objective: by the value, the earlier trial
first on a tie; ``tests/results/test_status_sql.py`` compares every answer
with the in-memory path on SQLite and PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._rdb import models
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

__all__ = ["Tie", "best_trials", "param_names", "rdb", "state_counts", "tie", "trials_in"]

_TRIALS = models.TrialModel.__table__
_VALUES = models.TrialValueModel.__table__
_PARAMS = models.TrialParamModel.__table__
_KIND = models.TrialValueModel.TrialValueType
# A value's place among all values: -inf, finite, +inf (Optuna stores no value for the infinities).
_RANK = sa.case(
    (_VALUES.c.value_type == _KIND.INF_NEG, 0), (_VALUES.c.value_type == _KIND.FINITE, 1), else_=2
)
_FIRST_VALUE = sa.and_(
    _VALUES.c.trial_id == _TRIALS.c.trial_id,
    _VALUES.c.objective == 0,
)


@dataclass(frozen=True)
class Tie:
    """Every complete trial scores ``value``: ``count`` of them (see ``tied_value``)."""

    count: int
    value: float


def rdb(storage: BaseStorage | None) -> RDBStorage | None:
    """``storage`` when the database can answer (an RDB storage), else None."""
    return storage if isinstance(storage, RDBStorage) else None


def state_counts(storage: RDBStorage, study_id: int) -> dict[str, int]:
    """Trials by state name, in the order each state first occurs among the trials."""
    query = (
        sa.select(_TRIALS.c.state, sa.func.count(), sa.func.min(_TRIALS.c.number))
        .where(_TRIALS.c.study_id == study_id)
        .group_by(_TRIALS.c.state)
        .order_by(sa.func.min(_TRIALS.c.number))
    )
    with storage.engine.connect() as conn:
        return {TrialState(state).name: int(n) for state, n, _ in conn.execute(query)}


def best_trials(
    storage: RDBStorage, study_id: int, direction: StudyDirection, limit: int
) -> list[FrozenTrial]:
    """The ``limit`` best COMPLETE trials of a one-objective study, best first."""
    down = direction == StudyDirection.MAXIMIZE
    query = (
        sa.select(_TRIALS.c.trial_id)
        .join(_VALUES, _FIRST_VALUE)
        .where(_TRIALS.c.study_id == study_id, _TRIALS.c.state == TrialState.COMPLETE)
        .order_by(
            _RANK.desc() if down else _RANK,
            _VALUES.c.value.desc() if down else _VALUES.c.value,
            _TRIALS.c.number,
        )
        .limit(limit)
    )
    with storage.engine.connect() as conn:
        ids = list(conn.execute(query).scalars())
    return [storage.get_trial(trial_id) for trial_id in ids]


def trials_in(storage: RDBStorage, study_id: int, state: TrialState) -> list[FrozenTrial]:
    """The study's trials in ``state`` alone (the others are not read)."""
    return storage.get_all_trials(study_id, deepcopy=False, states=(state,))


def param_names(storage: RDBStorage, study_id: int) -> list[str]:
    """The names of the parameters of the study's trials, in the order they first occur."""
    query = (
        sa.select(_PARAMS.c.param_name)
        .join(_TRIALS, _TRIALS.c.trial_id == _PARAMS.c.trial_id)
        .where(_TRIALS.c.study_id == study_id)
        .group_by(_PARAMS.c.param_name)
        .order_by(sa.func.min(_PARAMS.c.param_id))
    )
    with storage.engine.connect() as conn:
        return list(conn.execute(query).scalars())


def tie(storage: RDBStorage, study_id: int, at_least: int, tolerance: float) -> Tie | None:
    """The tie of :func:`tuner.study.choice.tied_value`: every complete trial's first value
    is the same, and there are ``at_least`` of them; else None."""
    query = (
        sa.select(
            _VALUES.c.value_type,
            sa.func.count(),
            sa.func.min(_VALUES.c.value),
            sa.func.max(_VALUES.c.value),
        )
        .join(_TRIALS, _FIRST_VALUE)
        .where(_TRIALS.c.study_id == study_id, _TRIALS.c.state == TrialState.COMPLETE)
        .group_by(_VALUES.c.value_type)
    )
    with storage.engine.connect() as conn:
        groups = conn.execute(query).all()
    if len(groups) != 1 or groups[0][1] < at_least:
        return None
    kind, count, low, high = groups[0]
    if kind == _KIND.FINITE:
        return Tie(int(count), float(low)) if high - low <= tolerance else None
    return Tie(int(count), float("inf") if kind == _KIND.INF_POS else float("-inf"))
