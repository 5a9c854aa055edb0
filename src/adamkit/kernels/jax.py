"""JAX backend: the whole Adam/AMSGrad step of all float variables as one XLA custom call.

XLA compiles adamkit's ops path (and Keras's Adam) to three loops per variable — m, v, then θ
reading both back — 40 bytes of memory traffic per parameter where an Adam step needs 28. Here
the step is adamkit's own loop (``adam_ffi.cc``, shared with the TensorFlow kernels), compiled
against jaxlib's XLA FFI headers on first use, cached like the TensorFlow kernel, and registered
with ``jax.ffi.register_ffi_target``. ``jax.ffi.ffi_call`` places it in the traced step with θ, m,
v (and v̂max) aliased to its results, so under ``jax.jit`` with the state donated (as Keras's JAX
trainer does) XLA updates them in place; one call covers every variable of a dtype, split across
XLA's CPU threads as one index space.

It covers, on the CPU, float32 (float64 with ``jax_enable_x64``) parameters with state in the
same dtype, float32 parameters with bfloat16 state (the same stochastic rounding as
``adamkit.state``), and float32 parameters with 8-bit state (one call per variable,
``adamkit_adam8bit``, bit for bit adamkit.state's codes); Algorithm 1 and the ``"keras"`` ε form
alike; under ``keras.distribution.DataParallel`` one call per variable (8-bit state: the ops
path). Variables sharded across devices and other device types take the ``adamkit.ops`` path. The
scalars are formed in the parameters' dtype with the ops path's own functions. Where the kernel
cannot be built (no compiler) adamkit says why once and runs the ops path;
``ADAMKIT_BUILD_KERNEL=0`` skips the build.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import keras
import numpy as np

from adamkit import state as state_storage
from adamkit.kernels import state_names
from adamkit.kernels.build import compile_library
from adamkit.kernels.scalars import kernel_scalars

SOURCE = Path(__file__).with_name("adam_ffi.cc")
TARGET = "adamkit_adam"
TARGET_8BIT = "adamkit_adam8bit"  # one variable with adamkit.state's 8-bit block-wise state
_LIBRARY: dict[str, object] = {}
# JAX runs the optimizer's Python only while tracing: ``supports`` is asked then, never per step.
FIXED_SUPPORT = False


def build_library() -> Path:
    """Compiles ``adam_ffi.cc`` against this jaxlib's FFI headers (once: cached)."""
    options = ["-std=c++17", f"-I{jax.ffi.include_dir()}", "-ffp-contract=off"]
    return compile_library(SOURCE, options, salt=f"jax {jax.__version__}")


def custom_kernel() -> bool:
    """Whether adamkit's custom call is registered with JAX (built and registered on first use,
    for the CPU); says once why not."""
    if "library" not in _LIBRARY:
        _LIBRARY["library"] = None
        if os.environ.get("ADAMKIT_BUILD_KERNEL", "1") != "0" and jax.default_backend() == "cpu":
            try:
                library = ctypes.CDLL(str(build_library()))
                for target, handler in ((TARGET, library.AdamkitAdam),
                                        (TARGET_8BIT, library.AdamkitAdam8bit)):
                    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler),
                                                platform="cpu")
                _LIBRARY["library"] = library
            except (RuntimeError, OSError, AttributeError) as error:  # AttributeError: no jax.ffi
                print(f"adamkit: could not build the fused Adam kernel for JAX ({error}); using "
                      "the ops path instead (slower).", file=sys.stderr)
    return _LIBRARY["library"] is not None


def _dtype(x) -> str:
    return keras.backend.standardize_dtype(x.dtype)


def supports(variable, gradient, state, own_kernel_only: bool = False) -> bool:
    """A float32 (or, with x64, float64) variable whose state tensors share its dtype, or a
    float32 one with bfloat16 state; not sharded across devices (no Keras distribution, or data
    parallel: every device holds all of it)."""
    dtype = _dtype(variable)
    stored = {_dtype(s) for s in state.values()}
    distribution = keras.distribution.distribution()
    return (dtype in ("float32", "float64")
            and (stored == {dtype} or (dtype == "float32" and stored == {"bfloat16"}))
            and (distribution is None or isinstance(distribution, keras.distribution.DataParallel))
            and custom_kernel())


def supports_8bit(variable) -> bool:
    """8-bit state (``adamkit.state.QuantizedSlot``) of a float32 variable, on one device."""
    return (_dtype(variable) == "float32" and keras.distribution.distribution() is None
            and custom_kernel())


def apply_adam_8bit(variable, gradient, slots, *, step, learning_rate, beta_1, beta_2, epsilon,
                    epsilon_mode, decay=None, rectify=False, look_ahead=None, infinity_norm=False):
    """One step of Adam/AMSGrad (RAdam with ``rectify``, NAdam with ``look_ahead``, its (a, b)
    as one-entry vectors; AdaMax with ``infinity_norm``) on a float32 ``variable`` whose state
    ``slots`` are 8-bit: decode, update, re-encode block by block in one custom call, bit for bit
    the codec of ``adamkit.state``."""
    amsgrad = "velocity_hat" in slots
    names = state_names(slots)
    updated = [variable, *(x for name in names for x in (slots[name].codes, slots[name].absmax))]
    scalars = kernel_scalars("float32", step, learning_rate, beta_1, beta_2, epsilon,
                             epsilon_mode, [decay], rectify, look_ahead, infinity_norm)[0]
    tables = [jnp.asarray(state_storage.codec_table(signed)) for signed in (True, False)]
    gradient = jnp.asarray(keras.ops.convert_to_tensor(gradient), jnp.float32)
    _call_in_place(TARGET_8BIT, updated,
                   [gradient, scalars, jnp.asarray(step, jnp.int32), *tables], amsgrad=amsgrad,
                   adamax=infinity_norm)


def can_apply_together() -> bool:
    """Whether ``apply_adam_together`` can run: the kernel, and no Keras distribution in effect
    (data parallel runs it per variable; sharded variables take the ops path)."""
    return keras.distribution.distribution() is None and custom_kernel()


def apply_adam(variable, gradient, state, *, step, learning_rate, beta_1, beta_2, epsilon,
               epsilon_mode, decay=None, rectify=False, look_ahead=None, infinity_norm=False):
    """One step of Adam (AMSGrad when ``state`` has ``velocity_hat``; RAdam with ``rectify``;
    NAdam with ``look_ahead``; AdaMax with ``infinity_norm``) on ``variable``."""
    apply_adam_together([variable], [gradient], [state], step=step, learning_rate=learning_rate,
                        beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, epsilon_mode=epsilon_mode,
                        decays=[decay], rectify=rectify, look_ahead=look_ahead,
                        infinity_norm=infinity_norm)


def apply_adam_together(variables, gradients, states, *, step, learning_rate, beta_1, beta_2,
                        epsilon, epsilon_mode, decays, rectify=False, look_ahead=None,
                        infinity_norm=False):
    """One step of Adam (AMSGrad when the states have ``velocity_hat``; RAdam with ``rectify``;
    NAdam with ``look_ahead``; AdaMax with ``infinity_norm``, see ``adamkit.optimizers.fused``)
    on variables of one dtype whose
    states share one storage dtype, as one custom call; each variable first decays by its factor
    in ``decays`` (None: no decay)."""
    dtype = _dtype(variables[0])
    amsgrad = "velocity_hat" in states[0]
    names = state_names(states[0])
    updated = [*variables, *(s[name] for name in names for s in states)]
    grads = [jnp.asarray(keras.ops.convert_to_tensor(g), dtype) for g in gradients]
    scalars = kernel_scalars(dtype, step, learning_rate, beta_1, beta_2, epsilon, epsilon_mode,
                             decays, rectify, look_ahead, infinity_norm)
    _call_in_place(TARGET, updated, [*grads, scalars, jnp.asarray(step, jnp.int32)],
                   n=np.int64(len(variables)), amsgrad=amsgrad, adamax=infinity_norm)


def _call_in_place(target, updated, inputs, **attributes):
    """Custom call ``target`` with the ``updated`` variables' values as its first operands, each
    result aliased to its operand (XLA updates them in place where the buffers are donated),
    ``inputs`` after them; the results are assigned back."""
    values = [jnp.asarray(keras.ops.convert_to_tensor(u)) for u in updated]
    call = jax.ffi.ffi_call(target, [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in values],
                            input_output_aliases={i: i for i in range(len(values))})
    for variable, value in zip(updated, call(*values, *inputs, **attributes)):
        variable.assign(value)
