"""The model recipe: a small fully connected network for one number.

tuner compiles it (the data's labels are floats: mean squared error, with mean
absolute error logged as ``mae``/``val_mae``), with the optimizer and learning
rate of the trial.
"""

from __future__ import annotations

from typing import Any

import keras


def build_model(params: Any, input_shape: tuple[int, ...], num_outputs: int) -> keras.Model:
    inputs = keras.Input(input_shape)
    x = inputs
    for _ in range(params["layers"]):
        x = keras.layers.Dense(params["units"], activation=params["activation"])(x)
        x = keras.layers.Dropout(params["dropout"])(x)
    return keras.Model(inputs, keras.layers.Dense(num_outputs)(x))
