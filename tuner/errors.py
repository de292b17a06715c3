"""The one error root of tuner, and the kinds that say what happens next.

Three kinds, as keras-tuner's ``FatalError``/``FailedTrialError`` and Optuna's
``_run_trial`` tell them apart; :mod:`tuner.runner.fate` is the one place that
maps an exception to what the worker does:

- :class:`UserError`: a mistake the user fixes (a bad spec, a missing dataset,
  a mistyped storage URL). Found before any work where it can be; the CLI
  prints one ``error: ...`` line and exits with code 2.
- :class:`FatalError`: the worker cannot go on (its storage has been gone for
  longer than ``storage.outage_tolerance``, or is full or read-only). The
  worker stops with one ``error:`` line and exit code 2; its running trial is
  queued again for a healthy worker.
- :class:`TrialLost`: another worker failed this worker's running trial as
  stale and queued its retry; the worker drops it and goes on.

Any other exception inside a trial (a NaN, a recipe that fails at one point,
an out-of-memory) fails only that trial, with its reason recorded.
"""

from __future__ import annotations

__all__ = [
    "CacheError",
    "DataError",
    "FatalError",
    "InstallError",
    "RecipeError",
    "SpecError",
    "StorageConfigError",
    "StorageError",
    "StorageLostError",
    "StudyError",
    "TrialLost",
    "TunerError",
    "UserError",
    "WeightsError",
    "one_line",
]


def one_line(error: BaseException, limit: int = 500) -> str:
    """``Type: message`` on one line, cut at ``limit`` characters: how a reason is recorded."""
    text = " ".join(str(error).split()) or "no message"
    cut = f"{text[:limit]}..." if len(text) > limit else text
    return f"{type(error).__name__}: {cut}"


class TunerError(Exception):
    """Root of every error tuner reports; the CLI prints it as one ``error:`` line."""


class UserError(TunerError):
    """A mistake the user fixes; reported before any work where it can be, exit code 2."""


class FatalError(TunerError):
    """The worker cannot go on: it stops, and its running trial is queued again."""


class TrialLost(TunerError):
    """This worker's running trial was failed by another worker, which took it as stale."""


class OverBudget(TrialLost):
    """A trial claimed without the budget lock's guarantee came after the study's budget.

    It is failed without running (a queued retry is queued again), and counts
    towards nothing; see :mod:`tuner.storages.budgetlock`.
    """


class SpecError(UserError):
    """A study spec file or a ``--set`` override is invalid."""


class DataError(UserError):
    """The dataset folder is missing, malformed, or holds unreadable files."""


class WeightsError(UserError):
    """Model weights could not be found, downloaded or read."""


class StudyError(UserError):
    """A study does not exist, has no result yet, or conflicts with the spec."""


class CacheError(UserError):
    """The feature cache cannot be used (for example, its folder is not writable)."""


class InstallError(UserError):
    """A package this work needs is missing (TensorFlow: the ``cpu`` or ``gpu`` extra)."""


class RecipeError(UserError):
    """A model recipe cannot be imported, does not fit the protocol, or builds a wrong model."""


class StorageError(TunerError):
    """Any storage trouble; raised as one of its two kinds below."""


class StorageConfigError(StorageError, UserError):
    """A storage that cannot be opened as given: a malformed URL, a missing driver or file."""


class StorageLostError(StorageError, FatalError):
    """A storage that was open and is gone: unreachable past the tolerance, full, read-only."""
