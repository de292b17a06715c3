"""What an exception raised by a trial means: the one place that decides a trial's fate.

The objective raises whatever stopped it; :func:`fate_of` says what follows,
and :mod:`tuner.runner.worker` does it. Optuna records the trial's state
(``study.optimize`` with ``catch=(Exception,)``); the worker acts on the fate:

============  ================================  =======================================
fate          raised                            what follows
============  ================================  =======================================
``PRUNE``     ``optuna.TrialPruned``            PRUNED; the next trial
``FAIL``      anything else                     FAIL with ``fail_reason``; the next trial
``LOSE``      :class:`~tuner.errors.TrialLost`  already FAIL and retried by the worker
              (or Optuna's                      that took it; the next trial
              ``UpdateFinishedTrialError``)
``STOP``      :class:`~tuner.errors.FatalError` FAIL, queued again; the worker stops
              or a signal (``KeyboardInterrupt``)
============  ================================  =======================================

A :class:`~tuner.errors.UserError` raised inside a trial (a recipe that fails
to build at one point of the space) fails that trial only: the same recipe
may build at the next point. Three failed trials in a row stop the worker.
"""

from __future__ import annotations

import enum

import optuna
from optuna.exceptions import UpdateFinishedTrialError

from tuner.errors import FatalError, TrialLost, one_line

__all__ = ["Fate", "fail_reason", "fate_of"]


class Fate(enum.Enum):
    """What follows a trial that raised."""

    PRUNE = "prune"
    FAIL = "fail"
    LOSE = "lose"
    STOP = "stop"


def fate_of(error: BaseException) -> Fate:
    """The fate of a trial whose objective raised ``error``."""
    if isinstance(error, optuna.TrialPruned):
        return Fate.PRUNE
    if isinstance(error, (TrialLost, UpdateFinishedTrialError)):
        return Fate.LOSE
    if isinstance(error, (FatalError, KeyboardInterrupt)):
        return Fate.STOP
    return Fate.FAIL


def fail_reason(error: BaseException) -> str:
    """The ``fail_reason`` a FAIL trial records for ``error``."""
    if isinstance(error, KeyboardInterrupt):  # tuner.runner.signals.Interrupted names its signal
        return f"interrupted by {error.args[0] if error.args else 'SIGINT'}"
    return one_line(error)
