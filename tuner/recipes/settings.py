"""Which model a study trains (``[model]``): the recipe, its frozen base and weights."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PRECISIONS", "ModelSettings"]

# model.precision: the number format of feature extraction (tuner.training.precision)
PRECISIONS = ("auto", "float32", "bfloat16")


@dataclass(frozen=True)
class ModelSettings:
    recipe: str = "xception-head"
    base: str = "xception"  # the frozen keras.applications base under a head recipe
    weights: str = "imagenet"
    download_timeout: float = 30.0  # seconds a stalled weights download may wait
    trainable_base: bool = False
    seed: int = 1234
    precision: str = "auto"  # of a frozen base's extraction: auto, float32 or bfloat16
