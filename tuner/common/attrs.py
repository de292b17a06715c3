"""The names of the trial record and the study attributes: the contract, in one place.

The dashboard, ``tuner status``, ``tuner export`` and scripts read these; the
objective and the search write them. No TensorFlow here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

__all__ = [
    "CACHE",
    "CACHE_REASON",
    "CURVE_ARTIFACT",
    "EPOCH_SECONDS",
    "EPOCH_VALUES",
    "FAIL_REASON",
    "GAP",
    "METRIC_GAP",
    "METRIC_NAME",
    "PRUNED_AT_EPOCH",
    "PRUNE_REASON",
    "SPACE_ATTR",
    "SPEC_ATTR",
    "STALE",
    "TRAIN_ACCURACY",
    "TRAIN_VALUES",
    "VAL_LOSS",
    "WARM_START",
    "WEIGHTS_ARTIFACT",
    "WORKER",
    "set_attrs",
    "worker_name",
]

# Per-epoch lists and the final gap (train minus validation accuracy).
TRAIN_ACCURACY = "train_accuracy"
VAL_LOSS = "val_loss"
GAP = "gap"
# The objective's first metric, train minus validation (the other way for a loss or error):
# what objective.max_gap bounds; the same as GAP for val_accuracy.
METRIC_GAP = "metric_gap"
# The objective's first metric per epoch, on validation and on training data (what the
# curves plot when it is not accuracy, and what a study of two objectives, which reports
# no intermediate values, has of its epochs).
EPOCH_VALUES = "epoch_values"
TRAIN_VALUES = "train_values"
EPOCH_SECONDS = "epoch_seconds"
# Where the trial ran: "hit", "miss" or "off" for the feature cache, and host:pid.
CACHE = "cache"
CACHE_REASON = "cache_reason"  # why the cache is "off"
WORKER = "worker"
# How it ended, where that applies.
WARM_START = "warm_start"
PRUNE_REASON = "prune_reason"
PRUNED_AT_EPOCH = "pruned_at_epoch"
FAIL_REASON = "fail_reason"
# Ids of the trial's artifacts: its trained weights and its learning-curve PNG.
WEIGHTS_ARTIFACT = "weights_artifact"
CURVE_ARTIFACT = "curve_artifact"
# A retried trial inherits the failed one's attributes; these no longer hold for it.
STALE = frozenset({FAIL_REASON, PRUNE_REASON, PRUNED_AT_EPOCH, WEIGHTS_ARTIFACT, CURVE_ARTIFACT})

# The objective's name, as the dashboard shows it.
METRIC_NAME = "val_accuracy"
# Study attributes: the search space as stored (to refuse a changed one), and the spec.
SPACE_ATTR = "tuner:search_space"
SPEC_ATTR = "tuner:spec"


def worker_name() -> str:
    """``host:pid`` of this process: the value of :data:`WORKER` on every trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def set_attrs(trial: Any, values: Mapping[str, Any]) -> None:
    """Set several user attributes of a running trial, in one transaction where the storage can.

    ``trial`` is an ``optuna.Trial``. A worker's storage writes them together
    (``set_trial_user_attrs``); any other storage gets one ``set_user_attr`` each.
    """
    many = getattr(trial.storage, "set_trial_user_attrs", None)
    if many is None:
        for key, value in values.items():
            trial.set_user_attr(key, value)
        return
    many(trial._trial_id, dict(values))
    trial._cached_frozen_trial.user_attrs.update(values)  # as Trial.set_user_attr keeps it
