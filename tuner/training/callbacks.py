"""The per-epoch Keras callbacks of a trial (TF): the record of the contract, and pruning.

:class:`EpochRecorder` records the trial attributes after every epoch, so a
pruned or interrupted trial keeps its curves; :class:`PruningBeforeLastEpoch`
reports each epoch's validation accuracy and asks the pruner, except after the
last epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import optuna

from tuner.common.tfload import quiet_tensorflow

with quiet_tensorflow():
    import keras
    from optuna_integration import KerasPruningCallback

from tuner.common import attrs
from tuner.space.params import Space, format_params
from tuner.study.settings import ObjectiveSettings, metric_label

__all__ = ["EpochRecorder", "PruningBeforeLastEpoch"]

Say = Callable[[str], None]


class EpochRecorder(keras.callbacks.Callback):
    """Records the contract's per-epoch attributes on the trial, and stops on divergence.

    Attributes are written at most every ``flush_every`` seconds and once more by
    :meth:`flush` when the trial ends, however it ends. Slow full-pipeline epochs
    are therefore visible live, while a cached trial, whose epochs take
    milliseconds, does not spend more time on storage writes than on training.
    """

    def __init__(
        self,
        trial: optuna.Trial,
        epochs: int,
        say: Say,
        flush_every: float = 5.0,
        space: Space | None = None,
        metric: str = "val_accuracy",
        objective: ObjectiveSettings | None = None,
    ) -> None:
        super().__init__()
        self.trial, self.epochs, self.say = trial, epochs, say
        self.label = f"trial {trial.number} {format_params(trial.params, space)}"
        self.flush_every = flush_every
        self.train_accuracy: list[float] = []
        self.val_accuracy: list[float] = []
        self.val_loss: list[float] = []
        self.epoch_seconds: list[float] = []
        self.objective = objective or ObjectiveSettings(metric=metric)
        self.metric = self.objective.metric
        self.values: list[float] = []  # the objective's (first) metric, per epoch
        self.logs: list[dict[str, float]] = []  # every logged metric, per epoch
        self.metric_gap: list[float] = []  # the first metric's train-validation gap, per epoch
        self.train_values: list[float] = []  # the first metric on the training data, per epoch
        self._start = self._flushed = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        self.epoch_seconds.append(round(time.perf_counter() - self._start, 4))
        self.train_accuracy.append(float(logs.get("accuracy", math.nan)))
        self.val_accuracy.append(float(logs.get("val_accuracy", math.nan)))
        self.val_loss.append(float(logs.get("val_loss", math.nan)))
        self.values.append(float(logs.get(self.metric, math.nan)))
        self.logs.append({k: float(v) for k, v in logs.items()})
        train = float(logs.get(self.objective.train_metric(), math.nan))
        self.train_values.append(train)
        self.metric_gap.append(self.objective.gap(train, self.values[-1]))
        self.say(f"{self.label} epoch {epoch + 1}/{self.epochs} {self._shown(logs)}")
        loss = float(logs.get("loss", math.nan))
        if not math.isfinite(loss):
            reason = f"diverged: training loss is {loss} at epoch {epoch}"
            self.trial.set_user_attr(attrs.PRUNE_REASON, reason)
            raise optuna.TrialPruned(reason)
        if time.perf_counter() - self._flushed >= self.flush_every:
            self.flush()

    def _shown(self, logs: dict[str, Any]) -> str:
        """Accuracy on both splits when logged, and the objective's metrics."""
        names = ["accuracy", "val_accuracy"] if "accuracy" in logs else []
        train = self.objective.train_metric()
        for name in (train, *self.objective.names):
            if name not in names and name in logs:
                names.append(name)
        text = " ".join(f"{metric_label(n)}={_number(n, float(logs[n]))}" for n in names)
        if not names:  # a metric the model does not log: say so rather than nothing
            text = f"{metric_label(self.metric)}=nan"
        return f"{text} ({_duration(self.epoch_seconds[-1])})"

    def flush(self) -> None:
        """Write the attributes recorded so far to the trial."""
        if not self.train_accuracy:
            return
        gap = self.train_accuracy[-1] - self.val_accuracy[-1]
        record = {
            attrs.TRAIN_ACCURACY: self.train_accuracy,
            attrs.VAL_LOSS: [v if math.isfinite(v) else None for v in self.val_loss],
            attrs.GAP: gap if math.isfinite(gap) else None,
            attrs.METRIC_GAP: _finite(self.metric_gap[-1]),
            attrs.EPOCH_VALUES: [_finite(v) for v in self.values],
            attrs.TRAIN_VALUES: [_finite(v) for v in self.train_values],
            attrs.EPOCH_SECONDS: self.epoch_seconds,
        }
        attrs.set_attrs(self.trial, record)
        self._flushed = time.perf_counter()


def _duration(seconds: float) -> str:
    """An epoch's time as it reads at its speed: ``43ms`` for a cached head, ``12.1s``."""
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"


def _number(name: str, value: float) -> str:
    return f"{value:.3f}" if name.endswith("accuracy") else f"{value:.4g}"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class PruningBeforeLastEpoch(KerasPruningCallback):
    """``optuna_integration``'s Keras pruning callback, except after the last epoch.

    After the last epoch the value is still reported, but the pruner is not asked:
    a trial that has trained all its epochs has nothing left to save, so it ends
    COMPLETE with its final value rather than PRUNED.
    """

    def __init__(self, trial: optuna.Trial, monitor: str, epochs: int) -> None:
        super().__init__(trial, monitor)
        self._epochs = epochs

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if epoch + 1 < self._epochs:
            super().on_epoch_end(epoch, logs)
            return
        value = (logs or {}).get(self._monitor)
        if value is not None:
            self._trial.report(float(value), step=epoch)
