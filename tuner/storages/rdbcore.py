"""Optuna's RDB storage with its per-epoch calls made as plain SQL statements.

A cached trial lasts a fraction of a second, and in it Optuna's RDB storage
makes some twenty writes (a value per epoch, the trial attributes, the
heartbeat) and a few reads of the study. Each goes through SQLAlchemy's ORM: a
session, a query that loads the trial as an object, another for the row to
change, a flush. That was about 2.5 ms a write and 7 ms a read (seven queries
for one incremental read of Optuna's cache), a third of a fast trial.
:class:`CoreRDBStorage` makes the same calls as SQLAlchemy Core statements on
Optuna's own tables (the table objects of ``optuna.storages._rdb.models``, so
names and types are Optuna's), with Optuna's semantics: the same checks (a
finished trial raises ``UpdateFinishedTrialError``, an unknown id ``KeyError``),
one transaction per call, the same stored forms (infinite and NaN values, JSON
attributes, naive UTC times, the database's clock for heartbeats) and the same
``FrozenTrial`` s. A write is a state check and one upsert; a read is two
queries (the trials, then all their rows in one ``UNION ALL``). Everything else
(studies, creating, claiming and finishing trials, parameters) is Optuna's own code.

The schema is Optuna's private module: ``tests/test_rdbcore.py`` compares every
call with Optuna's on every backend, so an Optuna release that changes it fails
there first.
"""

from __future__ import annotations

import datetime
import functools
import json
import sqlite3
from collections.abc import Callable, Container, Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

__all__ = ["RUNNING_BEATS", "CoreRDBStorage"]

_TRIALS = models.TrialModel.__table__
_STUDIES = models.StudyModel.__table__
_PARAMS = models.TrialParamModel.__table__
_VALUES = models.TrialValueModel.__table__
_STEPS = models.TrialIntermediateValueModel.__table__
_USER = models.TrialUserAttributeModel.__table__
_SYSTEM = models.TrialSystemAttributeModel.__table__
_BEATS = models.TrialHeartbeatModel.__table__
# A trial's rows in other tables, in the order of the tags of a read's second query.
_CHILDREN = (_PARAMS, _VALUES, _STEPS, _USER, _SYSTEM)
# More trial ids than this to read again are read as a range (Optuna's fix for issue 1457).
_MANY_IDS = 500
# The second query's columns after (tag, trial_id, pk), shared by the five tables.
_CHILD_COLUMNS = ("key", "number", "value", "kind", "text")

# The study's running trials and their heartbeats (a join, so a trial without one is left out).
RUNNING_BEATS = (
    sa.select(_TRIALS.c.trial_id, _BEATS.c.heartbeat)
    .join(_BEATS, _BEATS.c.trial_id == _TRIALS.c.trial_id)
    .where(_TRIALS.c.state == TrialState.RUNNING, _TRIALS.c.study_id == sa.bindparam("study_id"))
    .order_by(_TRIALS.c.trial_id)
)
_STATE = sa.select(_TRIALS.c.state, _TRIALS.c.number).where(
    _TRIALS.c.trial_id == sa.bindparam("trial_id")
)


@functools.cache
def _upsert_statement(
    dialect: str, table: sa.Table, unique: tuple[str, ...], columns: tuple[str, ...]
) -> sa.Insert | None:
    """``INSERT`` that updates ``columns`` where a row has the same ``unique`` columns.

    None for a database without an upsert SQLAlchemy knows. Every table it
    serves has that unique constraint in Optuna's schema. ``heartbeat`` is the
    database's current time, as Optuna writes it; other columns are parameters.
    """
    now = {"heartbeat": sa.func.current_timestamp()} if "heartbeat" in columns else {}
    if dialect == "mysql":
        mysql = mysql_insert(table).values(**now)
        return mysql.on_duplicate_key_update({c: mysql.inserted[c] for c in columns})
    if dialect == "postgresql" or (dialect == "sqlite" and sqlite3.sqlite_version_info >= (3, 24)):
        insert = (postgresql_insert if dialect == "postgresql" else sqlite_insert)(table)
        insert = insert.values(**now)
        return insert.on_conflict_do_update(
            index_elements=[table.c[c] for c in unique],
            set_={c: insert.excluded[c] for c in columns},
        )
    return None


@functools.lru_cache(maxsize=1024)
def _distribution(distribution_json: str) -> BaseDistribution:
    """A parameter's distribution; a study has few, each stored on every trial."""
    return json_to_distribution(distribution_json)


def _local(utc: datetime.datetime | None) -> datetime.datetime | None:
    """A stored naive-UTC time as the naive local time FrozenTrial holds (Optuna's rule)."""
    if utc is None:
        return None
    return utc.replace(tzinfo=datetime.timezone.utc).astimezone().replace(tzinfo=None)


class CoreRDBStorage(RDBStorage):
    """:class:`optuna.storages.RDBStorage`, with its hottest calls in SQLAlchemy Core.

    Takes the same arguments. Overridden: ``set_trial_intermediate_value``,
    ``set_trial_user_attr``, ``set_trial_system_attr``, ``record_heartbeat``,
    ``get_trial``, the trial reads behind ``get_all_trials`` and Optuna's cache,
    and the stale-trial query of the heartbeat. Added: ``set_trial_user_attrs`` and
    ``set_trial_intermediate_values``, several rows in one transaction.
    """

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(
            intermediate_value
        )
        row = {"intermediate_value": stored, "intermediate_value_type": kind}
        self._upsert(trial_id, _STEPS, _STEPS.c.step, {step: row})

    def set_trial_intermediate_values(self, trial_id: int, values: Mapping[int, float]) -> None:
        """Several steps' values of an unfinished trial, in one transaction."""
        rows = {}
        for step, value in values.items():
            stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(
                value
            )
            rows[step] = {"intermediate_value": stored, "intermediate_value_type": kind}
        if rows:
            self._upsert(trial_id, _STEPS, _STEPS.c.step, rows)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._upsert(trial_id, _USER, _USER.c.key, {key: {"value_json": json.dumps(value)}})

    def set_trial_user_attrs(self, trial_id: int, values: Mapping[str, Any]) -> None:
        """Several user attributes of an unfinished trial, in one transaction.

        A trial's per-epoch record is seven attributes; written one call each, as
        Optuna's ``Trial.set_user_attr`` writes them, they were a third of a cached
        trial's transactions on a server.
        """
        rows = {key: {"value_json": json.dumps(value)} for key, value in values.items()}
        if rows:
            self._upsert(trial_id, _USER, _USER.c.key, rows)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._upsert(trial_id, _SYSTEM, _SYSTEM.c.key, {key: {"value_json": json.dumps(value)}})

    def _upsert(
        self,
        trial_id: int,
        table: sa.Table,
        column: sa.Column,
        rows: Mapping[Any, dict[str, Any]],
    ) -> None:
        """Set the trial's rows of ``table`` at each key of ``rows``, as one transaction.

        As Optuna does it: the trial must exist and be unfinished; then the rows are
        written with the database's upsert (SQLite, PostgreSQL, MySQL), or each updated
        if the trial has one at its key and inserted if not (any other database).
        """
        with self.engine.begin() as conn:
            trial = conn.execute(_STATE, {"trial_id": trial_id}).one_or_none()
            if trial is None:
                raise KeyError(models.NOT_FOUND_MSG)
            if trial.state.is_finished():  # Optuna's check_trial_is_updatable, without a read
                raise UpdateFinishedTrialError(
                    f"Trial#{trial.number} has already finished and can not be updated."
                )
            params = [{"trial_id": trial_id, column.key: key, **row} for key, row in rows.items()]
            columns = tuple(next(iter(rows.values())))
            upsert = _upsert_statement(
                self.engine.dialect.name, table, ("trial_id", column.key), columns
            )
            if upsert is not None:
                conn.execute(upsert, params)
                return
            for key, row in rows.items():
                where = (table.c.trial_id == trial_id, column == key)
                found = conn.execute(sa.select(table.primary_key.columns[0]).where(*where))
                if found.first() is None:
                    conn.execute(sa.insert(table), {"trial_id": trial_id, column.key: key, **row})
                else:
                    conn.execute(sa.update(table).where(*where).values(**row))

    def record_heartbeat(self, trial_id: int) -> None:
        """The trial's heartbeat row set to the database's current time, as Optuna sets it."""
        upsert = _upsert_statement(self.engine.dialect.name, _BEATS, ("trial_id",), ("heartbeat",))
        if upsert is None:
            super().record_heartbeat(trial_id)
            return
        with self.engine.begin() as conn:
            conn.execute(upsert, {"trial_id": trial_id})

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Running trials whose heartbeat is older than the grace period (Optuna's rule)."""
        assert self.heartbeat_interval is not None
        grace = self.grace_period if self.grace_period is not None else 2 * self.heartbeat_interval
        with self.engine.begin() as conn:
            now = conn.execute(sa.select(sa.func.now())).scalar_one().replace(tzinfo=None)
            beats = conn.execute(RUNNING_BEATS, {"study_id": study_id}).all()
        late = datetime.timedelta(seconds=grace)
        return [trial_id for trial_id, beat in beats if now - beat > late]

    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self.engine.begin() as conn:
            found = _read(conn, *_ONE_TRIAL, {"trial_id": trial_id})
        if not found:
            raise KeyError(models.NOT_FOUND_MSG)
        return found[0]

    def _get_trials(
        self,
        study_id: int,
        states: Container[TrialState] | None,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
    ) -> list[FrozenTrial]:
        """The study's trials in ``states`` that are in ``included_trial_ids`` or newer.

        Optuna's cache asks for its unfinished trials again and for every trial
        after the last finished one it holds; ``trial_id_greater_than=-1`` asks for all.
        """
        params: dict[str, Any] = {"study_id": study_id}
        if states is not None:
            assert isinstance(states, Iterable)
            params["states"] = list(states)
        keep: Callable[[FrozenTrial], bool] | None = None  # filters a range read
        if trial_id_greater_than > -1:
            params["newer"] = trial_id_greater_than
            again = sorted(i for i in included_trial_ids if i <= trial_id_greater_than)
            if len(again) > _MANY_IDS:
                # Each id would be a bound variable in both queries (SQLite allows 32,766
                # in all): read the range from the oldest instead, and keep the asked ones.
                params["newer"] = again[0] - 1
                asked = set(again)

                def keep(t: FrozenTrial) -> bool:
                    return t._trial_id > trial_id_greater_than or t._trial_id in asked

            elif again:
                params["again"] = again
        trials, children = _study_reads(frozenset(params))
        with self.engine.begin() as conn:
            found = _read(conn, trials, children, params)
            if not found:  # none, or no such study: Optuna raises for the latter
                exists = sa.select(_STUDIES.c.study_id).where(_STUDIES.c.study_id == study_id)
                if conn.execute(exists).first() is None:
                    raise KeyError(models.NOT_FOUND_MSG)
            return found if keep is None else [t for t in found if keep(t)]


def _reads(where: sa.ColumnElement[bool]) -> tuple[sa.Select, sa.CompoundSelect]:
    """The two queries of a read: the trials matching ``where``, and all their rows.

    The second is one ``UNION ALL`` over the five tables a trial's rows are in,
    each row tagged with its table's position in :data:`_CHILDREN`.
    """
    trials = sa.select(_TRIALS).where(where).order_by(_TRIALS.c.trial_id)
    ids = sa.select(_TRIALS.c.trial_id).where(where).scalar_subquery()

    def part(tag: int, table: sa.Table, **columns: Any) -> sa.Select:
        # Enums become strings, so that the two tables' enum types can share a column;
        # numbers and text keep their types (a cast could narrow a double to a float).
        if "kind" in columns:
            columns["kind"] = sa.cast(columns["kind"], sa.String)
        named = [columns.get(name, sa.null()).label(name) for name in _CHILD_COLUMNS]
        head = [sa.literal(tag, sa.Integer).label("tag"), table.c.trial_id]
        pk = table.primary_key.columns[0].label("pk")
        return sa.select(*head, pk, *named).where(table.c.trial_id.in_(ids))

    children = sa.union_all(
        part(0, _PARAMS, key=_PARAMS.c.param_name, value=_PARAMS.c.param_value,
             text=_PARAMS.c.distribution_json),
        part(1, _VALUES, number=_VALUES.c.objective, value=_VALUES.c.value,
             kind=_VALUES.c.value_type),
        part(2, _STEPS, number=_STEPS.c.step, value=_STEPS.c.intermediate_value,
             kind=_STEPS.c.intermediate_value_type),
        part(3, _USER, key=_USER.c.key, text=_USER.c.value_json),
        part(4, _SYSTEM, key=_SYSTEM.c.key, text=_SYSTEM.c.value_json),
    )  # fmt: skip
    return trials, children.order_by("tag", "pk")


@functools.cache
def _study_reads(shape: frozenset[str]) -> tuple[sa.Select, sa.CompoundSelect]:
    """The queries of :meth:`CoreRDBStorage._get_trials` for one set of parameters."""
    where = [_TRIALS.c.study_id == sa.bindparam("study_id")]
    if "states" in shape:
        where.append(_TRIALS.c.state.in_(sa.bindparam("states", expanding=True)))
    if "newer" in shape:
        newer = _TRIALS.c.trial_id > sa.bindparam("newer")
        if "again" in shape:
            newer = sa.or_(_TRIALS.c.trial_id.in_(sa.bindparam("again", expanding=True)), newer)
        where.append(newer)
    return _reads(sa.and_(*where))


_ONE_TRIAL = _reads(_TRIALS.c.trial_id == sa.bindparam("trial_id"))


def _read(
    conn: sa.Connection, trials: sa.Select, children: sa.CompoundSelect, params: dict[str, Any]
) -> list[FrozenTrial]:
    """The trials the two queries find, built as Optuna builds them, in ``conn``'s transaction."""
    rows = conn.execute(trials, params).all()
    if not rows:
        return []
    held: dict[int, list[list[Any]]] = {row.trial_id: [[] for _ in _CHILDREN] for row in rows}
    for child in conn.execute(children, params):
        # Under READ COMMITTED (PostgreSQL) the second query can see a trial created since
        # the first: its rows are left for the next read, as the trial itself is.
        if (kept := held.get(child.trial_id)) is not None:
            kept[child.tag].append(child)
    return [_frozen(row, *held[row.trial_id]) for row in rows]


def _frozen(
    trial: Any,
    params: list[Any],
    values: list[Any],
    steps: list[Any],
    user: list[Any],
    system: list[Any],
) -> FrozenTrial:
    """A FrozenTrial from its row and its rows of each child table (Optuna's conversion)."""
    objectives = None
    if values:
        objectives = [0.0] * len(values)
        kinds = models.TrialValueModel.TrialValueType
        for v in values:
            to_float = models.TrialValueModel.stored_repr_to_value
            objectives[v.number] = to_float(v.value, kinds[v.kind])
    distributions = {p.key: _distribution(p.text) for p in params}
    to_value = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value
    step_kinds = models.TrialIntermediateValueModel.TrialIntermediateValueType
    return FrozenTrial(
        number=trial.number,
        state=trial.state,
        value=None,
        values=objectives,
        datetime_start=_local(trial.datetime_start),
        datetime_complete=_local(trial.datetime_complete),
        params={p.key: distributions[p.key].to_external_repr(p.value) for p in params},
        distributions=distributions,
        user_attrs={a.key: json.loads(a.text) for a in user},
        system_attrs={a.key: json.loads(a.text) for a in system},
        intermediate_values={v.number: to_value(v.value, step_kinds[v.kind]) for v in steps},
        trial_id=trial.trial_id,
    )
