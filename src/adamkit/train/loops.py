"""``adamkit train``'s two training loops, over the same shuffled order so that a run can stop and
resume at any batch: ``model.fit`` one epoch at a time, and a custom loop for
``MultiWorkerMirroredStrategy`` (on which Keras 3's own ``fit`` fails, keras-team/keras#20585)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Sequence

import keras
import numpy as np

from adamkit.callbacks import ScheduleFreeEval, schedule_free_optimizer
from adamkit.train.checkpoints import Checkpointer, optimizer_step, save_checkpoint
from adamkit.train.distribution import WorkerLost
from adamkit.train.settings import TrainSettings


def batches_per_epoch(examples: int, batch_size: int) -> int:
    """Batches in an epoch, the last one possibly short."""
    return -(-examples // batch_size)


def remaining_epochs(settings: TrainSettings, position: dict, examples: int,
                     log) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yields (epoch, first batch, order of the examples) for each epoch still to run, announcing
    it. Epoch e's order is a permutation drawn from (seed, e) alone, so a run can stop and resume at
    any batch; the first epoch resumed starts at ``position["batch"]``."""
    for epoch in range(position["epoch"], settings.epochs):
        first = position["batch"] if epoch == position["epoch"] else 0
        log(f"Epoch {epoch + 1}/{settings.epochs}" + (f" (from batch {first})" if first else ""))
        yield epoch, first, np.random.default_rng([settings.seed, epoch]).permutation(examples)


def fit(model, settings: TrainSettings, train_data, validation_data, position, log,
        extra_callbacks: Sequence = (), verbose: int | None = None) -> dict:
    """``model.fit`` one epoch at a time over our own shuffled order (``remaining_epochs``), so
    that a run can stop and resume at any batch. ``verbose`` is Keras's; by default a progress
    bar on a terminal, else a line per epoch. Schedule-free AdamW is validated at its average x
    (``ScheduleFreeEval``) and trains on at y, which the checkpoints hold."""
    x, y = train_data
    history: dict[str, list[float]] = {k: list(v) for k, v in position["history"].items()}
    saving = settings.checkpoint_dir is not None
    batches = batches_per_epoch(len(x), settings.batch_size)
    for epoch, first, order in remaining_epochs(settings, position, len(x), log):
        rest = order[first * settings.batch_size:]
        callbacks = [Checkpointer(settings, epoch, first, batches, history)] if saving else []
        callbacks += list(extra_callbacks)
        if schedule_free_optimizer(model) is not None:
            callbacks.append(ScheduleFreeEval(average_at_end=False))
        epoch_history = model.fit(
            x[rest], y[rest], batch_size=settings.batch_size, epochs=1, shuffle=False,
            validation_data=validation_data, callbacks=callbacks,
            verbose=(1 if sys.stdout.isatty() else 2) if verbose is None else verbose,
        ).history
        for key, values in epoch_history.items():
            history.setdefault(key, []).append(float(values[-1]))
        if saving:
            save_checkpoint(model, settings, {"epoch": epoch + 1, "batch": 0, "history": history})
    return history


def _replica_train_step(model, strategy):
    """One global batch's step as a ``tf.function``: each replica's gradients of its share of
    loss-sum / global-batch-size, all-reduced (summed) by the optimizer; returns the batch's mean
    loss and its count of right answers."""
    import tensorflow as tf

    optimizer = model.optimizer
    summed_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")

    @tf.function
    def train_step(inputs, labels, batch_size):
        def replica_step(inputs, labels):
            with tf.GradientTape() as tape:
                logits = tf.cast(model(inputs, training=True), "float32")
                loss = summed_loss(labels, logits) / batch_size
                scaled = optimizer.scale_loss(loss)  # LossScaleOptimizer's scale; else unchanged
            optimizer.apply(tape.gradient(scaled, model.trainable_variables),
                            model.trainable_variables)
            right = tf.reduce_sum(tf.cast(tf.argmax(logits, -1) == labels, "float32"))
            return loss, right

        loss, right = strategy.run(replica_step, args=(inputs, labels))
        return strategy.reduce("SUM", loss, axis=None), strategy.reduce("SUM", right, axis=None)

    return train_step


def _split_across_replicas(strategy, batch_x, batch_y):
    """A global batch cut into one part per replica (of every worker)."""
    replicas = strategy.num_replicas_in_sync
    parts = list(zip(np.array_split(batch_x, replicas), np.array_split(batch_y, replicas)))
    return strategy.experimental_distribute_values_from_function(
        lambda context: parts[context.replica_id_in_sync_group])


def _lost_peer_errors() -> tuple[type[Exception], ...]:
    """What TensorFlow raises on a worker whose peer has gone."""
    import tensorflow as tf

    return (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
            tf.errors.CancelledError, tf.errors.AbortedError, tf.errors.InternalError)


def _multi_worker_epoch(model, strategy, train_step, settings: TrainSettings, x, y,
                        epoch: int, first: int, order, history: dict) -> dict[str, float]:
    """Trains the batches of ``epoch`` from ``first`` on, saving checkpoints as ``fit`` does;
    returns the epoch's training accuracy and loss."""
    import tensorflow as tf

    lost_peer = _lost_peer_errors()
    loss_sum = right_sum = seen = 0.0
    for batch in range(first, batches_per_epoch(len(x), settings.batch_size)):
        chosen = order[batch * settings.batch_size:(batch + 1) * settings.batch_size]
        inputs, labels = _split_across_replicas(strategy, x[chosen], y[chosen].astype("int64"))
        try:
            loss, right = train_step(inputs, labels, tf.constant(len(chosen), "float32"))
            loss_sum += float(loss) * len(chosen)
        except lost_peer as error:
            raise WorkerLost(str(error).strip().splitlines()[-1][:300]) from None
        right_sum += float(right)
        seen += len(chosen)
        if settings.checkpoint_every and optimizer_step(model) % settings.checkpoint_every == 0:
            save_checkpoint(model, settings, {"epoch": epoch, "batch": batch + 1,
                                              "history": history})
    return {"accuracy": right_sum / max(seen, 1), "loss": loss_sum / max(seen, 1)}


def fit_multi_worker(model, strategy, settings: TrainSettings, train_data, validation_data,
                     position, log) -> dict:
    """``fit``'s epochs as a custom loop, for ``MultiWorkerMirroredStrategy`` (on which Keras 3's
    own ``fit`` fails, keras-team/keras#20585): the same order, checkpoints and history. Every
    worker holds all the data; each global batch is split across all replicas of all workers, and
    the optimizer all-reduces (sums) their gradients of loss-sum / global-batch-size."""
    x, y = train_data
    train_step = _replica_train_step(model, strategy)
    history: dict[str, list[float]] = {k: list(v) for k, v in position["history"].items()}
    batches = batches_per_epoch(len(x), settings.batch_size)
    for epoch, first, order in remaining_epochs(settings, position, len(x), log):
        started = time.perf_counter()
        results = _multi_worker_epoch(model, strategy, train_step, settings, x, y, epoch, first,
                                      order, history)
        optimizer = schedule_free_optimizer(model)
        with optimizer.averaged() if optimizer is not None else contextlib.nullcontext():
            val_loss, val_accuracy = evaluate(model, validation_data)
        results.update(val_accuracy=val_accuracy, val_loss=val_loss)
        for key, value in results.items():
            history.setdefault(key, []).append(float(value))
        log(f"{batches - first}/{batches} - {time.perf_counter() - started:.0f}s - "
            + " - ".join(f"{k}: {v:.4f}" for k, v in results.items()))
        if settings.checkpoint_dir is not None:
            save_checkpoint(model, settings, {"epoch": epoch + 1, "batch": 0, "history": history})
    return history


def evaluate(model, data, batch_size: int = 1000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``data`` = (x, y), on this process alone."""
    x, y = data
    loss_sum = right = 0.0
    summed_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")
    for begin in range(0, len(x), batch_size):
        logits = keras.ops.cast(model(x[begin:begin + batch_size], training=False), "float32")
        labels = y[begin:begin + batch_size]
        loss_sum += float(summed_loss(labels, logits))
        right += float(np.sum(np.argmax(keras.ops.convert_to_numpy(logits), -1) == labels))
    return loss_sum / len(x), right / len(x)
