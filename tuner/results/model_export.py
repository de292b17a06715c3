"""``tuner export --model``: the best trial as a complete ``.keras`` model, without retraining.

The model is rebuilt from the best trial's hyperparameters with the study's
recipe (the spec it was created with), and the trial's trained weights are put
in, shapes checked. The file holds Keras layers only, so plain
``keras.saving.load_model`` reads it without tuner or the recipe's module.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore as ArtifactStore
from optuna.artifacts import download_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

from tuner.common.attrs import WEIGHTS_ARTIFACT
from tuner.config.build import check_base_weights, trial_setup
from tuner.config.spec import StudySpec
from tuner.errors import RecipeError, StudyError, TunerError
from tuner.recipes import HEAD, Params, building
from tuner.results.export import writing
from tuner.space.params import format_params

__all__ = ["write_model"]


def _weights_artifact(study: optuna.Study, artifacts: Path, best: Any) -> tuple[Any, str]:
    """The best trial and the id of its weights, after checking both can be had."""
    artifact = best.user_attrs.get(WEIGHTS_ARTIFACT)
    if artifact is None:
        raise StudyError(
            f"trial {best.number} kept no weights, so it cannot be exported as a model; "
            "run more trials with this version of tuner"
        )
    if not artifacts.is_dir():
        raise StudyError(
            f"artifact folder {artifacts} does not exist, so trial {best.number}'s weights "
            "cannot be read; point storage.artifacts at the folder the workers write to"
        )
    return best, artifact


def _rebuild(spec: StudySpec, trial: Any, num_classes: int) -> Any:
    """The best trial's complete model, its weights still untrained.

    Raises:
        RecipeError: when the recipe cannot rebuild it, or builds something that
            plain Keras could not load from the file.
    """
    from tuner.training.model import assemble, portability_problems

    setup = trial_setup(spec)
    recipe = setup.recipe
    shown = format_params(trial.params)
    what = f"rebuild trial {trial.number} ({shown})"
    with building(recipe, what, "fix the recipe"):
        built = assemble(setup, recipe, Params(trial.params), num_classes)
    if problems := portability_problems(built.model):
        raise RecipeError(
            f"the best model of model.recipe {recipe.name!r} uses {', '.join(problems)}, which "
            "plain Keras cannot load from a .keras file without that code; build the recipe "
            "from keras.layers only (a string activation, no Lambda or custom layers) to export it"
        )
    return built


def write_model(
    study: optuna.Study,
    spec: StudySpec,
    artifacts: Path,
    path: str | Path,
    say: Callable[[str], None] = print,
    trial: Any = None,
    test: bool = True,
) -> dict[str, Any]:
    """Save the best trial as a complete ``.keras`` model, without retraining.

    The model takes raw RGB images (0-255) at the study's input size and returns
    logits. Its class names go beside it in ``PATH.classes.json``. The model is
    checked on the validation split, and on ``test/`` when the dataset has one.

    A ``data.recipe`` study's model takes what its data gives (see
    :func:`_write_own`) and is checked on its validation data.

    Args:
        artifacts: the study's artifact folder (:func:`tuner.storages.storage.artifact_folder`).
        trial: the trial to export, as chosen by :func:`tuner.results.export.best_result`;
            the study's best trial by default.

    Returns:
        Extra export keys: ``model``, ``class_names``, ``validation_accuracy`` and,
        with a test split, ``test_accuracy``.
    """
    check_base_weights(spec)  # before TensorFlow loads, and before Keras starts a download
    trial = trial if trial is not None else study.best_trial
    path = Path(path)
    if path.suffix != ".keras":
        raise TunerError(f"--model {path} must end in .keras; write it like --model best.keras")
    best, artifact = _weights_artifact(study, artifacts, trial)
    if spec.data.recipe:
        return _write_own(spec, best, artifact, artifacts, path, say)
    from tuner.assets.datasets import scan_dataset

    root = Path(spec.data.dir)
    with_test = test and (root / "test").is_dir()
    splits = ("train", "validation", "test") if with_test else ("train", "validation")
    scan = scan_dataset(root, splits, skip_bad_files=spec.data.skip_bad_files)
    built = _rebuild(spec, best, len(scan.class_names))
    _load_weights(best, artifact, artifacts, built.trained)
    return _save_and_check(built, path, scan, spec, splits, say)


def _load_weights(best: Any, artifact: str, artifacts: Path, variables: list[Any]) -> None:
    """Put the trial's kept weights into ``variables`` of the rebuilt model."""
    from tuner.training.model import load_trained_weights

    with tempfile.TemporaryDirectory(prefix="tuner-export-") as tmp:
        weights = Path(tmp) / "weights.npz"
        try:
            download_artifact(
                artifact_store=ArtifactStore(str(artifacts)),
                artifact_id=artifact,
                file_path=str(weights),
            )
        except ArtifactNotFound:
            raise StudyError(
                f"the weights of trial {best.number} (artifact {artifact}) are not in "
                f"{artifacts}; on another machine than the workers', point "
                "storage.artifacts at the folder they write to"
            ) from None
        what = f"the model rebuilt from trial {best.number}'s {format_params(best.params)}"
        load_trained_weights(variables, weights, what)


def _write_own(
    spec: StudySpec,
    best: Any,
    artifact: str,
    artifacts: Path,
    path: Path,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """A data recipe's study: the model rebuilt on the data's shape, checked on its validation
    split with the metrics the trial logged."""
    from tuner.training.model import assemble, build_part, ensure_compiled, portability_problems
    from tuner.training.owndata import describe, load_splits

    setup = trial_setup(spec)
    recipe, data = setup.recipe, setup.data_recipe
    assert data is not None
    params = Params(best.params)
    seed = spec.model.seed + best.number
    batch = int(best.params.get("batch_size", spec.data.batch_size))
    splits = load_splits(data, params, seed, batch)
    shape = describe(splits)
    with building(recipe, f"rebuild trial {best.number} ({format_params(best.params)})", "fix it"):
        if recipe.kind == HEAD:  # a head on the frozen base, over the recipe's images
            size = tuple(shape.input_shape[:2])
            setup = dataclasses.replace(
                setup, data=dataclasses.replace(setup.data, image_size=size)
            )
            built = assemble(setup, recipe, params, shape.outputs)
            model, variables = built.model, built.trained
        else:
            model = build_part(recipe, params, shape.input_shape, shape.outputs)
            variables = list(model.weights)
    if problems := portability_problems(model):
        raise RecipeError(
            f"the best model of model.recipe {recipe.name!r} uses {', '.join(problems)}, which "
            "plain Keras cannot load from a .keras file without that code; build the recipe "
            "from keras.layers only (a string activation, no Lambda or custom layers) to export it"
        )
    ensure_compiled(model, best.params, shape.labels, recipe.name)
    _load_weights(best, artifact, artifacts, variables)
    with writing(path, "--model"):
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(path)
    scores = model.evaluate(splits.validation, verbose=0, return_dict=True)
    validation = {f"val_{k}": float(v) for k, v in scores.items()}
    shown = ", ".join(f"{k} {v:.4f}" for k, v in validation.items())
    say(f"exported model: on the validation data of data.recipe {data.name!r}: {shown}")
    return {"model": str(path), "validation": validation}


def _save_and_check(
    built: Any,
    path: Path,
    scan: Any,
    spec: StudySpec,
    splits: tuple[str, ...],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Save the model and its class names, then score it on the validation (and test) split.

    The validation split is scored on the features the workers cached, where they are
    (the head alone: the same function as the whole model, in a fraction of a second);
    otherwise, and for ``test/``, the whole model runs over the images, with progress.
    """
    from tuner.assets.datasets import scan_dataset
    from tuner.common.console import count_progress
    from tuner.training.features import cached_features

    model = built.model
    classes = path.with_name(path.name.removesuffix(".keras") + ".classes.json")
    with writing(path, "--model"):
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(path)
        classes.write_text(json.dumps(list(scan.class_names)) + "\n")
    extra: dict[str, Any] = {"model": str(path), "class_names": list(scan.class_names)}
    setup = trial_setup(spec)
    workers_scan = scan_dataset(scan.root, ("train", "validation"), decode=False)
    cached = cached_features(setup, workers_scan) if setup.recipe.kind == HEAD else None
    with count_progress("checking the exported model on") as progress:
        for split in splits[1:]:
            if cached is not None and split in cached.features:
                accuracy = _accuracy(built.part, cached.features[split], cached.labels[split])
                how = "its cached features"
            else:
                accuracy = _images_accuracy(model, scan, split, spec, progress)
                how = "the images"
            extra["validation_accuracy" if split == "validation" else "test_accuracy"] = accuracy
            say(
                f"exported model: {split} accuracy {accuracy:.4f} on {scan.count(split)} "
                f"images ({how})"
            )
    return extra


def _accuracy(model: Any, x: Any, onehot: Any) -> float:
    logits = model.predict(x, batch_size=256, verbose=0)
    return float((logits.argmax(axis=1) == onehot.argmax(axis=1)).mean())


def _images_accuracy(
    model: Any, scan: Any, split: str, spec: StudySpec, progress: Callable[[str, int, int], None]
) -> float:
    from tuner.assets.datasets import load_split

    ds = load_split(scan, split, spec.data.image_size, spec.data.batch_size)
    right = done = 0
    total = scan.count(split)
    for images, onehot in ds:
        logits = model.predict_on_batch(images)
        right += int((logits.argmax(axis=1) == onehot.numpy().argmax(axis=1)).sum())
        done += len(onehot)
        progress(split, done, total)
    return right / max(done, 1)
