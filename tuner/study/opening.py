"""Creating or joining a study without races, warm-starting it once, loading it to read.

The sampler, the pruner and the join check come built (see
:mod:`tuner.config.build`); this module only knows Optuna's study.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.exceptions import DuplicatedStudyError
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage
from optuna.study import StudyDirection

from tuner.common.attrs import METRIC_NAME, SPACE_ATTR, SPEC_ATTR, WARM_START
from tuner.errors import StudyError
from tuner.storages.storage import retry_transient
from tuner.study.note import write_note
from tuner.study.settings import metric_label

__all__ = [
    "NewStudy",
    "load_existing_study",
    "open_study",
    "set_study_attr",
    "study_attr",
    "value_label",
    "value_labels",
]


def study_attr(study: optuna.Study, key: str) -> Any:
    """One of the study attributes tuner keeps for itself (the spec, the space), or None.

    They are system attributes, out of the dashboard's table of the study's own
    attributes; a study written by an earlier version of tuner has them as user attributes.
    """
    system = study._storage.get_study_system_attrs(study._study_id)
    return system[key] if key in system else study.user_attrs.get(key)


def set_study_attr(study: optuna.Study, key: str, value: Any) -> None:
    """Store one of tuner's own study attributes (see :func:`study_attr`)."""
    study._storage.set_study_system_attr(study._study_id, key, value)


@dataclass(frozen=True)
class NewStudy:
    """A study as a worker opens it, and what it is stamped with when this worker creates it."""

    name: str
    sampler: BaseSampler
    pruner: BasePruner
    space: dict[str, Any]  # the search space as plain data, to detect changes
    settings: Mapping[str, Any]  # the whole spec as plain data, stored for export and joins
    warm_start: Sequence[Mapping[str, Any]] = ()
    note: str = ""
    metrics: tuple[str, ...] = (METRIC_NAME,)  # the values' names, as the dashboard shows them
    directions: tuple[str, ...] = ("maximize",)


def _create_study_once(
    storage: BaseStorage, name: str, directions: Sequence[StudyDirection]
) -> bool:
    """Create the study; True in exactly one of many workers racing to do so."""
    for attempt in range(10):
        try:
            retry_transient(lambda: storage.create_new_study(list(directions), name))
            return True
        except DuplicatedStudyError:
            return False
        except Exception:  # a lost race can surface as a driver error; look again
            if name in optuna.study.get_all_study_names(storage) or attempt == 9:
                return False
            time.sleep(0.1 * (attempt + 1))
    return False


def open_study(
    storage: BaseStorage,
    new: NewStudy,
    fits: Callable[[optuna.Study], bool] = lambda study: False,
) -> optuna.Study:
    """Create or join the study, without races, and warm-start it once.

    Only the worker that creates the study enqueues the warm-start points, so each
    point runs exactly once however many workers start. A point that leaves some
    parameters out has them chosen by the sampler.

    Args:
        storage: an opened storage.
        new: the study's name, sampler and pruner, and what a new study is stamped with.
        fits: for a study that existed: raises when this worker may not join it,
            and answers whether its stored space is to be replaced by ``new.space``.

    Raises:
        StudyError: from ``fits``, when the stored study trains another model or
            searches another space.
    """
    directions = [StudyDirection[d.upper()] for d in new.directions]
    created = _create_study_once(storage, new.name, directions)
    study = optuna.load_study(
        study_name=new.name, storage=storage, sampler=new.sampler, pruner=new.pruner
    )
    if study.metric_names is None:  # the dashboard's name for the value; else "Objective 0"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(new.metrics))
    if created:
        set_study_attr(study, SPACE_ATTR, new.space)
        set_study_attr(study, SPEC_ATTR, json.dumps(new.settings))
        for point in new.warm_start:
            study.enqueue_trial(dict(point), user_attrs={WARM_START: True})
        if new.note:
            write_note(study, new.note)
        return study
    if fits(study):
        set_study_attr(study, SPACE_ATTR, new.space)
    return study


def load_existing_study(storage: BaseStorage, name: str, first: str) -> optuna.Study:
    """Load the study ``name`` for reading; it must exist.

    Args:
        first: the command that creates it, for the error.

    Raises:
        StudyError: naming the studies that the storage does hold.
    """
    names = optuna.study.get_all_study_names(storage)
    if name not in names:
        more = f" and {len(names) - 10} more" if len(names) > 10 else ""
        held = (", ".join(names[:10]) or "none") + more  # a shared server may hold hundreds
        raise StudyError(
            f"study {name!r} does not exist in this storage (studies there: {held}); "
            f"run `{first}` first, or check --storage / TUNER_STORAGE"
        )
    return optuna.load_study(study_name=name, storage=storage)


def value_label(study: optuna.Study) -> str:
    """The name of a trial's value in lines and tables: its metric (``val_acc``, ``val_mae``)."""
    return value_labels(study)[0]


def value_labels(study: optuna.Study) -> list[str]:
    """The names of a trial's values, one per objective (``val_acc``, ``gap``)."""
    n = len(study.directions)
    names = study.metric_names or ([METRIC_NAME] if n == 1 else [f"value {i}" for i in range(n)])
    return [metric_label(name) for name in names]
