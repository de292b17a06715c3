"""The data recipe: scikit-learn's diabetes data (442 patients, 10 numbers each).

The target is a disease progression score one year on (25 to 346). The split
is fixed, so every trial and every worker sees the same data; the features are
standardised with the training rows' mean and spread, and the target is left
as it is, so ``val_mae`` reads in the score's own units.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np


@functools.cache
def _split() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True, scaled=False)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order].astype("float32"), y[order].astype("float32")
    cut = int(0.8 * len(x))
    mean, std = x[:cut].mean(axis=0), x[:cut].std(axis=0)
    x = (x - mean) / std
    return x[:cut], y[:cut], x[cut:], y[cut:]


def load_data(params: Any, seed: int) -> tuple[Any, Any]:
    """``(x, y)`` arrays for training and validation; tuner batches and shuffles them."""
    x_train, y_train, x_val, y_val = _split()
    return (x_train, y_train), (x_val, y_val)


load_data.fingerprint = "sklearn-diabetes-v1"  # type: ignore[attr-defined]
