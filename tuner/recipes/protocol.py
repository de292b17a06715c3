"""What a model recipe is: a small protocol, and the parameters it is given.

A recipe is either a **head** on the pooled features of a frozen base (which
the feature cache can serve), or a whole **model** trained on the images. It
builds its network from the trial's hyperparameters, by name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol

from tuner.errors import RecipeError, TunerError, one_line

if TYPE_CHECKING:
    import keras

    from tuner.recipes.bases import Base
    from tuner.space.params import Space

__all__ = [
    "HEAD",
    "MODEL",
    "OPTIMIZERS",
    "TUNER_READS",
    "Params",
    "Recipe",
    "RecipeKind",
    "UnknownHyperparameter",
    "building",
]

RecipeKind = Literal["head", "model"]
HEAD: RecipeKind = "head"  # build(params, feature_dim, num_classes): logits from pooled features
MODEL: RecipeKind = "model"  # build(params, input_shape, num_classes): logits from 0-255 RGB
TUNER_READS = frozenset({"learning_rate", "optimizer"})  # tuner compiles the model with them
# The optimizers that search.optimizer may choose among, by their Keras names.
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "nadam", "adamax", "adagrad", "adadelta", "lion")


class Recipe(Protocol):
    """A model recipe: built-in, or a ``module:function`` of the user's."""

    name: str  # as written in model.recipe
    kind: RecipeKind

    @property
    def reads(self) -> frozenset[str] | None:
        """The hyperparameters it reads, when known without building it; else None."""
        ...

    def problems(self, base: str, image_size: tuple[int, int], space: Space) -> list[str]:
        """What is wrong with ``model.base``, ``data.image_size`` or the space, without TF.

        Each message starts with the spec key to change (``data.image_size must be ...``).
        """
        ...

    def base(self, base: str) -> Base | None:
        """The frozen base under a head (``base`` is ``model.base``); None for a whole model."""
        ...

    def build(
        self, params: Mapping[str, Any], shape: int | tuple[int, ...], num_classes: int
    ) -> keras.Model:
        """The head (``shape`` is the feature width) or the whole model (the input shape)."""
        ...


class UnknownHyperparameter(KeyError):
    """A recipe read a hyperparameter that the search space does not define."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.name, self.known = name, known

    def __str__(self) -> str:
        return (
            f"the recipe reads hyperparameter {self.name!r}, which the search space does not "
            f"define (it has {', '.join(self.known)}); add a [search.{self.name}] table to the "
            "spec, or fix the name in the recipe"
        )


class Params(Mapping[str, Any]):
    """A trial's hyperparameters as a recipe sees them; remembers which ones it read.

    ``params["name"]`` of a name the space lacks raises :class:`UnknownHyperparameter`
    (a ``KeyError``); ``params.get("name", default)`` is how a recipe reads an
    optional one.
    """

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> Any:
        if name not in self._values:
            raise UnknownHyperparameter(name, list(self._values))
        self.read.add(name)
        return self._values[name]

    def get(self, name: str, default: Any = None) -> Any:
        self.read.add(name)
        return self._values.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Params({self._values!r})"


class Named(Protocol):
    name: str


@contextlib.contextmanager
def building(recipe: Named, what: str, fix: str, key: str = "model.recipe") -> Iterator[None]:
    """Inside, a recipe's own exception becomes one :class:`~tuner.errors.RecipeError` line.

    ``what`` says what was built (``build with learning_rate=0.001``), ``fix`` how
    to mend it, ``key`` which spec key names the recipe (``data.recipe`` for data).
    tuner's own errors pass unchanged: they say what to do already.
    """
    try:
        yield
    except TunerError:
        raise
    except UnknownHyperparameter as e:
        raise RecipeError(f"{key} {recipe.name!r} cannot {what}: {e}") from None
    except Exception as e:
        raise RecipeError(
            f"{key} {recipe.name!r} failed to {what}: {one_line(e, 300)}; {fix}"
        ) from None
