"""Keras callbacks for training with the Adam family (any Keras optimizer works with them)."""

from __future__ import annotations

import keras

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
