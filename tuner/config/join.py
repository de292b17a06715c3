"""Whether a worker's spec fits a stored study: the same model, the same search space.

``tuner export`` rebuilds the best trial's model from the study's stored spec,
so every worker of a study must train the same model; and a study's trials
are only comparable within one search space.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage

from tuner.common.attrs import SPACE_ATTR, SPEC_ATTR
from tuner.common.console import warn
from tuner.config.spec import StudySpec, spec_from_dict, spec_to_dict
from tuner.errors import SpecError, StudyError
from tuner.space.tables import parse_param
from tuner.study.opening import study_attr

__all__ = [
    "budget_difference",
    "check_fit",
    "check_joinable",
    "joined_spec",
    "stored_study_spec",
    "training_budget",
    "training_setup",
]


def check_joinable(
    spec: StudySpec, storage: BaseStorage, *, accept_space_change: bool = False
) -> None:
    """Refuse, writing nothing, to join a stored study that the spec does not fit.

    A study that does not exist yet fits any spec. Workers call this before they
    check the data and weights, so a mismatch fails at once, and only then
    :func:`tuner.config.build.open_study`, so a run that fails on its data creates no study.

    Raises:
        StudyError: see :func:`check_fit`.
    """
    if spec.study.name in optuna.study.get_all_study_names(storage):
        study = optuna.load_study(study_name=spec.study.name, storage=storage)
        check_fit(study, spec, accept_space_change)
        if (message := budget_difference(study, spec)) is not None:
            warn(message)


def check_fit(study: optuna.Study, spec: StudySpec, accept_space_change: bool) -> bool:
    """Check that the spec fits the stored study; True when it searches an accepted new space.

    Raises:
        StudyError: when the study trains another model than the spec (always), or
            searches another space (unless ``accept_space_change``).
    """
    _check_same_training(study, spec)
    name, space = spec.study.name, spec.search.space.to_json()
    stored = study_attr(study, SPACE_ATTR)
    if stored is None or stored == space:
        return False
    if not accept_space_change:
        before, now = _describe_change(stored, space)
        raise StudyError(
            f"study {name!r} was created with {before}, but the spec now says {now}; start a "
            f"new study with --set study.name={name}-2, or pass --accept-space-change to "
            "continue this one with the new space"
        )
    return True


def _describe(name: str, table: Any) -> str:
    if table is None:
        return f"no {name}"
    try:
        return parse_param(name, dict(table), "the stored space").describe()
    except (SpecError, TypeError, ValueError):  # stored by another version of tuner
        return f"{name} = {json.dumps(table)}"


def _describe_change(stored: dict[str, Any], space: dict[str, Any]) -> tuple[str, str]:
    """The parameters that differ, as they were and as they are now."""
    names = [n for n in {**stored, **space} if stored.get(n) != space.get(n)]
    return (
        "; ".join(_describe(n, stored.get(n)) for n in names),
        "; ".join(_describe(n, space.get(n)) for n in names),
    )


def training_setup(spec: StudySpec) -> dict[str, Any]:
    """The settings that decide which model a trial trains, by dotted key.

    Every worker of a study must agree on these. A weights file is named by its
    file name, so machines that keep the same file in different folders agree.
    """
    weights = spec.model.weights
    if weights not in ("imagenet", "none"):
        weights = f"{Path(weights).name} (a file)"
    return {
        "model.recipe": spec.model.recipe,  # known without importing a user's module
        "model.base": spec.model.base,
        "model.weights": weights,
        "model.trainable_base": spec.model.trainable_base,
        "model.seed": spec.model.seed,
        "data.image_size": list(spec.data.image_size),
        "data.augment": spec.data.augment,
        "data.recipe": spec.data.recipe,
        "sampler.kind": spec.sampler.kind,
        # A trial's value means one thing in one study: the same metric, reduced alike.
        "objective.metric": spec.objective.metric,
        "objective.direction": spec.objective.direction,
        "objective.reduce": spec.objective.reduce,
        "objective.metrics": list(spec.objective.names),
        "objective.directions": list(spec.objective.ways),
        "objective.max_gap": spec.objective.max_gap,
    }


def training_budget(spec: StudySpec) -> dict[str, Any]:
    """Settings that change how a trial trains but not its model: they may differ, with care."""
    return {"train.epochs": spec.train.epochs, "data.batch_size": spec.data.batch_size}


def _differences(ours: dict[str, Any], theirs: dict[str, Any]) -> tuple[str, str] | None:
    differ = [k for k in ours if ours[k] != theirs.get(k)]
    if not differ:
        return None
    return (
        ", ".join(f"{k}={theirs.get(k)}" for k in differ),
        ", ".join(f"{k}={ours[k]}" for k in differ),
    )


def stored_study_spec(study: optuna.Study) -> StudySpec | None:
    """The spec the study was created with, or None when none is stored or it cannot be read."""
    stored = study_attr(study, SPEC_ATTR)
    if stored is None:
        return None
    try:
        return spec_from_dict(json.loads(stored), where="the stored spec")
    except (SpecError, ValueError):  # written by another version of tuner: nothing to compare
        return None


def _check_same_training(study: optuna.Study, spec: StudySpec) -> None:
    """Refuse to join a study whose trials train another model than this worker would."""
    if (theirs := stored_study_spec(study)) is None:
        return
    if (diff := _differences(training_setup(spec), training_setup(theirs))) is not None:
        name = spec.study.name
        raise StudyError(
            f"study {name!r} trains with {diff[0]}, but this worker has {diff[1]}; give this "
            f"worker the same settings, or start a new study with --set study.name={name}-2"
        )


def budget_difference(study: optuna.Study, spec: StudySpec) -> str | None:
    """A warning when this worker trains with other epochs or batch size than the study."""
    if (theirs := stored_study_spec(study)) is None:
        return None
    if (diff := _differences(training_budget(spec), training_budget(theirs))) is None:
        return None
    return (
        f"study {spec.study.name!r} was created with {diff[0]}, this worker has {diff[1]}; "
        "its trials are compared with the others as equals"
    )


# Sections a joining worker takes from the study; [search] stays the spec file's, so that an
# edited space is still noticed (and refused, or accepted with --accept-space-change).
JOINED_SECTIONS = ("data", "model", "train", "sampler", "pruner", "objective", "cache", "storage")


def joined_spec(
    spec: StudySpec, storage: BaseStorage, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[StudySpec, dict[str, Any]]:
    """A worker joining an existing study takes the study's stored settings, its ``--set``
    options on top; returns the spec and the settings taken that the spec file had otherwise.

    So a second worker needs none of the first one's ``--set`` options. A setting given
    with ``--set`` that differs from the study's is still refused by :func:`check_joinable`.

    A stored ``data.dir`` that does not exist on this machine is not taken: the
    worker's own folder is used (and downloaded into, as for a new study).
    """
    if spec.study.name not in optuna.study.get_all_study_names(storage):
        return spec, {}
    study = optuna.load_study(study_name=spec.study.name, storage=storage)
    stored = study_attr(study, SPEC_ATTR)
    if stored is None:
        return spec, {}
    try:
        data = json.loads(stored)
    except ValueError:
        return spec, {}
    mine = spec_to_dict(spec)
    merged = {**mine, **{k: data[k] for k in JOINED_SECTIONS if k in data}}
    try:
        joined = spec_from_dict(merged, overrides, where=f"study {spec.study.name!r}")
    except SpecError:  # stored by another version of tuner: keep the worker's own
        return spec, {}
    joined = dataclasses.replace(joined, study=spec.study, spec_file=spec.spec_file)
    taken = {
        f"{section}.{key}": value
        for section in JOINED_SECTIONS
        for key, value in spec_to_dict(joined).get(section, {}).items()
        if mine.get(section, {}).get(key) != value
    }
    if "data.dir" in taken and not Path(joined.data.dir).exists():
        # The folder is the creating machine's; here the worker's own (the spec file's, which
        # it may download into, or its --set) is the one that can work.
        joined = dataclasses.replace(
            joined, data=dataclasses.replace(joined.data, dir=spec.data.dir)
        )
        del taken["data.dir"]
    return joined, taken
