"""The data recipe: 4,000 generated sales, each with three numbers and a store id.

A sale's amount depends on the numbers (price, discount, weekday) and on the
store, whose effect only an embedding of the store id can learn. The data is
generated from a fixed seed, so every worker sees the same; it is returned as
dicts of NumPy arrays keyed by the model's input names.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

STORES = 20


@functools.cache
def _generate() -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(7)
    n = 4000
    numbers = rng.normal(size=(n, 3)).astype("float32")
    store = rng.integers(0, STORES, size=(n, 1)).astype("int32")
    store_effect = rng.normal(scale=2.0, size=STORES)
    amount = (
        3.0 * numbers[:, 0] - 1.5 * numbers[:, 1] ** 2 + np.sin(2 * numbers[:, 2])
        + store_effect[store[:, 0]] + rng.normal(scale=0.3, size=n)
    )  # fmt: skip
    return {"numbers": numbers, "store": store}, amount.astype("float32")


def load_data(params: Any, seed: int) -> tuple[Any, Any]:
    """``({"numbers": ..., "store": ...}, amount)`` for training and validation."""
    x, y = _generate()
    cut = int(0.8 * len(y))
    train = ({k: v[:cut] for k, v in x.items()}, y[:cut])
    validation = ({k: v[cut:] for k, v in x.items()}, y[cut:])
    return train, validation


load_data.fingerprint = "shop-sales-v1"  # type: ignore[attr-defined]
