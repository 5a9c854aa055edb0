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
tensor); on JAX the arrays are copied as they are (one ``jax.jit`` copy, dispatched without
waiting for the train call that computes them), decoded first where the state is int8, and before
the call only the weights and the first moment, all that the differences need. Between its calls
JAX's trainer keeps the training state outside the variables; the monitor copies it from there,
rather than have Keras put it into every variable (as reading ``self.model`` in a callback does)
for the trainer to gather it again before its next call. NumPy takes the differences and reduces
them, each statistic of every variable in one call (float32 elementwise, sums in float64), and
the event goes to the file as one record. One function for both snapshots means one trace; the
reductions stay on the host because tracing them costs more than the monitor's whole budget in a
short run (0.5 s on the tutorial's model on TensorFlow, against about 0.05 s for the snapshot).
Only the snapshots are taken on the training thread: reading them to the host, the statistics and
the event are the work of one thread of the monitor's own, while the next calls train (a training
thread waiting for a TensorFlow call leaves a core free; on JAX, whose dispatch is asynchronous,
it is that thread, not the training's, that waits for a snapshot to be ready). The epoch's end
waits for it, so each epoch's events are written by then.

The event files are written with TensorBoard's own record format and protocol buffers (the
``tensorboard`` package, ``pip install adamkit[monitor]``), without TensorFlow, so the monitor
works on every backend.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

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


_POLYNOMIAL = 0x82F63B78  # Castagnoli's, reflected
_BIT_TERMS = [np.ones(1, np.uint32)]  # grown by ``_bit_terms``


def _bit_terms(count: int) -> np.ndarray:
    """F[d], d = 0 … at least ``count``: the CRC register after d steps of a bit from 1. CRC-32C
    is linear, so a 1 bit d steps before a message's end adds F[d] to its checksum. Grown by
    doubling, a vector operation per bit of the register: F[L + d] is F[d] advanced L steps,
    which maps bit b to F[L − b]."""
    terms = _BIT_TERMS[0]
    if len(terms) < 64:
        found = [1]
        for _ in range(63):
            found.append(found[-1] >> 1 ^ (_POLYNOMIAL if found[-1] & 1 else 0))
        terms = np.array(found, dtype=np.uint32)
    while len(terms) <= count:
        size = len(terms) - 1
        grown = np.zeros(size, np.uint32)
        for bit in range(32):
            grown ^= (terms[1:] >> bit & 1) * terms[size - bit]
        terms = np.concatenate([terms, grown])
    _BIT_TERMS[0] = terms
    return terms


def masked_crc32c(data: bytes) -> int:
    """The checksum of TFRecord framing: CRC-32C, rotated and offset as TensorFlow masks it.

    From 256 bytes on, as the XOR of the terms of the set bits (``_bit_terms``) in one NumPy
    reduction: a Python loop over 32-bit words with 65,536-entry tables took 0.2 ms for a logged
    call's event of 3 kB, and 0.65 ms once the training between two logged calls had evicted
    its tables from the cache; this takes 0.05 ms, and 0.2 ms from a cold cache."""
    if len(data) < 256:
        crc = 0xFFFFFFFF
        for byte in data:
            crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    else:
        steps = 8 * len(data)
        terms = _bit_terms(steps)
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little").view(bool)
        # the bit at position p (bytes in order, each from its lowest bit) is steps − p from the
        # end; the register's starting value, all ones, is advanced through every step
        crc = int(np.bitwise_xor.reduce(terms[steps:0:-1][bits])
                  ^ np.bitwise_xor.reduce(terms[steps - 31:steps + 1]))
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
        self._histogram = summary_pb2.HistogramProto
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

    def summary(self, step: int, scalars: Mapping[str, float],
                histograms: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """Writes ``scalars`` and ``histograms`` as one event at ``step`` (one record, one
        checksum pass: as TensorFlow's merged summaries hold several kinds of value).

        Args:
            step: the x axis in TensorBoard.
            scalars: numbers by tag.
            histograms: by tag, the fields of TensorBoard's ``HistogramProto``: ``min``, ``max``,
                ``num``, ``sum``, ``sum_squares``, ``bucket_limit``, ``bucket``.
        """
        value = self._summary.Value
        found = [value(tag=tag, simple_value=float(number)) for tag, number in scalars.items()]
        found += [value(tag=tag, histo=self._histogram(**fields))
                  for tag, fields in (histograms or {}).items()]
        self._write(self._event(wall_time=time.time(), step=int(step),
                                summary=self._summary(value=found)))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Writes ``values`` (tag → number) as one event at ``step``.

        Args:
            step: the x axis in TensorBoard.
            values: scalars by tag.
        """
        self.summary(step, values)

    def histograms(self, step: int, values: Mapping[str, Mapping[str, Any]]) -> None:
        """Writes ``values`` (tag → the fields of TensorBoard's ``HistogramProto``: ``min``,
        ``max``, ``num``, ``sum``, ``sum_squares``, ``bucket_limit``, ``bucket``) as one event.

        Args:
            step: the x axis in TensorBoard.
            values: histograms by tag.
        """
        self.summary(step, {}, values)

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
# the histogram of log10 of the step size over the sample: the right edges of its buckets (and
# one more bucket above the last), centred on multiples of 0.25 so that a power of ten such as
# α/ε falls mid-bucket, not on an edge where float32 rounding would pick the side
LOG_LIMITS = np.arange(-8.125, 8.125 + 1e-9, 0.25)
_BUCKET_LIMITS = np.append(LOG_LIMITS, np.finfo("float64").max)  # TensorBoard's: the last open


def _sample(size: int) -> np.ndarray:
    """The indices of an even spread of at most ``SAMPLE`` of ``size`` coordinates."""
    return np.arange(0, size, max(-(-size // SAMPLE), 1), dtype="int32")


def _flat(x):
    return keras.ops.reshape(keras.ops.cast(x, "float32"), (-1,))


class _Segments:
    """Where each of several variables lies in a vector that holds them one after another, and
    in the vector of their samples (``_sample``): so that one NumPy call reduces every variable
    (``np.add.reduceat``), rather than a dozen calls per variable."""

    def __init__(self, sizes: Sequence[int]) -> None:
        self.sizes = np.array(sizes, dtype=np.int64)
        self.starts = np.cumsum(self.sizes) - self.sizes
        samples = [int(start) + _sample(int(size)) for start, size in zip(self.starts, sizes)]
        self.sample = np.concatenate(samples) if samples else np.zeros(0, np.int64)
        self.counts = np.array([len(s) for s in samples], dtype=np.int64)
        self.sample_starts = np.cumsum(self.counts) - self.counts
        self.owner = np.repeat(np.arange(len(sizes)), self.counts)  # each sampled coordinate's
        self.sample_bounds = [(int(start), int(start + count))
                              for start, count in zip(self.sample_starts, self.counts)]

    def sums(self, values: np.ndarray, dtype=np.float64) -> np.ndarray:
        """Each variable's sum of ``values`` (a value per coordinate), accumulated in ``dtype``."""
        return _segment_sums(values, self.starts, self.sizes, dtype)

    def lengths(self, values: np.ndarray, work: np.ndarray) -> np.ndarray:
        """Each variable's ‖values‖: squares in the values' dtype (into ``work``, which may be
        ``values``), summed in float64."""
        return np.sqrt(self.sums(np.square(values, out=work)))


def _segment_sums(values: np.ndarray, starts: np.ndarray, sizes: np.ndarray, dtype) -> np.ndarray:
    if values.size == 0:
        return np.zeros(len(sizes), dtype)
    # reduceat gives an empty segment the value at its start: zeroed
    sums = np.add.reduceat(values, np.minimum(starts, values.size - 1), dtype=dtype)
    sums[sizes == 0] = 0
    return sums


def _sample_statistics(segments: _Segments, sizes: np.ndarray) -> dict[str, np.ndarray]:
    """Per variable: ``PERCENTILES`` of the step size over its sample, and the histogram of log10
    of it (least, greatest, sum, sum of squares, and the count in each bucket of
    ``LOG_LIMITS``)."""
    sample = sizes[segments.sample]  # a new array: sorted in place, each variable's part alone
    for start, end in segments.sample_bounds:  # (np.lexsort by owner and value: 3 times slower)
        sample[start:end].sort()
    logs = np.log10(np.clip(sample, 1e-30, 1e30), dtype=np.float64)
    counts, first = segments.counts[:, None], segments.sample_starts[:, None]
    # NumPy's default (linear) percentiles of each sorted sample, without np.percentile's overhead
    position = np.array(PERCENTILES) / 100 * (counts - 1)
    low = np.floor(position).astype(np.int64)
    high, weight = np.minimum(low + 1, counts - 1), position - low
    percentiles = sample[first + low] * (1.0 - weight) + sample[first + high] * weight
    # the bucket of each log: the first limit at or above it (NaN: the last, open one)
    bucket = np.searchsorted(LOG_LIMITS, logs, side="left")
    width = len(LOG_LIMITS) + 1
    buckets = np.bincount(segments.owner * width + bucket, minlength=len(counts) * width)
    starts = segments.sample_starts
    return {"percentiles": percentiles, "log_min": logs[starts],
            "log_max": logs[starts + segments.counts - 1],
            "log_sum": _segment_sums(logs, starts, segments.counts, np.float64),
            "log_squares": _segment_sums(np.square(logs), starts, segments.counts, np.float64),
            "buckets": buckets.reshape(len(counts), width), "num": segments.counts}


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


def _synced(model: keras.Model) -> None:
    """Brings JAX's training state into the model's variables (Keras's callbacks do it when they
    read ``self.model``; the trainer takes it back out before its next call)."""
    if hasattr(model, "jax_state_sync"):
        model.jax_state_sync()


def _copyable(optimizer, variables, stateful, names) -> list | None:
    """On JAX, where no state needs decoding by computation (no int8 codes): the Keras variables
    a snapshot holds, in its order (the weights, then each of ``names`` for every variable in
    ``stateful``), with the step count, α (where it is a variable) and the skipped steps last.
    JAX copies their arrays as they are (``_copies``), with nothing to decode. None elsewhere."""
    if keras.backend.backend() != "jax":
        return None
    stored = [_stored_state(optimizer, variables[i]) for i in stateful]
    slots = [slot[name] for name in names for slot in stored]
    if any(isinstance(slot, QuantizedSlot) for slot in slots):
        return None
    rate = getattr(optimizer, "_learning_rate", None)  # a schedule is evaluated on the host
    if not isinstance(rate, (keras.Variable, keras.optimizers.schedules.LearningRateSchedule)):
        return None  # a callable: computed in the compiled snapshot
    skipped = getattr(optimizer, "skipped_steps", None) if getattr(
        optimizer, "skip_nonfinite", False) else None
    return [*variables, *(getattr(slot, "variable", slot) for slot in slots), optimizer.iterations,
            rate if isinstance(rate, keras.Variable) else None, skipped]


@functools.cache
def _copies():
    """JAX: a compiled function returning new buffers holding its arguments' values. Dispatched
    asynchronously, it queues behind the train call that computes them; ``jax.device_put`` of
    the same arrays took three times as long on the training thread during ``fit``."""
    import jax

    return jax.jit(lambda arrays: [array.copy() for array in arrays])


class _Live:
    """The arrays of some of a JAX model's variables as they are now. Between the calls of its
    train function, Keras's JAX trainer keeps them in its own state, and a callback that reads
    ``self.model`` has them copied into every variable, which the trainer then gathers back
    before its next call; read from that state where it is, they cost neither."""

    def __init__(self, model: keras.Model, variables: Sequence) -> None:
        self.variables = list(variables)
        owners = {"trainable_variables": model.trainable_variables,
                  "optimizer_variables": model.optimizer.variables}
        self.lengths = {key: len(owner) for key, owner in owners.items()}
        where = {id(v): (key, j) for key, owner in owners.items() for j, v in enumerate(owner)}
        found = [None if v is None else where.get(id(v)) for v in self.variables]
        known = all(p is not None for p, v in zip(found, self.variables) if v is not None)
        self.positions = found if known else None

    def values(self, model: keras.Model) -> list:
        state = getattr(model, "_jax_state", None)
        if (self.positions is not None and state and not getattr(model, "_jax_state_synced", True)
                and all(len(state.get(key) or ()) == n for key, n in self.lengths.items())):
            return [None if p is None else state[p[0]][p[1]] for p in self.positions]
        _synced(model)  # where the variables are not up to date, or the state is not Keras's
        return [None if v is None else v.value for v in self.variables]


class _Host(NamedTuple):
    """A snapshot read to the host: every weight in one float32 vector, each state tensor of the
    variables with state (``stateful``, their indices) likewise, α and [step count, skipped]."""

    stateful: tuple[int, ...]
    weights: np.ndarray
    state: dict[str, np.ndarray]
    rate: float
    counts: np.ndarray


def _concatenated(arrays: Sequence, out: np.ndarray) -> np.ndarray:
    parts = [np.asarray(a).reshape(-1).astype("float32", copy=False) for a in arrays]
    return np.concatenate(parts, out=out) if parts else out


KEPT = 1 << 24  # the largest vector (coordinates) whose host buffers are kept between logs


class _Scratch:
    """Host buffers kept from one logged call to the next. A new NumPy array of a few hundred kB
    is mapped afresh from the system each time, and its first writing costs a page fault per
    4 kB: on the tutorial's model ‖θ − θ_before‖ took ten times as long with new arrays for its
    intermediate results as in kept ones (0.7 ms against 0.06). Vectors over ``KEPT``
    coordinates get new ones each time, so that no large model's copies stay in memory."""

    def __init__(self) -> None:
        self._kept: dict[str, np.ndarray] = {}

    def get(self, name: str, size: int, dtype: str = "float32") -> np.ndarray:
        if size > KEPT:
            return np.empty(size, dtype)
        found = self._kept.get(name)
        if found is None or found.size != size or found.dtype != dtype:
            found = self._kept[name] = np.empty(size, dtype)
        return found


def _sizes_into(form: str, state: Mapping[str, np.ndarray], numerator: float, epsilon: float,
                correction: float, sizes: np.ndarray, dominated: np.ndarray) -> None:
    """``_sizes`` in NumPy, written into ``sizes`` (float32) and ``dominated`` (bool): the same
    operations in the same order, so the same numbers, without a new array for each."""
    if form == "adamax":
        np.maximum(np.subtract(state["norm"], epsilon, out=sizes), 0.0, out=sizes)
        np.greater_equal(epsilon, sizes, out=dominated)
        np.divide(numerator, state["norm"], out=sizes)
        return
    if form == "plain":
        sizes.fill(numerator)
        dominated.fill(False)
        return
    velocity = state.get("velocity_hat", state["velocity"])
    root = np.sqrt(np.divide(velocity, correction, out=sizes), out=sizes)
    np.greater_equal(epsilon, root, out=dominated)
    np.divide(numerator, np.add(root, epsilon, out=sizes), out=sizes)


def _monitored(model: keras.Model) -> list:
    """The trainable variables the monitor reports on: those with values (one of zero size has no
    update, gradient or step size to measure)."""
    return [v for v in model.trainable_variables if math.prod(v.shape) > 0]


class _Probe:
    """The monitor's work on the device for one model and optimizer: one compiled function takes a
    snapshot of the weights and the decoded state into one new vector (which no later step can
    overwrite), called before a logged call of the train function and again after it; the host
    reads each snapshot at once (not a read per tensor) and takes the differences itself. On
    JAX, without int8 state, the snapshot is a copy of each array instead (``_copyable``):
    nothing to decode or concatenate, and before the call only what the differences need (the
    weights and the first moment)."""

    def __init__(self, model: keras.Model) -> None:
        self.variables = _monitored(model)
        self.optimizer = _inner(model.optimizer)
        self.sizes = [math.prod(v.shape) for v in self.variables]
        self._compiled: dict[Any, Any] = {}
        self._layouts: dict[bool, tuple] = {}
        self._copied: dict[tuple, _Live | None] = {}
        self._segments: dict[tuple[int, ...], _Segments] = {}
        self.scratch = _Scratch()

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

    def segments(self, indices: tuple[int, ...]) -> _Segments:
        if indices not in self._segments:
            self._segments[indices] = _Segments([self.sizes[i] for i in indices])
        return self._segments[indices]

    def snapshot(self, model: keras.Model, full: bool = True) -> tuple:
        """On the device, nothing read: ``(layout, names, arrays, counts)``. Compiled: one vector
        holding every weight, then each of the ``layout``'s state tensors over the variables with
        state, then α, and the counts (step count, skipped steps); both snapshots hold all of it,
        so that one function serves both. JAX's copies: a list of arrays in ``_copyable``'s
        order, counts None; with ``full`` False (before a call), only the first moment."""
        layout = stateful, names = self.layout()
        names = names if full else names[:1]
        key = (layout, names)
        if key not in self._copied:
            variables = _copyable(self.optimizer, self.variables, stateful, names)
            self._copied[key] = None if variables is None else _Live(model, variables)
        live = self._copied[key]
        if live is not None:
            # new buffers, not the ones the next train call donates (and so deletes)
            found = live.values(model)
            arrays = _copies()([a for a in found if a is not None])
            return layout, names, [None if a is None else arrays.pop(0) for a in found], None
        _synced(model)
        return (layout, layout[1], *self._call(("snapshot", layout), self._snapshot_fn(layout)))

    def _snapshot_fn(self, layout):
        stateful, names = layout

        def snapshot():
            states = [state_tensors(self.optimizer, self.variables[i]) for i in stateful]
            parts = [_flat(v) for v in self.variables]
            parts += [_flat(state[name]) for name in names for state in states]
            rate = keras.ops.cast(self.optimizer.learning_rate, "float32")
            # concatenating several tensors makes a new buffer (a cast to the same dtype may
            # return the variable's own storage, as PyTorch's does)
            return (keras.ops.concatenate([*parts, keras.ops.reshape(rate, (1,))]),
                    keras.ops.stack([keras.ops.cast(self.optimizer.iterations, "int32"),
                                     _skipped(self.optimizer)]))

        return snapshot

    def split(self, snapshot, role: str) -> _Host:
        """A snapshot read to the host (each part one vector; a compiled snapshot's are views; JAX's
        copies go into the ``role``'s kept buffers, valid until the next call's ``split``)."""
        (stateful, _), names, arrays, counts = snapshot
        count, width = len(self.variables), sum(self.sizes[i] for i in stateful)
        if counts is None:  # ``_copyable``'s arrays
            group, get = len(stateful), self.scratch.get
            weights = _concatenated(arrays[:count], get(f"{role} weights", sum(self.sizes)))
            state = {name: _concatenated(arrays[count + k * group:count + (k + 1) * group],
                                         get(f"{role} {name}", width))
                     for k, name in enumerate(names)}
            end, rate = count + len(names) * group, arrays[count + len(names) * group + 1]
            skipped = arrays[end + 2]
            rate = np.nan if rate is None else float(np.asarray(rate, "float32"))
            return _Host(stateful, weights, state, rate,
                         np.array([int(arrays[end]), 0 if skipped is None else int(skipped)]))
        vector = keras.ops.convert_to_numpy(arrays)
        start = sum(self.sizes)
        state = {name: vector[start + k * width:start + (k + 1) * width]
                 for k, name in enumerate(names)}
        return _Host(stateful, vector[:start], state, float(vector[-1]),
                     keras.ops.convert_to_numpy(counts))

    def statistics(self, before: _Host, after: _Host, decay: float, form: str,
                   terms: Sequence[float]) -> dict[str, Any]:
        """From two ``split`` snapshots: ``update`` (‖θ − θ_before‖) and ``norm`` (‖θ_before‖) per
        variable, and for those with state (``stateful``, their indices) ``gradient`` (‖m −
        ``decay``·m_before‖), ``mean`` step size, ``dominated`` fraction and
        ``_sample_statistics``; ``terms``: ``step_terms``'s numbers. NumPy (float32, sums in
        float64), each statistic of every variable in one pass: nothing to trace."""
        weights, work = self.segments(tuple(range(len(self.variables)))), self.scratch.get(
            "weights", len(after.weights))
        stats: dict[str, Any] = {
            "update": weights.lengths(np.subtract(after.weights, before.weights, out=work), work),
            "norm": weights.lengths(before.weights, work), "stateful": after.stateful}
        if not after.stateful:
            return stats
        segments, momentum = self.segments(after.stateful), after.state["momentum"]
        work, sizes = (self.scratch.get(name, len(momentum)) for name in ("gradient", "sizes"))
        if before.stateful == after.stateful:  # m − β1ᵏ·m_before, as float32
            np.subtract(momentum, np.multiply(before.state["momentum"], np.float32(decay),
                                              out=work), out=work)
        else:  # no state in the snapshot before: taken before the first step, when m was zeros
            np.copyto(work, momentum)
        stats["gradient"] = segments.lengths(work, work)
        dominated = self.scratch.get("dominated", len(momentum), "bool")
        _sizes_into(form, after.state, *terms, sizes, dominated)
        with np.errstate(invalid="ignore", divide="ignore"):
            stats["mean"] = segments.sums(sizes) / segments.sizes
            stats["dominated"] = segments.sums(dominated, np.int64) / segments.sizes
        stats.update(_sample_statistics(segments, sizes))
        return stats


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


def _histograms(names: Sequence[str], stats: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """TensorBoard's histogram fields for the variables with state (``names``) from
    ``_sample_statistics``; each run of empty buckets is one bucket, as TensorFlow's own
    histograms are encoded (smaller event files)."""
    buckets = stats["buckets"].astype(np.float64)
    # keep the non-empty buckets and the last of each run of empty ones
    keep = (buckets > 0) | np.append(buckets[:, 1:] > 0, np.ones((len(buckets), 1), bool), axis=1)
    fields = zip(names, stats["log_min"].tolist(), stats["log_max"].tolist(),
                 stats["num"].tolist(), stats["log_sum"].tolist(), stats["log_squares"].tolist(),
                 buckets, keep)
    return {f"optimizer/log10_effective_lr/{name}": {
        "min": low, "max": high, "num": num, "sum": total, "sum_squares": squares,
        "bucket_limit": _BUCKET_LIMITS[kept].tolist(), "bucket": counts[kept].tolist()}
        for name, low, high, num, total, squares, counts, kept in fields}


class OptimizerMonitor(keras.callbacks.Callback):
    """Logs the optimizer's view of each trainable variable to TensorBoard every ``every`` steps:
    update/weight ratio, gradient norm, effective per-coordinate step size, ε-dominated fraction,
    learning rate and skipped steps (the tags are in ``adamkit.tools.monitor``'s docstring).

    Works with every member of adamkit's family and every ``state_dtype`` (the state decoded by its
    codec), and with ``keras.optimizers.Adam``/``AdamW``; for other optimizers it logs the update
    ratio and learning rate. Nothing is computed on the steps that do not log. Before a call of
    the train function that logs, the weights and the decoded state are copied into new buffers
    on the device (one compiled call; on JAX a plain copy of the weights and the first moment);
    when the next call begins (or validation or the epoch's end comes first), they are copied
    again. Both are read to the host once ready, where NumPy takes the differences and reduces
    them, each statistic of every variable at once.
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
        self._pending: list[concurrent.futures.Future] = []  # logged calls being written
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None
        self._probe: _Probe | None = None
        _protos()  # imported here, before training, not in the first epoch
        _bit_terms(8 * 8192)  # and the checksum's terms computed for events of up to 8 kB

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
        # reading ``self.model`` would copy JAX's state into the variables: so the decision
        # uses the step count kept here
        first, last = self._start + begin + 1, self._start + end + 1
        return last // self.every > (first - 1) // self.every

    @property
    def _unsynced(self) -> keras.Model:
        """The model, without ``self.model``'s copying of JAX's training state into its variables
        (the snapshots read that state where it is: ``_Live``)."""
        return self._model if keras.backend.backend() == "jax" else self.model

    def _probe_for(self, model: keras.Model) -> _Probe:
        probe = self._probe
        if (probe is None or probe.optimizer is not _inner(model.optimizer)
                or probe.variables != _monitored(model)):
            self._probe = probe = _Probe(model)
        return probe

    def on_train_batch_begin(self, batch, logs=None):
        self._finish()  # the state now is the state after the previous call
        self._written(wait=False)
        steps = getattr(self._model, "steps_per_execution", 1) or 1
        if not self._logs_call(batch, batch + steps - 1):
            return
        probe = self._probe_for(self._unsynced)
        schedule = isinstance(getattr(probe.optimizer, "_learning_rate", None),
                              keras.optimizers.schedules.LearningRateSchedule)
        # α as the call's steps will see it (a callback may change it before the call is
        # logged) is in the snapshot: nothing is read here
        self._before = {"snapshot": probe.snapshot(self._unsynced, full=False),
                        "known": probe.momentum_known(),
                        "schedule": schedule, "probe": probe}

    def on_test_begin(self, logs=None):
        self._finish()  # before validation, and before any callback swaps weights for it

    def on_epoch_end(self, epoch, logs=None):
        self._finish()
        self._written(wait=True)

    def _finish(self) -> None:
        """Takes the snapshot after the call that the snapshot before was taken for, once that
        call is over, and hands the pair to the monitor's thread to be read and logged."""
        if self._before is None:
            return
        before, self._before = self._before, None
        after = before["probe"].snapshot(self._unsynced)
        if self._worker is None:
            self._worker = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="OptimizerMonitor")  # one thread: the events stay in order
        self._pending.append(self._worker.submit(self._write_pair, before, after))

    def _written(self, wait: bool) -> None:
        """Forgets the logged calls whose events are written (waits for all if ``wait``),
        raising here any error their writing met."""
        while self._pending and (wait or self._pending[0].done()):
            self._pending.pop(0).result()

    def _write_pair(self, before: Mapping[str, Any], after: tuple) -> None:
        """Logs one call of the train function from its snapshots before and after it."""
        probe = before["probe"]
        optimizer = probe.optimizer
        before_parts, after_parts = probe.split(before["snapshot"], "before"), probe.split(after,
                                                                                      "after")
        step, skipped = (int(n) for n in after_parts.counts)
        taken = step - int(before_parts.counts[0])
        learning_rate = (learning_rate_of_step(optimizer, step) if before["schedule"]
                         else before_parts.rate)
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
        self.writer.summary(step, values, histograms)  # one event, one write
        self.writer.flush()  # TensorBoard, watching the folder, shows it at once
        for tag, value in values.items():
            self.history.setdefault(tag, []).append((step, float(value)))

    def on_train_end(self, logs=None):
        self._finish()
        self._stop_worker()
        if self._writer is not None:
            self._writer.flush()

    def _stop_worker(self) -> None:
        try:
            self._written(wait=True)
        finally:
            if self._worker is not None:
                self._worker.shutdown()
                self._worker = None

    def close(self) -> None:
        """Closes the event file (a later ``fit`` opens a new one)."""
        self._stop_worker()  # after a fit that stopped early, without ``on_train_end``
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _tags(probe: _Probe, stats: Mapping[str, Any], known: Sequence[bool], taken: int,
          decay: float, momentum: bool) -> tuple[dict[str, float], dict[str, dict]]:
    """The scalars and histograms of every variable from ``_Probe.statistics``."""
    values: dict[str, float] = {}
    columns = {name: stats[name].tolist() for name in ("gradient", "mean", "dominated")
               if name in stats}
    if "percentiles" in stats:
        columns.update({f"p{q}": stats["percentiles"][:, k].tolist()
                        for k, q in enumerate(PERCENTILES)})
    row_of = {i: j for j, i in enumerate(stats["stateful"])}
    for i, (variable, update, norm) in enumerate(zip(probe.variables, stats["update"].tolist(),
                                                     stats["norm"].tolist())):
        numbers = {"update": update, "norm": norm}
        j = row_of.get(i)
        if j is not None:
            numbers.update({name: column[j] for name, column in columns.items()})
        values.update(_variable_values(variable.path, numbers, taken, decay,
                                       gradient=j is not None and known[i] and momentum,
                                       sizes=j is not None))
    if not stats["stateful"] or taken == 0:
        return values, {}
    return values, _histograms([probe.variables[i].path for i in stats["stateful"]], stats)


def _variable_values(name: str, stats: Mapping[str, float], taken: int, decay: float,
                     gradient: bool, sizes: bool) -> dict[str, float]:
    """The tags of one variable from its statistics; only the update ratio where no step was
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
