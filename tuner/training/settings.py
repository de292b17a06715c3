"""How a trial trains: ``[train]``, ``[cache]``, and the whole setup a trial reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tuner.assets.settings import DataSettings
from tuner.recipes.settings import ModelSettings
from tuner.study.settings import ObjectiveSettings

if TYPE_CHECKING:
    from tuner.recipes.data import DataRecipe
    from tuner.recipes.protocol import Recipe
    from tuner.space.params import Space

__all__ = ["LOGGED_METRICS", "CacheSettings", "TrainSettings", "TrialSetup"]

# What a model that tuner compiles logs each epoch (Keras fit and the cached head alike).
LOGGED_METRICS = ("val_accuracy", "val_loss", "accuracy", "loss")


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 10


@dataclass(frozen=True)
class CacheSettings:
    enabled: bool = True
    dir: str = ""


@dataclass(frozen=True)
class TrialSetup:
    """All that training a trial reads, built once from the spec by the caller.

    The sections keep the spec's names (``setup.data.image_size`` is
    ``data.image_size``), so messages name the keys a user sets.
    """

    data: DataSettings
    model: ModelSettings
    recipe: Recipe
    space: Space
    train: TrainSettings = field(default_factory=TrainSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    objective: ObjectiveSettings = field(default_factory=ObjectiveSettings)
    data_recipe: DataRecipe | None = None  # data.recipe, resolved; None for image folders
