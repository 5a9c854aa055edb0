"""TensorFlow: the whole Adam/AMSGrad step in one fused kernel launch for all variables.

adamkit's own kernel (``adam_op.cc``, one vectorised multi-threaded pass; measured at rough parity
with ``torch.optim.Adam(fused=True)``, see benchmarks/README.md) is compiled against the installed
TensorFlow with the system's C++ compiler on first use and cached in
``$ADAMKIT_CACHE/kernels`` (default ``~/.cache/adamkit``). Where it cannot be built (no compiler,
headers missing) adamkit says why once and uses TensorFlow's own kernel instead, described below.
XLA (``jit_compile=True``) cannot run a TensorFlow op; there the same loop runs as an XLA custom
call (``adam_ffi.cc``, built the same way and registered with TensorFlow's XLA through its FFI),
placed by an ``XlaCallModule`` op whose StableHLO module holds the one call: XLA hands it the
buffers of θ, m, v to update in place, where XLA's own lowering of the ops path computes m, v and
θ in three loops (40 bytes per parameter instead of 28). It covers float32/float64, bfloat16 and
(one call per variable, ``adamkit_adam8bit``) 8-bit state on the CPU. ``ADAMKIT_BUILD_KERNEL=0`` skips both
builds. With one device (no tf.distribute strategy) the
optimizer hands it every float variable of a step at once (``apply_adam_together``): the scalars
are formed once and one launch covers all, split across the CPU threads as one index space; under
a strategy, for sparse gradients and for 8-bit state it runs per variable. The same library holds
the step for 8-bit state (``apply_adam_8bit``): it decodes, updates and re-encodes each block of
256 in one pass, with the codec tables of ``adamkit.state`` and the same float32 operations, so it
writes the very codes the portable path would (tested bit for bit); without the library, 8-bit
state takes the portable path.

TensorFlow's ``ResourceApplyAdam`` (and ``...WithAmsgrad``) kernels compute Kingma & Ba's Section-2
form, θ ← θ − α·√(1 − β2ᵗ)/(1 − β1ᵗ)·m/(√v + ε̂). Passing ε̂ = ε·√(1 − β2ᵗ) makes that equal to
Algorithm 1, θ ← θ − α·m̂/(√v̂ + ε), so one kernel serves both of adamkit's epsilon modes. Under
``tf.function`` without XLA (what ``model.fit`` runs on a CPU) this replaces a dozen small ops per
variable with one multi-threaded pass over θ, g, m and v.

Precision: in float32 the kernel forms 1 − β2 from β2's float32 value, i.e. it runs Adam with
β2 = 0.99900001… in both terms of the moment update, where the ops path and PyTorch form 1 − β2 in
double precision. The second moment then differs by up to 1.3e-5 relative (β2's own rounding); the
tests hold the two paths to that.
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
from adamkit.kernels import state_names
from adamkit.kernels.build import compile_library
from adamkit.kernels.scalars import kernel_scalars

SOURCE = Path(__file__).with_name("adam_op.cc")
FFI_SOURCE = Path(__file__).with_name("adam_ffi.cc")  # the XLA custom call
_LIBRARY: dict[str, object] = {}

# 16-bit variables take the ops path, which computes in float32.
SUPPORTED_DTYPES = (tf.float32, tf.float64)
# ``supports``' answer differs under XLA and not, so it is asked afresh each trace (TensorFlow runs
# the optimizer's Python only while tracing: asking is free at step time).
FIXED_SUPPORT = False


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


def supports(variable, gradient, state, own_kernel_only: bool = False) -> bool:
    """A float32/float64 variable on the CPU whose state tensors share its dtype, or (adamkit's
    kernel only) a float32 variable with bfloat16 state. A sparse gradient is densified first:
    without ``lazy=True`` every row's moments decay anyway. ``own_kernel_only`` (RAdam, NAdam,
    AdaMax, the ``"keras"`` ε form): a rule TensorFlow's own Adam kernel does not run exactly."""
    dtype = tf.as_dtype(variable.dtype)
    if not on_cpu(variable) or (own_kernel_only and not _fused_here()):
        return False
    stored = {tf.as_dtype(s.dtype) for s in state.values()}
    if dtype not in SUPPORTED_DTYPES:
        return False
    if stored == {tf.bfloat16} and dtype == tf.float32:
        return _fused_here()
    if "velocity_hat" in state and _in_xla() and not xla_kernel():
        return False  # TensorFlow has no XLA kernel for ResourceApplyAdamWithAmsgrad
    return stored == {dtype}


def build_library() -> Path:
    """Compiles ``adam_op.cc`` for this TensorFlow (once: cached by source, flags and version)."""
    flags = [*tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()]
    return compile_library(SOURCE, [*flags, "-ffp-contract=off"], salt=tf.__version__)


def build_xla_library() -> Path:
    """Compiles ``adam_ffi.cc`` against this TensorFlow's XLA, registering itself when loaded."""
    flags = [*tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()]
    return compile_library(FFI_SOURCE, [*flags, "-ffp-contract=off",
                                        "-DADAMKIT_REGISTER_WITH_TENSORFLOW"], salt=tf.__version__)


def custom_kernel():
    """adamkit's compiled op module, or None (with the reason said once) where it cannot be had."""
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


def _in_xla() -> bool:
    graph = tf.compat.v1.get_default_graph()
    return not tf.executing_eagerly() and control_flow_util.GraphOrParentsInXlaContext(graph)


def apply_adam(variable, gradient, state, *, step, learning_rate, beta_1, beta_2, epsilon,
               epsilon_mode, decay=None, rectify=False, look_ahead=None, infinity_norm=False):
    """One step of Adam (AMSGrad when ``state`` has ``velocity_hat``; RAdam with ``rectify``;
    NAdam with ``look_ahead``; AdaMax with ``infinity_norm``, its u as ``velocity``) on
    ``variable``, in place, after θ ← θ·decay when ``decay`` (the decoupled weight decay's factor)
    is given."""
    if _fused_here():  # the decay happens inside the same pass
        return apply_adam_together([variable], [gradient], [state], step=step,
                                   learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                                   epsilon=epsilon, epsilon_mode=epsilon_mode, decays=[decay],
                                   rectify=rectify, look_ahead=look_ahead,
                                   infinity_norm=infinity_norm)
    dtype = tf.as_dtype(variable.dtype)
    if decay is not None:
        tf_variable(variable).assign(tf_variable(variable) * tf.cast(decay, dtype))
    step = tf.cast(step, dtype)
    beta_2_power = tf.pow(tf.constant(beta_2, dtype), step)
    epsilon_hat = tf.constant(epsilon, dtype)
    if epsilon_mode == "paper":
        epsilon_hat = epsilon_hat * tf.sqrt(1.0 - beta_2_power)
    arguments = dict(
        var=_handle(variable),
        m=_handle(state["momentum"]),
        v=_handle(state["velocity"]),
        beta1_power=tf.pow(tf.constant(beta_1, dtype), step),
        beta2_power=beta_2_power,
        lr=tf.cast(learning_rate, dtype),
        beta1=tf.constant(beta_1, dtype),
        beta2=tf.constant(beta_2, dtype),
        epsilon=epsilon_hat,
        grad=tf.cast(tf.convert_to_tensor(gradient), dtype),
        use_locking=False,
    )
    if "velocity_hat" in state:
        return tf.raw_ops.ResourceApplyAdamWithAmsgrad(vhat=_handle(state["velocity_hat"]),
                                                       **arguments)
    return tf.raw_ops.ResourceApplyAdam(**arguments)


def can_apply_together() -> bool:
    """Whether ``apply_adam_together`` can run here: adamkit's kernel (its XLA custom call under
    XLA) and no tf.distribute strategy (whose per-variable updates Keras's own loop does)."""
    return not tf.distribute.has_strategy() and _fused_here()


def _fused_here() -> bool:
    """adamkit's kernel for where this code runs: its XLA custom call under XLA, else its op."""
    return xla_kernel() if _in_xla() else custom_kernel() is not None


def apply_adam_together(variables, gradients, states, *, step, learning_rate, beta_1, beta_2,
                        epsilon, epsilon_mode, decays, rectify=False, look_ahead=None,
                        infinity_norm=False):
    """One step of Adam (AMSGrad when the states have ``velocity_hat``; RAdam with ``rectify``;
    NAdam with ``look_ahead``; AdaMax with ``infinity_norm``, see ``adamkit.optimizers.fused``)
    on several variables of one dtype whose states share one storage dtype, in one launch of
    adamkit's kernel; each variable first decays by its factor in ``decays`` (None: no decay).
    Needs adamkit's kernel (under XLA its custom call); under a tf.distribute strategy, one
    variable per call."""
    dtype = tf.as_dtype(variables[0].dtype)
    scalars = _scalars(dtype, step, learning_rate, beta_1, beta_2, epsilon, epsilon_mode, decays,
                       rectify, look_ahead, infinity_norm)
    amsgrad = "velocity_hat" in states[0]
    if _in_xla():
        return _apply_adam_xla(variables, gradients, states, scalars, step, amsgrad,
                               infinity_norm)
    return custom_kernel().adamkit_apply_adam(
        [_handle(v) for v in variables], [_handle(s["momentum"]) for s in states],
        [_handle(s["velocity"]) for s in states],
        [_handle(s["velocity_hat"] if amsgrad else s["velocity"]) for s in states],
        [tf.cast(tf.convert_to_tensor(g), dtype) for g in gradients], scalars,
        tf.cast(step, tf.int32), S=tf.as_dtype(states[0]["momentum"].dtype), amsgrad=amsgrad,
        adamax=infinity_norm)


def _rule(amsgrad: bool, adamax: bool) -> str:
    """The custom calls' rule attributes, as MLIR."""
    return f"amsgrad = {str(amsgrad).lower()}, adamax = {str(adamax).lower()}"


def _apply_adam_xla(variables, gradients, states, scalars, step, amsgrad, adamax):
    """The step as one XLA custom call (``adamkit_adam``) for all the variables."""
    names = state_names(states[0])
    updated = [tf_variable(v) for v in variables]
    updated += [tf_variable(s[name]) for name in names for s in states]
    dtype = tf.as_dtype(variables[0].dtype)
    # reshaped to the variable's static shape (a densified sparse gradient's may be unknown)
    inputs = [tf.reshape(tf.cast(tf.convert_to_tensor(g), dtype), v.shape)
              for g, v in zip(gradients, variables)]
    attributes = f"{_rule(amsgrad, adamax)}, n = {len(variables)} : i64"
    return _xla_call("adamkit_adam", updated, [*inputs, scalars, tf.cast(step, tf.int32)],
                     attributes)


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


def _scalars(dtype, *args, **kwargs):
    """The kernels' seven scalars per variable (``adamkit.kernels.scalars``), formed in double and
    rounded once to ``dtype``."""
    return tf.cast(kernel_scalars("float64", *args, **kwargs), dtype)


def supports_8bit(variable) -> bool:
    """8-bit state (``adamkit.state.QuantizedSlot``) of a float32 variable: adamkit's kernel only
    (under XLA its custom call)."""
    return tf.as_dtype(variable.dtype) == tf.float32 and on_cpu(variable) and _fused_here()


def apply_adam_8bit(variable, gradient, slots, *, step, learning_rate, beta_1, beta_2, epsilon,
                    epsilon_mode, decay=None, rectify=False, look_ahead=None, infinity_norm=False):
    """One step of Adam/AMSGrad (RAdam, NAdam, AdaMax as ``apply_adam``) on a float32
    ``variable`` whose state ``slots`` are 8-bit: decode, update, re-encode, block by block in one
    pass (bit for bit the codec of ``adamkit.state``)."""
    scalars = tf.reshape(_scalars(tf.float32, step, learning_rate, beta_1, beta_2, epsilon,
                                  epsilon_mode, [decay], rectify, look_ahead, infinity_norm),
                         [-1])
    amsgrad = "velocity_hat" in slots
    m, v = slots["momentum"], slots["velocity"]
    h = slots["velocity_hat"] if amsgrad else v
    tables = [tf.constant(state_storage.codec_table(signed)) for signed in (True, False)]
    if _in_xla():  # custom call adamkit_adam8bit: θ, codes and absmax updated in place
        updated = [tf_variable(variable)]
        updated += [tf_variable(x) for s in (m, v, h)[:3 if amsgrad else 2]
                    for x in (s.codes, s.absmax)]
        return _xla_call("adamkit_adam8bit", updated,
                         [tf.reshape(tf.cast(tf.convert_to_tensor(gradient), tf.float32),
                                     variable.shape), scalars,
                          tf.cast(step, tf.int32), *tables], _rule(amsgrad, infinity_norm))
    return custom_kernel().adamkit_apply_adam8bit(
        _handle(variable), _handle(m.codes), _handle(m.absmax), _handle(v.codes),
        _handle(v.absmax), _handle(h.codes), _handle(h.absmax),
        tf.cast(tf.convert_to_tensor(gradient), tf.float32), scalars, tf.cast(step, tf.int32),
        *tables, amsgrad=amsgrad, adamax=infinity_norm)
