"""TensorFlow's executors: adamkit's op, adamkit's XLA custom call, and TensorFlow's own Adam.

adamkit's op (``adam_op.cc``, one vectorised multi-threaded pass over θ, g, m and v) is compiled
against the installed TensorFlow with the system's C++ compiler on first use and cached in
``$ADAMKIT_CACHE/kernels`` (default ``~/.cache/adamkit``). XLA (``jit_compile=True``) cannot run a
TensorFlow op; there the same loop runs as an XLA custom call (``adam_ffi.cc``, registered with
TensorFlow's XLA through its FFI), placed by an ``XlaCallModule`` op whose StableHLO module holds
the one call, so XLA hands it the buffers of θ and the state to update in place (XLA's own lowering
of the ops path makes three loops: 40 bytes per parameter instead of 28). Both take float32/float64
parameters on the CPU with state of their dtype, float32 with bfloat16 state, and float32 with
8-bit state (decoded, updated and re-encoded per block of 256 in one pass, bit for bit the codes
of ``adamkit.state``). With no tf.distribute strategy one launch covers every variable of a dtype.
Where they cannot be built (no compiler; ``ADAMKIT_BUILD_KERNEL=0``) adamkit says why once and
``ResourceApplyAdam`` serves Adam's own rule; the other rules take the ops path.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path

import keras
import tensorflow as tf
from tensorflow.python.ops import control_flow_util

from adamkit import state as state_storage
from adamkit.kernels import (
    is_8bit,
    plain_state,
    quantized_state,
    refuse_state,
    rule_flags,
    state_names,
)
from adamkit.kernels.build import compile_library
from adamkit.kernels.scalars import scalar_table
from adamkit.sparse import lazy_refusal

SOURCE = Path(__file__).with_name("adam_op.cc")
FFI_SOURCE = Path(__file__).with_name("adam_ffi.cc")  # the XLA custom call
_LIBRARY: dict[str, object] = {}



def tf_variable(variable):
    """The ``tf.Variable`` under a ``keras.Variable`` (or the variable itself)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def _handle(variable):
    return tf_variable(variable).handle


def placed_on_cpu(device: str, gpus_visible: bool) -> bool:
    """Whether a variable placed on ``device`` (a TensorFlow device string) is in host memory.
    An unplaced variable goes where TensorFlow puts it: on a GPU where one is visible."""
    device_type = tf.DeviceSpec.from_string(device or "").device_type
    if device_type is None:
        return not gpus_visible
    return device_type.upper() == "CPU"


def on_cpu(variable) -> bool:
    """adamkit's kernels are CPU code: a variable elsewhere (a GPU's memory) takes the ops path."""
    return placed_on_cpu(tf_variable(variable).device,
                         bool(tf.config.list_logical_devices("GPU")))


def build_library() -> Path:
    """Compiles ``adam_op.cc`` for this TensorFlow (once: cached by source, flags and version)."""
    flags = [*tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()]
    return compile_library(SOURCE, [*flags, "-ffp-contract=off"], salt=tf.__version__)


def build_xla_library() -> Path:
    """Compiles ``adam_ffi.cc`` against this TensorFlow's XLA, registering itself when loaded."""
    flags = [*tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()]
    return compile_library(FFI_SOURCE, [*flags, "-ffp-contract=off",
                                        "-DADAMKIT_REGISTER_WITH_TENSORFLOW"], salt=tf.__version__)


def custom_kernel() -> bool:
    """Whether adamkit's op is built and loaded (on first use; the reason said once if not)."""
    return _op_module() is not None


def _op_module():
    """adamkit's compiled op module, or None where it cannot be had."""
    if "module" not in _LIBRARY:
        _LIBRARY["module"] = None
        if os.environ.get("ADAMKIT_BUILD_KERNEL", "1") != "0":
            try:
                _LIBRARY["module"] = tf.load_op_library(str(build_library()))
            except (RuntimeError, OSError, tf.errors.OpError) as error:
                print(f"adamkit: could not build the fused Adam kernel ({error}); using "
                      "TensorFlow's ResourceApplyAdam instead (slower).", file=sys.stderr)
    return _LIBRARY["module"]


def xla_kernel() -> bool:
    """Whether adamkit's XLA custom call (``adam_ffi.cc``) is registered with TensorFlow's XLA:
    built and loaded on first use, for XLA on the CPU (no GPU visible); says once why not."""
    if "xla" not in _LIBRARY:
        _LIBRARY["xla"] = None
        if (os.environ.get("ADAMKIT_BUILD_KERNEL", "1") != "0"
                and not tf.config.list_logical_devices("GPU")):
            try:
                library = ctypes.CDLL(str(build_xla_library()))  # registers on load
                _call_module("adamkit_adam", ("tensor<f32>",) * 5, 3, "")  # TF can place it
                _LIBRARY["xla"] = library
            except (RuntimeError, OSError, ImportError, ValueError) as error:
                print(f"adamkit: could not build the XLA Adam kernel ({error}); under XLA "
                      "adamkit runs the ops path (slower).", file=sys.stderr)
    return _LIBRARY["xla"] is not None


def in_xla() -> bool:
    graph = tf.compat.v1.get_default_graph()
    return not tf.executing_eagerly() and control_flow_util.GraphOrParentsInXlaContext(graph)


def _rule(flags: dict[str, bool]) -> str:
    """The custom calls' rule attributes (``rule_flags``), as MLIR."""
    return ", ".join(f"{name} = {str(on).lower()}" for name, on in flags.items())


def _xla_call(target, updated, inputs, attributes):
    """Custom call ``target`` inside an ``XlaCallModule``: XLA hands it the buffers of the
    ``updated`` variables (the first operands, each result aliased to its operand) to update in
    place, and the ``inputs`` after them; the results are assigned back."""
    from tensorflow.compiler.tf2xla.ops import gen_xla_ops

    operands = [*(u.read_value() for u in updated), *inputs]
    module = _call_module(target, tuple(_tensor_type(x) for x in operands), len(updated),
                          attributes)
    results = gen_xla_ops.xla_call_module(
        operands, version=9, module=module, Sout=[u.shape for u in updated],
        Tout=[u.dtype for u in updated], platforms=["CPU"])
    return tf.group([u.assign(r) for u, r in zip(updated, results)])


def _tensor_type(x) -> str:
    elements = {tf.float32: "f32", tf.float64: "f64", tf.bfloat16: "bf16", tf.int32: "i32",
                tf.int8: "i8"}
    return "tensor<" + "".join(f"{d}x" for d in x.shape) + elements[tf.as_dtype(x.dtype)] + ">"


@functools.lru_cache(maxsize=256)
def _call_module(target: str, operands: tuple, updated: int, attributes: str) -> bytes:
    """The StableHLO module (portable artifact) whose one op is custom call ``target`` (XLA's
    typed FFI) over operands of these types, the first ``updated`` of them returned, each
    result aliased to its operand; ``attributes``: the handler's, as MLIR."""
    from tensorflow.compiler.mlir.stablehlo import stablehlo

    results = ", ".join(operands[:updated])
    arguments = [f"%a{i}" for i in range(len(operands))]
    signature = ", ".join(f"{a}: {t}" for a, t in zip(arguments, operands))
    aliases = ", ".join(  # one result is not a tuple: no index into it
        f"#stablehlo.output_operand_alias<output_tuple_indices = [{j if updated > 1 else ''}], "
        f"operand_index = {j}, operand_tuple_indices = []>" for j in range(updated))
    options = (f"api_version = 4 : i32, backend_config = {{{attributes}}}, "
               f"output_operand_aliases = [{aliases}]")
    text = "\n".join([
        "module @adamkit attributes {mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 1 : i32} {",
        f"  func.func public @main({signature}) -> ({results}) {{",
        f"    %r:{updated} = stablehlo.custom_call @{target}({', '.join(arguments)}) "
        f"{{{options}}} : ({', '.join(operands)}) -> ({results})",
        f"    return {', '.join(f'%r#{j}' for j in range(updated))} : {results}",
        "  }",
        "}",
    ])
    return stablehlo.serialize_portable_artifact_str(text, stablehlo.get_current_version())


# -- the executors --------------------------------------------------------------------------------


def _refuse_own(variable, slots) -> str | None:
    """adamkit's kernels (op or XLA call): the state terms of ``refuse_state``, on the CPU."""
    if not on_cpu(variable):
        return "not on the CPU"
    return refuse_state(keras.backend.standardize_dtype(variable.dtype), slots,
                        lambda v: keras.backend.standardize_dtype(v.dtype))


def _table(job, dtype):
    """The job's scalar table (``adamkit.kernels.scalars``), formed in double, rounded once."""
    return tf.cast(scalar_table(job.rule, job.scalars("float64"), job.decays, "float64"), dtype)


def _gradient(gradient, dtype, shape=None):
    """A gradient (``IndexedSlices`` densified) in ``dtype``; reshaped to the variable's static
    shape where given (a densified sparse gradient's may be unknown)."""
    gradient = tf.cast(tf.convert_to_tensor(gradient), dtype)
    return gradient if shape is None else tf.reshape(gradient, shape)


class TensorFlowOp:
    """adamkit's TensorFlow op (``adam_op.cc``): every float variable of a dtype and state dtype
    in one launch where no tf.distribute strategy runs."""

    name = "adamkit kernel (TensorFlow op)"

    def refuses(self, optimizer, variable, gradient, slots):
        if in_xla():
            return "under XLA"
        if not custom_kernel():
            return "the op could not be built"
        return _refuse_own(variable, slots)

    def groups(self, slots):
        return not tf.distribute.has_strategy()

    def apply(self, job):
        flags = rule_flags(job.rule)
        if is_8bit(job.slots[0]):
            return _apply_8bit_op(job, flags)
        dtype = tf.as_dtype(job.variables[0].dtype)
        states = [plain_state(s) for s in job.slots]
        kernel_state = [[_handle(s[name]) for s in states] for name in ("momentum", "velocity")]
        vhat = [_handle(s["velocity_hat" if flags["amsgrad"] else "velocity"]) for s in states]
        _op_module().adamkit_apply_adam(
            [_handle(v) for v in job.variables], *kernel_state, vhat,
            [_gradient(g, dtype) for g in job.gradients], _table(job, dtype),
            tf.cast(job.step, tf.int32), S=tf.as_dtype(states[0]["momentum"].dtype), **flags)


def _apply_8bit_op(job, flags):
    """Float32 variables with 8-bit state, all in one op: decode, update, re-encode block by block
    in one pass, bit for bit the codec of ``adamkit.state``. The op waits for every gradient of
    the group (in a stack of layers the last of them, the lowest layer's, is formed after the
    backward pass has read the layers above): an op that updates a variable still read elsewhere
    copies it first (TensorFlow's copy on write), as a hidden layer's own op, waiting for its own
    gradient alone, did every step when each variable had one."""
    state = quantized_state(job.slots)
    if not flags["amsgrad"]:
        state += state[2:4]  # v's codes and absmax in v̂max's inputs, unread
    _op_module().adamkit_apply_adam8bit(
        [_handle(v) for v in job.variables], *([_handle(x) for x in group] for group in state),
        [_gradient(g, tf.float32) for g in job.gradients], _table(job, tf.float32),
        tf.cast(job.step, tf.int32), *_codec_tables(), **flags)


def _codec_tables() -> list:
    return [tf.constant(state_storage.codec_table(signed)) for signed in (True, False)]


class XlaCall:
    """adamkit's XLA custom call (``adam_ffi.cc``) under ``jit_compile=True``: XLA hands it the
    buffers of θ and the state to update in place; every float variable of a dtype and state
    dtype in one call where no tf.distribute strategy runs."""

    name = "adamkit kernel (XLA custom call)"

    def refuses(self, optimizer, variable, gradient, slots):
        if not in_xla():
            return "not under XLA"
        if not xla_kernel():
            return "the XLA custom call could not be built (or a GPU is visible)"
        return _refuse_own(variable, slots)

    groups = TensorFlowOp.groups

    def apply(self, job):
        flags = rule_flags(job.rule)
        if is_8bit(job.slots[0]):
            return _apply_8bit_xla(job, flags)
        states = [plain_state(s) for s in job.slots]
        names = state_names(states[0])
        updated = [tf_variable(v) for v in job.variables]
        updated += [tf_variable(s[name]) for name in names for s in states]
        dtype = tf.as_dtype(job.variables[0].dtype)
        inputs = [_gradient(g, dtype, v.shape) for g, v in zip(job.gradients, job.variables)]
        attributes = f"{_rule(flags)}, n = {len(job.variables)} : i64"
        return _xla_call("adamkit_adam", updated,
                         [*inputs, _table(job, dtype), tf.cast(job.step, tf.int32)], attributes)


def _apply_8bit_xla(job, flags):
    """Custom call adamkit_adam8bit for all the variables: θ, codes and absmax updated in place.
    Taking every gradient of the group, it runs after all of them (as on JAX,
    ``adamkit.kernels.jax``, which says why)."""
    updated = [tf_variable(v) for v in job.variables]
    updated += [tf_variable(x) for group in quantized_state(job.slots) for x in group]
    grads = [_gradient(g, tf.float32, v.shape) for g, v in zip(job.gradients, job.variables)]
    attributes = f"{_rule(flags)}, n = {len(job.variables)} : i64"
    return _xla_call("adamkit_adam8bit", updated, [*grads, _table(job, tf.float32),
                                                   tf.cast(job.step, tf.int32), *_codec_tables()],
                     attributes)


class ResourceApplyAdam:
    """TensorFlow's own Adam kernels (``ResourceApplyAdam``, ``...WithAmsgrad``), where adamkit's
    cannot run. They compute Kingma & Ba's Section-2 form, θ ← θ − α·√(1 − β2ᵗ)/(1 − β1ᵗ)·m/(√v + ε̂);
    ε̂ = ε·√(1 − β2ᵗ) makes that Algorithm 1. In float32 they form 1 − β2 from β2's float32 value
    (β2 = 0.99900001…), so v differs from the ops path's by up to 1.3e-5 relative; the tests hold
    the two to that. Only Adam's own rule in the paper's ε form."""

    name = "TensorFlow's ResourceApplyAdam"

    def refuses(self, optimizer, variable, gradient, slots):
        if not optimizer.rule.peer_exact:
            return "not Adam's rule in the paper's ε form"
        if not on_cpu(variable):
            return "not on the CPU"
        dtype = keras.backend.standardize_dtype(variable.dtype)
        if dtype not in ("float32", "float64"):
            return f"{dtype} parameters"
        state = plain_state(slots)
        if state is None or {keras.backend.standardize_dtype(s.dtype)
                             for s in state.values()} != {dtype}:
            return "state not stored in the parameters' dtype"
        if "velocity_hat" in state and in_xla():
            return "AMSGrad under XLA (TensorFlow has no XLA kernel for it)"
        return None

    def groups(self, slots):
        return False

    def apply(self, job):
        variable, gradient, decay, _ = job.single()
        state, rule = plain_state(job.slots[0]), job.rule
        dtype = tf.as_dtype(variable.dtype)
        if decay is not None:
            tf_variable(variable).assign(tf_variable(variable) * tf.cast(decay, dtype))
        step = tf.cast(job.step, dtype)
        beta_2_power = tf.pow(tf.constant(rule.beta_2, dtype), step)
        arguments = dict(
            var=_handle(variable), m=_handle(state["momentum"]), v=_handle(state["velocity"]),
            beta1_power=tf.pow(tf.constant(rule.beta_1, dtype), step), beta2_power=beta_2_power,
            lr=tf.cast(job.learning_rate, dtype), beta1=tf.constant(rule.beta_1, dtype),
            beta2=tf.constant(rule.beta_2, dtype),
            epsilon=tf.constant(rule.epsilon, dtype) * tf.sqrt(1.0 - beta_2_power),
            grad=_gradient(gradient, dtype), use_locking=False)
        if "velocity_hat" in state:
            return tf.raw_ops.ResourceApplyAdamWithAmsgrad(vhat=_handle(state["velocity_hat"]),
                                                           **arguments)
        return tf.raw_ops.ResourceApplyAdam(**arguments)


class SparseOp:
    """``lazy=True`` with an ``IndexedSlices`` gradient: adamkit's op updates the touched rows of
    one table in place in one launch (``AdamkitSparseApplyAdam``), duplicates summed in it. The
    lazy ops path (``adamkit.sparse``) is the same step in about 25 ops."""

    name = "adamkit kernel (TensorFlow op, touched rows)"

    def refuses(self, optimizer, variable, gradient, slots):
        reason = lazy_refusal(optimizer, gradient)
        if reason:
            return reason
        if in_xla():
            return "under XLA"
        if not custom_kernel():
            return "the op could not be built"
        if is_8bit(slots):
            return "8-bit state"
        return _refuse_own(variable, slots)

    def groups(self, slots):
        return False

    def apply(self, job):
        flags = rule_flags(job.rule)
        (variable,), (gradient,) = job.variables, job.gradients
        dtype = tf.as_dtype(variable.dtype)
        state = plain_state(job.slots[0])
        _op_module().adamkit_sparse_apply_adam(
            _handle(variable), _handle(state["momentum"]), _handle(state["velocity"]),
            _handle(state["velocity_hat" if flags["amsgrad"] else "velocity"]), gradient.indices,
            tf.cast(gradient.values, dtype), _table(job, dtype), tf.cast(job.step, tf.int32),
            S=tf.as_dtype(state["momentum"].dtype), **flags)


EXECUTORS = (XlaCall(), TensorFlowOp(), ResourceApplyAdam())
LAZY_EXECUTORS = (SparseOp(),)  # before the lazy ops path (adamkit.executors.candidates)
