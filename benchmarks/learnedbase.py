"""A base that has learned: Xception trained here, from scratch, on clothing images.

ImageNet weights cannot be downloaded here, and a seeded random base's features
carry little, so the bfloat16 comparison of ``benchmarks/precision.py`` can run
on a base trained here instead (``--train-base``, or ``--base-weights`` for one
trained before). The base trains on the first ``per_class`` training images of
each class; the heads of the comparison train on other training images and are
scored on the validation split, so neither sees what the base trained on.

The base's weights are saved as the ``keras.applications.Xception`` model
without its top, the layers tuner builds and fills for ``model.weights =
PATH.weights.h5`` (:func:`tuner.training.model.build_feature_extractor`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

SIZE = 96  # small enough to train on 2 busy cores in minutes; Xception's least is 71


def layout(data: Path, dest: Path, per_class: int, heads: int) -> tuple[Path, Path]:
    """Two symlinked datasets: the base's, and the heads' (other training images).

    Both share the validation split. The heads' training images follow the base's
    in each class's sorted list, about ``heads`` in all, as many of each class
    as the split has.

    Returns:
        The base's dataset folder and the heads' one.
    """
    classes = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())
    files = {c: sorted((data / "train" / c).glob("*.jpg")) for c in classes}
    rest = sum(max(0, len(f) - per_class) for f in files.values())
    for cls in classes:
        extra = files[cls][per_class:]
        chosen = {
            "base": files[cls][:per_class],
            "heads": extra[: max(1, round(heads * len(extra) / max(rest, 1)))],
        }
        for name, picked in chosen.items():
            for split, images in (("train", picked), ("validation", None)):
                images = images if images is not None else (data / split / cls).glob("*.jpg")
                for f in images:
                    target = dest / name / split / cls / f.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.symlink_to(f)
    return dest / "base", dest / "heads"


def train_base(data: Path, weights: Path, epochs: int, seed: int = 1) -> tuple[float, np.ndarray]:
    """Train Xception (no top) + pooling + Dense(classes) on ``data``; save the base.

    The layers in front of the base are tuner's own (raw 0-255 RGB, Xception's
    ``x / 127.5 - 1``), so tuner's extractor sees what the base trained on.

    Returns:
        The final validation accuracy of the whole trained network, and its pooled
        float32 features of the validation images (to check tuner's load against).
    """
    import keras

    from tuner.assets.datasets import load_split, scan_dataset

    keras.utils.set_random_seed(seed)
    scan = scan_dataset(data)
    base = keras.applications.Xception(
        weights=None, include_top=False, input_shape=(SIZE, SIZE, 3)
    )
    # A few hundred steps are too few for the default 0.99 moving averages to
    # forget their start; the inference-mode statistics must be the data's.
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.RandomFlip("horizontal")(inputs)
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(x)
    pooled = keras.layers.GlobalAveragePooling2D()(base(x))
    model = keras.Model(inputs, keras.layers.Dense(len(scan.class_names))(pooled))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    train = load_split(scan, "train", (SIZE, SIZE), 32, shuffle=True, seed=seed)
    validation = load_split(scan, "validation", (SIZE, SIZE), 32)
    start = time.perf_counter()
    fit = model.fit(train, validation_data=validation, epochs=epochs, verbose=2)
    print(f"base trained in {time.perf_counter() - start:.0f} s")
    weights.parent.mkdir(parents=True, exist_ok=True)
    base.save_weights(str(weights))
    features = keras.Model(inputs, pooled).predict(validation, verbose=0)
    return float(fit.history["val_accuracy"][-1]), np.asarray(features)


def extract(data: Path, weights: Path, precision: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The (features, labels) of each split, through tuner's extractor in ``precision``."""
    import keras

    from tuner.assets.datasets import load_split, scan_dataset
    from tuner.config.build import trial_setup
    from tuner.config.spec import load_spec
    from tuner.training.model import build_feature_extractor

    sets = [f"model.weights={weights}", f"data.dir={data}", f"data.image_size=[{SIZE}, {SIZE}]"]
    setup = trial_setup(load_spec("clothing", sets))
    scan = scan_dataset(data)
    keras.backend.clear_session()
    model = build_feature_extractor(setup, precision)
    out = {}
    for split in ("train", "validation"):
        batches = list(load_split(scan, split, (SIZE, SIZE), 32))
        images = np.concatenate([np.asarray(x) for x, _ in batches])
        labels = np.concatenate([np.asarray(y) for _, y in batches])
        out[split] = (np.asarray(model.predict(images, batch_size=32, verbose=0)), labels)
    return out
