"""A frozen base that learns offline, and the head grid recorded on its cached features.

ImageNet weights cannot be downloaded everywhere, and a head on a randomly
initialised base learns nothing. So the base here is tuner's ``small-cnn``
recipe, trained once on the training split (Adam at 1e-3, 12 epochs, 64x64)
and frozen: its pooled output (128 features per image, before its own dense
layers) feeds the clothing-head study's heads. The weights file is written to
the work folder; its SHA-256 is kept in the recording.

Each head of the grid then trains through tuner's own cached-trial path:
:func:`tuner.training.objective.make_objective` on those features, one trial per
configuration, inside :func:`tuner.runner.worker.run_objective` with the grid as
warm-start points (``sampler.kind = grid``) and pruning off.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import InMemoryStorage

from searchbench.record import grid_sets, read_curves
from tuner.assets.datasets import scan_dataset
from tuner.config.build import trial_setup
from tuner.config.spec import StudySpec, load_spec
from tuner.runner.worker import run_objective

__all__ = ["BASE_EPOCHS", "record_head_grid", "train_base"]

BASE_EPOCHS = 12
BASE_RATE = 1e-3


def train_base(data: Path, workdir: Path) -> tuple[Path, Any, StudySpec]:
    """Train the small CNN on the training split; return its weights file, scan and spec."""
    import keras

    from tuner.assets.datasets import load_split
    from tuner.recipes import recipe_for
    from tuner.training.model import compile_model

    spec = load_spec("clothing-scratch", [f"data.dir={data}"])
    scan = scan_dataset(data, decode=False)
    path = workdir / "small-cnn-base.weights.h5"
    keras.utils.set_random_seed(spec.model.seed)
    model = recipe_for(spec).build({}, (*spec.data.image_size, 3), len(scan.class_names))
    if path.exists():
        model.load_weights(path)
        print(f"base: reusing {path}", flush=True)
        return path, scan, spec
    compile_model(model, BASE_RATE)
    size, batch = spec.data.image_size, spec.data.batch_size
    train = load_split(scan, "train", size, batch, shuffle=True, seed=spec.model.seed)
    val = load_split(scan, "validation", size, batch)
    print(f"base: training small-cnn for {BASE_EPOCHS} epochs at {BASE_RATE:g}", flush=True)
    history = model.fit(train, validation_data=val, epochs=BASE_EPOCHS, verbose=2)
    model.save_weights(path)
    print(f"base: val_accuracy {history.history['val_accuracy'][-1]:.4f}; wrote {path}")
    return path, scan, spec


def base_features(path: Path, scan: Any, spec: StudySpec) -> Any:
    """The frozen base's pooled features of both splits, as tuner's feature cache holds them."""
    import keras

    from tuner.recipes import recipe_for
    from tuner.training.features import FeatureSet, extract_features

    model = recipe_for(spec).build({}, (*spec.data.image_size, 3), len(scan.class_names))
    model.load_weights(path)
    extractor = keras.Model(model.inputs, model.get_layer("gap").output, name="features")
    features, labels = {}, {}
    for split in ("train", "validation"):
        features[split], labels[split] = extract_features(
            trial_setup(extractor), scan, split, spec
        )
    return FeatureSet(features, labels, "hit", sha256(path))


def record_head_grid(
    points: list[dict[str, Any]], sets: list[str], features: Any, scan: Any, model_seed: int
) -> list[dict[str, Any]]:
    """Train one clothing-head trial per point on ``features``; return the curves."""
    from tuner.training.objective import TrialData, make_objective

    sets = [*sets, f"model.seed={model_seed}", *grid_sets("search-record-head", points)]
    spec = load_spec("clothing-head", sets)
    data = TrialData(scan, "hit", features=features)
    storage = InMemoryStorage()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"recording {len(points)} heads (model.seed={model_seed})", flush=True)
    run_objective(
        spec,
        storage,
        "memory",
        lambda check: make_objective(trial_setup(spec), data, None, lambda _: None, check=check),
    )
    study = optuna.load_study(study_name=spec.study.name, storage=storage)
    return read_curves(study, model_seed)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
