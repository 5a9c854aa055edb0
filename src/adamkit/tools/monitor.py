"""The optimizer monitor: what Adam does to each variable, as TensorBoard scalars.

Keras's ``TensorBoard`` callback logs losses, the learning rate and weights, but nothing of the
optimizer's own view: how far a step moves each variable, how large the gradients are, what step
size Adam's denominator makes of the learning rate coordinate by coordinate, and where ε swamps
√v̂ so that Adam is momentum SGD there. ``OptimizerMonitor`` logs these every ``every`` steps:

``optimizer/update_ratio/<variable>``
    ‖Δθ‖/‖θ‖ of the step, Δθ read from the weights before and after it (weight decay included).
    The CS231n rule of thumb puts a healthy value near 1e-3.
``optimizer/grad_norm/<variable>``
    ‖g‖ of the step, recovered from the first moment before and after it,
    g = (mₜ − β1·mₜ₋₁)/(1 − β1), which every member of the family keeps.
``optimizer/effective_lr/<variable>/{mean,p10,p50,p90}``
    the per-coordinate step size α·s/(√v̂ + ε) the optimizer multiplies the (bias-corrected) first
    moment by, from the state after the step; see ``step_sizes`` for each member.
``optimizer/epsilon_dominated/<variable>``
    the fraction of coordinates where ε ≥ √v̂.
``optimizer/learning_rate``, ``optimizer/skipped_steps``
    α of the step, and adamkit's count of steps skipped for non-finite gradients
    (``skip_nonfinite=True``).

Keras calls batch-level callbacks once per call of its train function, which runs
``steps_per_execution`` steps (32 in ``adamkit train`` on TensorFlow and JAX). The effective step
size, the ε-dominated fraction and the learning rate come from the state after the call's last
step and are exact for that step whatever the number. The update and the gradient can only be
seen across the whole call: with k steps in it, ``update_ratio`` is ‖θ_after − θ_before‖/(k·‖θ‖)
and ``grad_norm`` the norm of the β1-weighted mean gradient of the k steps,
(m_after − β1ᵏ·m_before)/(1 − β1ᵏ). Both equal the step's own value for k = 1 and are lower
bounds of the mean per-step value otherwise (equal when the steps point the same way). With
bfloat16 state the recovered gradient carries the rounding of the stored moments, amplified by
1/(1 − β1ᵏ) (a few per cent); with int8 state that error can exceed the gradient itself, so
``grad_norm`` is left out there.

The event files are written with TensorBoard's own record format and protocol buffers (the
``tensorboard`` package, ``pip install adamkit[monitor]``), without TensorFlow, so the monitor
works on every backend.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from adamkit.state import PlainSlot

__all__ = ["OptimizerMonitor", "EventWriter", "plot_optimizer", "read_scalars", "step_sizes"]

PERCENTILES = (10, 50, 90)


def _numpy(value: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float64)


def _norm(a: np.ndarray) -> float:
    # not np.linalg.norm: its BLAS call is slow where other processes load the cores
    return math.sqrt(float(np.sum(np.square(a))))


def _inner(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimizer that holds the state: the one a ``LossScaleOptimizer`` wraps, else itself."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def _is_adamkit(optimizer) -> bool:
    from adamkit.optimizers import AdamFamily

    return isinstance(optimizer, AdamFamily)


def _is_keras_adam(optimizer) -> bool:
    # keras.optimizers.AdamW subclasses Adam and keeps the same slots
    return isinstance(optimizer, keras.optimizers.Adam) and not _is_adamkit(optimizer)


def learning_rate_of_step(optimizer: keras.optimizers.Optimizer, step: int) -> float:
    """α of optimizer step ``step`` (1, 2, …): a schedule is called with ``step − 1``, the
    iteration count that step saw.

    Args:
        optimizer: a Keras optimizer (a ``LossScaleOptimizer`` is looked through).
        step: the step, counted from 1.
    """
    optimizer = _inner(optimizer)
    rate = getattr(optimizer, "_learning_rate", None)
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        return float(_numpy(rate(max(step - 1, 0))))
    return float(_numpy(optimizer.learning_rate))


def moments(optimizer: keras.optimizers.Optimizer, variable,
            names: Sequence[str] | None = None) -> dict[str, np.ndarray] | None:
    """The optimizer's per-coordinate state of ``variable`` as float64 arrays (bfloat16 and int8
    state decoded by adamkit's codecs), or None where the optimizer keeps none the monitor knows.

    Args:
        optimizer: adamkit's optimizers and ``keras.optimizers.Adam``/``AdamW`` are understood.
        variable: one of the trainable variables the optimizer updates.
        names: only these state tensors (e.g. ``["momentum"]``); default: all of them.
    """
    optimizer = _inner(optimizer)
    if not optimizer.built:  # Keras builds it in the first step
        return None
    if _is_adamkit(optimizer):
        slots = optimizer.slots_of(variable)
        if any(slot is None for slot in slots.values()):
            return None  # a variable overwritten with its gradient has no state
        return {name: _numpy(slot.variable if isinstance(slot, PlainSlot) else slot.read())
                for name, slot in slots.items() if names is None or name in names}
    if _is_keras_adam(optimizer):
        index = optimizer._get_variable_index(variable)
        found = {"momentum": optimizer._momentums, "velocity": optimizer._velocities}
        if optimizer.amsgrad:
            found["velocity_hat"] = optimizer._velocity_hats
        return {name: _numpy(slots[index]) for name, slots in found.items()
                if names is None or name in names}
    return None


def step_sizes(optimizer: keras.optimizers.Optimizer, state: Mapping[str, np.ndarray], step: int,
               learning_rate: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The per-coordinate step size of optimizer step ``step`` and where ε dominates it, from the
    state after that step.

    Returns ``(sizes, dominated)``: ``sizes`` multiplies the bias-corrected first moment
    m̂ = m/(1 − β1ᵗ) into the update (θ ← θ − sizes·m̂, before weight decay), and ``dominated``
    marks the coordinates where ε ≥ √v̂. By member, with v̂ = v/(1 − β2ᵗ):

    - Adam, AdamW, AMSGrad (v̂ from the running maximum): α/(√v̂ + ε); in ``epsilon_mode="keras"``
      and for ``keras.optimizers.Adam``, whose ε̂ is added to √v before bias correction, the same
      with ε = ε̂/√(1 − β2ᵗ) (so dominated where ε̂ ≥ √v).
    - Nadam: α/(√v̂ + ε), the factor on its Nesterov mix of m̂ and g.
    - RAdam: α·rₜ/(√v̂ + ε/√(1 − β2ᵗ)) once rectified (ρₜ > 5); α everywhere before, when it is
      SGD with momentum and ε plays no part (nothing dominated).
    - Adamax: α/uₜ with uₜ = max(β2·uₜ₋₁, |g| + ε); dominated where ε ≥ uₜ − ε, the part of uₜ
      the gradients made.

    None for optimizers other than these.

    Args:
        optimizer: the optimizer (a ``LossScaleOptimizer`` is looked through).
        state: the variable's state after the step, as ``moments`` returns it.
        step: the step, counted from 1.
        learning_rate: α of that step (``learning_rate_of_step``).
    """
    optimizer = _inner(optimizer)
    if not (_is_adamkit(optimizer) or _is_keras_adam(optimizer)):
        return None
    beta_2, epsilon = float(optimizer.beta_2), float(optimizer.epsilon)
    correction = 1.0 - beta_2 ** step
    if "norm" in state:  # Adamax
        root = np.maximum(state["norm"] - epsilon, 0.0)
        return learning_rate / state["norm"], epsilon >= root
    velocity = state.get("velocity_hat", state["velocity"])
    root = np.sqrt(velocity / correction)
    scale = 1.0
    if _is_keras_adam(optimizer) or getattr(optimizer, "epsilon_mode", "paper") == "keras":
        epsilon = epsilon / math.sqrt(correction)
    if getattr(optimizer, "rectified", False):  # RAdam
        rho_inf = 2.0 / (1.0 - beta_2) - 1.0
        rho = rho_inf - 2.0 * step * beta_2 ** step / correction
        if rho <= 5.0:
            return np.full_like(root, learning_rate), np.zeros(root.shape, bool)
        scale = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
        epsilon = epsilon / math.sqrt(correction)
    return learning_rate * scale / (root + epsilon), epsilon >= root


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    """The checksum of TFRecord framing: CRC-32C, rotated and offset as TensorFlow masks it."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class EventWriter:
    """Scalars into a TensorBoard event file: TensorBoard's own protocol buffers (the
    ``tensorboard`` package) in TFRecord framing, written here so that neither TensorFlow nor
    ``tensorboard.summary`` (slow to import) is needed.

    Args:
        log_dir: the folder; created if missing. Each writer starts a new file in it.
    """

    def __init__(self, log_dir: str | os.PathLike) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}.adamkit"
        self.path = Path(log_dir) / name
        self._file = open(self.path, "wb")  # noqa: SIM115 - open for the writer's lifetime
        self._write(self._event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._file.write(header + struct.pack("<I", masked_crc32c(header)) + data
                         + struct.pack("<I", masked_crc32c(data)))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Writes ``values`` (tag → number) as one event at ``step``.

        Args:
            step: the x axis in TensorBoard.
            values: scalars by tag.
        """
        summary = self._summary(value=[self._summary.Value(tag=tag, simple_value=float(value))
                                       for tag, value in values.items()])
        self._write(self._event(wall_time=time.time(), step=int(step), summary=summary))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def read_scalars(log_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files of ``log_dir``, read by TensorBoard's own
    ``EventAccumulator``: tag → [(step, value), …].

    Args:
        log_dir: a folder holding ``events.out.tfevents.*`` files.
    """
    from tensorboard.backend.event_processing.event_accumulator import (
        SCALARS,
        EventAccumulator,
    )

    accumulator = EventAccumulator(str(log_dir), size_guidance={SCALARS: 0})  # 0: keep them all
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()[SCALARS]}


class OptimizerMonitor(keras.callbacks.Callback):
    """Logs the optimizer's view of each trainable variable to TensorBoard every ``every`` steps:
    update/weight ratio, gradient norm, effective per-coordinate step size, ε-dominated fraction,
    learning rate and skipped steps (the tags are in ``adamkit.tools.monitor``'s docstring).

    Works with every member of adamkit's family and every ``state_dtype`` (the state decoded by its
    codec), and with ``keras.optimizers.Adam``/``AdamW``; for other optimizers it logs the update
    ratio and learning rate. Nothing is computed on the steps that do not log: on a step that
    does, the weights and first moments are copied before the train function runs and compared
    after it. One object may serve several ``fit`` calls (one per epoch, as ``adamkit train``
    does); its file stays open until ``close()``.

    Args:
        log_dir: where the TensorBoard event file goes.
        every: log the optimizer steps that are multiples of this (with several steps per call of
            the train function, the call holding such a step). Defaults to 100.

    Attributes:
        history: every logged value, tag → [(step, value), …], as written.

    Examples:
        >>> monitor = adamkit.callbacks.OptimizerMonitor("runs/tb", every=100)  # doctest: +SKIP
        >>> model.fit(x, y, callbacks=[monitor])  # doctest: +SKIP
    """

    def __init__(self, log_dir: str | os.PathLike, every: int = 100) -> None:
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"`every` must be an integer >= 1; got {every!r}")
        self.log_dir, self.every = Path(log_dir), every
        self.history: dict[str, list[tuple[int, float]]] = {}
        self._writer: EventWriter | None = None
        self._start = 0
        self._before: dict[str, Any] | None = None

    @property
    def writer(self) -> EventWriter:
        if self._writer is None:
            self._writer = EventWriter(self.log_dir)
        return self._writer

    def on_train_begin(self, logs=None):
        self.writer  # noqa: B018 - the file exists from the start of training

    def on_epoch_begin(self, epoch, logs=None):
        # Keras counts the batches from 0 in each epoch; the steps are counted from here
        self._start = int(_numpy(_inner(self.model.optimizer).iterations))

    def _logs_call(self, begin: int, end: int) -> bool:
        # ``self.model`` synchronises JAX's state into the variables: so the decision uses the
        # step count kept here, and the model is touched only on the calls that log
        first, last = self._start + begin + 1, self._start + end + 1
        return last // self.every > (first - 1) // self.every

    def on_train_batch_begin(self, batch, logs=None):
        steps = getattr(self._model, "steps_per_execution", 1) or 1
        if not self._logs_call(batch, batch + steps - 1):
            self._before = None
            return
        optimizer = _inner(self.model.optimizer)
        variables = self.model.trainable_variables
        momenta = []
        for variable in variables:
            state = moments(optimizer, variable, ["momentum"])
            # before the first step the optimizer may not be built yet: its moments start at 0
            momenta.append(np.zeros(variable.shape) if state is None and not optimizer.built
                           else (state or {}).get("momentum"))
        self._before = {"step": int(_numpy(optimizer.iterations)),
                        "theta": [_numpy(v) for v in variables], "momentum": momenta}

    def on_train_batch_end(self, batch, logs=None):
        if self._before is None:
            return
        before, self._before = self._before, None
        optimizer = _inner(self.model.optimizer)
        step = int(_numpy(optimizer.iterations))
        taken = step - before["step"]
        learning_rate = learning_rate_of_step(optimizer, step)
        values: dict[str, float] = {"optimizer/learning_rate": learning_rate}
        if getattr(optimizer, "skip_nonfinite", False):
            values["optimizer/skipped_steps"] = float(_numpy(optimizer.skipped_steps))
        beta_1 = getattr(optimizer, "beta_1", None)
        for variable, theta, momentum in zip(self.model.trainable_variables, before["theta"],
                                             before["momentum"]):
            name = variable.path
            after = _numpy(variable)
            norm = _norm(theta)
            values[f"optimizer/update_ratio/{name}"] = (
                _norm(after - theta) / max(taken, 1) / norm if norm > 0 else 0.0)
            if taken == 0:  # every step of the call skipped: nothing moved
                continue
            state = moments(optimizer, variable)
            if state is None:
                continue
            # 8-bit codes are too coarse for the difference of two moments to mean anything
            coarse = getattr(optimizer, "state_dtype", None) == "int8"
            if momentum is not None and beta_1 is not None and not coarse:
                decay = float(beta_1) ** taken
                gradient = (state["momentum"] - decay * momentum) / (1.0 - decay)
                values[f"optimizer/grad_norm/{name}"] = float(_norm(gradient))
            found = step_sizes(optimizer, state, step, learning_rate)
            if found is None:
                continue
            sizes, dominated = found
            values[f"optimizer/effective_lr/{name}/mean"] = float(np.mean(sizes))
            for q, value in zip(PERCENTILES, np.percentile(sizes, PERCENTILES)):
                values[f"optimizer/effective_lr/{name}/p{q}"] = float(value)
            values[f"optimizer/epsilon_dominated/{name}"] = float(np.mean(dominated))
        self.writer.scalars(step, values)
        self.writer.flush()  # TensorBoard, watching the folder, shows it at once
        for tag, value in values.items():
            self.history.setdefault(tag, []).append((step, float(value)))

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Closes the event file (a later ``fit`` opens a new one)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _variables(history: Mapping[str, Sequence], kind: str) -> list[str]:
    prefix = f"optimizer/{kind}/"
    names = {tag[len(prefix):] for tag in history if tag.startswith(prefix)}
    if kind == "effective_lr":
        names = {name.rsplit("/", 1)[0] for name in names}
    return sorted(names)


def plot_optimizer(history: Mapping[str, Sequence[tuple[int, float]]], path: str | os.PathLike,
                   title: str = "") -> None:
    """Draws the monitor's curves per variable against the step into ``path`` (a PNG): update
    ratio (with the 1e-3 rule of thumb), gradient norm, effective step size (median, p10–p90
    band) and ε-dominated fraction.

    Args:
        history: tag → [(step, value), …], as ``OptimizerMonitor.history`` or ``read_scalars``.
        path: the image file to write.
        title: the figure's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    panels = [("update_ratio", "‖Δθ‖/‖θ‖ per step", "log"), ("grad_norm", "‖g‖", "log"),
              ("effective_lr", "effective step size α/(√v̂+ε)", "log"),
              ("epsilon_dominated", "fraction with ε ≥ √v̂", "linear")]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (kind, label, scale) in zip(axes.flat, panels):
        for i, name in enumerate(_variables(history, kind)):
            colour = colours[i % len(colours)]
            if kind == "effective_lr":
                steps, median = zip(*history[f"optimizer/{kind}/{name}/p50"])
                low = [v for _, v in history[f"optimizer/{kind}/{name}/p10"]]
                high = [v for _, v in history[f"optimizer/{kind}/{name}/p90"]]
                ax.fill_between(steps, low, high, color=colour, alpha=0.15)
                ax.plot(steps, median, color=colour, label=f"{name} (p50; p10–p90)")
            else:
                steps, values = zip(*history[f"optimizer/{kind}/{name}"])
                ax.plot(steps, values, color=colour, label=name)
        if kind == "update_ratio":
            ax.axhline(1e-3, color="grey", linestyle="--", linewidth=1, label="1e-3 (rule of thumb)")
        if kind == "epsilon_dominated":
            ax.set_ylim(-0.02, 1.02)
        if scale == "log" and ax.lines and all(
                np.all(np.asarray(line.get_ydata(), float) > 0) for line in ax.lines
                if not line.get_label().startswith("1e-3")):
            ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.set_title(kind)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("optimizer step")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
