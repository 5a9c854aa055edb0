"""PyTorch backend: the whole step of all of a dtype's CPU variables in one pass of adamkit's
own kernel, or else in one call of PyTorch's fused Adam.

adamkit's kernel (``adam_host.cc``: the loop of the TensorFlow op and the XLA custom calls,
``adam_update.h``) is compiled with the system's C++ compiler on first use, cached like the other
kernels, and called through ctypes on the tensors' memory: every rule of the family (Adam, AMSGrad,
AdamW's decay, RAdam, NAdam, AdaMax, and the ``"keras"`` ε̂), float32 parameters with float32 or
bfloat16 state and float64 with float64, split over ``torch.get_num_threads()`` threads; and
float32 parameters with 8-bit state, one call per variable (``adamkit_adam8bit_host``). It reads
θ, g, m, v and writes θ, m, v once, so it runs level with ``torch._fused_adam_`` on the same
tensors (``benchmarks/README.md`` has the measured ratios).

Where it cannot be built (no compiler; ``ADAMKIT_BUILD_KERNEL=0``), or for tensors off the CPU,
``torch._fused_adam_`` (what ``torch.optim.Adam(fused=True)`` runs) serves Adam's own rule with
``epsilon_mode="paper"`` on float32: Algorithm 1, θ ← θ − α·m̂/(√v̂ + ε), AMSGrad's max over the raw
v as adamkit's, decoupled weight decay in the same pass (``torch._fused_adamw_``); the other rules
take the ``adamkit.ops`` path. On this backend Keras's own Adam runs PyTorch's ``_foreach`` ops
(several passes over the state).
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import keras
import torch

from adamkit import state as state_storage
from adamkit.kernels import state_names
from adamkit.kernels.build import compile_library
from adamkit.kernels.scalars import kernel_scalars

# PyTorch's fused kernel: float32 only (for float64 parameters its AMSGrad step carries float32
# rounding, 7e-8 relative at step 1 measured, so float64 takes the ops path without adamkit's).
SUPPORTED_DTYPES = ("float32",)
SOURCE = Path(__file__).with_name("adam_host.cc")
# adamkit_adam_host's kinds: (parameter dtype, state dtype) -> kind
KINDS = {(torch.float32, torch.float32): 0, (torch.float32, torch.bfloat16): 1,
         (torch.float64, torch.float64): 2}
RULES = {"adam": 0, "amsgrad": 1, "adamax": 2}
_LIBRARY: dict[str, object] = {}
# Whether ``supports``' answer for a variable and its state holds for their lifetime (dtypes,
# device and the library never change under an optimizer built on them): it may ask once.
FIXED_SUPPORT = True


def custom_kernel():
    """adamkit's host kernel (``adam_host.cc``), built and loaded on first use; None (the reason
    said once) where it cannot be had."""
    if "library" not in _LIBRARY:
        _LIBRARY["library"] = None
        if os.environ.get("ADAMKIT_BUILD_KERNEL", "1") != "0":
            try:
                library = ctypes.CDLL(str(compile_library(SOURCE, ["-ffp-contract=off",
                                                                   "-pthread"])))
                library.adamkit_adam_host.restype = ctypes.c_int
                library.adamkit_adam8bit_host.restype = ctypes.c_int
                _LIBRARY["library"] = library
            except (RuntimeError, OSError) as error:
                print(f"adamkit: could not build the fused Adam kernel for PyTorch ({error}); "
                      "using PyTorch's fused Adam where it applies, else the ops path (slower).",
                      file=sys.stderr)
    return _LIBRARY["library"]


def _dtype(x) -> str:
    return keras.backend.standardize_dtype(x.dtype)


def _tensor(variable) -> torch.Tensor:
    return variable.value if isinstance(variable, keras.Variable) else variable


def supports(variable, gradient, state, own_kernel_only: bool = False) -> bool:
    """adamkit's kernel: a CPU variable of a dtype pair in ``KINDS``. PyTorch's fused kernel
    otherwise: a float32 variable with float32 state, for Adam's own rule (not RAdam's, NAdam's
    or AdaMax's: ``own_kernel_only``)."""
    if _own_kernel_takes(variable, state):
        return True
    dtype = _dtype(variable)
    stored = {_dtype(s) for s in state.values()}
    return dtype in SUPPORTED_DTYPES and stored == {dtype} and not own_kernel_only


def _own_kernel_takes(variable, state) -> bool:
    """adamkit's kernel for this variable: built, a dtype pair it runs, on the CPU (its state
    lives where it does; Keras keeps both contiguous)."""
    if custom_kernel() is None:
        return False
    theta = _tensor(variable)  # torch's own dtypes: Keras's dtype properties cost more per step
    stored = {_tensor(s).dtype for s in state.values()}
    return len(stored) == 1 and (theta.dtype, *stored) in KINDS and theta.device.type == "cpu"


def can_apply_together() -> bool:
    return True  # one fused call takes lists of tensors


def supports_8bit(variable) -> bool:
    """8-bit state (``adamkit.state.QuantizedSlot``) of a float32 CPU variable: adamkit's kernel
    only (PyTorch has none)."""
    theta = _tensor(variable)
    return (custom_kernel() is not None and theta.dtype == torch.float32
            and theta.device.type == "cpu")


@torch.no_grad()
def apply_adam_8bit(variable, gradient, slots, *, step, learning_rate, beta_1, beta_2, epsilon,
                    epsilon_mode, decay=None, rectify=False, look_ahead=None, infinity_norm=False):
    """One step of the rule (as ``apply_adam_together``) on a float32 ``variable`` whose state
    ``slots`` are 8-bit: decode, update, re-encode block by block in one pass, bit for bit the
    codec of ``adamkit.state``."""
    amsgrad = "velocity_hat" in slots
    names = state_names(slots)
    theta = _tensor(variable)
    codes = [_tensor(slots[name].codes) for name in names]
    absmax = [_tensor(slots[name].absmax) for name in names]
    (grad,) = _gradients([gradient], [theta])
    scalars = kernel_scalars("float64", step, learning_rate, beta_1, beta_2, epsilon,
                             epsilon_mode, [decay], rectify, look_ahead, infinity_norm)
    scalars = scalars.to(torch.float32).contiguous()  # held here: the call reads its memory
    _run("adamkit_adam8bit_host", [theta, *codes, *absmax],
         _rule(amsgrad, infinity_norm), ctypes.c_void_p(theta.data_ptr()),
         ctypes.c_void_p(grad.data_ptr()), ctypes.c_int64(theta.numel()), _pointers(codes),
         _pointers(absmax), _pointer(scalars),
         ctypes.c_int32(int(step)), *(_pointer(t) for t in _codec_tables()),
         ctypes.c_int(torch.get_num_threads()))


def _codec_tables() -> tuple:
    """adamkit.state's signed and unsigned codec tables as float32 tensors (made once)."""
    if "tables" not in _LIBRARY:
        _LIBRARY["tables"] = tuple(torch.as_tensor(state_storage.codec_table(signed))
                                   for signed in (True, False))
    return _LIBRARY["tables"]


def apply_adam(variable, gradient, state, *, step, learning_rate, beta_1, beta_2, epsilon,
               epsilon_mode, decay=None, rectify=False, look_ahead=None, infinity_norm=False):
    """One step of Adam (AMSGrad when ``state`` has ``velocity_hat``) on ``variable``, in place,
    after θ ← θ·decay when ``decay`` is given."""
    apply_adam_together([variable], [gradient], [state], step=step, learning_rate=learning_rate,
                        beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, epsilon_mode=epsilon_mode,
                        decays=[decay], rectify=rectify, look_ahead=look_ahead,
                        infinity_norm=infinity_norm)


@torch.no_grad()
def apply_adam_together(variables, gradients, states, *, step, learning_rate, beta_1, beta_2,
                        epsilon, epsilon_mode, decays, rectify=False, look_ahead=None,
                        infinity_norm=False):
    """One step of the rule (Adam, AMSGrad when the states have ``velocity_hat``, RAdam with
    ``rectify``, NAdam with ``look_ahead``, AdaMax with ``infinity_norm``) on variables of one
    dtype whose states share one storage dtype, in place, each first decayed by its factor in
    ``decays`` (None: no decay): one pass of adamkit's kernel for all of them, or (Adam's own
    rule) one call of PyTorch's fused kernel per distinct factor."""
    if _own_kernel_takes(variables[0], states[0]):  # one dtype pair, one device: all alike
        return _apply_own_kernel(variables, gradients, states, step, learning_rate, beta_1,
                                 beta_2, epsilon, epsilon_mode, decays, rectify, look_ahead,
                                 infinity_norm)
    if epsilon_mode != "paper" or rectify or look_ahead is not None or infinity_norm:
        raise ValueError("PyTorch's fused kernel computes Adam with epsilon_mode='paper' only")
    rate = float(learning_rate)
    groups: dict[float, list[int]] = {}
    for i, decay in enumerate(decays):
        groups.setdefault(1.0 if decay is None else float(decay), []).append(i)
    amsgrad = "velocity_hat" in states[0]
    step = torch.as_tensor(step, dtype=torch.float32)  # the step t, already advanced
    for factor, members in groups.items():
        # torch's AdamW kernel decays by 1 − α·λ formed in double; with λ = (1 − factor)/α that
        # rounds back to adamkit's float32 factor (1 − factor is exact).
        weight_decay = (1.0 - factor) / rate if factor != 1.0 else 0.0
        kernel = torch._fused_adamw_ if weight_decay else torch._fused_adam_
        thetas = [_tensor(variables[i]) for i in members]
        kernel(
            thetas, [torch.as_tensor(gradients[i], dtype=torch.float32) for i in members],
            [_tensor(states[i]["momentum"]) for i in members],
            [_tensor(states[i]["velocity"]) for i in members],
            [_tensor(states[i]["velocity_hat"]) for i in members] if amsgrad else [],
            [step] * len(members), lr=rate, beta1=beta_1, beta2=beta_2,
            weight_decay=weight_decay, eps=epsilon, amsgrad=amsgrad, maximize=False)


def _apply_own_kernel(variables, gradients, states, step, learning_rate, beta_1, beta_2, epsilon,
                      epsilon_mode, decays, rectify, look_ahead, infinity_norm):
    """The step as one ``adamkit_adam_host`` call over all ``variables``."""
    amsgrad = "velocity_hat" in states[0]
    thetas = [_tensor(v) for v in variables]
    dtype = thetas[0].dtype
    scalars = kernel_scalars("float64", step, learning_rate, beta_1, beta_2, epsilon,
                             epsilon_mode, decays, rectify, look_ahead, infinity_norm)
    scalars = scalars.to(dtype).contiguous()  # held here: the call reads its memory
    grads = _gradients(gradients, thetas)
    m, v = ([_tensor(s[name]) for s in states] for name in ("momentum", "velocity"))
    vhat = [_tensor(s["velocity_hat"]) for s in states] if amsgrad else []
    _run("adamkit_adam_host", [*thetas, *m, *v, *vhat],
         KINDS[dtype, m[0].dtype], _rule(amsgrad, infinity_norm), ctypes.c_int64(len(thetas)),
         _pointers(thetas), _pointers(m), _pointers(v), _pointers(vhat) if amsgrad else None,
         _pointers(grads), (ctypes.c_int64 * len(thetas))(*(t.numel() for t in thetas)),
         _pointer(scalars), ctypes.c_int32(int(step)),
         ctypes.c_int(torch.get_num_threads()))


def _rule(amsgrad: bool, infinity_norm: bool) -> int:
    """adam_update.h's Rule for the step."""
    return RULES["adamax" if infinity_norm else "amsgrad" if amsgrad else "adam"]


def _gradients(gradients, thetas) -> list:
    """The gradients as contiguous CPU tensors of their parameters' dtype; a clear error for any
    the kernel cannot take."""
    grads = [torch.as_tensor(g, dtype=t.dtype).contiguous() for g, t in zip(gradients, thetas)]
    if any(g.device.type != "cpu" or g.shape != t.shape for g, t in zip(grads, thetas)):
        raise ValueError("adamkit's PyTorch kernel needs CPU gradients shaped like their variables")
    return grads


def _pointer(tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(tensor.data_ptr())


def _pointers(tensors) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))


def _run(entry: str, written: list, *arguments) -> None:
    """Calls the library's ``entry``; then tells autograd that ``written`` changed in place, as
    PyTorch's own in-place ops do."""
    if getattr(custom_kernel(), entry)(*arguments) != 0:
        raise RuntimeError(f"{entry} refused its arguments")
    torch.autograd.graph.increment_version(written)
