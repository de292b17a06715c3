"""The one error root of tuner and its few named kinds.

Every :class:`TunerError` is a user error: the CLI prints it as a single
``error: ...`` line and exits with code 2. Each message says what is wrong
and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "CacheError",
    "DataError",
    "RecipeError",
    "SpecError",
    "StorageError",
    "StudyError",
    "TunerError",
    "WeightsError",
]


class TunerError(Exception):
    """Root of every error tuner reports to the user."""


class SpecError(TunerError):
    """A study spec file or a ``--set`` override is invalid."""


class DataError(TunerError):
    """The dataset folder is missing, malformed, or holds unreadable files."""


class WeightsError(TunerError):
    """Model weights could not be found, downloaded or read."""


class StorageError(TunerError):
    """A storage URL is malformed, or its database cannot be reached."""


class StudyError(TunerError):
    """A study does not exist, has no result yet, or conflicts with the spec."""


class CacheError(TunerError):
    """The feature cache cannot be used (for example, its folder is not writable)."""


class RecipeError(TunerError):
    """A model recipe cannot be imported, does not fit the protocol, or builds a wrong model."""
