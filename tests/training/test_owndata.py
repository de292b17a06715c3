"""What a data recipe returns, read: each kind of split, the labels' kind, the image source."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from tuner.errors import RecipeError
from tuner.recipes import DataRecipe
from tuner.training.owndata import OwnImages, describe, first_batch, load_splits


class Batches(keras.utils.PyDataset):
    def __init__(self, x: np.ndarray, y: np.ndarray, size: int) -> None:
        super().__init__()
        self.x, self.y, self.size = x, y, size

    @property
    def num_batches(self) -> int:
        return -(-len(self.x) // self.size)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.x[i * self.size : (i + 1) * self.size], self.y[
            i * self.size : (i + 1) * self.size
        ]


def _recipe(result: Any) -> DataRecipe:
    return DataRecipe("mine:load", lambda params, seed: result)


def test_numpy_splits_are_batched_and_the_training_rows_shuffled_from_the_seed() -> None:
    x, y = np.arange(20, dtype=np.float64).reshape(10, 2), np.arange(10)
    splits = load_splits(_recipe(((x, y), (x, y))), {}, seed=3, batch_size=4)
    assert splits.batched
    first = [b[1].numpy().tolist() for b in splits.train]
    assert [len(b) for b in first] == [4, 4, 2] and sorted(v for b in first for v in b) == list(
        range(10)
    )
    again = load_splits(_recipe(((x, y), (x, y))), {}, seed=3, batch_size=4)
    assert [b[1].numpy().tolist() for b in again.train] == first  # the seed decides the order
    assert next(b[1].numpy().tolist() for b in splits.validation) == [0, 1, 2, 3]  # kept in order
    assert next(iter(splits.train))[0].dtype == tf.float32
    shape = describe(splits)
    assert (shape.input_shape, shape.outputs, shape.labels) == ((2,), 10, "classes")


def test_a_py_dataset_and_a_tf_dataset_are_taken_as_they_are() -> None:
    x = np.random.default_rng(0).normal(size=(12, 3)).astype("float32")
    y = np.eye(3, dtype="float32")[np.arange(12) % 3]
    data = Batches(x, y, 5)
    splits = load_splits(_recipe((data, data)), {}, seed=0, batch_size=32)
    assert splits.train is data and not splits.batched
    assert describe(splits).labels == "onehot" and describe(splits).outputs == 3
    ds = tf.data.Dataset.from_tensor_slices((x, x[:, :1] * 2.0)).batch(4)
    splits = load_splits(_recipe((ds, ds)), {}, seed=0, batch_size=32)
    assert splits.train is ds
    shape = describe(splits)
    assert (shape.input_shape, shape.outputs, shape.labels) == ((3,), 1, "values")


def test_several_inputs_and_outputs_are_dicts() -> None:
    x = {"a": np.zeros((6, 2), "float32"), "b": np.zeros((6, 1), "int32")}
    y = {"price": np.zeros((6,), "float32"), "kind": np.zeros((6, 4), "float32")}
    shape = describe(load_splits(_recipe(((x, y), (x, y))), {}, seed=0, batch_size=2))
    assert shape.input_shape == {"a": (2,), "b": (1,)}
    assert (shape.outputs, shape.labels) == ({"price": 1, "kind": 4}, "several")


def test_images_read_by_the_cache_have_one_hot_labels() -> None:
    x, y = np.zeros((5, 8, 8, 3), "float32"), np.array([0, 2, 1, 2, 0])
    splits = load_splits(_recipe(((x, y), (x, y))), {}, seed=0, batch_size=2)
    recipe = DataRecipe("mine:load", lambda params, seed: None)
    images = OwnImages(recipe, splits, describe(splits))
    assert images.count("validation") == 5
    labels = np.concatenate([b[1] for b in images.batches("validation")])
    assert labels.tolist() == np.eye(3)[[0, 2, 1, 2, 0]].tolist()
    assert images.fingerprint() == "data.recipe mine:load None"


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (None, "returned a NoneType"),
        ((1, 2, 3), "returned a tuple of 3 items"),
        (
            ((np.zeros((2, 1)), np.zeros(2)), [1, 2]),
            "whose x is not an array of numbers .it is a single int",
        ),
        (
            ((np.zeros((2, 1)), np.zeros(2)), Batches(np.zeros((0, 1)), np.zeros(0), 2)),
            "no batches",
        ),
        (
            ((np.zeros((2, 1)), np.zeros(2)), (np.zeros((2, 1)), ["a", None])),
            "whose y is not an array of numbers .it is list",
        ),
    ],
)
def test_what_cannot_be_trained_on_is_one_error(returned: Any, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        load_splits(_recipe(returned), {}, seed=0, batch_size=2)


def test_first_batch_is_numpy() -> None:
    ds = tf.data.Dataset.from_tensor_slices((np.ones((4, 2)), np.ones(4))).batch(3)
    x, y = first_batch(ds)
    assert isinstance(x, np.ndarray) and x.shape == (3, 2) and y.shape == (3,)
