"""The head trainer on cached features against Keras' ``fit`` of the same head, same batches."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.slow

N, VAL, DIM, CLASSES, BATCH, EPOCHS = 150, 60, 12, 3, 32, 4


def _data() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Learnable rows: each class has its own mean, so accuracy moves from epoch to epoch."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(CLASSES, DIM)).astype(np.float32)
    features, labels = {}, {}
    for split, n in (("train", N), ("validation", VAL)):
        y = rng.integers(0, CLASSES, n)
        features[split] = (centers[y] + 1.5 * rng.normal(size=(n, DIM))).astype(np.float32)
        labels[split] = np.eye(CLASSES, dtype=np.float32)[y]
    return features, labels


def _head(params: dict[str, Any], seed: int) -> Any:
    import keras

    from tuner.recipes import BUILTIN

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)  # as tuner.training.objective starts every trial
    return BUILTIN["dense-head"].build(params, DIM, CLASSES)


def _keras_fit(params: dict[str, Any], lr: float, seed: int) -> dict[str, list[float]]:
    """Today's training: compile and ``fit``, fed the trial's order of rows per epoch."""
    from tuner.training.headfit import epoch_order
    from tuner.training.model import compile_model

    (features, labels), head = _data(), _head(params, seed)
    compile_model(head, lr)
    curves: dict[str, list[float]] = {"accuracy": [], "val_accuracy": [], "val_loss": []}
    for epoch in range(EPOCHS):
        order = epoch_order(seed, epoch, N)
        history = head.fit(
            features["train"][order],
            labels["train"][order],
            batch_size=BATCH,
            epochs=1,
            shuffle=False,
            validation_data=(features["validation"], labels["validation"]),
            verbose=0,
        )
        for name, values in curves.items():
            values.append(history.history[name][0])
    return curves


class _Logs:
    """A callback that keeps every epoch's logs."""

    def __new__(cls) -> Any:
        import keras

        class Logs(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.curves: dict[str, list[float]] = {}
                self.batch_ends = 0

            def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
                self.batch_ends += 1

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                for name, value in (logs or {}).items():
                    self.curves.setdefault(name, []).append(value)

        return Logs()


def _trainer_fit(trainer: Any, params: dict[str, Any], lr: float, seed: int) -> Any:
    logs = _Logs()
    trainer.fit(_head(params, seed), lr, EPOCHS, seed, [logs])
    return logs


def _trainer(jit: bool = True) -> Any:
    from tuner.training.headfit import HeadTrainer

    features, labels = _data()
    return HeadTrainer(features, labels, BATCH, jit_compile=jit)


@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize(
    "params", [{}, {"size_inner": 16}, {"size_inner": 16, "droprate": 0.5}], ids=str
)
def test_trainer_trains_as_keras_fit_does(params: dict[str, Any], jit: bool) -> None:
    expected = _keras_fit(params, 3e-2, seed=7)
    logs = _trainer_fit(_trainer(jit), params, 3e-2, seed=7)
    assert len(set(expected["val_accuracy"])) > 1  # the curve moves, so a match means something
    for name, values in expected.items():
        np.testing.assert_allclose(logs.curves[name], values, atol=1e-3, err_msg=name)
    assert logs.batch_ends == EPOCHS  # one batch end per epoch, as with steps_per_execution


def test_a_kept_head_starts_each_trial_afresh() -> None:
    params = {"size_inner": 16, "droprate": 0.5}
    fresh = _trainer_fit(_trainer(), params, 3e-2, seed=7).curves
    trainer = _trainer()
    _trainer_fit(trainer, params, 1e-1, seed=3)  # leaves trained weights and Adam moments
    again = _trainer_fit(trainer, params, 3e-2, seed=7).curves
    assert len(trainer._kept) == 1  # the second trial reused the first one's compiled head
    for name, values in fresh.items():
        np.testing.assert_allclose(again[name], values, atol=1e-6, err_msg=name)


def test_the_order_depends_on_the_seed_and_epoch_only() -> None:
    from tuner.training.headfit import epoch_order

    assert np.array_equal(epoch_order(7, 2, 50), epoch_order(7, 2, 50))
    assert not np.array_equal(epoch_order(7, 2, 50), epoch_order(7, 3, 50))
    assert not np.array_equal(epoch_order(7, 2, 50), epoch_order(8, 2, 50))
    assert sorted(epoch_order(7, 2, 50)) == list(range(50))


def test_the_head_trains_with_the_optimizer_it_is_given() -> None:
    import keras

    from tuner.training.headfit import HeadTrainer

    rng = np.random.default_rng(0)
    features = {
        s: rng.normal(size=(n, 8)).astype("float32")
        for s, n in (("train", 40), ("validation", 10))
    }
    labels = {
        s: np.eye(3, dtype="float32")[rng.integers(0, 3, len(v))] for s, v in features.items()
    }
    trainer = HeadTrainer(features, labels, 8)

    def head() -> Any:
        keras.utils.set_random_seed(1)
        inputs = keras.Input((8,))
        return keras.Model(inputs, keras.layers.Dense(3)(inputs))

    def trained(optimizer: str) -> np.ndarray:
        return np.asarray(trainer.fit(head(), 0.1, 2, 0, [], optimizer)[0])

    sgd, adam = trained("sgd"), trained("adam")
    assert np.allclose(trained("sgd"), sgd)  # the same optimizer gives the same head
    assert not np.allclose(sgd, adam)
