"""The model recipe: the numbers through a dense layer, the store through an embedding.

It compiles the model itself (Huber loss, mean absolute error as its metric),
so tuner only sets its learning rate to the trial's.
"""

from __future__ import annotations

from typing import Any

import keras

from shop.data import STORES


def build_model(params: Any, input_shape: dict[str, tuple], num_outputs: int) -> keras.Model:
    numbers = keras.Input(input_shape["numbers"], name="numbers")
    store = keras.Input(input_shape["store"], name="store", dtype="int32")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(STORES, params["embedding"])(store))
    x = keras.layers.Concatenate()([numbers, embedded])
    for _ in range(params["layers"]):
        x = keras.layers.Dense(params["units"], activation="relu")(x)
    model = keras.Model([numbers, store], keras.layers.Dense(num_outputs)(x))
    model.compile(optimizer=keras.optimizers.Adam(), loss=keras.losses.Huber(), metrics=["mae"])
    return model
