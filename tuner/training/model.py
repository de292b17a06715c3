"""Models from recipes (TF): the frozen base, the complete model, the weights a trial keeps.

A head recipe sits on a frozen ``keras.applications`` base: raw RGB 0-255 in,
the base's preprocessing as Keras layers inside the model, the base run with
``training=False``, GlobalAveragePooling2D, then the recipe's head. A model
recipe is the whole network on the same raw images. Either way the complete
model holds only Keras layers, so its ``.keras`` file loads without tuner.

A trial keeps the weights of the part it trained: the head (the base is fixed
by the spec), the head and the base's trainable weights when
``model.trainable_base`` is set, or the whole network of a model recipe.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuner.common.tfload import quiet_tensorflow

with quiet_tensorflow():
    import keras

from tuner.assets.weights import offline_hint, socket_timeout
from tuner.errors import RecipeError, WeightsError, one_line
from tuner.recipes import BASES, HEAD, Base, Recipe
from tuner.training.precision import FLOAT32, computing_in, extraction_precision
from tuner.training.settings import TrialSetup

__all__ = [
    "Assembled",
    "assemble",
    "build_feature_extractor",
    "build_part",
    "compile_model",
    "ensure_compiled",
    "load_trained_weights",
    "make_optimizer",
    "portability_problems",
    "save_trained_weights",
    "weights_identity",
]


def weights_identity(setup: TrialSetup) -> str:
    """A string that changes whenever the base's weights would differ."""
    weights = setup.model.weights
    if weights == "imagenet":
        return f"imagenet@keras-{keras.__version__}"
    if weights == "none":
        return f"random(seed={setup.model.seed})@keras-{keras.__version__}"
    path = Path(weights).expanduser()
    if not path.is_file():
        base = BASES.get(setup.model.base)
        named = base.weights_file if base else f"{setup.model.base} weights"
        raise WeightsError(
            f"weights file {path} does not exist; give the path of {named}, or use "
            '--set model.weights=none (or "imagenet" when online)'
        )
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _application(setup: TrialSetup, base: Base) -> keras.Model:
    """The base itself, with the spec's weights, trainable only if the spec says so."""
    h, w = setup.data.image_size
    weights = setup.model.weights
    if weights == "none":
        keras.utils.set_random_seed(setup.model.seed)  # every worker builds the same random base
    constructor = getattr(keras.applications, base.application)
    kwargs = {"include_top": False, "input_shape": (h, w, 3)}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*input_shape. is undefined or non-square")
            if weights == "imagenet":
                with socket_timeout(setup.model.download_timeout):  # a stalled download must end
                    model = constructor(weights="imagenet", **kwargs)
            else:
                model = constructor(weights=None, **kwargs)
        if weights not in ("imagenet", "none"):
            weights_identity(setup)  # raises a clear error for a missing file
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model.load_weights(str(Path(weights).expanduser()))
            # Keras only warns about layers it could not fill: a partial load is an error
            if problems := [w for w in caught if issubclass(w.category, UserWarning)]:
                raise ValueError(str(problems[0].message))
    except WeightsError:
        raise
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if weights == "imagenet":
            raise WeightsError(
                f"cannot download the ImageNet weights for {base.display} ({reason}); offline, "
                f"{offline_hint(base)}"
            ) from None
        raise WeightsError(
            f"cannot load weights file {weights} ({reason}); it must be {base.weights_file} "
            "or weights of the same shapes, or use --set model.weights=none"
        ) from None
    model.trainable = setup.model.trainable_base
    return model


def _preprocess(base: Base, inputs: Any) -> Any:
    """The base's own preprocessing of raw 0-255 RGB, as Keras layers (none needs code)."""
    if base.name == "xception":  # preprocess_input: x / 127.5 - 1
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="xception_preprocess")(inputs)
    if base.name == "resnet50":  # "caffe": RGB to BGR, then minus the ImageNet mean
        layer = keras.layers.Conv2D(3, 1, trainable=False, name="resnet50_preprocess")
        x = layer(inputs)
        bgr = np.zeros((1, 1, 3, 3), np.float32)
        for i in range(3):
            bgr[0, 0, i, 2 - i] = 1.0
        layer.set_weights([bgr, -np.array([103.939, 116.779, 123.68], np.float32)])
        return x
    return inputs  # EfficientNetV2 and MobileNetV3 rescale inside the base


def build_feature_extractor(setup: TrialSetup, dtype: str | None = None) -> keras.Model:
    """Raw images -> the base's preprocessing -> base (inference mode) -> pooled features.

    Args:
        setup: the base, its weights and the input size.
        dtype: ``float32`` or ``bfloat16``, the precision the base computes in; by
            default ``model.precision`` as this machine resolves it
            (:func:`tuner.training.precision.extraction_precision`). Under bfloat16
            only the base computes in it: its weights, the preprocessing and the
            pooling stay float32, so the features are float32 either way.
    """
    base = BASES[setup.model.base]
    dtype = dtype or extraction_precision(setup.model)
    h, w = setup.data.image_size
    inputs = keras.Input((h, w, 3), name="image")
    with computing_in(dtype):
        application = _application(setup, base)
    x = application(_preprocess(base, inputs), training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool", dtype="float32")(x)
    return keras.Model(inputs, x, name="features")


def build_part(
    recipe: Recipe, params: Mapping[str, Any], shape: int | tuple[int, ...], num_classes: int
) -> keras.Model:
    """The recipe's head or network for one point of the space, checked to be a Keras model.

    Raises:
        RecipeError: when the recipe returns something else.
    """
    model = recipe.build(params, shape, num_classes)
    if not isinstance(model, keras.Model):
        raise RecipeError(
            f"model.recipe {recipe.name!r} returned a {type(model).__name__}, not a "
            "keras.Model; return keras.Model(inputs, outputs) or a keras.Sequential"
        )
    return model


@dataclass
class Assembled:
    """The complete model of a trial, and the part of it that the trial trains."""

    model: keras.Model  # raw RGB 0-255 in, logits out
    part: keras.Model  # the recipe's head or network
    extractor: keras.Model | None = None  # the base, when it trains too

    @property
    def trained(self) -> list[Any]:
        """The variables a trial keeps, in a fixed order."""
        base = self.extractor.trainable_weights if self.extractor is not None else []
        return [*base, *self.part.weights]


def assemble(
    setup: TrialSetup,
    recipe: Recipe,
    params: Mapping[str, Any],
    num_classes: int,
    extractor: keras.Model | None = None,
) -> Assembled:
    """The complete model of the spec's recipe for one point of the space.

    ``extractor`` is a frozen base built once and shared by a worker's trials.
    """
    h, w = setup.data.image_size
    inputs = keras.Input((h, w, 3), name="image")
    x = inputs
    if setup.data.augment:
        x = keras.layers.RandomFlip("horizontal", name="flip")(x)
    if recipe.kind == HEAD:
        # Built here for a base that trains, and for export: float32, so the model a
        # user keeps runs at full speed on any machine (not only a bfloat16 one).
        extractor = extractor or build_feature_extractor(setup, FLOAT32)
        head = build_part(recipe, params, BASES[setup.model.base].feature_dim, num_classes)
        model = keras.Model(inputs, head(extractor(x)), name="tuned_head")
        return Assembled(model, head, extractor if setup.model.trainable_base else None)
    keras.utils.set_random_seed(setup.model.seed)  # every trial starts from the same network
    network = build_part(recipe, params, (h, w, 3), num_classes)
    return Assembled(keras.Model(inputs, network(x), name="tuned_model"), network)


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    """The Keras optimizer of that name (``adam``, ``sgd``, ...) at ``learning_rate``."""
    return keras.optimizers.get({"class_name": name, "config": {"learning_rate": learning_rate}})


# The loss and metrics tuner compiles a model with, by the kind of its labels (see
# tuner.training.owndata.describe): one-hot class rows for images in class folders.
LOSSES: dict[str, tuple[str, list[str]]] = {
    "onehot": ("categorical_crossentropy", ["accuracy"]),
    "classes": ("sparse_categorical_crossentropy", ["accuracy"]),
    "values": ("mean_squared_error", ["mae"]),
}


def compile_model(
    model: keras.Model, learning_rate: float, optimizer: str = "adam", labels: str = "onehot"
) -> None:
    """The trial's optimizer at its rate; cross-entropy on logits and accuracy for classes,
    mean squared error and mean absolute error for values."""
    loss, metrics = LOSSES[labels]
    losses = {
        "categorical_crossentropy": keras.losses.CategoricalCrossentropy(from_logits=True),
        "sparse_categorical_crossentropy": keras.losses.SparseCategoricalCrossentropy(
            from_logits=True
        ),
        "mean_squared_error": keras.losses.MeanSquaredError(),
    }
    model.compile(
        optimizer=make_optimizer(optimizer, learning_rate), loss=losses[loss], metrics=metrics
    )


def ensure_compiled(
    model: keras.Model, point: Mapping[str, Any], labels: str, recipe: str
) -> str | None:
    """Compile ``model`` for the trial, unless its recipe compiled it; then set its rate only.

    Returns a line to say once when the recipe compiled the model, else None.

    Raises:
        RecipeError: several outputs and no compile, or a rate that cannot be set.
    """
    rate = point.get("learning_rate")
    if not model.compiled:
        if labels == "several":
            raise RecipeError(
                f"model.recipe {recipe!r} builds a model with several outputs and does not "
                "compile it; compile it in the recipe with a loss (and metrics) per output"
            )
        compile_model(model, rate, point.get("optimizer", "adam"), labels)
        return None
    optimizer = model.optimizer
    if rate is not None:
        try:
            optimizer.learning_rate = rate
        except Exception as e:
            raise RecipeError(
                f"model.recipe {recipe!r} compiles its model with a learning rate that tuner "
                f"cannot set ({one_line(e)}); compile it with a plain rate, or drop "
                "[search.learning_rate] from the spec"
            ) from None
    config = model.get_compile_config() or {}
    loss = config.get("loss")
    loss_name = loss if isinstance(loss, str) else (loss or {}).get("class_name", "its own")
    sets = "sets its learning rate to the trial's learning_rate" if rate is not None else ""
    unused = "; search.optimizer is not used" if "optimizer" in point else ""
    return (
        f"model.recipe {recipe!r} compiles its own model ({type(optimizer).__name__}, loss "
        f"{loss_name}); tuner {sets or 'leaves it as it is'}{unused}"
    )


def save_trained_weights(variables: list[Any], path: str | Path) -> None:
    """Save the trained variables, in order, to an ``.npz`` file."""
    arrays = {f"w{i}": np.asarray(v) for i, v in enumerate(variables)}
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_trained_weights(variables: list[Any], path: str | Path, what: str = "the model") -> None:
    """Put weights saved by :func:`save_trained_weights` into the same variables of a new model.

    Raises:
        WeightsError: when their number or any shape differs, naming the first mismatch.
    """
    with np.load(path) as saved:
        arrays = [saved[f"w{i}"] for i in range(len(saved.files))]
    if len(arrays) != len(variables):
        raise WeightsError(
            f"the saved weights hold {len(arrays)} arrays, but {what} has {len(variables)}; "
            "the recipe must build the same model from the same hyperparameters"
        )
    for variable, value in zip(variables, arrays, strict=True):
        if tuple(variable.shape) != value.shape:
            raise WeightsError(
                f"saved weight {value.shape} does not fit {variable.path} "
                f"{tuple(variable.shape)} of {what}; the recipe must build the same model "
                "from the same hyperparameters"
            )
    for variable, value in zip(variables, arrays, strict=True):
        variable.assign(value)


def _serialized_objects(config: Any) -> list[dict[str, Any]]:
    if isinstance(config, dict):
        found = [config] if "class_name" in config and "module" in config else []
        return found + [o for v in config.values() for o in _serialized_objects(v)]
    if isinstance(config, list):
        return [o for v in config for o in _serialized_objects(v)]
    return []


def portability_problems(model: keras.Model) -> list[str]:
    """What in ``model`` plain Keras cannot load from its ``.keras`` file without other code.

    Custom layer or model classes, Python functions (an activation, say) and
    ``Lambda`` layers need the code that made them.
    """
    problems = []
    for obj in _serialized_objects(keras.saving.serialize_keras_object(model)):
        module, name = obj.get("module"), obj.get("class_name")
        if module == "builtins" and name == "function":
            problems.append(f"the Python function {obj.get('config')!r}")
        elif not str(module).startswith("keras"):
            problems.append(f"the class {name}" + (f" from {module}" if module else ""))
        elif name == "Lambda":
            problems.append("a Lambda layer")
    return list(dict.fromkeys(problems))
