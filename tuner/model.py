"""Model recipes (TF).

``xception-head`` is the reference: raw RGB 0-255 in, Xception preprocessing
inside the model, a frozen Xception base run with ``training=False``,
GlobalAveragePooling2D, and Dense logits. ``small-cnn`` is a small CNN trained
end to end, which learns offline where ImageNet weights cannot be had.

The trained part of a model is its trainable weights: the Dense head for
``xception-head`` (the base is frozen, so it is fully determined by the spec),
every weight for ``small-cnn``. Trials keep only that part.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import keras
import numpy as np

from tuner.errors import WeightsError
from tuner.spec import StudySpec
from tuner.weights import OFFLINE_HINT, socket_timeout

__all__ = [
    "FEATURE_DIM",
    "build_feature_extractor",
    "build_full_model",
    "build_head",
    "compile_model",
    "load_trained_weights",
    "save_trained_weights",
    "weights_identity",
]

FEATURE_DIM = 2048  # Xception's pooled output


def weights_identity(spec: StudySpec) -> str:
    """A string that changes whenever the base's weights would differ."""
    weights = spec.model.weights
    if weights == "imagenet":
        return f"imagenet@keras-{keras.__version__}"
    if weights == "none":
        return f"random(seed={spec.model.seed})@keras-{keras.__version__}"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} does not exist; give a path to an Xception .weights.h5 "
            'file, or use --set model.weights=none (or "imagenet" when online)'
        )
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _xception(spec: StudySpec) -> keras.Model:
    h, w = spec.data.image_size
    weights = spec.model.weights
    if weights == "none":
        # Seeded, so every worker builds the very same random base.
        keras.utils.set_random_seed(spec.model.seed)
    kwargs = {"include_top": False, "input_shape": (h, w, 3)}
    try:
        if weights == "imagenet":
            with socket_timeout(spec.model.download_timeout):  # a stalled download must end
                base = keras.applications.Xception(weights="imagenet", **kwargs)
        else:
            base = keras.applications.Xception(weights=None, **kwargs)
            if weights != "none":
                weights_identity(spec)  # raises a clear error for a missing file
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    base.load_weights(str(Path(weights).expanduser()))
                # Keras only warns about layers it could not fill: a partial load is an error
                if problems := [w for w in caught if issubclass(w.category, UserWarning)]:
                    raise ValueError(str(problems[0].message))
    except WeightsError:
        raise
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if weights == "imagenet":
            raise WeightsError(
                f"cannot download the ImageNet weights for Xception ({reason}); offline, "
                f"{OFFLINE_HINT}"
            ) from None
        raise WeightsError(
            f"cannot load weights file {weights} ({reason}); it must be Xception notop "
            "weights (.weights.h5) for this input size, or use --set model.weights=none"
        ) from None
    base.trainable = spec.model.trainable_base
    return base


def build_feature_extractor(spec: StudySpec) -> keras.Model:
    """Raw images -> Xception preprocessing -> base (inference mode) -> pooled features."""
    h, w = spec.data.image_size
    inputs = keras.Input((h, w, 3), name="image")
    # Xception's preprocess_input, x / 127.5 - 1, as a layer so saved models need no code.
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="xception_preprocess")(inputs)
    x = _xception(spec)(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, x, name="features")


def build_head(num_classes: int) -> keras.Model:
    """The Dense head alone, trained on cached pooled features."""
    inputs = keras.Input((FEATURE_DIM,), name="features")
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="head")(inputs), name="head")


def _small_cnn(spec: StudySpec, num_classes: int) -> keras.Model:
    h, w = spec.data.image_size
    keras.utils.set_random_seed(spec.model.seed)
    inputs = keras.Input((h, w, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    if spec.data.augment:
        x = keras.layers.RandomFlip("horizontal", name="flip")(x)
    for i, filters in enumerate((32, 64, 128, 128)):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(128, activation="relu", name="dense")(x)
    outputs = keras.layers.Dense(num_classes, name="head")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


def build_full_model(
    spec: StudySpec, num_classes: int, extractor: keras.Model | None = None
) -> keras.Model:
    """The complete model of the spec's recipe: raw RGB images in, logits out."""
    if spec.model.recipe == "small-cnn":
        return _small_cnn(spec, num_classes)
    extractor = extractor or build_feature_extractor(spec)
    h, w = spec.data.image_size
    inputs = keras.Input((h, w, 3), name="image")
    x = inputs
    if spec.data.augment:
        x = keras.layers.RandomFlip("horizontal", name="flip")(x)
    outputs = keras.layers.Dense(num_classes, name="head")(extractor(x))
    return keras.Model(inputs, outputs, name="xception_head")


def compile_model(model: keras.Model, learning_rate: float) -> None:
    """Adam at the trial's rate, cross-entropy on logits, accuracy."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def save_trained_weights(model: keras.Model, path: str | Path) -> None:
    """Save the trainable weights, in order, to an ``.npz`` file."""
    arrays = {f"w{i}": np.asarray(w) for i, w in enumerate(model.trainable_weights)}
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_trained_weights(model: keras.Model, path: str | Path) -> None:
    """Put weights saved by :func:`save_trained_weights` into a model of the same recipe."""
    with np.load(path) as saved:
        arrays = [saved[f"w{i}"] for i in range(len(saved.files))]
    targets = model.trainable_weights
    if len(arrays) != len(targets):
        raise WeightsError(
            f"{path} holds {len(arrays)} weight arrays, the model has {len(targets)}; "
            "the trial was trained with another recipe"
        )
    for variable, value in zip(targets, arrays, strict=True):
        variable.assign(value)
