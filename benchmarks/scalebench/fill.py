"""A study of tuner's making, filled with thousands of finished trials in a few seconds.

The trials are written straight into Optuna's tables with one multi-row insert a
table, the way the cheap worker's objective would have left them (a learning
rate, three intermediate values, the value, one user attribute), so that the
study can reach 10,000 trials without 10,000 trial loops. Only the real trials
run after it are measured.
"""

from __future__ import annotations

import datetime as dt
import json
import random

import optuna
import sqlalchemy as sa
from optuna.distributions import FloatDistribution, distribution_to_json
from optuna.storages._rdb import models
from optuna.trial import TrialState

from tuner.config.build import open_study
from tuner.config.spec import StudySpec, load_spec
from tuner.storages.storage import open_storage

__all__ = ["SETS", "fill", "new_study", "spec_for"]

# What every study of the benchmark sets: no warm-start points, and long outages ridden out.
SETS = ("search.warm_start=[]", "storage.outage_tolerance=300")
_LR = FloatDistribution(1e-4, 1e-1, log=True)
_VALUE = models.TrialValueModel.TrialValueType.FINITE
_STEP = models.TrialIntermediateValueModel.TrialIntermediateValueType.FINITE


def spec_for(name: str, sets: tuple[str, ...] = ()) -> StudySpec:
    """The clothing spec, renamed to ``name``, with the benchmark's settings."""
    return load_spec("clothing", [f"study.name={name}", *SETS, *sets])


def new_study(url: str, name: str, sets: tuple[str, ...] = ()) -> optuna.Study:
    """Create the study as a worker would (its stored space and settings included)."""
    spec = spec_for(name, sets)
    return open_study(spec, open_storage(url, spec.storage))


def fill(url: str, study_id: int, upto: int, seed: int = 0) -> int:
    """Add COMPLETE trials until the study holds ``upto`` trials; returns how many were added."""
    engine = sa.create_engine(url)
    rng = random.Random(seed)
    trials = models.TrialModel.__table__
    try:
        with engine.begin() as conn:
            count = sa.select(sa.func.count()).where(trials.c.study_id == study_id)
            have = int(conn.execute(count.select_from(trials)).scalar_one())
            if have >= upto:
                return 0
            now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
            rows = [
                {"number": n, "study_id": study_id, "state": TrialState.COMPLETE,
                 "datetime_start": now, "datetime_complete": now}
                for n in range(have, upto)
            ]  # fmt: skip
            conn.execute(trials.insert(), rows)
            ids = conn.execute(
                sa.select(trials.c.trial_id).where(
                    trials.c.study_id == study_id, trials.c.number >= have
                )
            ).scalars()
            _children(conn, list(ids), rng)
        return upto - have
    finally:
        engine.dispose()


def _children(conn: sa.Connection, ids: list[int], rng: random.Random) -> None:
    """Each trial's parameter, value, three intermediate values and ``gap`` attribute."""
    dist = distribution_to_json(_LR)
    params, values, steps, attrs = [], [], [], []
    for trial_id in ids:
        lr = 10 ** rng.uniform(-4, -1)
        params.append({"trial_id": trial_id, "param_name": "learning_rate",
                       "param_value": lr, "distribution_json": dist})  # fmt: skip
        values.append({"trial_id": trial_id, "objective": 0, "value": lr, "value_type": _VALUE})
        steps += [
            {"trial_id": trial_id, "step": s, "intermediate_value": lr,
             "intermediate_value_type": _STEP}
            for s in range(3)
        ]  # fmt: skip
        attrs.append({"trial_id": trial_id, "key": "gap", "value_json": json.dumps(0.0)})
    for model, rows in (
        (models.TrialParamModel, params),
        (models.TrialValueModel, values),
        (models.TrialIntermediateValueModel, steps),
        (models.TrialUserAttributeModel, attrs),
    ):
        conn.execute(model.__table__.insert(), rows)
