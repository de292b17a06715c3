"""The per-epoch callback and the objective on cached features, with in-memory storage."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from tuner.config.build import trial_setup
from tuner.config.spec import load_spec

pytestmark = pytest.mark.slow


def _trial(lr: float = 1e-3) -> tuple[optuna.Study, optuna.Trial]:
    study = optuna.create_study(direction="maximize", storage=optuna.storages.InMemoryStorage())
    study.enqueue_trial({"learning_rate": lr})
    trial = study.ask()
    trial.suggest_float("learning_rate", 1e-4, 1.0, log=True)
    return study, trial


def test_recorder_writes_the_contract_attributes_every_epoch() -> None:
    from tuner.training.objective import EpochRecorder

    _, trial = _trial()
    lines: list[str] = []
    rec = EpochRecorder(trial, epochs=2, say=lines.append, flush_every=3600)
    rec.on_epoch_begin(0)
    rec.on_epoch_end(0, {"accuracy": 0.5, "val_accuracy": 0.4, "val_loss": 1.5, "loss": 1.2})
    rec.on_epoch_begin(1)
    rec.on_epoch_end(1, {"accuracy": 0.7, "val_accuracy": 0.6, "val_loss": 1.1, "loss": 0.9})
    assert "train_accuracy" not in trial.study.trials[trial.number].user_attrs  # batched
    rec.flush()
    attrs = trial.study.trials[trial.number].user_attrs
    assert attrs["train_accuracy"] == [0.5, 0.7]
    assert attrs["val_loss"] == [1.5, 1.1]
    assert attrs["gap"] == pytest.approx(0.1)
    assert len(attrs["epoch_seconds"]) == 2
    assert lines[-1].startswith("trial 0 learning_rate=0.001 epoch 2/2 acc=0.700 val_acc=0.600")


def test_recorder_writes_live_when_epochs_are_slow() -> None:
    from tuner.training.objective import EpochRecorder

    _, trial = _trial()
    rec = EpochRecorder(trial, epochs=2, say=lambda _: None, flush_every=0.0)
    rec.on_epoch_end(0, {"accuracy": 0.5, "val_accuracy": 0.4, "val_loss": 1.5, "loss": 1.2})
    assert trial.study.trials[trial.number].user_attrs["train_accuracy"] == [0.5]


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def test_pruning_asks_after_every_epoch_but_the_last() -> None:
    from tuner.training.objective import PruningBeforeLastEpoch

    study = optuna.create_study(direction="maximize", pruner=_AlwaysPrune())
    trial = study.ask()
    callback = PruningBeforeLastEpoch(trial, "val_accuracy", epochs=3)
    with pytest.raises(optuna.TrialPruned):
        callback.on_epoch_end(1, {"val_accuracy": 0.4})
    callback.on_epoch_end(2, {"val_accuracy": 0.5})  # the last epoch: reported, not pruned
    assert study.trials[0].intermediate_values == {1: 0.4, 2: 0.5}


def test_recorder_stops_a_diverging_trial_with_the_reason() -> None:
    from tuner.training.objective import EpochRecorder

    _, trial = _trial()
    rec = EpochRecorder(trial, epochs=3, say=lambda _: None)
    with pytest.raises(optuna.TrialPruned, match="diverged"):
        rec.on_epoch_end(0, {"accuracy": 0.1, "val_accuracy": 0.1, "val_loss": math.nan,
                             "loss": math.nan})  # fmt: skip
    rec.flush()  # as the objective does for a pruned trial
    attrs = trial.study.trials[trial.number].user_attrs
    assert attrs["prune_reason"] == "diverged: training loss is nan at epoch 0"
    assert attrs["val_loss"] == [None]


def _features(n: int, classes: int = 3, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, n)]
    x = rng.normal(size=(n, 2048)).astype(np.float32) * 0.05 * scale
    x[:, :classes] += labels * 3 * scale  # learnable
    return x, labels


def _data(scale: float = 1.0, poison: bool = False):  # type: ignore[no-untyped-def]
    from tuner.assets.datasets import DatasetScan
    from tuner.training.features import FeatureSet
    from tuner.training.objective import TrialData

    (xt, yt), (xv, yv) = _features(64, scale=scale), _features(32, scale=scale)
    if poison:
        xt[0, 0] = np.nan
    fs = FeatureSet({"train": xt, "validation": xv}, {"train": yt, "validation": yv}, "hit", "k")
    scan = DatasetScan(root=None, class_names=("a", "b", "c"), files={})  # type: ignore[arg-type]
    return TrialData(scan=scan, cache="hit", features=fs)


def test_objective_returns_the_last_reported_validation_accuracy() -> None:
    from tuner.training.objective import make_objective

    spec = load_spec("clothing", ["train.epochs=3", "data.batch_size=16"])
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"learning_rate": 1e-2})
    study.optimize(
        make_objective(trial_setup(spec), _data(), None, say=lambda _: None), n_trials=1
    )
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [0, 1, 2]
    assert trial.value == trial.intermediate_values[2]
    assert trial.value > 0.5  # the features are learnable
    assert trial.user_attrs["cache"] == "hit"


def test_a_nan_loss_prunes_the_trial_and_the_search_goes_on() -> None:
    from tuner.training.objective import make_objective

    spec = load_spec("clothing", ["train.epochs=3", "data.batch_size=16"])
    study = optuna.create_study(direction="maximize")
    study.optimize(
        make_objective(trial_setup(spec), _data(poison=True), None, say=lambda _: None), n_trials=2
    )
    assert [t.state for t in study.trials] == [TrialState.PRUNED, TrialState.PRUNED]
    assert all("diverged" in t.user_attrs["prune_reason"] for t in study.trials)


def test_complete_and_pruned_trials_keep_their_learning_curve_png(tmp_path: Path) -> None:
    from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta
    from PIL import Image

    from tuner.training.objective import make_objective

    spec = load_spec("clothing", ["train.epochs=3", "data.batch_size=16"])
    store = FileSystemArtifactStore(tmp_path)
    for data, state in ((_data(), TrialState.COMPLETE), (_data(poison=True), TrialState.PRUNED)):
        study = optuna.create_study(direction="maximize")
        study.optimize(
            make_objective(trial_setup(spec), data, store, say=lambda _: None), n_trials=1
        )
        trial = study.trials[0]
        assert trial.state == state
        metas = {m.artifact_id: m for m in get_all_artifact_meta(trial, storage=study._storage)}
        curve = metas[trial.user_attrs["curve_artifact"]]
        assert curve.filename == "learning_curve.png"
        with Image.open(tmp_path / curve.artifact_id) as image:
            assert image.format == "PNG"
