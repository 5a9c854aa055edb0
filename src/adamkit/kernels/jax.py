"""JAX's executor: the step of every float variable of a dtype as one XLA custom call.

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
``adamkit.state``), and float32 parameters with 8-bit state (all in one call of its own,
``adamkit_adam8bit``, bit for bit adamkit.state's codes); Algorithm 1 and the ``"keras"`` ε form
alike; under ``keras.distribution.DataParallel`` one call per variable (8-bit state: the ops
path). Variables sharded across devices and other device types take the ops path. The
scalars are formed in the parameters' dtype. Where the kernel
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
from adamkit.sparse import densified

SOURCE = Path(__file__).with_name("adam_ffi.cc")
TARGET = "adamkit_adam"
TARGET_8BIT = "adamkit_adam8bit"  # variables with adamkit.state's 8-bit block-wise state
_LIBRARY: dict[str, object] = {}


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


class XlaCall:
    """adamkit's custom call in the traced step: every float variable of a dtype and state dtype
    in one call with no Keras distribution in effect (data parallel: one per variable). The
    scalars are formed in the parameters' dtype."""

    name = "adamkit kernel (XLA custom call)"

    def refuses(self, optimizer, variable, gradient, slots):
        if not custom_kernel():
            return "the custom call could not be built (or the device is not a CPU)"
        distribution = keras.distribution.distribution()
        if distribution is not None and (
                is_8bit(slots) or not isinstance(distribution, keras.distribution.DataParallel)):
            return "sharded by a Keras distribution"
        return refuse_state(_dtype(variable), slots, _dtype)

    def groups(self, slots):
        return keras.distribution.distribution() is None

    def apply(self, job):
        dtype = _dtype(job.variables[0])
        scalars = scalar_table(job.rule, job.scalars(dtype), job.decays, dtype)
        flags = rule_flags(job.rule)
        step = jnp.asarray(job.step, jnp.int32)
        grads = [jnp.asarray(densified(g), dtype) for g in job.gradients]  # BCOO: dense
        if is_8bit(job.slots[0]):
            return _apply_8bit(job, grads, scalars, step, flags)
        states = [plain_state(s) for s in job.slots]
        names = state_names(states[0])
        updated = [*job.variables, *(s[name] for name in names for s in states)]
        _call_in_place(TARGET, updated, [*grads, scalars, step],
                       n=np.int64(len(job.variables)), **flags)


def _apply_8bit(job, grads, scalars, step, flags):
    """Float32 variables with 8-bit state, all in one custom call: decode, update, re-encode block
    by block, bit for bit the codec of ``adamkit.state``. Taking every gradient of the group, the
    call runs after all of them: in a stack of layers the last (the lowest layer's) is formed
    after the backward pass has read the layers above, whose parameters the call then updates in
    place. A call ordered by its own gradient alone could run before that read, and XLA copied
    the parameters (twice each, a ``model.fit`` step of three Dense(4096) layers, when each
    variable had a call of its own)."""
    tables = [jnp.asarray(state_storage.codec_table(signed)) for signed in (True, False)]
    updated = [*job.variables, *(x for group in quantized_state(job.slots) for x in group)]
    _call_in_place(TARGET_8BIT, updated, [*grads, scalars, step, *tables],
                   n=np.int64(len(job.variables)), **flags)


def _call_in_place(target, updated, inputs, **attributes):
    """Custom call ``target`` with the ``updated`` variables' values as its first operands, each
    result aliased to its operand (XLA updates them in place where the buffers are donated),
    ``inputs`` after them; the results are assigned back."""
    values = [jnp.asarray(keras.ops.convert_to_tensor(u)) for u in updated]
    call = jax.ffi.ffi_call(target, [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in values],
                            input_output_aliases={i: i for i in range(len(values))})
    for variable, value in zip(updated, call(*values, *inputs, **attributes)):
        variable.assign(value)


EXECUTORS = (XlaCall(),)
