"""The search: the sampler, the space, creating or joining a study, and the warm start.

Pruners live in :mod:`tuner.study.pruners` and the join checks in :mod:`tuner.config.join`;
both are re-exported here.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from typing import Any

import optuna
from optuna.exceptions import DuplicatedStudyError
from optuna.storages import BaseStorage
from optuna.study import StudyDirection

from tuner.common.attrs import METRIC_NAME, SPACE_ATTR, SPEC_ATTR, WARM_START
from tuner.config.join import (
    budget_difference,
    check_fit,
    check_joinable,
    training_budget,
    training_setup,
)
from tuner.config.spec import StudySpec, spec_from_dict, spec_to_dict, worker_command
from tuner.errors import StudyError
from tuner.space import params as space_module
from tuner.storages.storage import retry_transient
from tuner.study.note import write_note
from tuner.study.pruners import CompletedTrialsSnapshot, build_pruner, pruner_name, study_pruner
from tuner.study.samplers import build_sampler

__all__ = [
    "SPACE_ATTR",
    "CompletedTrialsSnapshot",
    "budget_difference",
    "build_pruner",
    "build_sampler",
    "check_joinable",
    "load_existing_study",
    "open_study",
    "pruner_name",
    "search_space",
    "stored_spec",
    "study_pruner",
    "suggest",
    "training_budget",
    "training_setup",
]


def search_space(spec: StudySpec) -> dict[str, Any]:
    """The search space as plain data, stored with the study to detect changes."""
    return spec.search.space.to_json()


def suggest(trial: optuna.Trial, spec: StudySpec) -> dict[str, Any]:
    """Sample one point of the spec's search space: every hyperparameter, by name."""
    return space_module.suggest(trial, spec.search.space)


def _create_study_once(storage: BaseStorage, name: str) -> bool:
    """Create the study; True in exactly one of many workers racing to do so."""
    for attempt in range(10):
        try:
            retry_transient(lambda: storage.create_new_study([StudyDirection.MAXIMIZE], name))
            return True
        except DuplicatedStudyError:
            return False
        except Exception:  # a lost race can surface as a driver error; look again
            if name in optuna.study.get_all_study_names(storage) or attempt == 9:
                return False
            time.sleep(0.1 * (attempt + 1))
    return False


def open_study(
    spec: StudySpec,
    storage: BaseStorage,
    *,
    worker_index: int = 0,
    accept_space_change: bool = False,
) -> optuna.Study:
    """Create or join the spec's study, without races, and warm-start it once.

    Only the worker that creates the study enqueues the warm-start points, so each
    point runs exactly once however many workers start. A point that leaves some
    parameters out has them chosen by the sampler.

    Raises:
        StudyError: when the stored study trains another model than the spec (see
            :func:`tuner.config.join.training_setup`), or searches another space unless
            ``accept_space_change`` is set.
    """
    name = spec.study.name
    created = _create_study_once(storage, name)
    study = optuna.load_study(
        study_name=name,
        storage=storage,
        sampler=build_sampler(spec, worker_index),
        pruner=study_pruner(spec),
    )
    space = search_space(spec)
    if study.metric_names is None:  # the dashboard's name for the value; else "Objective 0"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([METRIC_NAME])
    if created:
        study.set_user_attr(SPACE_ATTR, space)
        study.set_user_attr(SPEC_ATTR, json.dumps(spec_to_dict(spec)))
        for point in spec.search.warm_start:
            study.enqueue_trial(dict(point), user_attrs={WARM_START: True})
        write_note(study, spec)
        return study
    if check_fit(study, spec, accept_space_change):
        study.set_user_attr(SPACE_ATTR, space)
    return study


def load_existing_study(spec: StudySpec, storage: BaseStorage) -> optuna.Study:
    """Load the spec's study for reading; it must exist.

    Raises:
        StudyError: naming the studies that the storage does hold.
    """
    names = optuna.study.get_all_study_names(storage)
    if spec.study.name not in names:
        more = f" and {len(names) - 10} more" if len(names) > 10 else ""
        held = (", ".join(names[:10]) or "none") + more  # a shared server may hold hundreds
        raise StudyError(
            f"study {spec.study.name!r} does not exist in this storage (studies there: {held}); "
            f"run `{worker_command(spec)}` first, or check --storage / TUNER_STORAGE"
        )
    return optuna.load_study(study_name=spec.study.name, storage=storage)


def stored_spec(study: optuna.Study, fallback: StudySpec, overrides: list[str]) -> StudySpec:
    """The spec the study was created with, with ``overrides`` on top.

    Export rebuilds models from it, so they match what the trials trained even
    when the export command is given fewer ``--set`` options than the workers.
    It keeps the given spec's file, whose folder is where a recipe module is found.
    """
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored is None:
        return fallback
    spec = spec_from_dict(json.loads(stored), overrides, where=f"study {study.study_name!r}")
    return dataclasses.replace(spec, spec_file=fallback.spec_file)
