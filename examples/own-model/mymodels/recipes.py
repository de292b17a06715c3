"""Two recipes for tuner: a head on a frozen base's features, and a small whole network.

tuner calls a recipe with the trial's hyperparameters by name (``params``, a
read-only mapping) and returns nothing but an uncompiled ``keras.Model`` that
outputs one logit per class: tuner compiles it with Adam at the trial's
``learning_rate`` and cross-entropy on logits. Every name read from
``params`` must have a ``[search.NAME]`` table in the spec; use
``params.get(NAME, default)`` for one that a spec may leave out.

Only ``keras.layers`` are used, so the exported ``.keras`` file loads in plain
Keras, without tuner or this package.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras


def build_head(params: Mapping[str, Any], feature_dim: int, num_classes: int) -> keras.Model:
    """Pooled base features -> Dense(units) -> Dropout -> logits.

    tuner computes the features of the frozen ``model.base`` once and caches
    them, so each trial trains this head alone.
    """
    inputs = keras.Input((feature_dim,), name="features")
    x = keras.layers.Dense(params["units"], activation=params["activation"], name="inner")(inputs)
    x = keras.layers.Dropout(params["droprate"], name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="my_head")


def build_model(
    params: Mapping[str, Any], input_shape: tuple[int, int, int], num_classes: int
) -> keras.Model:
    """A small convolutional network on raw 0-255 RGB images, trained end to end."""
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    filters = params["filters"]
    for i in range(params["blocks"]):
        x = keras.layers.Conv2D(filters * 2**i, 3, padding="same", name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.Activation("relu", name=f"relu{i}")(x)
        x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dropout(params["droprate"], name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="my_network")
