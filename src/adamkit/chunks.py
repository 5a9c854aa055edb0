"""The ops path in chunks, for a large variable whose state is stored lean (bfloat16 or 8-bit).

On the ops path a lean state is decoded to float32 before the step and re-encoded after it, and
on an unfused backend every elementwise operation in between makes a tensor the size of the
variable: measured on TensorFlow, a 16.7M-parameter variable with int8 state took 1.2 GB more
than its float32-state step, more than the 100 MB that int8 saves on it. ``chunked_step`` runs
the same rule (``Rule.moments``, ``Rule.update``) and the same codec on chunks of ``CHUNK``
values with ``keras.ops.map`` (a loop), so that only the new parameters (which must be assigned
whole) reach full size: 190 MB against 1.2 GB there, float32 state's step taking 195 MB. Under
JAX's jit, XLA fuses much of the chain but not the codec's block reductions and gathers:
model.fit on 100M parameters with int8 state peaked at 2.47 GB whole, 1.81 GB in chunks
(float32 state: 1.70 GB); with bfloat16 state 1.54 GB whole and 2.58 GB in chunks, so JAX runs
bfloat16 state whole. Chunks are whole 8-bit
blocks and each value keeps its flat position for the dither: the results are the unchunked
path's, bit for bit.
"""

from __future__ import annotations

import math

import keras
from keras import ops
from keras.backend import standardize_dtype

from adamkit import sparse
from adamkit import state as state_storage

# 512 KB of float32 a chunk: TensorFlow runs up to 10 iterations of a map at once, each with a
# few dozen temporaries of this size.
CHUNK = 1 << 17


def worth_chunking(variable, slots: dict) -> str | None:
    """Why a variable does not take the chunked step (None where it does)."""
    if any(slot is None for slot in slots.values()):
        return "no state"
    if standardize_dtype(variable.dtype) != "float32":
        return f"{standardize_dtype(variable.dtype)} parameters"
    quantized = any(isinstance(slot, state_storage.QuantizedSlot) for slot in slots.values())
    if not quantized and not any(slot.rounds_stochastically for slot in slots.values()):
        return "float32 state"
    if not quantized and keras.backend.backend() == "jax":  # measured: chunks cost more there
        return "JAX fuses a bfloat16 state's step whole"
    if math.prod(variable.shape) < 2 * CHUNK:
        return "fewer than two chunks"
    return None


def after_previous(optimizer, count: int):
    """The chunk indices 0 … count − 1, made to wait for the previous chunked step of the same
    trace: TensorFlow would otherwise run every variable's loop at once, each holding its new
    parameters at full size until they are assigned (measured on three 16.7M-parameter variables
    with int8 state: 1.6 GB beyond the parameters side by side, 186 MB in turn). The previous
    loop's largest index is ≥ 0, so min(it, 0) adds 0."""
    indices = ops.arange(count, dtype="int32")
    previous = getattr(optimizer, "_chunks_done", None)
    if previous is None or getattr(previous, "graph", None) is not getattr(indices, "graph", None):
        return indices  # none yet, or from another trace
    return indices + ops.minimum(previous, 0)


def chunked_step(job) -> None:
    """One step of ``job.rule`` on ``job``'s one variable, ``CHUNK`` values at a time."""
    optimizer, rule = job.optimizer, job.rule
    variable, gradient, decay, dtype = job.single()
    size = math.prod(variable.shape)
    count = -(-size // CHUNK)
    slots = job.state(0)
    scalars = job.scalars(dtype)
    step = ops.cast(optimizer.iterations + 1, "int32")
    gradient = ops.cast(sparse.densified(gradient), dtype)
    # Whole tensors seen as rows of chunks, each chunk read inside the loop: mapping over them
    # would copy them all first (TensorFlow's map unstacks its inputs into a TensorArray).
    thetas = state_storage.in_chunks(ops.cast(variable, dtype), count, CHUNK)
    gradients = state_storage.in_chunks(gradient, count, CHUNK)
    stored = [slot.stored_chunks(count, CHUNK) for slot in slots.values()]

    def one_chunk(index):
        g = ops.take(gradients, index, axis=0)
        state = rule.moments(g, {
            name: slot.decode_chunk(tuple(ops.take(part, index, axis=0) for part in parts))
            for (name, slot), parts in zip(slots.items(), stored)})
        theta = ops.take(thetas, index, axis=0)
        theta = (theta if decay is None else theta * decay) - rule.update(g, state, scalars)
        positions = index * CHUNK + ops.arange(CHUNK, dtype="int32")
        if size % CHUNK:  # past the end the state stays 0, as the unchunked codec pads it
            state = {k: ops.where(positions < size, v, ops.zeros_like(v)) for k, v in state.items()}
        return index, theta, tuple(slot.encode_chunk(state[name], positions, step)
                                   for name, slot in slots.items())

    done, theta, encoded = ops.map(one_chunk, after_previous(optimizer, count))
    optimizer._chunks_done = ops.max(done)
    optimizer.assign(variable, state_storage.from_chunks(theta, tuple(variable.shape)))
    for slot, parts in zip(slots.values(), encoded):
        slot.write_chunks(optimizer, parts)
