"""tuner: hyperparameter search for Keras models on Optuna, shared by many workers.

The CLI (``tuner.cli``) is a thin shell over these modules; only ``data``
loading, ``features``, ``model``, ``objective``, ``callbacks`` and ``export_model`` import
TensorFlow (and a user's recipe module, if it does).
"""

from tuner.config.spec import StudySpec, load_spec
from tuner.errors import (
    CacheError,
    DataError,
    RecipeError,
    SpecError,
    StorageError,
    StudyError,
    TunerError,
    WeightsError,
)

__version__ = "0.1.0"

__all__ = [
    "CacheError",
    "DataError",
    "RecipeError",
    "SpecError",
    "StorageError",
    "StudyError",
    "StudySpec",
    "TunerError",
    "WeightsError",
    "__version__",
    "load_spec",
]
