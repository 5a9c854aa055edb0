"""Keras callbacks for training with the Adam family (any Keras optimizer works with them)."""

from __future__ import annotations

import keras

from adamkit.optimizers.base import check_count
from adamkit.optimizers.schedule_free import ScheduleFreeAdamW
from adamkit.tools.lr_find import LRFindResult, RangeTest, check_settable
from adamkit.tools.monitor import OptimizerMonitor as OptimizerMonitor  # re-exported


class LRFinder(keras.callbacks.Callback):
    """The learning-rate range test inside ``model.fit``: sets the learning rate of each step
    along an exponential ramp, records each batch's loss, and stops training once the smoothed
    loss diverges (or the ramp ends). ``result`` then holds an ``LRFindResult``.

    It changes the model as training does; ``adamkit.lr_find`` runs it and puts the model and
    its optimizer back as they were. It needs one step per call of the train function (compile
    with ``steps_per_execution=1``, Keras's default) and an optimizer with a float learning rate.

    Args:
        start_lr: the first learning rate; > 0.
        end_lr: the last learning rate; > ``start_lr``.
        num_steps: steps of the ramp (at least 10).
        smooth: β of the loss's bias-corrected moving average, in [0, 1).
        diverge: stop once the smoothed loss exceeds this multiple of its best; > 1.

    Examples:
        >>> import adamkit, keras, numpy as np
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        >>> model.compile(optimizer=adamkit.Adam(), loss="mse")
        >>> finder = adamkit.callbacks.LRFinder(num_steps=20)
        >>> x, y = np.ones((640, 4), "float32"), np.ones((640, 1), "float32")
        >>> _ = model.fit(x, y, batch_size=32, callbacks=[finder], verbose=0)
        >>> len(finder.result.learning_rates) <= 20
        True
    """

    def __init__(self, start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 200,
                 smooth: float = 0.98, diverge: float = 4.0) -> None:
        super().__init__()
        self.settings = {"start_lr": start_lr, "end_lr": end_lr, "num_steps": num_steps,
                         "smooth": smooth, "diverge": diverge}
        RangeTest(**self.settings)  # checks the settings now, where the mistake was made
        self.test: RangeTest | None = None
        self.result: LRFindResult | None = None

    def on_train_begin(self, logs=None):
        model = self.model
        if model.steps_per_execution != 1:
            raise ValueError(
                f"LRFinder sets the learning rate of every step, and this model runs "
                f"{model.steps_per_execution} steps per call of its train function: compile it "
                "with steps_per_execution=1 (or use adamkit.lr_find, which does)")
        check_settable(model.optimizer)
        self.test = RangeTest(**self.settings)
        self.result = None
        self._tracked = None

    def on_epoch_begin(self, epoch, logs=None):
        self._tracked = None  # fit resets the loss tracker at each epoch

    def on_train_batch_begin(self, batch, logs=None):
        # Reading self.model brings a JAX model's state back from the train loop, so that the
        # learning rate set here reaches the next step.
        self.model.optimizer.learning_rate = self.test.next_rate()

    def on_train_batch_end(self, batch, logs=None):
        if self.test.record(self._batch_loss(logs or {})):
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.test is not None and self.test.step:
            self.result = LRFindResult.from_test(self.test)

    def _batch_loss(self, logs: dict) -> float:
        """This batch's loss. ``logs["loss"]`` is the mean over the epoch so far; the loss
        tracker's running sums (``total``, ``count``) give the batch's own, whatever its size."""
        tracker = next((m for m in self.model.metrics if m.name == "loss"
                        and hasattr(m, "total") and hasattr(m, "count")), None)
        if tracker is None:  # a custom train step: its "loss" is taken as the batch's
            return float(keras.ops.convert_to_numpy(logs["loss"]))
        total = float(keras.ops.convert_to_numpy(tracker.total))
        count = float(keras.ops.convert_to_numpy(tracker.count))
        previous_total, previous_count = self._tracked or (0.0, 0.0)
        self._tracked = total, count
        if count <= previous_count:
            return float(keras.ops.convert_to_numpy(logs["loss"]))
        return (total - previous_total) / (count - previous_count)


def schedule_free_optimizer(model):
    """The model's ``adamkit.ScheduleFreeAdamW`` (inside Keras's LossScaleOptimizer too), or
    None where it trains with another optimizer."""
    optimizer = getattr(model, "optimizer", None)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    return optimizer if isinstance(optimizer, ScheduleFreeAdamW) else None


def batch_normalization_layers(model) -> list:
    return [layer for layer in model._flatten_layers()
            if isinstance(layer, keras.layers.BatchNormalization)]


def recompute_batch_statistics(model, x, batch_size: int = 32, steps: int | None = None) -> int:
    """Recomputes every BatchNormalization layer's moving mean and variance at the weights the
    model holds now (for schedule-free AdamW: call it inside ``optimizer.averaged()``), from
    forward passes in training mode over ``x`` (an array of inputs, in batches of
    ``batch_size``; ``steps`` batches at most; a list or dict of arrays for a model of several
    inputs). Each statistic becomes the plain mean of its
    batch values over these passes, as the schedule-free authors advise and as PyTorch's
    ``swa_utils.update_bn`` does: the running statistics ``fit`` kept were gathered at y, the
    point the gradients are taken at, and do not describe the activations at x. Dropout is active
    in these passes, as in training, and draws from the seed generator. Returns the number of
    batches run (0 where the model has no BatchNormalization)."""
    check_count("batch_size", batch_size, low=1)
    if steps is not None:
        check_count("steps", steps, low=1)
    layers = batch_normalization_layers(model)
    if not layers:
        return 0
    examples = len(keras.tree.flatten(x)[0])  # x may be a list or dict of inputs
    starts = list(range(0, examples, batch_size))[:steps]
    momenta = [layer.momentum for layer in layers]
    try:
        for count, begin in enumerate(starts, start=1):
            for layer in layers:
                layer.momentum = (count - 1) / count  # the k-th batch weighs 1/k: a plain mean
            model(keras.tree.map_structure(lambda a, b=begin: a[b:b + batch_size], x),
                  training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return len(starts)


class ScheduleFreeEval(keras.callbacks.Callback):
    """Evaluates a model trained by ``adamkit.ScheduleFreeAdamW`` at x, the average its
    guarantees are about, rather than at y, where the gradients are taken: x is in the model's
    variables for every evaluation and prediction inside ``fit`` (validation included) and y
    back for training. With ``average_at_end`` (the default) x stays in the model at the end of
    training, so that ``model.save``, ``evaluate`` and ``predict`` afterwards use x; the next
    ``fit`` with this callback puts y back first (elsewhere: ``optimizer.use_training_point()``).

    Args:
        average_at_end: leave x in the model when training ends. Defaults to True.
        statistics_data: inputs to recompute BatchNormalization's statistics at x from
            (``recompute_batch_statistics``) each time x goes in; the statistics at y are put
            back with y. Defaults to None: the statistics gathered at y are used.
        statistics_steps: batches of ``statistics_data`` to run each time. Defaults to 50.
        batch_size: the batch size of those passes. Defaults to 32.

    Examples:
        >>> import adamkit, keras, numpy as np
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        >>> model.compile(optimizer=adamkit.ScheduleFreeAdamW(), loss="mse")
        >>> x, y = np.ones((64, 4), "float32"), np.ones((64, 1), "float32")
        >>> _ = model.fit(x, y, validation_data=(x, y), verbose=0,
        ...               callbacks=[adamkit.callbacks.ScheduleFreeEval()])
        >>> bool(model.optimizer.holds_average.numpy())  # x is in the model now
        True
    """

    def __init__(self, average_at_end: bool = True, statistics_data=None,
                 statistics_steps: int = 50, batch_size: int = 32) -> None:
        super().__init__()
        check_count("statistics_steps", statistics_steps, low=1)
        check_count("batch_size", batch_size, low=1)
        self.average_at_end = average_at_end
        self.statistics_data, self.statistics_steps = statistics_data, statistics_steps
        self.batch_size = batch_size
        self._saved_statistics = None
        self._entered = None  # "test", "predict" or "end": what put x in

    def _optimizer(self):
        optimizer = schedule_free_optimizer(self.model)
        if optimizer is None:
            raise TypeError("ScheduleFreeEval needs a model compiled with "
                            f"adamkit.ScheduleFreeAdamW; got {type(self.model.optimizer).__name__}")
        return optimizer

    def _enter(self, why: str) -> None:
        if self._entered is not None or not self._optimizer().built:
            return
        if self._optimizer()._holding():  # x is in already (fit's end, a load): not ours to undo
            return
        if self.statistics_data is not None:
            self._saved_statistics = [
                [keras.ops.copy(v) for v in (layer.moving_mean, layer.moving_variance)]
                for layer in batch_normalization_layers(self.model)]
        self._optimizer().use_average()
        if self.statistics_data is not None:
            recompute_batch_statistics(self.model, self.statistics_data, self.batch_size,
                                       self.statistics_steps)
        self._entered = why

    def _leave(self, why: str) -> None:
        if self._entered != why:
            return
        self._optimizer().use_training_point()
        for layer, saved in zip(batch_normalization_layers(self.model),
                                self._saved_statistics or []):
            layer.moving_mean.assign(saved[0])
            layer.moving_variance.assign(saved[1])
        self._saved_statistics, self._entered = None, None

    def on_train_begin(self, logs=None):
        self._leave("end")
        self._optimizer().use_training_point()  # x left in by another callback or process

    def on_test_begin(self, logs=None):
        self._enter("test")

    def on_test_end(self, logs=None):
        self._leave("test")

    def on_predict_begin(self, logs=None):
        self._enter("predict")

    def on_predict_end(self, logs=None):
        self._leave("predict")

    def on_train_end(self, logs=None):
        if self.average_at_end:
            self._enter("end")
