"""tuner: hyperparameter search for Keras models on Optuna, shared by many workers.

The CLI (``tuner.cli``) is a thin shell over these modules; only ``data``
loading, ``features``, ``model`` and ``objective`` import TensorFlow.
"""

from tuner.errors import (
    CacheError,
    DataError,
    SpecError,
    StorageError,
    StudyError,
    TunerError,
    WeightsError,
)
from tuner.spec import StudySpec, load_spec

__version__ = "0.1.0"

__all__ = [
    "CacheError",
    "DataError",
    "SpecError",
    "StorageError",
    "StudyError",
    "StudySpec",
    "TunerError",
    "WeightsError",
    "__version__",
    "load_spec",
]
