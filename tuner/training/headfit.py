"""Training a head on cached features (TF): whole epochs in one compiled call, reused by trials.

On cached features a trial's arithmetic takes milliseconds, and Keras' ``fit``
spends most of a trial on overhead: a ``tf.data`` pipeline per call, Python
callbacks and a dispatch per batch, and a model built, compiled and traced per
trial. :class:`HeadTrainer` does the same training without it:

- the features sit in memory as tensors, made once per worker; an epoch copies
  the training rows once, in its order (so a trainer's peak memory is twice
  the training features), and its batches are slices of that copy;
- one epoch (every batch, then the validation pass) is one call of a compiled
  ``tf.function``;
- that function, its model and its Adam optimizer are kept per head
  architecture and reused by later trials of the same architecture: the
  trial's freshly built head (the recipe's own model, so its initial weights
  and dropout seeds are exactly today's) is copied into the kept model, the
  optimizer's state is zeroed and its rate set to the trial's.

The training is Keras' own: the model's ``call`` in training mode, its
regularization losses, ``CategoricalCrossentropy(from_logits=True)``, Keras'
Adam, batches of ``batch_size`` in an order drawn from the trial's seed (the
last batch partial), and the epoch's mean loss and accuracy computed as
``fit`` does (weighted by batch size). Callbacks see what ``fit`` with
``steps_per_execution`` equal to an epoch shows them: one batch end per epoch.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuner.common.tfload import quiet_tensorflow

with quiet_tensorflow():
    import keras
    import tensorflow as tf
    from tensorflow.python import pywrap_tfe
    from tensorflow.python.eager import context as tf_context

from tuner.training.model import make_optimizer

__all__ = ["HeadTrainer", "architecture_key", "epoch_order", "kernels_kept"]

# Architectures kept per worker. A space with a continuous hyperparameter that changes
# the architecture (a dropout rate, say) gives a new one per trial; the bound keeps
# memory flat, and such trials still get the in-memory, whole-epoch training.
MAX_KEPT = 8


@contextmanager
def kernels_kept() -> Iterator[None]:
    """Inside, TensorFlow keeps its cache of instantiated functions when asked to clear it.

    ``keras.backend.clear_session`` and ``keras.utils.set_random_seed``, which start
    every trial, both empty that cache (the seed to restart TensorFlow's stateful
    random kernels; a kept epoch function has none: its dropout draws from the
    head's seed variables). Emptied, it makes the first call of a kept epoch
    function in every trial instantiate and optimize its graph again: about 80 ms,
    a fifth of a cached trial. Keras' state and every seed are still reset;
    :class:`HeadTrainer` empties the cache itself when it drops a function.
    """
    clear = getattr(pywrap_tfe, "TFE_ContextClearCaches", None)
    if clear is None:  # another TensorFlow: clearing costs time, never correctness
        yield
        return
    pywrap_tfe.TFE_ContextClearCaches = lambda handle: None
    try:
        yield
    finally:
        pywrap_tfe.TFE_ContextClearCaches = clear


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the ``n`` training rows in ``epoch`` of the trial with ``seed``.

    It depends on the seed and the epoch alone, so a trial's batches do not
    depend on which trials the worker ran before.
    """
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)


def architecture_key(model: keras.Model) -> str | None:
    """A string equal for two heads that compute the same function of their weights.

    None when the model cannot describe itself (a custom layer without
    ``get_config``); such a head is trained without being kept.
    """
    try:
        config = model.get_config()
    except Exception:  # any failure only means "do not reuse"
        return None
    shapes = [(v.path, tuple(v.shape), str(v.dtype)) for v in model.variables]
    return json.dumps([type(model).__qualname__, config, shapes], sort_keys=True, default=repr)


@dataclass
class _Kept:
    """A compiled head: its model, its optimizer and its compiled epoch function."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    epoch: Any  # tf.function: order -> (loss, accuracy, val_loss, val_accuracy)


class HeadTrainer:
    """Trains heads on one worker's cached features; see the module docstring.

    Args:
        features: ``{"train": X, "validation": X}``, float32 rows.
        labels: the one-hot labels of the same splits.
        batch_size: the training batch size.
        jit_compile: compile the epoch with XLA, for heads without random layers. Off by
            default: a batch's matrix products are small, and XLA's CPU code for them
            (the gradient's above all) is slower than TensorFlow's own kernels; an epoch of
            the clothing head took about 15-35% longer with it on one machine, 60% longer
            on another once the batches were slices of one gather, and tracing 1-2 s more.
    """

    def __init__(
        self,
        features: dict[str, np.ndarray],
        labels: dict[str, np.ndarray],
        batch_size: int,
        jit_compile: bool = False,
    ) -> None:
        self.x = tf.constant(features["train"], tf.float32)
        self.y = tf.constant(labels["train"], tf.float32)
        self.val_x = tf.constant(features["validation"], tf.float32)
        self.val_y = tf.constant(labels["validation"], tf.float32)
        self.n, self.batch_size, self.jit_compile = int(self.x.shape[0]), batch_size, jit_compile
        self._kept: OrderedDict[str, _Kept] = OrderedDict()

    def fit(
        self,
        head: keras.Model,
        learning_rate: float,
        epochs: int,
        seed: int,
        callbacks: Sequence[keras.callbacks.Callback] = (),
        optimizer: str = "adam",
    ) -> list[Any]:
        """Train ``head``'s function for ``epochs``; return the trained weights, in order.

        ``head`` must be freshly built: its weights and random-seed states are
        the trial's starting point. The returned variables are the kept model's
        when the architecture is kept, valid until the next ``fit``.
        """
        kept = self._kept_for(head, optimizer)
        kept.optimizer.learning_rate = learning_rate  # after the reset, which zeroes it too
        cbs = keras.callbacks.CallbackList(list(callbacks), model=kept.model)
        kept.model.stop_training = False
        cbs.on_train_begin()
        for epoch in range(epochs):
            cbs.on_epoch_begin(epoch)
            order = tf.constant(epoch_order(seed, epoch, self.n))
            loss, acc, val_loss, val_acc = (float(t) for t in kept.epoch(order))
            cbs.on_train_batch_end(self._steps - 1, {"loss": loss, "accuracy": acc})
            logs = {"loss": loss, "accuracy": acc, "val_loss": val_loss, "val_accuracy": val_acc}
            cbs.on_epoch_end(epoch, logs)
            if kept.model.stop_training:
                break
        cbs.on_train_end()
        return list(kept.model.weights)

    @property
    def _steps(self) -> int:
        return -(-self.n // self.batch_size)

    def _kept_for(self, head: keras.Model, optimizer: str = "adam") -> _Kept:
        """The compiled head for ``head``'s architecture, holding ``head``'s starting state."""
        key = architecture_key(head)
        key = None if key is None else f"{optimizer} {key}"
        kept = self._kept.get(key) if key is not None else None
        if kept is None:
            kept = self._compile(head, optimizer)
            if key is None or len(self._kept) >= MAX_KEPT:
                # a function is dropped (this one after its trial, or the oldest kept): free
                # the kernels of dropped functions, which kernels_kept() leaves
                tf_context.context().clear_kernel_cache()
            if key is not None:
                self._kept[key] = kept
                while len(self._kept) > MAX_KEPT:
                    self._kept.popitem(last=False)
            return kept
        self._kept.move_to_end(key)
        # every variable, the dropout layers' seed states included, as a fresh build has it
        for mine, fresh in zip(kept.model.variables, head.variables, strict=True):
            mine.assign(fresh)
        for v in kept.optimizer.variables:  # step count and moments, as a new Adam has them
            v.assign(tf.zeros_like(v))
        return kept

    def _compile(self, model: keras.Model, name: str = "adam") -> _Kept:
        """The epoch function of ``model`` with a new optimizer, traced on first use."""
        optimizer = make_optimizer(name, 1e-3)
        optimizer.build(model.trainable_variables)
        loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True)
        x, y, val_x, val_y, b = self.x, self.y, self.val_x, self.val_y, self.batch_size
        full = self.n // b

        def step(xb: tf.Tensor, yb: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            """One batch: Keras' train step. Returns the batch's loss and correct count."""
            with tf.GradientTape() as tape:
                logits = model(xb, training=True)
                loss = loss_fn(yb, logits)
                if model.losses:  # regularization, added as Keras' compute_loss does
                    loss = loss + tf.add_n(model.losses)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)
            return loss, _correct(yb, logits)

        def epoch(order: tf.Tensor) -> tuple[tf.Tensor, ...]:
            loss_sum, correct = tf.constant(0.0), tf.constant(0.0)
            # The epoch's full batches gathered in one go, each batch then a view of the
            # copy: a gather per batch took a third of the epoch.
            rows = order[: full * b]
            xs = tf.reshape(tf.gather(x, rows), (full, b, x.shape[1]))
            ys = tf.reshape(tf.gather(y, rows), (full, b, y.shape[1]))
            for i in tf.range(full):
                loss, hits = step(xs[i], ys[i])
                loss_sum += loss * b
                correct += hits
            if self.n > full * b:  # the last, partial batch, as fit makes it
                rest = order[full * b :]
                loss, hits = step(tf.gather(x, rest), tf.gather(y, rest))
                loss_sum += loss * (self.n - full * b)
                correct += hits
            logits = model(val_x, training=False)
            val_loss = loss_fn(val_y, logits)
            val_acc = _correct(val_y, logits) / val_x.shape[0]
            return loss_sum / self.n, correct / self.n, val_loss, val_acc

        # XLA draws other random numbers than TF's kernels from the same seeds, so a head with
        # dropout would get other masks than fit gives it: such a head runs without XLA.
        jit = self.jit_compile and len(model.variables) == len(model.weights)
        compiled = tf.function(epoch, jit_compile=jit, reduce_retracing=True)
        return _Kept(model, optimizer, compiled)


def _correct(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """How many rows' largest logit is the true class (Keras' categorical accuracy)."""
    hits = tf.equal(tf.argmax(y, axis=-1), tf.argmax(logits, axis=-1))
    return tf.reduce_sum(tf.cast(hits, tf.float32))
