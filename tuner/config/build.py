"""The spec turned into what the layers below take, once, at the edge.

The runner, the results and the CLI call these; below them nothing sees a
:class:`~tuner.config.spec.StudySpec`: a storage gets its URL and
``[storage]`` settings, a study its sampler, pruner and what a new study is
stamped with, training a :class:`~tuner.training.settings.TrialSetup`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.pruners import NopPruner
from optuna.storages import BaseStorage

from tuner.assets.weights import check_weights
from tuner.common.attrs import SPEC_ATTR
from tuner.config.checks import recipe_problems
from tuner.config.files import worker_command
from tuner.config.join import check_fit
from tuner.config.note import study_note
from tuner.config.spec import StudySpec, spec_from_dict, spec_to_dict
from tuner.errors import SpecError
from tuner.recipes import DataRecipe, Recipe, resolve, resolve_data, search_path
from tuner.storages.storage import (
    artifact_folder,
    artifact_store_for,
    open_storage,
    resolve_url,
)
from tuner.study import opening
from tuner.study.pruners import study_pruner
from tuner.study.samplers import build_sampler
from tuner.study.samplers import sampler_budget as _sampler_budget
from tuner.training.settings import TrialSetup

__all__ = [
    "artifact_dir",
    "artifact_store",
    "check_base_weights",
    "data_recipe_for",
    "load_existing_study",
    "new_study",
    "note_for",
    "open_spec_storage",
    "open_study",
    "recipe_for",
    "resolve_checked",
    "sampler_budget",
    "storage_url",
    "stored_spec",
    "trial_setup",
]


def storage_url(spec: StudySpec, cli_url: str | None = None) -> str:
    """``--storage``, then ``TUNER_STORAGE``, then ``study.storage``, then ``NAME.db``."""
    return resolve_url(spec.study.name, spec.study.storage, cli_url)


def _go_on() -> None:
    pass


def open_spec_storage(
    url: str,
    spec: StudySpec,
    *,
    must_exist: bool = False,
    check: Callable[[], None] = _go_on,
    worker: bool = False,
) -> BaseStorage:
    """:func:`~tuner.storages.storage.open_storage` with the spec's ``[storage]`` settings;
    ``worker`` opens a worker's connections at once and keeps them."""
    return open_storage(
        url, spec.storage, must_exist=must_exist, first=worker_command(spec), check=check,
        hold_connections=worker,
    )  # fmt: skip


def artifact_dir(url: str, spec: StudySpec) -> Path:
    """The study's artifact folder (``storage.artifacts``, else beside the storage)."""
    return artifact_folder(url, spec.study.name, spec.storage.artifacts)


def artifact_store(url: str, spec: StudySpec, *, create: bool = True) -> FileSystemArtifactStore:
    """The study's artifact store; ``create=False`` for commands that only read."""
    return artifact_store_for(url, spec.study.name, spec.storage.artifacts, create=create)


def recipe_for(spec: StudySpec) -> Recipe:
    """The spec's recipe, its module looked for in the current folder and the spec's folder."""
    return resolve(spec.model.recipe, search_path(spec.spec_file))


def resolve_checked(spec: StudySpec) -> Recipe:
    """The spec's recipe, imported when it is the user's, with its spec checks made.

    Raises:
        RecipeError: the module or function cannot be imported, or does not fit.
        SpecError: the spec does not suit the recipe (such as an input size below the base's).
    """
    recipe = recipe_for(spec)
    if problems := recipe_problems(recipe, spec):
        raise SpecError(f"{spec.spec_file or 'the spec'}: {problems[0]}; fix it in the spec")
    return recipe


def data_recipe_for(spec: StudySpec) -> DataRecipe | None:
    """The spec's ``data.recipe``, imported once per process; None for image folders.

    Raises:
        RecipeError: the module or function cannot be imported, or does not take (params, seed).
    """
    if not spec.data.recipe:
        return None
    return resolve_data(spec.data.recipe, search_path(spec.spec_file))


def trial_setup(spec: StudySpec, recipe: Recipe | None = None) -> TrialSetup:
    """What training a trial reads; ``recipe`` when it is resolved already."""
    return TrialSetup(
        data_recipe=data_recipe_for(spec),
        data=spec.data,
        model=spec.model,
        recipe=recipe or recipe_for(spec),
        space=spec.search.space,
        train=spec.train,
        cache=spec.cache,
        objective=spec.objective,
    )


def check_base_weights(spec: StudySpec, offline: str = "") -> None:
    """:func:`~tuner.assets.weights.check_weights` for the spec's recipe and base."""
    check_weights(spec.model, recipe_for(spec).base(spec.model.base), offline)


def note_for(spec: StudySpec) -> Callable[[str], str]:
    """The study note's text, given a line about what the workers do now (or "")."""
    return lambda now: study_note(spec, now)


def sampler_budget(spec: StudySpec, n_trials: int) -> int:
    """The trials a worker aims for: ``grid`` stops after its warm-start points."""
    return _sampler_budget(spec.sampler.kind, n_trials, len(spec.search.warm_start))


def new_study(spec: StudySpec, worker_index: int = 0) -> opening.NewStudy:
    """The spec's study as a worker opens it: its sampler seeded for ``worker_index``."""
    multi, epochs = spec.objective.multi, spec.train.epochs
    return opening.NewStudy(
        name=spec.study.name,
        sampler=build_sampler(spec.sampler, worker_index),
        # Optuna prunes no study of several objectives (and trial.report refuses them).
        pruner=NopPruner() if multi else study_pruner(spec.pruner, epochs),
        space=spec.search.space.to_json(),
        settings=spec_to_dict(spec),
        warm_start=spec.search.warm_start,
        note=study_note(spec),
        metrics=spec.objective.names,
        directions=spec.objective.ways,
    )


def open_study(
    spec: StudySpec,
    storage: BaseStorage,
    *,
    worker_index: int = 0,
    accept_space_change: bool = False,
) -> optuna.Study:
    """Create or join the spec's study, without races, and warm-start it once.

    Raises:
        StudyError: when the stored study trains another model than the spec (see
            :func:`tuner.config.join.training_setup`), or searches another space unless
            ``accept_space_change`` is set.
    """

    def fits(study: optuna.Study) -> bool:
        return check_fit(study, spec, accept_space_change)

    return opening.open_study(storage, new_study(spec, worker_index), fits)


def load_existing_study(spec: StudySpec, storage: BaseStorage) -> optuna.Study:
    """Load the spec's study for reading; it must exist (else a StudyError naming the others)."""
    return opening.load_existing_study(storage, spec.study.name, worker_command(spec))


def stored_spec(study: optuna.Study, fallback: StudySpec, overrides: list[str]) -> StudySpec:
    """The spec the study was created with, with ``overrides`` on top.

    Export rebuilds models from it, so they match what the trials trained even
    when the export command is given fewer ``--set`` options than the workers.
    It keeps the given spec's file, whose folder is where a recipe module is found.
    """
    stored = opening.study_attr(study, SPEC_ATTR)
    if stored is None:
        return fallback
    spec = spec_from_dict(json.loads(stored), overrides, where=f"study {study.study_name!r}")
    return dataclasses.replace(spec, spec_file=fallback.spec_file)
