"""The optimizer monitor: what Adam does to each variable, as TensorBoard scalars and histograms.

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
    moment by, from the state after the step; see ``step_sizes`` for each member. The mean is
    over every coordinate; the percentiles over an even spread of at most ``SAMPLE`` (4,096) of
    them, all of them in smaller variables.
``optimizer/log10_effective_lr/<variable>`` (a histogram)
    log10 of the step size over the same sample, in buckets 0.25 wide centred on multiples of
    0.25 (from 10⁻⁸ to 10⁸, and one bucket each side): the mean and percentiles hide a mode such
    as the ε-dominated coordinates' α/ε, which this shows.
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

Per logged call of the train function the device takes a snapshot twice, before the call and
after it: one compiled function (``tf.function`` on TensorFlow, eager on PyTorch) copies the
weights and the decoded state into one new vector, read to the host in one go (not a read per
tensor); on JAX the arrays are copied as they are (``jax.device_put``), with nothing to compile,
unless int8 state must be decoded (then ``jax.jit``). NumPy takes the differences and reduces
them (float32 elementwise, sums in float64). One function for both snapshots means one trace;
the reductions stay on the host because tracing them costs more than the monitor's whole budget
in a short run (0.5 s on the tutorial's model on TensorFlow, against about 0.05 s for the
snapshot). On JAX, whose dispatch is asynchronous, the snapshot after a call is read only once it
is ready (at a later call's start, or at the epoch's end), so that the host never waits for the
device on the monitor's account.

The event files are written with TensorBoard's own record format and protocol buffers (the
``tensorboard`` package, ``pip install adamkit[monitor]``), without TensorFlow, so the monitor
works on every backend.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from adamkit.state import PlainSlot, QuantizedSlot

__all__ = ["OptimizerMonitor", "EventWriter", "plot_optimizer", "read_histograms", "read_scalars",
           "state_tensors", "step_sizes", "step_terms"]

PERCENTILES = (10, 50, 90)


def _numpy(value: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float64)


def _inner(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimizer that holds the state: the one a ``LossScaleOptimizer`` wraps, else itself."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def _is_adamkit(optimizer) -> bool:
    """A member of adamkit's family of Adam's shape (m, v; θ ← θ·decay − update). One whose rule
    assigns its parameters (ScheduleFreeAdamW: z, x, v) is logged as any other optimizer."""
    from adamkit.optimizers import AdamFamily

    return isinstance(optimizer, AdamFamily) and not optimizer.rule.assigns


def _is_adamax(optimizer) -> bool:
    from adamkit.optimizers import Adamax

    return isinstance(optimizer, Adamax)


def _is_radam(optimizer) -> bool:
    from adamkit.optimizers import RAdam

    return isinstance(optimizer, RAdam)


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


def _plain_momentum(optimizer: keras.optimizers.Optimizer, variable) -> bool:
    """Whether ``variable``'s first moment is stored and not as 8-bit codes."""
    stored = _stored_state(optimizer, variable) or {}
    return "momentum" in stored and not isinstance(stored["momentum"], QuantizedSlot)


def _stored_state(optimizer: keras.optimizers.Optimizer, variable) -> dict[str, Any] | None:
    """The state of ``variable`` as stored, by name (adamkit's slots or Keras's variables), none
    of it read; None where the optimizer keeps none the monitor knows."""
    optimizer = _inner(optimizer)
    if not optimizer.built:  # Keras builds it in the first step
        return None
    if _is_adamkit(optimizer):
        slots = optimizer.slots_of(variable)
        if any(slot is None for slot in slots.values()):
            return None  # a variable overwritten with its gradient has no state
        return slots
    if _is_keras_adam(optimizer):
        index = optimizer._get_variable_index(variable)
        found = {"momentum": optimizer._momentums, "velocity": optimizer._velocities}
        if optimizer.amsgrad:
            found["velocity_hat"] = optimizer._velocity_hats
        return {name: slots[index] for name, slots in found.items()}
    return None


def state_tensors(optimizer: keras.optimizers.Optimizer, variable,
                  names: Sequence[str] | None = None) -> dict[str, Any] | None:
    """The optimizer's per-coordinate state of ``variable`` as backend tensors or variables
    (bfloat16 and int8 state decoded by adamkit's codecs), or None where the optimizer keeps none
    the monitor knows.

    Args:
        optimizer: adamkit's optimizers and ``keras.optimizers.Adam``/``AdamW`` are understood.
        variable: one of the trainable variables the optimizer updates.
        names: only these state tensors (e.g. ``["momentum"]``); default: all of them.
    """
    stored = _stored_state(optimizer, variable)
    if stored is None:
        return None
    return {name: _decoded(slot) for name, slot in stored.items() if names is None or name in names}


def _decoded(slot):
    if isinstance(slot, PlainSlot):
        return slot.variable
    return slot.read() if isinstance(slot, QuantizedSlot) else slot  # else a Keras variable


def moments(optimizer: keras.optimizers.Optimizer, variable,
            names: Sequence[str] | None = None) -> dict[str, np.ndarray] | None:
    """``state_tensors`` as float64 NumPy arrays.

    Args:
        optimizer: adamkit's optimizers and ``keras.optimizers.Adam``/``AdamW`` are understood.
        variable: one of the trainable variables the optimizer updates.
        names: only these state tensors (e.g. ``["momentum"]``); default: all of them.
    """
    found = state_tensors(optimizer, variable, names)
    return None if found is None else {name: _numpy(value) for name, value in found.items()}


def step_terms(optimizer: keras.optimizers.Optimizer, step: int,
               learning_rate: float) -> tuple[str, float, float, float] | None:
    """The numbers that turn the state after optimizer step ``step`` into its step sizes:
    ``(form, numerator, epsilon, correction)`` (see ``step_sizes``), or None for optimizers other
    than adamkit's and Keras's Adam. ``form`` is ``"root"`` (numerator/(√(v/correction) + ε)),
    ``"adamax"`` (numerator/u) or ``"plain"`` (numerator everywhere: RAdam before rectification).
    """
    optimizer = _inner(optimizer)
    if not (_is_adamkit(optimizer) or _is_keras_adam(optimizer)):
        return None
    beta_2, epsilon = float(optimizer.beta_2), float(optimizer.epsilon)
    correction = 1.0 - beta_2 ** step
    if _is_adamax(optimizer):
        return "adamax", learning_rate, epsilon, 1.0
    scale = 1.0
    if _is_keras_adam(optimizer) or getattr(optimizer, "epsilon_mode", "paper") == "keras":
        epsilon = epsilon / math.sqrt(correction)
    if _is_radam(optimizer):
        rho_inf = 2.0 / (1.0 - beta_2) - 1.0
        rho = rho_inf - 2.0 * step * beta_2 ** step / correction
        if rho <= 5.0:
            return "plain", learning_rate, epsilon, correction
        scale = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
        epsilon = epsilon / math.sqrt(correction)
    return "root", learning_rate * scale, epsilon, correction


def _sizes(xp, form: str, state: Mapping[str, Any], numerator, epsilon, correction):
    # shared by NumPy (``step_sizes``) and the monitor's compiled statistics (``xp=keras.ops``)
    if form == "adamax":
        root = xp.maximum(state["norm"] - epsilon, 0.0)
        return numerator / state["norm"], epsilon >= root
    velocity = state.get("velocity_hat", state["velocity"])
    if form == "plain":
        return xp.ones_like(velocity) * numerator, xp.zeros_like(velocity) > 1.0
    root = xp.sqrt(velocity / correction)
    return numerator / (root + epsilon), epsilon >= root


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
    terms = step_terms(optimizer, step, learning_rate)
    if terms is None:
        return None
    form, *numbers = terms
    return _sizes(np, form, state, *numbers)


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


_WORD_TABLES: list[list[int]] = []


def _word_tables() -> list[list[int]]:
    """Two tables of 65,536 entries that advance the CRC over a little-endian 32-bit word, low half
    and high half: four bytes a step of the loop, 2.4 times as fast as a byte a step. Built once,
    with NumPy (5 ms; a Python loop takes 40)."""
    if not _WORD_TABLES:
        shifted = [np.array(_CRC32C, dtype=np.uint32)]
        for _ in range(3):  # the table of a byte followed by 1, 2, 3 zero bytes
            last = shifted[-1]
            shifted.append((last >> 8) ^ shifted[0][last & 0xFF])
        low, high = np.arange(65536) & 0xFF, np.arange(65536) >> 8
        _WORD_TABLES.extend([(shifted[3][low] ^ shifted[2][high]).tolist(),
                             (shifted[1][low] ^ shifted[0][high]).tolist()])
    return _WORD_TABLES


def masked_crc32c(data: bytes) -> int:
    """The checksum of TFRecord framing: CRC-32C, rotated and offset as TensorFlow masks it."""
    crc = 0xFFFFFFFF
    words = len(data) // 4 * 4 if sys.byteorder == "little" else 0
    if words:
        low, high = _word_tables()
        for word in memoryview(data)[:words].cast("I"):
            crc ^= word
            crc = low[crc & 0xFFFF] ^ high[crc >> 16]
    for byte in data[words:]:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _protos():
    # TensorBoard's protocol buffers: 0.15 s to import the first time
    from tensorboard.compat.proto import event_pb2, summary_pb2

    return event_pb2, summary_pb2


class EventWriter:
    """Scalars into a TensorBoard event file: TensorBoard's own protocol buffers (the
    ``tensorboard`` package) in TFRecord framing, written here so that neither TensorFlow nor
    ``tensorboard.summary`` (slow to import) is needed.

    Args:
        log_dir: the folder; created if missing. Each writer starts a new file in it.
    """

    def __init__(self, log_dir: str | os.PathLike) -> None:
        event_pb2, summary_pb2 = _protos()
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

    def histograms(self, step: int, values: Mapping[str, Mapping[str, Any]]) -> None:
        """Writes ``values`` (tag → the fields of TensorBoard's ``HistogramProto``: ``min``,
        ``max``, ``num``, ``sum``, ``sum_squares``, ``bucket_limit``, ``bucket``) as one event.

        Args:
            step: the x axis in TensorBoard.
            values: histograms by tag.
        """
        from tensorboard.compat.proto.summary_pb2 import HistogramProto

        summary = self._summary(value=[self._summary.Value(tag=tag, histo=HistogramProto(**fields))
                                       for tag, fields in values.items()])
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


# the state tensors that the step sizes are computed from, besides the first moment
STATE = ("velocity", "velocity_hat", "norm")
SAMPLE = 4096  # coordinates per variable that the step-size percentiles are taken from
# the statistics of one variable, in the order the compiled reduction returns them
STATS = ("update", "norm", "gradient", "mean", "dominated", *(f"p{q}" for q in PERCENTILES))
# the histogram of log10 of the step size over the sample: the right edges of its buckets (and
# one more bucket above the last), centred on multiples of 0.25 so that a power of ten such as
# α/ε falls mid-bucket, not on an edge where float32 rounding would pick the side
LOG_LIMITS = np.arange(-8.125, 8.125 + 1e-9, 0.25)
HISTOGRAM = ("log_min", "log_max", "log_sum", "log_squares", *(f"le{i}" for i in range(len(LOG_LIMITS))))


def _sample(size: int) -> np.ndarray:
    """The indices of an even spread of at most ``SAMPLE`` of ``size`` coordinates."""
    return np.arange(0, size, -(-size // SAMPLE), dtype="int32")


def _flat(x):
    return keras.ops.reshape(keras.ops.cast(x, "float32"), (-1,))


def _row_statistics(sizes: np.ndarray, dominated: np.ndarray) -> list[float]:
    """One variable's mean step size, ε-dominated fraction, ``PERCENTILES`` of the step size over
    its sample and ``HISTOGRAM`` of log10 of it (least, greatest, sum, sum of squares, how many at
    most each of ``LOG_LIMITS``)."""
    sample = np.sort(sizes[_sample(sizes.size)])
    logs = np.log10(np.clip(sample, 1e-30, 1e30), dtype=np.float64)
    below = np.searchsorted(logs, LOG_LIMITS, side="right")
    # NumPy's default (linear) percentiles of the sorted sample, without np.percentile's overhead
    position = np.array(PERCENTILES) / 100 * (sample.size - 1)
    low = np.floor(position).astype(int)
    high, weight = np.minimum(low + 1, sample.size - 1), position - low
    percentiles = sample[low] * (1.0 - weight) + sample[high] * weight
    return [float(np.mean(sizes, dtype=np.float64)), float(np.mean(dominated)),
            *percentiles.tolist(), float(logs[0]), float(logs[-1]), float(np.sum(logs)),
            float(np.sum(np.square(logs))), *below.tolist()]


def _compile(fn, variables: Sequence):
    """``fn`` as one compiled call of the backend, reading the current values of ``variables``
    (the only Keras state it may read). On PyTorch, eager: its ops cost little each."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        # reads the variables it closes over at each call; no autograph: there is no tensor-
        # dependent control flow to convert, and converting tripled the time of the first call
        return tf.function(fn, autograph=False)
    if backend == "jax":
        import jax

        def stateless(values, *args):
            # jit would bake the variables' values in as constants: they are passed in instead
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return fn(*args)

        jitted = jax.jit(stateless)
        return lambda *args: jitted([v.value for v in variables], *args)
    if backend == "torch":
        import torch

        return torch.no_grad()(fn)
    return fn


def _skipped(optimizer):
    """adamkit's count of skipped steps as an int32 tensor (0 without ``skip_nonfinite``)."""
    skipped = getattr(optimizer, "skipped_steps", None) if getattr(
        optimizer, "skip_nonfinite", False) else None
    return keras.ops.zeros((), "int32") if skipped is None else keras.ops.cast(skipped, "int32")


def _ready(value) -> bool:
    """Whether ``value`` (a tensor or a list of them) can be read without waiting: a JAX array may
    still be computing (its dispatch is asynchronous); TensorFlow's and PyTorch's eager tensors
    on a CPU are done."""
    if isinstance(value, list):
        return all(_ready(item) for item in value)
    is_ready = getattr(value, "is_ready", None)
    return is_ready is None or bool(is_ready())


def _copyable(optimizer, variables, stateful, names) -> list | None:
    """On JAX, where no state needs decoding by computation (no int8 codes): the Keras variables
    a snapshot holds, in its order, with the step count (and α, and the skipped steps, where they
    are variables) last. JAX copies their arrays as they are, without a compiled function to
    trace. None elsewhere."""
    if keras.backend.backend() != "jax":
        return None
    stored = [_stored_state(optimizer, variables[i])[name] for i in stateful for name in names]
    if any(isinstance(slot, QuantizedSlot) for slot in stored):
        return None
    rate = getattr(optimizer, "_learning_rate", None)  # a schedule is evaluated on the host
    if not isinstance(rate, (keras.Variable, keras.optimizers.schedules.LearningRateSchedule)):
        return None  # a callable: computed in the compiled snapshot
    skipped = getattr(optimizer, "skipped_steps", None) if getattr(
        optimizer, "skip_nonfinite", False) else None
    return [*variables, *(getattr(slot, "variable", slot) for slot in stored), optimizer.iterations,
            rate if isinstance(rate, keras.Variable) else None, skipped]


def _read_copies(arrays: Sequence, count: int) -> list[np.ndarray]:
    """``_copyable``'s copies read to the host, as ``np.split`` cuts a compiled snapshot: the
    first ``count`` arrays flattened (float32), then [α] (NaN for a schedule)."""
    rate = arrays[count + 1]
    return [*(np.asarray(a).reshape(-1).astype("float32", copy=False) for a in arrays[:count]),
            np.full(1, np.nan if rate is None else np.asarray(rate), "float32")]


def _read_counts(arrays: Sequence, count: int) -> np.ndarray:
    """The step count and the skipped steps among ``_copyable``'s copies."""
    skipped = arrays[count + 2]
    return np.array([int(np.asarray(arrays[count])), 0 if skipped is None else int(skipped)])


class _Probe:
    """The monitor's work on the device for one model and optimizer: one compiled function takes a
    snapshot of the weights and the decoded state into one new vector (which no later step can
    overwrite), called before a logged call of the train function and again after it; the host
    reads each snapshot at once (not a read per tensor) and takes the differences itself. On
    JAX, without int8 state, the snapshot is a copy of each array instead (``_copyable``):
    nothing to compile."""

    def __init__(self, model: keras.Model) -> None:
        self.variables = list(model.trainable_variables)
        self.optimizer = _inner(model.optimizer)
        self.sizes = [math.prod(v.shape) for v in self.variables]
        self._compiled: dict[Any, Any] = {}
        self._layouts: dict[bool, tuple] = {}
        self._copied: dict[tuple, list | None] = {}

    def _call(self, key, fn, *args):
        if key not in self._compiled:
            self._compiled[key] = _compile(fn, self.variables + list(self.optimizer.variables))
        return self._compiled[key](*args)

    def momentum_known(self) -> list[bool]:
        """Per variable: whether its first moment is good for a gradient (zeros before the first
        step count as known; int8 codes are too coarse for the difference of two moments)."""
        if not self.optimizer.built:
            return [getattr(self.optimizer, "state_dtype", None) != "int8"] * len(self.variables)
        return [_plain_momentum(self.optimizer, v) for v in self.variables]

    def layout(self) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """The variables whose state the monitor knows (indices) and the names of that state,
        the first moment first; it changes once, when the optimizer builds its state."""
        built = bool(self.optimizer.built)
        if built not in self._layouts:
            known = _is_adamkit(self.optimizer) or _is_keras_adam(self.optimizer)
            stateful = tuple(i for i, v in enumerate(self.variables)
                             if known and _stored_state(self.optimizer, v) is not None)
            stored = _stored_state(self.optimizer, self.variables[stateful[0]]) if stateful else {}
            # the per-coordinate tensors the statistics use (not, e.g., Nadam's scalar mu_product)
            self._layouts[built] = stateful, ("momentum", *(n for n in STATE if n in stored))
        return self._layouts[built]

    def snapshot(self) -> tuple[tuple, Any, Any]:
        """On the device, nothing read: ``(layout, vector, counts)``, the vector holding every
        weight, then the ``layout``'s state tensors per variable with state, then α; the counts
        the step count and the skipped steps."""
        layout = stateful, names = self.layout()
        if layout not in self._copied:
            self._copied[layout] = _copyable(self.optimizer, self.variables, stateful, names)
        if self._copied[layout] is not None:
            import jax

            # new buffers, not the ones the next train call donates (and so deletes)
            found = [None if v is None else v.value for v in self._copied[layout]]
            arrays = jax.device_put([a for a in found if a is not None], may_alias=False)
            return layout, [None if a is None else arrays.pop(0) for a in found], None

        def snapshot():
            parts = [_flat(v) for v in self.variables]
            for i in stateful:
                state = state_tensors(self.optimizer, self.variables[i])
                parts += [_flat(state[name]) for name in names]
            rate = keras.ops.cast(self.optimizer.learning_rate, "float32")
            # concatenating several tensors makes a new buffer (a cast to the same dtype may
            # return the variable's own storage, as PyTorch's does)
            return (keras.ops.concatenate([*parts, keras.ops.reshape(rate, (1,))]),
                    keras.ops.stack([keras.ops.cast(self.optimizer.iterations, "int32"),
                                     _skipped(self.optimizer)]))

        return (layout, *self._call(("snapshot", layout), snapshot))

    def split(self, snapshot) -> tuple[list[np.ndarray], dict[int, list], float, np.ndarray]:
        """A snapshot read to the host: the weights, the state by variable index, α and the
        counts."""
        (stateful, names), vector, counts = snapshot
        widths = self.sizes + [self.sizes[i] for i in stateful for _ in names]
        if counts is None:  # ``_copyable``'s arrays
            parts, counts = _read_copies(vector, len(widths)), _read_counts(vector, len(widths))
        else:
            parts = np.split(keras.ops.convert_to_numpy(vector), np.cumsum(widths))
        count, width = len(self.variables), len(names)
        state = {i: dict(zip(names, parts[count + j * width:count + (j + 1) * width]))
                 for j, i in enumerate(stateful)}
        return parts[:count], state, float(parts[-1][0]), keras.ops.convert_to_numpy(counts)

    def statistics(self, before, after, decay: float, form: str, terms: Sequence[float]) -> dict:
        """From two ``split`` snapshots: ``update`` (‖θ − θ_before‖) and ``norm`` (‖θ_before‖) per
        variable, and for those with state (``stateful``, their indices) rows of the other
        ``STATS`` and ``HISTOGRAM``, with m − ``decay``·m_before for the gradient; ``terms``:
        ``step_terms``'s numbers. NumPy (float32, sums in float64): nothing to trace."""
        weights, state = after[0], after[1]
        rows = []
        for i, tensors in state.items():
            # no state in the snapshot before: taken before the first step, when m was zeros
            momentum = before[1][i]["momentum"] if i in before[1] else 0.0
            sizes, dominated = _sizes(np, form, tensors, *terms)
            rows.append([_length_np(tensors["momentum"] - np.float32(decay) * momentum),
                         *_row_statistics(sizes, dominated)])
        return {"update": [_length_np(a - b) for a, b in zip(weights, before[0])],
                "norm": [_length_np(b) for b in before[0]],
                "stateful": list(state), "rows": np.array(rows) if rows else None}


def _length_np(a: np.ndarray) -> float:
    # not np.linalg.norm nor np.dot: their BLAS calls are slow where other processes load the
    # cores; squares in float32, summed in float64
    return math.sqrt(float(np.sum(np.square(a), dtype=np.float64)))


def read_histograms(log_dir: str | os.PathLike) -> dict[str, list[tuple[int, Any]]]:
    """Every histogram in the event files of ``log_dir``, read by TensorBoard's own
    ``EventAccumulator``: tag → [(step, ``HistogramValue``), …] (its ``min``, ``max``, ``num``,
    ``sum``, ``sum_squares``, ``bucket_limit``, ``bucket``).

    Args:
        log_dir: a folder holding ``events.out.tfevents.*`` files.
    """
    from tensorboard.backend.event_processing.event_accumulator import (
        HISTOGRAMS,
        EventAccumulator,
    )

    accumulator = EventAccumulator(str(log_dir), size_guidance={HISTOGRAMS: 0})
    accumulator.Reload()
    return {tag: [(event.step, event.histogram_value) for event in accumulator.Histograms(tag)]
            for tag in accumulator.Tags()[HISTOGRAMS]}


def _histogram(row: np.ndarray, size: int) -> dict[str, Any]:
    """TensorBoard's histogram fields from one variable's ``HISTOGRAM`` numbers; each run of empty
    buckets is one bucket, as TensorFlow's own histograms are encoded (smaller event files)."""
    numbers = dict(zip(HISTOGRAM[:4], row[:4].tolist()))
    count = len(_sample(size))
    buckets = np.diff(np.concatenate([[0.0], row[4:], [count]]))
    limits = np.append(LOG_LIMITS, np.finfo("float64").max)
    # keep the non-empty buckets and the last of each run of empty ones
    keep = (buckets > 0) | np.append(buckets[1:] > 0, True)
    return {"min": numbers["log_min"], "max": numbers["log_max"], "num": count,
            "sum": numbers["log_sum"], "sum_squares": numbers["log_squares"],
            "bucket_limit": limits[keep].tolist(), "bucket": buckets[keep].tolist()}


class OptimizerMonitor(keras.callbacks.Callback):
    """Logs the optimizer's view of each trainable variable to TensorBoard every ``every`` steps:
    update/weight ratio, gradient norm, effective per-coordinate step size, ε-dominated fraction,
    learning rate and skipped steps (the tags are in ``adamkit.tools.monitor``'s docstring).

    Works with every member of adamkit's family and every ``state_dtype`` (the state decoded by its
    codec), and with ``keras.optimizers.Adam``/``AdamW``; for other optimizers it logs the update
    ratio and learning rate. Nothing is computed on the steps that do not log. Before a call of
    the train function that logs, the weights and the decoded state are copied into new buffers
    on the device (one compiled call; on JAX a plain copy); when the next call begins (or
    validation or the epoch's end comes first), they are copied again. Both are read to the host
    once ready, where NumPy takes the differences and reduces them.
    The percentiles and histogram of the step size come from an even spread of at most 4,096
    coordinates per variable (all of them in smaller variables); the other values are exact.
    The monitor defines no ``on_train_batch_end``, so Keras keeps dispatching the batch-end
    callbacks asynchronously. One object may serve several ``fit`` calls (one per
    epoch, as ``adamkit train`` does); its file stays open until ``close()``.

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
        self._pending: list[tuple[dict[str, Any], tuple]] = []
        self._probe: _Probe | None = None
        _protos()  # imported here, before training, not in the first epoch
        _word_tables()  # and the checksum's tables built

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

    def _probe_for(self, model: keras.Model) -> _Probe:
        probe = self._probe
        if (probe is None or probe.optimizer is not _inner(model.optimizer)
                or probe.variables != list(model.trainable_variables)):
            self._probe = probe = _Probe(model)
        return probe

    def on_train_batch_begin(self, batch, logs=None):
        self._finish()  # the state now is the state after the previous call
        self._write_ready()
        steps = getattr(self._model, "steps_per_execution", 1) or 1
        if not self._logs_call(batch, batch + steps - 1):
            return
        probe = self._probe_for(self.model)
        schedule = isinstance(getattr(probe.optimizer, "_learning_rate", None),
                              keras.optimizers.schedules.LearningRateSchedule)
        # α as the call's steps will see it (a callback may change it before the call is
        # logged) is in the snapshot: nothing is read here
        self._before = {"snapshot": probe.snapshot(), "known": probe.momentum_known(),
                        "schedule": schedule, "probe": probe}

    def on_test_begin(self, logs=None):
        self._finish()  # before validation, and before any callback swaps weights for it

    def on_epoch_end(self, epoch, logs=None):
        self._finish()
        self._write_ready(wait=True)

    def _finish(self) -> None:
        """Takes the snapshot after the call that the snapshot before was taken for, once that
        call is over; it is read later (``_write_ready``)."""
        if self._before is None:
            return
        before, self._before = self._before, None
        self.model  # noqa: B018 - on JAX, brings the trainer's state into the variables
        self._pending.append((before, before["probe"].snapshot()))

    def _write_ready(self, wait: bool = False) -> None:
        """Logs the snapshots taken whose values are ready (all of them if ``wait``): on JAX the
        snapshot after a call is computed after that call, and reading it at once would make the
        host wait for the call instead of preparing the next one."""
        while self._pending and (wait or _ready(self._pending[0][1][1])):
            self._write_pair(*self._pending.pop(0))

    def _write_pair(self, before: Mapping[str, Any], after: tuple) -> None:
        """Logs one call of the train function from its snapshots before and after it."""
        probe = before["probe"]
        optimizer = probe.optimizer
        before_parts, after_parts = probe.split(before["snapshot"]), probe.split(after)
        step, skipped = (int(n) for n in after_parts[3])
        taken = step - int(before_parts[3][0])
        learning_rate = (learning_rate_of_step(optimizer, step) if before["schedule"]
                         else before_parts[2])
        terms = step_terms(optimizer, step, learning_rate) or ("root",)
        beta_1 = getattr(optimizer, "beta_1", None)
        decay = float(beta_1) ** taken if beta_1 is not None else 0.0
        stats = probe.statistics(before_parts, after_parts, decay, terms[0], terms[1:])
        values: dict[str, float] = {"optimizer/learning_rate": learning_rate}
        if getattr(optimizer, "skip_nonfinite", False):
            values["optimizer/skipped_steps"] = float(skipped)
        found, histograms = _tags(probe, stats, before["known"], taken, decay, beta_1 is not None)
        values.update(found)
        self._log(step, values, histograms)

    def _log(self, step: int, values: Mapping[str, float], histograms: Mapping) -> None:
        self.writer.scalars(step, values)
        if histograms:
            self.writer.histograms(step, histograms)
        self.writer.flush()  # TensorBoard, watching the folder, shows it at once
        for tag, value in values.items():
            self.history.setdefault(tag, []).append((step, float(value)))

    def on_train_end(self, logs=None):
        self._finish()
        self._write_ready(wait=True)
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Closes the event file (a later ``fit`` opens a new one)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _tags(probe: _Probe, stats: Mapping[str, Any], known: Sequence[bool], taken: int,
          decay: float, momentum: bool) -> tuple[dict[str, float], dict[str, dict]]:
    """The scalars and histograms of every variable from ``_Probe.statistics``."""
    values: dict[str, float] = {}
    histograms: dict[str, dict] = {}
    rows = dict(zip(stats["stateful"], stats["rows"] if stats["rows"] is not None else []))
    for i, variable in enumerate(probe.variables):
        row = rows.get(i)
        numbers = {"update": float(stats["update"][i]), "norm": float(stats["norm"][i])}
        if row is not None:
            numbers.update(zip(STATS[2:], row[:len(STATS) - 2].tolist()))
        values.update(_variable_values(variable.path, numbers, taken, decay,
                                       gradient=row is not None and known[i] and momentum,
                                       sizes=row is not None))
        if row is not None and taken > 0:
            histograms[f"optimizer/log10_effective_lr/{variable.path}"] = _histogram(
                row[len(STATS) - 2:], probe.sizes[i])
    return values, histograms


def _variable_values(name: str, stats: Mapping[str, float], taken: int, decay: float,
                     gradient: bool, sizes: bool) -> dict[str, float]:
    """The tags of one variable from its ``STATS``; only the update ratio where no step was
    taken (every step of the call skipped: nothing moved)."""
    norm = stats["norm"]
    values = {f"optimizer/update_ratio/{name}":
              stats["update"] / max(taken, 1) / norm if norm > 0 else 0.0}
    if taken == 0:
        return values
    if gradient:
        values[f"optimizer/grad_norm/{name}"] = stats["gradient"] / (1.0 - decay)
    if sizes:
        values[f"optimizer/effective_lr/{name}/mean"] = stats["mean"]
        for q in PERCENTILES:
            values[f"optimizer/effective_lr/{name}/p{q}"] = stats[f"p{q}"]
        values[f"optimizer/epsilon_dominated/{name}"] = stats["dominated"]
    return values


def _variables(history: Mapping[str, Sequence], kind: str) -> list[str]:
    prefix = f"optimizer/{kind}/"
    names = {tag[len(prefix):] for tag in history if tag.startswith(prefix)}
    if kind == "effective_lr":
        names = {name.rsplit("/", 1)[0] for name in names}
    return sorted(names)


def _draw_curves(ax, history: Mapping[str, Sequence[tuple[int, float]]], kind: str,
                 colours: Sequence[str]) -> None:
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
        _draw_curves(ax, history, kind, colours)
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
