"""The search: sampler and pruner from the spec, the space, and the warm-start grid."""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Container
from pathlib import Path
from typing import Any, cast

import optuna
from optuna.exceptions import DuplicatedStudyError
from optuna.pruners import (
    BasePruner,
    HyperbandPruner,
    MedianPruner,
    NopPruner,
    PatientPruner,
    PercentilePruner,
    SuccessiveHalvingPruner,
)
from optuna.samplers import TPESampler
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuner.console import warn
from tuner.errors import SpecError, StudyError
from tuner.spec import PRUNER_KINDS, StudySpec, spec_from_dict, spec_to_dict, worker_command
from tuner.storage import retry_transient

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

SPACE_ATTR = "tuner:search_space"
SPEC_ATTR = "tuner:spec"


def search_space(spec: StudySpec) -> dict[str, Any]:
    """The search space as plain data, stored with the study to detect changes."""
    lr = spec.search.learning_rate
    return {"learning_rate": {"low": lr.low, "high": lr.high, "log": lr.log}}


def suggest(trial: optuna.Trial, spec: StudySpec) -> dict[str, float]:
    """Sample one point of the search space."""
    lr = spec.search.learning_rate
    return {"learning_rate": trial.suggest_float("learning_rate", lr.low, lr.high, log=lr.log)}


def build_sampler(spec: StudySpec, worker_index: int = 0) -> TPESampler:
    """A seeded TPE sampler; each worker of a pool gets its own seed so they do not collide."""
    return TPESampler(
        seed=spec.sampler.seed + worker_index,
        n_startup_trials=spec.sampler.n_startup_trials,
        constant_liar=True,
    )


def build_pruner(spec: StudySpec) -> BasePruner:
    """The pruner named by ``pruner.kind``, built from Optuna's own pruners.

    Raises:
        SpecError: for a kind that is not one of ``PRUNER_KINDS``.
    """
    p = spec.pruner
    median = MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    builders: dict[str, Any] = {
        "none": NopPruner,
        "median": lambda: median,
        "percentile": lambda: PercentilePruner(
            p.percentile, n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        ),
        "hyperband": lambda: HyperbandPruner(
            min_resource=p.min_resource,
            max_resource=spec.train.epochs,
            reduction_factor=p.reduction_factor,
        ),
        "successive-halving": lambda: SuccessiveHalvingPruner(
            min_resource=p.min_resource, reduction_factor=p.reduction_factor
        ),
        "patient": lambda: PatientPruner(median, patience=p.patience),
    }
    if p.kind not in builders:  # load_spec checks too; a spec built in code may not be
        allowed = ", ".join(PRUNER_KINDS)
        raise SpecError(f"pruner.kind {p.kind!r} is not one of: {allowed}; fix pruner.kind")
    return builders[p.kind]()


class CompletedTrialsSnapshot(BasePruner):
    """Runs an Optuna pruner against the completed trials as read at most every ``refresh`` s.

    Optuna's median and percentile pruners read the study on every
    ``should_prune``, and with the study's other trials running, each read
    fetches all of those trials with their values and attributes. A cached
    trial checks once per epoch, with epochs of milliseconds, so with eight
    workers on one SQLite file those reads were half of all storage work. The
    decision stays Optuna's: the wrapped pruner gets the study as usual, except
    that its list of COMPLETE trials is read afresh at each trial's first check
    and again once ``refresh`` seconds have passed. A lone worker therefore
    decides exactly as before (its completed trials change only between its
    trials); with several, a trial that another worker completes is taken into
    account at most ``refresh`` seconds later, a small delay next to the epoch
    a check already follows.

    Only pruners that read nothing but the completed trials may be wrapped:
    see :func:`_snapshot_safe`.
    """

    def __init__(
        self,
        pruner: BasePruner,
        refresh: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pruner, self.refresh, self._clock = pruner, refresh, clock
        self._trial: int | None = None
        self._read_at = -math.inf
        self._completed: list[FrozenTrial] = []

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        now = self._clock()
        if trial.number != self._trial or now - self._read_at >= self.refresh:
            self._completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            self._trial, self._read_at = trial.number, now
        view = cast(optuna.Study, _CompletedView(study, self._completed))
        return self.pruner.prune(view, trial)


class _CompletedView:
    """The study as a pruner sees it: its COMPLETE trials come from a snapshot."""

    def __init__(self, study: optuna.Study, completed: list[FrozenTrial]) -> None:
        self._study, self._completed = study, completed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        if states is None or any(s in states for s in TrialState if s != TrialState.COMPLETE):
            return self._study.get_trials(deepcopy=deepcopy, states=states)
        trials = self._completed if TrialState.COMPLETE in states else []
        return copy.deepcopy(trials) if deepcopy else list(trials)


def _snapshot_safe(pruner: BasePruner) -> bool:
    """Whether ``pruner`` reads only the study's COMPLETE trials (so a snapshot serves it)."""
    if isinstance(pruner, PatientPruner):
        return pruner._wrapped_pruner is None or _snapshot_safe(pruner._wrapped_pruner)
    return isinstance(pruner, PercentilePruner)  # MedianPruner is one


def study_pruner(spec: StudySpec) -> BasePruner:
    """The pruner a worker's study uses: :func:`build_pruner`'s, reading the study sparingly."""
    pruner = build_pruner(spec)
    return CompletedTrialsSnapshot(pruner) if _snapshot_safe(pruner) else pruner


def pruner_name(pruner: BasePruner) -> str:
    """The Optuna class name of ``pruner``, looking through :class:`CompletedTrialsSnapshot`."""
    if isinstance(pruner, CompletedTrialsSnapshot):
        pruner = pruner.pruner
    return type(pruner).__name__


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


def _describe(space: dict[str, Any]) -> str:
    lr = space["learning_rate"]
    return f"learning_rate in [{lr['low']:g}, {lr['high']:g}]" + (" (log)" if lr["log"] else "")


def open_study(
    spec: StudySpec,
    storage: BaseStorage,
    *,
    worker_index: int = 0,
    accept_space_change: bool = False,
) -> optuna.Study:
    """Create or join the spec's study, without races, and warm-start it once.

    Only the worker that creates the study enqueues the warm-start grid, so each
    rate of the manual sweep runs exactly once however many workers start.

    Raises:
        StudyError: when the stored study trains another model than the spec (see
            :func:`training_setup`), or searches another space unless
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
    if created:
        study.set_user_attr(SPACE_ATTR, space)
        study.set_user_attr(SPEC_ATTR, json.dumps(spec_to_dict(spec)))
        for rate in spec.search.warm_start:
            study.enqueue_trial({"learning_rate": rate}, user_attrs={"warm_start": True})
        _write_note(study, spec)
        return study
    if _check_fit(study, spec, accept_space_change):
        study.set_user_attr(SPACE_ATTR, space)
    return study


def check_joinable(
    spec: StudySpec, storage: BaseStorage, *, accept_space_change: bool = False
) -> None:
    """Refuse, writing nothing, to join a stored study that the spec does not fit.

    A study that does not exist yet fits any spec. Workers call this before they
    check the data and weights, so a mismatch fails at once, and only then
    :func:`open_study`, so a run that fails on its data creates no study.

    Raises:
        StudyError: see :func:`open_study`.
    """
    if spec.study.name in optuna.study.get_all_study_names(storage):
        study = optuna.load_study(study_name=spec.study.name, storage=storage)
        _check_fit(study, spec, accept_space_change)
        if (message := budget_difference(study, spec)) is not None:
            warn(message)


def _check_fit(study: optuna.Study, spec: StudySpec, accept_space_change: bool) -> bool:
    """Check that the spec fits the stored study; True when it searches an accepted new space.

    Raises:
        StudyError: when the study trains another model than the spec (always), or
            searches another space (unless ``accept_space_change``).
    """
    _check_same_training(study, spec)
    name, space = spec.study.name, search_space(spec)
    stored = study.user_attrs.get(SPACE_ATTR)
    if stored is None or stored == space:
        return False
    if not accept_space_change:
        raise StudyError(
            f"study {name!r} was created with {_describe(stored)}, but the spec now says "
            f"{_describe(space)}; start a new study with --set study.name={name}-2, or "
            "pass --accept-space-change to continue this one with the new space"
        )
    return True


def training_setup(spec: StudySpec) -> dict[str, Any]:
    """The settings that decide which model a trial trains, by dotted key.

    ``tuner export`` rebuilds the best trial's model from the study's stored spec,
    so every worker of a study must agree on these. A weights file is named by its
    file name, so machines that keep the same file in different folders agree.
    """
    weights = spec.model.weights
    if weights not in ("imagenet", "none"):
        weights = f"file {Path(weights).name}"
    return {
        "model.recipe": spec.model.recipe,
        "model.weights": weights,
        "model.trainable_base": spec.model.trainable_base,
        "model.seed": spec.model.seed,
        "data.image_size": list(spec.data.image_size),
        "data.augment": spec.data.augment,
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


def _stored(study: optuna.Study) -> StudySpec | None:
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored is None:
        return None
    try:
        return spec_from_dict(json.loads(stored), where="the stored spec")
    except (SpecError, ValueError):  # written by another version of tuner: nothing to compare
        return None


def _check_same_training(study: optuna.Study, spec: StudySpec) -> None:
    """Refuse to join a study whose trials train another model than this worker would."""
    if (theirs := _stored(study)) is None:
        return
    if (diff := _differences(training_setup(spec), training_setup(theirs))) is not None:
        name = spec.study.name
        raise StudyError(
            f"study {name!r} trains with {diff[0]}, but this worker has {diff[1]}; give this "
            f"worker the same settings, or start a new study with --set study.name={name}-2"
        )


def budget_difference(study: optuna.Study, spec: StudySpec) -> str | None:
    """A warning when this worker trains with other epochs or batch size than the study."""
    if (theirs := _stored(study)) is None:
        return None
    if (diff := _differences(training_budget(spec), training_budget(theirs))) is None:
        return None
    return (
        f"study {spec.study.name!r} was created with {diff[0]}, this worker has {diff[1]}; "
        "its trials are compared with the others as equals"
    )


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
    """
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored is None:
        return fallback
    return spec_from_dict(json.loads(stored), overrides, where=f"study {study.study_name!r}")


def _write_note(study: optuna.Study, spec: StudySpec) -> None:
    from optuna_dashboard import save_note

    lr = spec.search.learning_rate
    rates = ", ".join(f"{r:g}" for r in spec.search.warm_start)
    save_note(
        study,
        f"""# {spec.study.name}

Tunes the learning rate of the `{spec.model.recipe}` recipe (weights: `{spec.model.weights}`)
on `{spec.data.dir}` at {spec.data.image_size[0]}x{spec.data.image_size[1]},
{spec.train.epochs} epochs per trial, batch {spec.data.batch_size}.

- Learning rate: {"log-uniform" if lr.log else "uniform"} in [{lr.low:g}, {lr.high:g}],
  TPE sampler (seed {spec.sampler.seed}); warm start: {rates}.
- Pruner: `{spec.pruner.kind}`; objective: validation accuracy after the last epoch.
- Trial attributes: `train_accuracy`, `val_loss`, `gap`, `epoch_seconds`, `cache`, `worker`.

Export the result with:

    tuner export --study {spec.study.name} --out best.json --plots plots --model best.keras
""",
    )
