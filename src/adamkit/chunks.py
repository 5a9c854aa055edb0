"""The ops path in chunks, for a large variable whose state is stored lean (bfloat16 or 8-bit).

On the ops path a lean state is decoded to float32 before the step and re-encoded after it, and
on an unfused backend every elementwise operation in between makes a tensor the size of the
variable: measured on TensorFlow, a 16.7M-parameter variable with int8 state took 1.2 GB more
than its float32-state step, more than the 100 MB that int8 saves on it. ``chunked_step`` runs
the same rule (``Rule.moments``, ``Rule.update``) and the same codec on chunks of ``CHUNK``
values in a loop, each chunk's results written into rows that the loop carries, in place, so
that no full-size temporary is made:

- TensorFlow reads each chunk from the tensors as they were, and its slice update reuses the
  carry's buffer, which nothing else holds after the first write. Stacking each chunk's results
  instead (``keras.ops.map``) held them twice: ``python benchmarks/lean_memory.py`` (201M
  parameters, int8 state) saved 20% of the theory that way, 34–40% this way, with a step 1.3×
  (int8) and 2× (bfloat16) as long.
- XLA (JAX, and TensorFlow's ``jit_compile``) updates a loop's carry in place only where every
  read of it follows its last write. Each iteration there writes the previous chunk's results,
  then reads its own chunk from the rows so written. Read from the tensors as they were, XLA
  copied every carried tensor whole before the loop (a JAX step of three 16.7M-parameter
  variables with int8 state: 306 MB of temporaries, against 5 MB now; one variable's step took
  86 ms, against 57 now); read from the carry before the write, it copied the carry every
  iteration.
- PyTorch runs the loop eagerly and writes into the stored tensors themselves.

JAX runs bfloat16 state whole: XLA fuses that step (7.5 ms on one 16.7M-parameter variable, with
no temporaries, since its encoders wait for the parameter's update, ``executors.update_finished``),
while in chunks XLA on a CPU widens a bfloat16 carry to float32 whole for each row's update
(1.3 s; carried as 16-bit integers, 58 ms and 2.7 bytes a parameter).
Chunks are whole 8-bit blocks and each value keeps its flat position for the dither: the results
are the unchunked path's, bit for bit.
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
    at its chunk count or one more, ≥ 0, so min(it, 0) is 0."""
    first = ops.convert_to_tensor(0, "int32")
    previous = getattr(optimizer, "_chunks_done", None)  # reset by each step's update
    if previous is None or getattr(previous, "graph", None) is not getattr(first, "graph", None):
        return first  # none yet, or from another TensorFlow graph
    return first + ops.minimum(previous, 0)


def written(rows, index, row):
    """``rows`` with row ``index`` replaced by ``row``, in place: XLA (JAX, and TensorFlow under
    ``jit_compile``) updates a loop's carry in place, TensorFlow's own kernel reuses a buffer
    that nothing else holds (a loop's carry, after its first write), and PyTorch, which runs the
    loop eagerly, writes into the stored tensors themselves (each chunk is read before it is
    written, and nothing else reads them meanwhile)."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        with torch.no_grad():  # the rows can be a view of a parameter that requires grad
            rows[index] = row
        return rows
    if backend == "tensorflow" and not compiled_by_xla():  # XLA wants constant slice bounds
        import tensorflow as tf

        begin = ops.reshape(index, (1,))
        return tf.raw_ops.TensorStridedSliceUpdate(input=rows, begin=begin, end=begin + 1,
                                                   strides=[1], value=row[None])
    return ops.slice_update(rows, (index, *[0] * (len(rows.shape) - 1)), row[None])


def compiled_by_xla() -> bool:
    """Whether XLA compiles the step being traced: JAX's jit, TensorFlow's ``jit_compile``."""
    if keras.backend.backend() == "tensorflow":
        from adamkit.kernels.tensorflow import in_xla

        return in_xla()
    return keras.backend.backend() == "jax"


def traced(value) -> bool:
    """Whether ``value`` is a tensor of a step being traced (JAX's jit; TensorFlow's graphs)
    rather than an eager one."""
    if keras.backend.backend() == "jax":
        import jax

        return isinstance(value, jax.core.Tracer)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return not tf.executing_eagerly()
    return False


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
    rows = (state_storage.in_chunks(ops.cast(variable, dtype), count, CHUNK),
            tuple(slot.stored_chunks(count, CHUNK) for slot in slots.values()))

    def stepped(index, chunk):
        """Chunk ``index`` after the step, from ``chunk``, the same chunk before it."""
        theta, stored = chunk
        g = ops.take(gradients, index, axis=0)
        state = rule.moments(g, {name: slot.decode_chunk(parts)
                                 for (name, slot), parts in zip(slots.items(), stored)})
        theta = (theta if decay is None else theta * decay) - rule.update(g, state, scalars)
        positions = index * CHUNK + ops.arange(CHUNK, dtype="int32")
        if size % CHUNK:  # past the end the state stays 0, as the unchunked codec pads it
            state = {k: ops.where(positions < size, v, ops.zeros_like(v)) for k, v in state.items()}
        return theta, tuple(slot.encode_chunk(state[name], positions, step)
                            for name, slot in slots.items())

    def chunk_of(rows, index):
        return keras.tree.map_structure(lambda r: ops.take(r, index, axis=0), rows)

    def with_chunk(rows, index, chunk):
        return keras.tree.map_structure(lambda r, c: written(r, index, c), rows, chunk)

    first = after_previous(optimizer)
    if compiled_by_xla():
        # Each iteration writes the previous chunk's results into the carried rows (the first
        # writes chunk 0 back as it was), then reads its own chunk from the rows so written, so
        # that every read of a carry follows its last write and XLA updates it in place. One
        # iteration more writes the last chunk (wasting one chunk's step): written after the
        # loop, the loop's results were copied whole.
        def one_chunk(index, carried, previous):
            carried = with_chunk(carried, ops.maximum(index - 1, 0), previous)
            at = ops.minimum(index, count - 1)
            return index + 1, carried, stepped(at, chunk_of(carried, at))

        done, new_rows, _ = ops.while_loop(lambda index, *_: index <= count, one_chunk,
                                           (first, rows, chunk_of(rows, first)))
    else:
        # Each chunk is read from the tensors as they were and written into the carried rows.
        def one_chunk(index, carried):
            return index + 1, with_chunk(carried, index, stepped(index, chunk_of(rows, index)))

        done, new_rows = ops.while_loop(lambda index, _: index < count, one_chunk, (first, rows))
    optimizer._chunks_done = done
    new_thetas, new_stored = new_rows
    optimizer.assign(variable, state_storage.from_chunks(new_thetas, tuple(variable.shape)))
    for slot, parts in zip(slots.values(), new_stored):
        slot.write_chunks(optimizer, parts)
