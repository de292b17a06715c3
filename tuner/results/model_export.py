"""``tuner export --model``: the best trial as a complete ``.keras`` model, without retraining.

The model is rebuilt from the best trial's hyperparameters with the study's
recipe (the spec it was created with), and the trial's trained weights are put
in, shapes checked. The file holds Keras layers only, so plain
``keras.saving.load_model`` reads it without tuner or the recipe's module.
"""

from __future__ import annotations

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
from tuner.recipes import Params, building
from tuner.results.export import writing
from tuner.space.params import format_params

__all__ = ["write_model"]


def _weights_artifact(study: optuna.Study, artifacts: Path) -> tuple[Any, str]:
    """The best trial and the id of its weights, after checking both can be had."""
    best = study.best_trial
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
) -> dict[str, Any]:
    """Save the best trial as a complete ``.keras`` model, without retraining.

    The model takes raw RGB images (0-255) at the study's input size and returns
    logits. Its class names go beside it in ``PATH.classes.json``. The model is
    checked on the validation split, and on ``test/`` when the dataset has one.

    Args:
        artifacts: the study's artifact folder (:func:`tuner.storages.storage.artifact_folder`).

    Returns:
        Extra export keys: ``model``, ``class_names``, ``validation_accuracy`` and,
        with a test split, ``test_accuracy``.
    """
    check_base_weights(spec)  # before TensorFlow loads, and before Keras starts a download
    path = Path(path)
    if path.suffix != ".keras":
        raise TunerError(f"--model {path} must end in .keras; write it like --model best.keras")
    best, artifact = _weights_artifact(study, artifacts)
    from tuner.assets.datasets import scan_dataset
    from tuner.training.model import load_trained_weights

    root = Path(spec.data.dir)
    splits = (
        ("train", "validation", "test") if (root / "test").is_dir() else ("train", "validation")
    )
    scan = scan_dataset(root, splits, skip_bad_files=spec.data.skip_bad_files)
    built = _rebuild(spec, best, len(scan.class_names))
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
        load_trained_weights(built.trained, weights, what)
    return _save_and_check(built.model, path, scan, spec, splits, say)


def _save_and_check(
    model: Any,
    path: Path,
    scan: Any,
    spec: StudySpec,
    splits: tuple[str, ...],
    say: Callable[[str], None],
) -> dict[str, Any]:
    import keras

    from tuner.assets.datasets import load_split

    classes = path.with_name(path.name.removesuffix(".keras") + ".classes.json")
    with writing(path, "--model"):
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(path)
        classes.write_text(json.dumps(list(scan.class_names)) + "\n")
    extra: dict[str, Any] = {"model": str(path), "class_names": list(scan.class_names)}
    model.compile(
        metrics=["accuracy"], loss=keras.losses.CategoricalCrossentropy(from_logits=True)
    )
    for split in splits[1:]:
        ds = load_split(scan, split, spec.data.image_size, spec.data.batch_size)
        accuracy = float(model.evaluate(ds, verbose=0, return_dict=True)["accuracy"])
        extra["validation_accuracy" if split == "validation" else "test_accuracy"] = accuracy
        say(f"exported model: {split} accuracy {accuracy:.4f} on {scan.count(split)} images")
    return extra
