"""The ops path in chunks, for a large variable whose state is stored lean (bfloat16 or 8-bit).

On the ops path a lean state is decoded to float32 before the step and re-encoded after it, and
on an unfused backend every elementwise operation in between makes a tensor the size of the
variable: measured on TensorFlow, a 16.7M-parameter variable with int8 state took 1.2 GB more
than its float32-state step, more than the 100 MB that int8 saves on it. ``chunked_step`` runs
the same rule (``Rule.moments``, ``Rule.update``) and the same codec on chunks of ``CHUNK``
values in a loop, each chunk's results written into rows that the loop carries (in place:
TensorFlow's slice update reuses a buffer that nothing else holds, XLA updates a loop's carry in
place, PyTorch writes into the stored tensors), so that at most the new parameters and state
reach full size. Stacking each chunk's results instead (``keras.ops.map``) held them twice:
``python benchmarks/lean_memory.py`` (201M parameters, int8 state) saved 20% of the theory on
TensorFlow that way, 34–40% this way. TensorFlow pays for it in time: the step of one
16.7M-parameter variable took 1.3× (int8) and 2× (bfloat16) as long as with stacked
chunks. Whole tensors there take about as long as stacked chunks, but peaked 1.5 GB higher on
that benchmark with bfloat16 state. On JAX the saving stays where it was (−11% of the theory
with int8 state): reading the chunks from the carried rows instead saved 47%, but XLA then
copied the whole carry every iteration, a step 5× as long.

Under JAX's jit, XLA fuses much of a whole-tensor step but not the codec's block reductions and
gathers; with bfloat16 state it fuses the whole step, which peaked lower there than in chunks
(3.07 against 3.23 GB on 201M parameters), so JAX runs bfloat16 state whole. Chunks are whole
8-bit blocks and each value keeps its flat position for the dither: the results are the
unchunked path's, bit for bit.
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


def after_previous(optimizer):
    """0, made to wait for the previous chunked step of the same trace: TensorFlow would
    otherwise run every variable's loop at once, each holding its new parameters and state at
    full size until they are assigned (measured on three 16.7M-parameter variables with int8
    state: 1.6 GB beyond the parameters side by side, 186 MB in turn). The previous loop ended
    at its chunk count, ≥ 0, so min(it, 0) is 0."""
    first = ops.convert_to_tensor(0, "int32")
    previous = getattr(optimizer, "_chunks_done", None)
    if previous is None or getattr(previous, "graph", None) is not getattr(first, "graph", None):
        return first  # none yet, or from another trace
    return first + ops.minimum(previous, 0)


def written(rows, index, row):
    """``rows`` with row ``index`` replaced by ``row``, in place: XLA (JAX, and TensorFlow under
    ``jit_compile``) updates a loop's carry in place, TensorFlow's own kernel reuses a buffer
    that nothing else holds (a loop's carry, after its first write), and PyTorch, which runs the
    loop eagerly, writes into the stored tensors themselves (each chunk is read before it is
    written, and nothing else reads them meanwhile)."""
    backend = keras.backend.backend()
    if backend == "torch":
        rows[index] = row
        return rows
    if backend == "tensorflow":
        import tensorflow as tf

        from adamkit.kernels.tensorflow import in_xla

        if not in_xla():  # XLA wants a strided slice's bounds constant
            begin = ops.reshape(index, (1,))
            return tf.raw_ops.TensorStridedSliceUpdate(input=rows, begin=begin, end=begin + 1,
                                                       strides=[1], value=row[None])
    return ops.slice_update(rows, (index, *[0] * (len(rows.shape) - 1)), row[None])


def chunked_step(job) -> None:
    """One step of ``job.rule`` on ``job``'s one variable, ``CHUNK`` values at a time. Each
    chunk's new parameters and state are written into rows carried through the loop, which are
    assigned at its end: no chunk's results are stacked into another full-size tensor."""
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
    gradients = state_storage.in_chunks(gradient, count, CHUNK)
    thetas = state_storage.in_chunks(ops.cast(variable, dtype), count, CHUNK)
    stored = tuple(slot.stored_chunks(count, CHUNK) for slot in slots.values())

    # Each chunk is read from the tensors as they were, and written into the carried rows: read
    # from the carry, XLA copied the whole carry every iteration (int8, 16.7M parameters: 705
    # against 138 ms a step).
    def one_chunk(index, new_thetas, new_stored):
        g = ops.take(gradients, index, axis=0)
        state = rule.moments(g, {
            name: slot.decode_chunk(tuple(ops.take(part, index, axis=0) for part in parts))
            for (name, slot), parts in zip(slots.items(), stored)})
        theta = ops.take(thetas, index, axis=0)
        theta = (theta if decay is None else theta * decay) - rule.update(g, state, scalars)
        positions = index * CHUNK + ops.arange(CHUNK, dtype="int32")
        if size % CHUNK:  # past the end the state stays 0, as the unchunked codec pads it
            state = {k: ops.where(positions < size, v, ops.zeros_like(v)) for k, v in state.items()}
        encoded = (slot.encode_chunk(state[name], positions, step) for name, slot in slots.items())
        return (index + 1, written(new_thetas, index, theta),
                tuple(tuple(written(rows, index, row) for rows, row in zip(parts, new))
                      for parts, new in zip(new_stored, encoded)))

    done, new_thetas, new_stored = ops.while_loop(lambda index, *_: index < count, one_chunk,
                                                  (after_previous(optimizer), thetas, stored))
    optimizer._chunks_done = done
    optimizer.assign(variable, state_storage.from_chunks(new_thetas, tuple(variable.shape)))
    for slot, parts in zip(slots.values(), new_stored):
        slot.write_chunks(optimizer, parts)
