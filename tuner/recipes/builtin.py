"""The built-in recipes: the course's Dense head on a frozen base, and a small CNN.

``xception-head`` and ``dense-head`` are the same head: pooled base features,
then ``Dense(size_inner, relu)`` when ``size_inner`` > 0, then
``Dropout(droprate)`` when ``droprate`` > 0, then ``Dense(num_classes)`` logits.
Both hyperparameters act on the head only, so the feature cache applies, and
both are optional (0 means no inner layer, no dropout): a learning-rate-only
study trains the plain linear head. ``xception-head`` keeps the reference
study's base; ``dense-head`` sits on whichever ``model.base`` the spec names.

``small-cnn`` trains four conv blocks end to end (rescaling inside), which
learns offline where no ImageNet weights can be had.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuner.recipes.bases import BASES, Base
from tuner.recipes.protocol import HEAD, MODEL
from tuner.space.params import Space

if TYPE_CHECKING:
    import keras


__all__ = ["BUILTIN", "DenseHead", "SmallCnn"]


def _values(space: Space, name: str) -> list[Any]:
    """The values a parameter can take that matter for a range check: its ends or choices."""
    p = space[name]
    return list(p.choices) if p.kind == "categorical" else [p.low, p.high]


def _head_problems(space: Space) -> list[str]:
    problems = []
    if "size_inner" in space:
        p, values = space["size_inner"], _values(space, "size_inner")
        if p.kind == "float" or not all(type(v) is int and v >= 0 for v in values):
            problems.append(
                "search.size_inner must be whole numbers >= 0 (units of the inner Dense layer; "
                f"0 means none), got {p.describe()}; write it like search.size_inner.choices="
                "[0, 10, 100, 1000]"
            )
    if "droprate" in space:
        p, values = space["droprate"], _values(space, "droprate")
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if not numbers or not all(0 <= v < 1 for v in values):
            problems.append(
                f"search.droprate must lie in [0, 1) (a dropout rate), got {p.describe()}; "
                "write it like search.droprate.high=0.8"
            )
    return problems


@dataclass(frozen=True)
class DenseHead:
    """The course's head on pooled features: optional inner Dense and Dropout, then logits."""

    name: str
    fixed_base: str | None = None  # xception-head keeps the reference study's base
    kind: str = HEAD

    @property
    def reads(self) -> frozenset[str]:
        return frozenset({"size_inner", "droprate"})

    def problems(self, base: str, image_size: tuple[int, int], space: Space) -> list[str]:
        problems = []
        if self.fixed_base and base != self.fixed_base:
            problems.append(
                f"model.base is {base!r}, but model.recipe {self.name!r} is the head "
                f"on the {self.fixed_base} base; use model.recipe=dense-head for another base"
            )
        known, size = BASES.get(base), list(image_size)
        if known is not None and min(size) < known.min_size:
            problems.append(
                f"data.image_size must be at least [{known.min_size}, {known.min_size}] for "
                f"{self.name} on the {known.name} base, got {size}"
            )
        return problems + _head_problems(space)

    def base(self, base: str) -> Base | None:
        return BASES[base]

    def build(
        self, params: Mapping[str, Any], shape: int | tuple[int, ...], num_classes: int
    ) -> keras.Model:
        import keras

        inputs = keras.Input((shape,), name="features")
        x = inputs
        if size := int(params.get("size_inner", 0) or 0):
            x = keras.layers.Dense(size, activation="relu", name="inner")(x)
        if rate := float(params.get("droprate", 0.0) or 0.0):
            x = keras.layers.Dropout(rate, name="dropout")(x)
        outputs = keras.layers.Dense(num_classes, name="logits")(x)
        return keras.Model(inputs, outputs, name="head")


@dataclass(frozen=True)
class SmallCnn:
    """Four conv blocks, trained end to end on raw 0-255 RGB images (rescaled inside)."""

    name: str = "small-cnn"
    kind: str = MODEL

    @property
    def reads(self) -> frozenset[str]:
        return frozenset()

    def problems(self, base: str, image_size: tuple[int, int], space: Space) -> list[str]:
        return []

    def base(self, base: str) -> Base | None:
        return None

    def build(
        self, params: Mapping[str, Any], shape: int | tuple[int, ...], num_classes: int
    ) -> keras.Model:
        import keras

        inputs = keras.Input(shape, name="image")
        x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
        for i, filters in enumerate((32, 64, 128, 128)):
            x = keras.layers.Conv2D(
                filters, 3, padding="same", activation="relu", name=f"conv{i}"
            )(x)
            x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        x = keras.layers.Dense(128, activation="relu", name="dense")(x)
        outputs = keras.layers.Dense(num_classes, name="head")(x)
        return keras.Model(inputs, outputs, name="small_cnn")


BUILTIN = {
    r.name: r
    for r in (DenseHead("xception-head", "xception"), DenseHead("dense-head"), SmallCnn())
}
