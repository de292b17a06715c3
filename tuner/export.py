"""Export: the pure best result of a study, and thin writers for JSON, plots and the model."""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore as ArtifactStore
from optuna.artifacts import download_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import StudyError, TunerError
from tuner.paths import nearest_existing, probe_writable
from tuner.retries import gave_up
from tuner.spec import StudySpec, spec_to_dict
from tuner.weights import check_weights

__all__ = ["BestResult", "best_result", "write_json", "write_model", "write_plots"]

WEIGHTS_ATTR = "weights_artifact"  # set by tuner.objective


@dataclass(frozen=True)
class BestResult:
    """The best trial of a study and the trial counts, as in the export JSON contract."""

    study: str
    best_trial: int
    best_value: float
    best_params: dict[str, Any]
    n_trials: int
    states: dict[str, int]
    gap: float | None
    train_accuracy: float | None
    gave_up: tuple[dict[str, Any], ...] = ()  # trials whose retries ran out

    def to_json(self, spec: StudySpec | None = None, extra: dict[str, Any] | None = None) -> dict:
        data: dict[str, Any] = {
            "study": self.study,
            "best_trial": self.best_trial,
            "best_value": self.best_value,
            "best_params": self.best_params,
            "n_trials": self.n_trials,
            "states": self.states,
            "gap": self.gap,
            "train_accuracy": self.train_accuracy,
            "gave_up": [dict(r) for r in self.gave_up],
        }
        data.update(extra or {})
        if spec is not None:
            data["spec"] = spec_to_dict(spec)
        return data


def best_result(study: optuna.Study) -> BestResult:
    """The study's best trial, as ``optuna best-trial`` reports it, and counts by state.

    Raises:
        StudyError: when the study has no complete trial yet.
    """
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    try:
        best = study.best_trial
    except ValueError:
        raise StudyError(
            f"study {study.study_name!r} has no complete trial yet ({len(trials)} trials"
            f"{''.join(f', {n} {s}' for s, n in states.items())}); run "
            f"`tuner worker --study {study.study_name}` and try again"
        ) from None
    train = best.user_attrs.get("train_accuracy") or [None]
    return BestResult(
        study=study.study_name,
        best_trial=best.number,
        best_value=float(best.value),  # type: ignore[arg-type]
        best_params=dict(best.params),
        n_trials=len(trials),
        states=states,
        gap=best.user_attrs.get("gap"),
        train_accuracy=train[-1],
        gave_up=tuple(gave_up(study)),
    )


def write_json(
    result: BestResult, spec: StudySpec, path: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Write the export JSON."""
    path = Path(path)
    with _writing(path, "--out"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result.to_json(spec, extra), indent=2) + "\n")
    return path


@contextlib.contextmanager
def _writing(path: Path, option: str) -> Iterator[None]:
    """Turn a failed write into a one-line error that names the path."""
    try:
        yield
    except OSError as e:
        where = f"{e.filename}: " if e.filename and str(e.filename) != str(path) else ""
        raise TunerError(
            f"cannot write {path} ({where}{e.strerror or e}); pick a writable path for {option}"
        ) from None


def check_output(path: Path, option: str, *, folder: bool = False) -> None:
    """Fail before any work when ``path`` cannot be written: a file in the way, no rights.

    Export checks every output first, so a bad ``--out`` does not surface only after
    the model has been built and saved.
    """
    existing = nearest_existing(path if folder else path.parent)
    with _writing(path, option):
        if folder and path.exists() and not path.is_dir():
            raise NotADirectoryError(20, "it is a file, not a folder")
        if not folder and path.is_dir():
            raise IsADirectoryError(21, "it is a folder")
        if existing is not None and not existing.is_dir():
            raise NotADirectoryError(20, f"{existing} is a file, not a folder")
        if existing is not None:
            probe_writable(existing)


def _curves(trials: list[FrozenTrial]) -> dict[float, tuple[list[float], list[float]]]:
    curves = {}
    for t in trials:
        val = [v for _, v in sorted(t.intermediate_values.items())]
        curves[t.params["learning_rate"]] = (list(t.user_attrs.get("train_accuracy", [])), val)
    return curves


def write_plots(study: optuna.Study, folder: str | Path, top_n: int = 3) -> list[Path]:
    """Write the manual sweep's chart and the search plots as PNGs; returns their paths."""
    from tuner import plots

    best_result(study)  # a clear error for a study with nothing to plot
    folder = Path(folder)
    with _writing(folder, "--plots"):
        folder.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    warm = [t for t in finished if t.user_attrs.get("warm_start")]
    complete = [t for t in finished if t.state == TrialState.COMPLETE and t.value is not None]
    top = sorted(complete, key=lambda t: -(t.value or 0.0))[:top_n]
    chosen = {t.number: t for t in [*warm, *top]}.values()
    figures = {
        "sweep.png": plots.learning_curve_figure(
            _curves(list(chosen)), "Train and validation accuracy: warm-start rates and top trials"
        ),
        "accuracy_vs_learning_rate.png": plots.accuracy_vs_rate_figure(finished),
        "optimization_history.png": plots.history_figure(study),
        "intermediate_values.png": plots.intermediate_figure(study),
    }
    with _writing(folder, "--plots"):
        return [plots.save_figure(fig, folder / name) for name, fig in figures.items()]


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
        artifacts: the study's artifact folder (see :func:`tuner.storage.artifact_folder`).

    Returns:
        Extra export keys: ``model``, ``class_names``, ``validation_accuracy`` and,
        with a test split, ``test_accuracy``.
    """
    check_weights(spec)  # before TensorFlow loads, and before Keras starts a download
    import keras

    from tuner.data import load_split, scan_dataset
    from tuner.model import build_full_model, load_trained_weights

    best = study.best_trial
    artifact = best.user_attrs.get(WEIGHTS_ATTR)
    if artifact is None:
        raise StudyError(
            f"trial {best.number} kept no weights, so it cannot be exported as a model; "
            "run more trials with this version of tuner"
        )
    path = Path(path)
    if path.suffix != ".keras":
        raise TunerError(f"--model {path} must end in .keras; write it like --model best.keras")
    if not artifacts.is_dir():
        raise StudyError(
            f"artifact folder {artifacts} does not exist, so trial {best.number}'s weights "
            "cannot be read; point storage.artifacts at the folder the workers write to"
        )
    store = ArtifactStore(str(artifacts))
    root = Path(spec.data.dir)
    splits = (
        ("train", "validation", "test") if (root / "test").is_dir() else ("train", "validation")
    )
    scan = scan_dataset(root, splits, skip_bad_files=spec.data.skip_bad_files)
    model = build_full_model(spec, len(scan.class_names))
    with tempfile.TemporaryDirectory(prefix="tuner-export-") as tmp:
        weights = Path(tmp) / "weights.npz"
        try:
            download_artifact(artifact_store=store, artifact_id=artifact, file_path=str(weights))
        except ArtifactNotFound:
            raise StudyError(
                f"the weights of trial {best.number} (artifact {artifact}) are not in "
                f"{artifacts}; on another machine than the workers', point "
                "storage.artifacts at the folder they write to"
            ) from None
        load_trained_weights(model, weights)
    classes = path.with_name(path.name.removesuffix(".keras") + ".classes.json")
    with _writing(path, "--model"):
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
