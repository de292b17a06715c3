"""Several user attributes of one trial in one storage write, where the storage allows it.

Optuna writes each user attribute in a transaction of its own: on an RDB
storage that is a session, a lookup of the trial, an upsert and a commit,
about a millisecond of CPU each, and with many workers on one SQLite file
each commit also waits its turn for the write lock. A cached trial's record
(the per-epoch lists, the gap, where it ran and its artifact ids) is written
at a few points only, so each point writes all its attributes together: one
transaction on an RDB storage (SQLite, PostgreSQL, MySQL), one call at a time
elsewhere (the journal and in-memory storages, whose writes are cheap).
No TensorFlow here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session

__all__ = ["set_trial_user_attrs", "set_user_attrs", "write_rdb_user_attrs"]


def set_user_attrs(trial: optuna.Trial, values: Mapping[str, Any]) -> None:
    """``trial.set_user_attr`` for every item of ``values``, in one write where possible."""
    if values:
        set_trial_user_attrs(trial.storage, trial._trial_id, values)


def set_trial_user_attrs(storage: BaseStorage, trial_id: int, values: Mapping[str, Any]) -> None:
    """Set the user attributes ``values`` of trial ``trial_id`` in ``storage``.

    A storage with its own ``set_trial_user_attrs`` (tuner's SQLite storage, the
    resilient wrapper) is asked to do it; an RDB storage does it in one
    transaction; any other storage gets one ``set_trial_user_attr`` per item.
    """
    if isinstance(storage, _CachedStorage):
        # Optuna's cache keeps finished trials only; it passes these writes straight on.
        storage = storage._backend
    own = getattr(storage, "set_trial_user_attrs", None)
    if own is not None:
        own(trial_id, values)
    elif isinstance(storage, RDBStorage):
        write_rdb_user_attrs(storage, trial_id, values)
    else:
        for key, value in values.items():
            storage.set_trial_user_attr(trial_id, key, value)


def write_rdb_user_attrs(storage: RDBStorage, trial_id: int, values: Mapping[str, Any]) -> None:
    """One transaction of Optuna's own per-attribute write (its checks and upsert), per item."""
    with _create_scoped_session(storage.scoped_session, True) as session:
        for key, value in values.items():
            storage._set_trial_attr_without_commit(
                session, models.TrialUserAttributeModel, trial_id, key, value
            )
