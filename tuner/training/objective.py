"""The Keras objective (TF): trains one trial, reports every epoch, keeps the weights.

This is the only module that reports to trials. Each trial samples every
hyperparameter of the space, builds the spec's recipe from them (a head on
cached features, or the complete model) and trains it with Adam at its
``learning_rate``. Reporting and pruning go through the callbacks of
:mod:`tuner.training.callbacks`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore as ArtifactStore
from optuna.artifacts import upload_artifact
from optuna.exceptions import UpdateFinishedTrialError

from tuner.common.tfload import quiet_tensorflow

with quiet_tensorflow():
    import keras
    import tensorflow as tf

from tuner.assets.datasets import DatasetScan
from tuner.common import attrs
from tuner.errors import StorageLostError, TunerError
from tuner.recipes import HEAD, DataRecipe, Params, Recipe
from tuner.space.params import format_params, suggest
from tuner.study.settings import GAP, ObjectiveSettings
from tuner.training import decoded
from tuner.training import features as feature_cache
from tuner.training.callbacks import EpochRecorder, PruningBeforeLastEpoch
from tuner.training.headfit import HeadTrainer, kernels_kept
from tuner.training.model import (
    assemble,
    build_feature_extractor,
    build_part,
    ensure_compiled,
    save_trained_weights,
)
from tuner.training.owndata import DataShape, OwnImages, describe, load_splits
from tuner.training.probe import probe_points
from tuner.training.settings import TrialSetup
from tuner.training.trial_curve import write_learning_curve

tf.get_logger().setLevel("ERROR")  # per-trial models retrace by design; keep the log readable

__all__ = [
    "EpochRecorder",
    "PruningBeforeLastEpoch",
    "TrialData",
    "make_objective",
    "prepare_data",
    "trial_value",
    "trial_values",
]

Say = Callable[[str], None]


@dataclass
class OwnSource:
    """A data recipe's data: loaded for each trial, its shape read once per worker.

    ``setup`` is the worker's, its ``data.image_size`` that of the recipe's images
    when a head on a frozen base trains on them.
    """

    recipe: DataRecipe
    shape: DataShape
    setup: TrialSetup


@dataclass
class TrialData:
    """What every trial of one worker trains on, prepared once."""

    scan: DatasetScan | None
    cache: str  # "hit", "miss" or "off"
    features: feature_cache.FeatureSet | None = None
    own: OwnSource | None = None
    reason: str = ""  # why the feature cache is off, when it is
    val_ds: tf.data.Dataset | None = None
    train_images: decoded.DecodedSplit | None = field(default=None, repr=False)
    extractor: keras.Model | None = field(default=None, repr=False)
    _trainer: HeadTrainer | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        if self.own is not None:
            return int(self.own.shape.outputs)
        assert self.scan is not None
        return len(self.scan.class_names)

    @property
    def feature_dim(self) -> int:
        assert self.features is not None
        return int(self.features.features["train"].shape[1])

    def trainer(self, batch_size: int) -> HeadTrainer:
        """The worker's head trainer on the cached features, made on first use."""
        assert self.features is not None
        if self._trainer is None:
            fs = self.features
            self._trainer = HeadTrainer(fs.features, fs.labels, batch_size)
        return self._trainer


def prepare_data(
    setup: TrialSetup,
    scan: DatasetScan | None,
    say: Say = print,
    progress: feature_cache.Progress | None = None,
    use: feature_cache.Use | None = None,
) -> TrialData:
    """Cached features when the cache applies, else the full image pipeline.

    ``progress`` follows a feature extraction (:data:`tuner.training.features.Progress`);
    ``use`` names the study, recorded in the cache so that ``tuner cache prune`` keeps
    its features.
    """
    recipe = setup.recipe
    if setup.data_recipe is not None:
        return _prepare_own(setup, setup.data_recipe, say, progress, use)
    assert scan is not None
    reason = feature_cache.cache_reason(setup, recipe)
    if reason is None:
        fs = feature_cache.load_or_compute(setup, scan, on_compute=say, progress=progress, use=use)
        if fs.status == "hit":
            say(f"feature cache hit ({fs.key[:12]}): each trial trains only the head")
        return TrialData(scan, fs.status, features=fs)
    say(f"feature cache off: {reason}; running the full pipeline")
    train, val = (_decoded(setup, scan, split) for split in ("train", "validation"))
    held = "memory" if train.where == val.where == "memory" else "the disk cache"
    mb = (train.nbytes + val.nbytes) / 2**20
    say(f"images decoded once: {len(train)} + {len(val)}, {mb:.0f} MB, read from {held}")
    extractor = None
    if recipe.kind == HEAD and not setup.model.trainable_base:
        extractor = build_feature_extractor(setup)  # frozen: shared by every trial
    return TrialData(
        scan,
        "off",
        reason=reason,
        val_ds=decoded.validation_batches(val, setup.data.batch_size),
        extractor=extractor,
        train_images=train,
    )


def _decoded(setup: TrialSetup, scan: DatasetScan, split: str) -> decoded.DecodedSplit:
    """A split decoded once per process (see :mod:`tuner.training.decoded`)."""
    return decoded.decoded_split(
        scan,
        split,
        setup.data.image_size,
        memory_limit_mb=setup.data.memory_limit_mb,
        cache_root=feature_cache.cache_dir(setup),
    )


def _prepare_own(
    setup: TrialSetup,
    recipe: DataRecipe,
    say: Say,
    progress: feature_cache.Progress | None,
    use: feature_cache.Use | None,
) -> TrialData:
    """A data recipe's study: the data's shape from one load, at the space's first point.

    A head on a frozen base trains on the recipe's images: on their cached features
    when the recipe gives a fingerprint, else through the base every epoch.
    """
    point = probe_points(setup.space)[0]
    splits = load_splits(recipe, Params(point), setup.model.seed, _batch_size(setup, point))
    shape = describe(splits)
    if setup.recipe.kind != HEAD:
        why = f"recipe {setup.model.recipe!r} trains its whole network"
        say(f"feature cache off: {why}; data.recipe {recipe.name!r} gives {shape.shown()}")
        return TrialData(None, "off", own=OwnSource(recipe, shape, setup), reason=why)
    size = tuple(shape.input_shape[:2])
    setup = dataclasses.replace(setup, data=dataclasses.replace(setup.data, image_size=size))
    own = OwnSource(recipe, shape, setup)
    reason = feature_cache.cache_reason(setup)
    if reason is None:
        images = OwnImages(recipe, splits, shape)
        fs = feature_cache.load_or_compute(
            setup, images, on_compute=say, progress=progress, use=use
        )
        if fs.status == "hit":
            say(f"feature cache hit ({fs.key[:12]}): each trial trains only the head")
        return TrialData(None, fs.status, features=fs, own=own)
    say(f"feature cache off: {reason}; each trial runs the base over the images; {shape.shown()}")
    extractor = None if setup.model.trainable_base else build_feature_extractor(setup)
    return TrialData(None, "off", own=own, extractor=extractor, reason=reason)


def _batch_size(setup: TrialSetup, point: dict[str, Any]) -> int:
    """The trial's batch size: ``batch_size`` from the space when it has one, else the spec's."""
    return int(point.get("batch_size", setup.data.batch_size))


def _train_split(setup: TrialSetup, data: TrialData, seed: int) -> tf.data.Dataset:
    """The decoded training images, in an order drawn from ``seed`` alone.

    Each trial gets its own dataset: one shared by all trials would carry its
    shuffle sequence on from trial to trial, so a trial's result would depend on
    how many epochs earlier trials of the worker ran (fewer when pruned), and two
    runs with the same sampler seed could not be compared trial by trial.
    """
    assert data.train_images is not None
    return decoded.training_batches(data.train_images, setup.data.batch_size, seed)


def _fit(
    setup: TrialSetup,
    data: TrialData,
    recipe: Recipe,
    point: dict[str, Any],
    seed: int,
    callbacks: list[keras.callbacks.Callback],
    say: Say = print,
) -> list[Any]:
    """Build the recipe at ``point``, train it, and return the variables the trial keeps."""

    epochs, params = setup.train.epochs, Params(point)
    optimizer = point.get("optimizer", "adam")
    if data.features is not None:  # whole epochs in one compiled call, see tuner.training.headfit
        head = build_part(recipe, params, data.feature_dim, data.num_classes)
        trainer = data.trainer(setup.data.batch_size)
        return trainer.fit(head, point["learning_rate"], epochs, seed, callbacks, optimizer)
    if data.own is not None:
        return _fit_own(data.own, data.extractor, recipe, point, seed, callbacks, say)
    built = assemble(setup, recipe, params, data.num_classes, data.extractor)
    if built.part.compiled and built.part is not built.model:  # the recipe's own compile
        built.model.compile_from_config(built.part.get_compile_config())
    if (line := ensure_compiled(built.model, point, "onehot", recipe.name)) is not None:
        _say_once(line, say)
    train = _train_split(setup, data, seed)
    built.model.fit(  # the dataset shuffles itself, from the trial's seed; Keras would only warn
        train,
        validation_data=data.val_ds,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )
    return built.trained


_SAID: set[str] = set()  # lines a worker says once, however many trials it runs


def _say_once(line: str | None, say: Say) -> None:
    if line is not None and line not in _SAID:
        _SAID.add(line)
        say(line)


def _fit_own(
    own: OwnSource,
    extractor: keras.Model | None,
    recipe: Recipe,
    point: dict[str, Any],
    seed: int,
    callbacks: list[keras.callbacks.Callback],
    say: Say,
) -> list[Any]:
    """A trial on a data recipe's data: load it, build and compile the model, fit."""
    setup, params = own.setup, Params(point)
    splits = load_splits(own.recipe, params, seed, _batch_size(setup, point))
    keras.utils.set_random_seed(seed)
    if recipe.kind == HEAD:  # the head on the frozen base, over the recipe's images
        built = assemble(setup, recipe, params, own.shape.outputs, extractor)
        model, trained = built.model, built.trained
    else:
        model = build_part(recipe, params, own.shape.input_shape, own.shape.outputs)
        trained = list(model.weights)
    _say_once(ensure_compiled(model, point, own.shape.labels, recipe.name), say)
    model.fit(  # a NumPy split shuffles itself from the trial's seed; a dataset is the user's
        splits.train,
        validation_data=splits.validation,
        epochs=setup.train.epochs,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )
    return trained


def _upload(
    store: ArtifactStore | None, trial: optuna.Trial, attr: str, name: str, write: Any
) -> None:
    if store is None:
        return
    try:
        with tempfile.TemporaryDirectory(prefix="tuner-artifact-") as tmp:
            path = Path(tmp) / name
            write(path)
            artifact = upload_artifact(
                artifact_store=store, file_path=str(path), study_or_trial=trial
            )
    except OSError as e:  # a full or read-only disk: no later trial could keep its files
        trial.set_user_attr(attrs.FAIL_REASON, f"could not save {name}: {e.strerror or e}")
        where = e.filename or "the artifact folder"
        raise StorageLostError(
            f"cannot write trial files to {where} ({e.strerror or e}); free space, or point "
            "storage.artifacts at another folder"
        ) from None
    trial.set_user_attr(attr, artifact)


class StopCheck(keras.callbacks.Callback):
    """Calls ``check`` after every training and validation batch, a safe point to stop.

    The worker's check raises on SIGINT/SIGTERM, on a storage it gave up on, and
    when another worker has failed this trial, so a trial ends within one batch (within
    one epoch of tens of milliseconds for a cached head, trained an epoch per call).
    """

    def __init__(self, check: Callable[[], None]) -> None:
        super().__init__()
        self.check = check

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.check()

    def on_test_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.check()


def _begin(trial: optuna.Trial, setup: TrialSetup, data: TrialData) -> int:
    """Record where the trial runs, start Keras afresh, and return the trial's seed."""
    # A retried trial inherits the failed one's attributes; clear what no longer holds.
    record: dict[str, Any] = dict.fromkeys(attrs.STALE & trial.user_attrs.keys())
    record.update({attrs.CACHE: data.cache, attrs.WORKER: attrs.worker_name()})
    if data.reason:
        record[attrs.CACHE_REASON] = data.reason
    attrs.set_attrs(trial, record)
    seed = setup.model.seed + trial.number
    if data.features is not None:
        # A cached trial takes well under a second, and a full garbage collection would be a
        # quarter of it; Python's own collector frees the dropped heads soon enough. The kept
        # epoch functions keep their instantiated kernels (see kernels_kept).
        with kernels_kept():
            keras.backend.clear_session(free_memory=False)
            keras.utils.set_random_seed(seed)
        return seed
    if data.extractor is None:
        keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    return seed


def make_objective(
    setup: TrialSetup,
    data: TrialData,
    artifact_store: ArtifactStore | None = None,
    say: Say = print,
    check: Callable[[], None] | None = None,
) -> Callable[[optuna.Trial], float | list[float]]:
    """The objective: train the recipe at the trial's point, return its value(s).

    One objective's value is its metric at the last (or best) epoch; with two
    (``objective.metrics``) the trial returns both, and is never pruned: Optuna
    does not prune studies of several objectives.

    Args:
        setup: what the trial trains (see :class:`tuner.training.settings.TrialSetup`).
        data: prepared once per worker by :func:`prepare_data`.
        artifact_store: where trial weights and learning curves go; None keeps none.
        say: receives one progress line per epoch.
        check: called after every batch; may raise to stop the trial (see :class:`StopCheck`).
    """

    recipe = setup.recipe

    def objective(trial: optuna.Trial) -> float | list[float]:
        point = suggest(trial, setup.space)
        seed = _begin(trial, setup, data)
        goal = setup.objective
        recorder = EpochRecorder(trial, setup.train.epochs, say, space=setup.space, objective=goal)
        callbacks: list[keras.callbacks.Callback] = [recorder]
        if not goal.multi:
            callbacks.append(PruningBeforeLastEpoch(trial, goal.metric, setup.train.epochs))
        callbacks += [StopCheck(check)] if check is not None else []
        try:
            trained = _fit(setup, data, recipe, point, seed, callbacks, say)
        except optuna.TrialPruned:
            recorder.flush()
            _constrain(trial, recorder, goal)
            trial.set_user_attr(attrs.PRUNED_AT_EPOCH, len(recorder.val_accuracy) - 1)
            _upload_curve(artifact_store, trial, recorder, setup.train.epochs)
            raise
        except BaseException:
            # Keep the epochs it ran. What follows is the worker's to decide
            # (tuner.runner.fate); a storage that is gone, or a trial another worker
            # has taken, refuses the write at once.
            with contextlib.suppress(TunerError, UpdateFinishedTrialError):
                recorder.flush()
            raise
        recorder.flush()
        _constrain(trial, recorder, goal)
        values = trial_values(recorder.logs, goal)
        if bad := [n for n, v in zip(goal.names, values, strict=True) if not math.isfinite(v)]:
            reason = f"{', '.join(bad)} is not a number"
            trial.set_user_attr(attrs.PRUNE_REASON, reason)
            raise optuna.TrialPruned(reason)
        _upload(
            artifact_store,
            trial,
            attrs.WEIGHTS_ARTIFACT,
            "weights.npz",
            lambda p: save_trained_weights(trained, p),
        )
        _upload_curve(artifact_store, trial, recorder, setup.train.epochs)
        return values if goal.multi else values[0]

    return objective


def _constrain(trial: optuna.Trial, recorder: EpochRecorder, goal: ObjectiveSettings) -> None:
    """``objective.max_gap``: the trial's gap against it, as Optuna's constraint.

    TPE and GP prefer trials whose constraint is at most 0; the export's choice
    reads the same gap (:data:`~tuner.common.attrs.METRIC_GAP`).
    """
    if goal.max_gap > 0 and recorder.metric_gap and math.isfinite(recorder.metric_gap[-1]):
        trial.set_constraint("gap", recorder.metric_gap[-1] - goal.max_gap)


def trial_values(logs: list[dict[str, float]], objective: ObjectiveSettings) -> list[float]:
    """The trial's values, one per objective, from its logs per epoch.

    They come from one epoch: the last, or (``reduce = "best"``) the epoch whose
    first metric is best. ``gap`` is the first metric's gap at that epoch.
    """
    if not logs:
        return [math.nan] * len(objective.names)
    firsts = [epoch.get(objective.metric, math.nan) for epoch in logs]
    chosen = logs[-1]
    if objective.reduce == "best" and any(math.isfinite(v) for v in firsts):
        pick = max if objective.direction == "maximize" else min
        best = pick(v for v in firsts if math.isfinite(v))
        chosen = logs[firsts.index(best)]
    train = chosen.get(objective.train_metric(), math.nan)
    gap = objective.gap(train, chosen.get(objective.metric, math.nan))
    return [gap if name == GAP else chosen.get(name, math.nan) for name in objective.names]


def trial_value(values: list[float], objective: ObjectiveSettings) -> float:
    """The trial's value from its metric per epoch: the last epoch's, or the best one's."""
    if objective.reduce == "last" or not values:
        return values[-1] if values else math.nan
    finite = [v for v in values if math.isfinite(v)] or [math.nan]
    return max(finite) if objective.direction == "maximize" else min(finite)


def _upload_curve(
    store: ArtifactStore | None, trial: optuna.Trial, rec: EpochRecorder, epochs: int
) -> None:
    if store is None or not rec.values:
        return
    title = f"Trial {trial.number}: {format_params(trial.params)}"
    metric = rec.objective.train_metric()

    def write(path: Path) -> None:
        write_learning_curve(path, rec.train_values, rec.values, epochs, title, metric)

    _upload(store, trial, attrs.CURVE_ARTIFACT, "learning_curve.png", write)
