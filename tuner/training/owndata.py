"""A study's own data (TF): what a ``data.recipe`` returns, checked and made ready for ``fit``.

See :mod:`tuner.recipes.data` for what the function may return. Each split
becomes what ``keras.Model.fit`` takes: a ``tf.data.Dataset`` of batches (NumPy
arrays are batched here, the training rows shuffled from the trial's seed), or
the ``PyDataset`` as it is. :func:`describe` reads the first batch (and the
labels, for their classes) once per worker: the input shape the model recipe
is given, the width of its output, and which loss fits the labels when tuner
compiles the model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from tuner.common.tfload import quiet_tensorflow

with quiet_tensorflow():
    import keras
    import tensorflow as tf

from tuner.errors import RecipeError, one_line
from tuner.recipes import DataRecipe, building
from tuner.recipes.data import DATA_ADVICE

__all__ = [
    "DataShape",
    "LabelKind",
    "OwnImages",
    "Splits",
    "describe",
    "first_batch",
    "load_splits",
]

LabelKind = Literal["classes", "onehot", "values", "several"]


@dataclass(frozen=True)
class DataShape:
    """What a model recipe is told about the data, and how tuner would compile for it."""

    input_shape: Any  # (d, ...) of one example, or {input name: shape}
    outputs: Any  # the classes, or the target's width; {output name: width} for several
    labels: LabelKind

    def shown(self) -> str:
        what = {
            "classes": f"{self.outputs} classes (integer labels)",
            "onehot": f"{self.outputs} classes (one-hot labels)",
            "values": f"{self.outputs} target value{'s' if self.outputs != 1 else ''}",
            "several": f"outputs {self.outputs}",
        }[self.labels]
        return f"input shape {_plain(self.input_shape)}, {what}"


@dataclass
class Splits:
    """One trial's training and validation data, as ``fit`` takes them."""

    train: Any
    validation: Any
    batched: bool = False  # tuner batched NumPy arrays, at the trial's batch size


def _plain(shape: Any) -> Any:
    if isinstance(shape, dict):
        return {k: _plain(v) for k, v in shape.items()}
    return tuple(int(d) if d is not None else None for d in shape)


def load_splits(
    recipe: DataRecipe, params: Mapping[str, Any], seed: int, batch_size: int
) -> Splits:
    """Call the data recipe for one trial and make each split ready for ``fit``.

    Raises:
        RecipeError: the function failed, returned something else than two splits,
            or a split is empty or malformed; one line, naming the fix.
    """
    with building(recipe, "load the data", "fix the function", key="data.recipe"):
        returned = recipe.load(params, seed)
    if isinstance(returned, dict) and {"train", "validation"} <= returned.keys():
        returned = (returned["train"], returned["validation"])
    if not isinstance(returned, (tuple, list)) or len(returned) != 2:
        got = f"a {type(returned).__name__}"
        if isinstance(returned, (tuple, list)):
            got += f" of {len(returned)} items"
        raise RecipeError(f"data.recipe {recipe.name!r} returned {got}; {DATA_ADVICE}")
    train = _ready(recipe, returned[0], "training", batch_size, seed)
    validation = _ready(recipe, returned[1], "validation", batch_size, None)
    arrays = not isinstance(returned[0], (tf.data.Dataset, keras.utils.PyDataset))
    return Splits(train, validation, batched=arrays)


def _ready(recipe: DataRecipe, part: Any, split: str, batch_size: int, seed: int | None) -> Any:
    """One split as ``fit`` takes it; checked not to be empty."""
    where = f"data.recipe {recipe.name!r} returned {split} data"
    if isinstance(part, tf.data.Dataset):
        spec = part.element_spec
        if not isinstance(spec, tuple) or len(spec) not in (2, 3):
            raise RecipeError(
                f"{where} as a tf.data.Dataset of {_spec_text(spec)}; it must yield (x, y) "
                "batches, like tf.data.Dataset.from_tensor_slices((x, y)).batch(32)"
            )
        _first(part, where)
        return part
    if isinstance(part, keras.utils.PyDataset):
        _first(part, where)
        return part
    if isinstance(part, (tuple, list)) and len(part) in (2, 3):
        arrays = tuple(
            _arrays(a, where, name) for a, name in zip(part, ("x", "y", "weights"), strict=False)
        )
        rows = {
            name: n
            for a, name in zip(arrays, ("x", "y", "weights"), strict=False)
            for n in _rows(a)
        }
        counts = sorted(set(rows.values()))
        if len(counts) > 1:
            shown = ", ".join(f"{k} has {v}" for k, v in rows.items())
            raise RecipeError(
                f"{where} whose arrays differ in their number of rows ({shown}); give x and y "
                "one row per example"
            )
        if not counts or counts[0] == 0:
            raise RecipeError(f"{where} with no rows; return at least one example per split")
        ds = tf.data.Dataset.from_tensor_slices(arrays)
        if seed is not None:
            ds = ds.shuffle(counts[0], seed=seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    if isinstance(part, np.ndarray):  # (x, y) returned where (train, validation) was due
        raise RecipeError(
            f"{where} as a bare {type(part).__name__}; return two splits, each an (x, y) "
            "pair: ((x_train, y_train), (x_val, y_val))"
        )
    raise RecipeError(
        f"{where} as a {type(part).__name__}; each split must be a tf.data.Dataset of (x, y) "
        "batches, an (x, y) tuple of NumPy arrays (dicts of them for several inputs or "
        "outputs), or a keras.utils.PyDataset"
    )


def _spec_text(spec: Any) -> str:
    if isinstance(spec, tuple):
        return f"tuples of {len(spec)}"
    if isinstance(spec, dict):
        return f"dicts with keys {', '.join(map(str, spec))}"
    return "single tensors"


def _arrays(value: Any, where: str, name: str) -> Any:
    """``value`` as NumPy (a dict of arrays stays a dict); float64 becomes float32."""
    if isinstance(value, Mapping):
        return {str(k): _arrays(v, where, f"{name}[{k!r}]") for k, v in value.items()}
    try:
        array = np.asarray(value)
    except Exception as e:
        raise RecipeError(f"{where} whose {name} is not an array ({one_line(e)})") from None
    if array.dtype == object or array.ndim == 0:
        raise RecipeError(
            f"{where} whose {name} is not an array of numbers (it is "
            f"{'a single ' if array.ndim == 0 else ''}{type(value).__name__}); give it one row "
            "of numbers per example"
        )
    return array.astype(np.float32) if array.dtype == np.float64 else array


def _rows(arrays: Any) -> list[int]:
    if isinstance(arrays, dict):
        return [n for v in arrays.values() for n in _rows(v)]
    return [int(arrays.shape[0])]


def _first(part: Any, where: str) -> tuple[Any, Any]:
    """The first batch's ``(x, y)``; raises when the split has none."""
    try:
        if isinstance(part, keras.utils.PyDataset):
            count = part.num_batches
            if count == 0:
                raise IndexError("no batches")
            batch = part[0]
        else:
            batch = next(iter(part.take(1)), None)
            if batch is None:
                raise IndexError("no batches")
    except IndexError:
        raise RecipeError(f"{where} with no batches; return at least one example") from None
    except RecipeError:
        raise
    except Exception as e:
        raise RecipeError(
            f"{where} whose first batch cannot be read: {one_line(e, 300)}"
        ) from None
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise RecipeError(f"{where} whose batches are not (x, y) pairs; yield (x, y) batches")
    x, y = batch[0], batch[1]
    if not isinstance(y, Mapping) and np.ndim(np.asarray(y)) == 0:
        raise RecipeError(
            f"{where} as single examples, not batches; batch the dataset, like ds.batch(32)"
        )
    return x, y


def first_batch(part: Any) -> tuple[Any, Any]:
    """The first ``(x, y)`` batch of a ready split, as NumPy."""
    x, y = _first(part, "data.recipe returned data")
    return _numpy(x), _numpy(y)


def _numpy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _numpy(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_numpy(v) for v in value]
    return np.asarray(value)


def _labels(part: Any) -> Any:
    """Every training label, batch by batch (to count a classifier's classes)."""
    if isinstance(part, keras.utils.PyDataset):
        for i in range(part.num_batches or 0):
            yield np.asarray(part[i][1])
        return
    for batch in part:
        yield np.asarray(batch[1])


def describe(splits: Splits) -> DataShape:
    """What the model recipe is told: one example's shape and the output's width.

    Integer labels are classes (their count is the largest label plus one, over
    the training data); float labels whose rows are one-hot are classes too; other
    float labels are values to regress, their width the last dimension.
    """
    x, y = first_batch(splits.train)
    shape = {k: v.shape[1:] for k, v in x.items()} if isinstance(x, dict) else x.shape[1:]
    if isinstance(y, dict):
        widths = {k: int(np.prod(v.shape[1:], dtype=int)) for k, v in y.items()}
        return DataShape(_plain(shape), widths, "several")
    if isinstance(y, list):
        return DataShape(_plain(shape), [int(np.prod(v.shape[1:])) for v in y], "several")
    if y.dtype.kind in "iub":
        top = max(int(batch.max()) for batch in _labels(splits.train) if batch.size)
        return DataShape(_plain(shape), top + 1, "classes")
    width = int(y.shape[-1]) if y.ndim >= 2 else 1
    onehot = (
        width > 1 and y.ndim == 2 and np.isin(y, (0.0, 1.0)).all() and (y.sum(axis=1) == 1).all()
    )
    return DataShape(_plain(shape), width, "onehot" if onehot else "values")


@dataclass
class OwnImages:
    """A data recipe's images as the feature cache reads them (a
    :class:`~tuner.training.features.ImageSource`): labels one-hot, rows as given."""

    recipe: DataRecipe
    splits: Splits
    shape: DataShape

    def fingerprint(self) -> str:
        return f"data.recipe {self.recipe.name} {self.recipe.fingerprint}"

    def count(self, split: str) -> int:
        part = self._part(split)
        if isinstance(part, tf.data.Dataset) and self.splits.batched:
            return int(sum(len(np.asarray(b[1])) for b in part))  # NumPy underneath: cheap
        return 0  # not known before the pass

    def batches(self, split: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        part = self._part(split)
        if isinstance(part, keras.utils.PyDataset):
            items: Any = (part[i] for i in range(part.num_batches or 0))
        else:
            items = part
        for batch in items:
            yield np.asarray(batch[0]), self.onehot(np.asarray(batch[1]))

    def onehot(self, y: np.ndarray) -> np.ndarray:
        if self.shape.labels == "classes":
            return np.eye(self.shape.outputs, dtype=np.float32)[y.reshape(-1).astype(int)]
        return y.astype(np.float32)

    def _part(self, split: str) -> Any:
        return self.splits.train if split == "train" else self.splits.validation
