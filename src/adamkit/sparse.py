"""Lazy updates: with ``lazy=True`` only the rows a gradient touches change.

An embedding lookup's gradient (TensorFlow's ``IndexedSlices``) names the rows it touches. Adam
normally decays every row's moments on every step — work proportional to the table. The lazy step
gathers the touched rows of θ, m and v, runs the optimizer's rule (``adamkit.rule``) on them (the math
is elementwise, so rows are as good as whole tensors), and scatters the results back: work
proportional to the rows touched. Duplicate indices are summed first; bias correction uses the
global step, as TF Addons' LazyAdam and ``torch.optim.SparseAdam`` do.

JAX and PyTorch hand Keras dense gradients, so there a row counts as touched when any of its gradient
entries is non-zero: the same rows as a sparse gradient names (barring a looked-up row whose gradient
is exactly zero), at dense cost. A JAX sparse gradient (``BCOO``) names its rows itself: those rows
are touched, at dense cost too.
"""

from __future__ import annotations

import math

import keras
from keras import ops


def is_sparse(gradient) -> bool:
    """A sparse gradient: TensorFlow's ``IndexedSlices`` or a JAX sparse array (``BCOO``)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return isinstance(gradient, tf.IndexedSlices)
    if backend == "jax":
        from jax.experimental import sparse as jax_sparse

        return isinstance(gradient, jax_sparse.JAXSparse)
    return False


def lazy_refusal(optimizer, gradient) -> str | None:
    """Why a step cannot update the touched rows only (None where it can): that takes
    ``lazy=True`` and a TensorFlow ``IndexedSlices`` gradient."""
    if not optimizer.lazy:
        return "lazy=False"
    if gradient is None or not is_sparse(gradient):
        return "dense gradient"
    if keras.backend.backend() != "tensorflow":
        return "not TensorFlow"
    return None


def densified(gradient):
    """A sparse gradient as the dense tensor it stands for (duplicates summed); any other
    gradient as it is. Without ``lazy=True`` every row's moments decay anyway."""
    if not is_sparse(gradient):
        return gradient
    if keras.backend.backend() == "jax":
        return gradient.todense()
    import tensorflow as tf

    return tf.convert_to_tensor(gradient)


def named_rows(gradient, shape):
    """For a JAX ``BCOO`` gradient whose sparse dimension is the first (an embedding's rows): a
    boolean mask broadcastable against ``shape``, true on the rows its indices name, as
    ``IndexedSlices`` name them; for any other gradient, the rows with a non-zero entry."""
    if is_sparse(gradient) and _names_rows(gradient):
        rows = ops.zeros((shape[0],), "int32")
        rows = ops.scatter_update(rows, gradient.indices[:, :1], ops.ones_like(gradient.indices[:, 0]))
        return ops.reshape(ops.cast(rows, "bool"), (shape[0],) + (1,) * (len(shape) - 1))
    return touched_rows(densified(gradient))


def lazy_sparse_step(job) -> None:
    """Updates only the touched rows of the job's one variable and of its state (TensorFlow; an
    ``adamkit.executors.Job`` whose gradient is ``IndexedSlices``, whose slots are
    ``adamkit.state.PlainSlot``s: float32/float64/bfloat16, one row per row)."""
    import tensorflow as tf

    from adamkit.kernels.tensorflow import tf_variable
    from adamkit.state import flat_positions

    optimizer, rule = job.optimizer, job.rule
    variable, gradient, decay, dtype = job.single()
    slots = job.state(0)
    unique, position = tf.unique(gradient.indices)
    values = tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(unique)[0])
    state = {name: tf_variable(slot.variable) for name, slot in slots.items()}
    rows = {name: tf.cast(tf.gather(stored, unique), dtype) for name, stored in state.items()}
    theta = tf.cast(tf.gather(tf_variable(variable), unique), dtype)
    if decay is not None:
        theta = theta * decay  # the touched rows only
    values = tf.cast(values, dtype)
    new_rows = rule.moments(values, rows)
    update = rule.update(values, new_rows, job.scalars(dtype))
    # The static shape: tf.shape() would read the whole table, and a pending read makes the
    # scatter below copy the entire buffer first (copy-on-write), undoing the point of being lazy.
    shape = tf.constant(tuple(variable.shape), dtype=unique.dtype)
    positions = None  # the touched elements' flat indices, for a bfloat16 slot's dither only
    if any(slot.rounds_stochastically for slot in slots.values()):
        row_size = math.prod(variable.shape[1:])
        positions = (tf.reshape(tf.cast(unique, tf.int32), (-1,) + (1,) * (len(variable.shape) - 1))
                     * row_size + flat_positions(tuple(variable.shape[1:])))
    iteration = tf.cast(optimizer.iterations + 1, tf.int32)
    for name, value in new_rows.items():
        value = slots[name].encode(value, positions, iteration)
        optimizer.assign(slots[name].variable, tf.IndexedSlices(value, unique, shape))
    optimizer.assign(variable, tf.IndexedSlices(theta - update, unique, shape))


def _names_rows(gradient) -> bool:
    from jax.experimental import sparse as jax_sparse

    return isinstance(gradient, jax_sparse.BCOO) and gradient.n_batch == 0 and gradient.n_sparse >= 1


def touched_rows(gradient):
    """A boolean mask broadcastable against ``gradient``: rows with any non-zero entry."""
    nonzero = ops.not_equal(gradient, 0)
    if len(gradient.shape) <= 1:
        return nonzero
    return ops.any(nonzero, axis=tuple(range(1, len(gradient.shape))), keepdims=True)
