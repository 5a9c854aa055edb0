"""PyTorch backend: the whole step of all of a dtype's CPU variables in one pass of adamkit's
own kernel, or else in one call of PyTorch's fused Adam.

adamkit's kernel (``adam_host.cc``: the loop of the TensorFlow op and the XLA custom calls,
``adam_update.h``) is compiled with the system's C++ compiler on first use, cached like the other
kernels, and called through ctypes on the tensors' memory: every rule of the family (Adam, AMSGrad,
AdamW's decay, RAdam, NAdam, AdaMax, and the ``"keras"`` ε̂), float32 parameters with float32 or
bfloat16 state and float64 with float64, and float32 with 8-bit state (``adamkit_adam8bit_host``),
each group of variables in one call, split over ``torch.get_num_threads()`` threads. It reads
θ, g, m, v and writes θ, m, v once, so it runs level with ``torch._fused_adam_`` on the same
tensors (``benchmarks/README.md`` has the measured ratios). PyTorch runs this module's Python every
step, so it does little: the rule's scalars are formed in Python floats (``Job.host_scalars``) and a
group's addresses are prepared once (``_Storage``).

Where it cannot be built (no compiler; ``ADAMKIT_BUILD_KERNEL=0``), or for tensors off the CPU,
``torch._fused_adam_`` (what ``torch.optim.Adam(fused=True)`` runs) serves Adam's own rule with
``epsilon_mode="paper"`` on float32: Algorithm 1, θ ← θ − α·m̂/(√v̂ + ε), AMSGrad's max over the raw
v as adamkit's, decoupled weight decay in the same pass (``torch._fused_adamw_``); the other rules
take the ``adamkit.ops`` path. On this backend Keras's own Adam runs PyTorch's ``_foreach`` ops
(several passes over the state).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import sys
from pathlib import Path

import keras
import torch
from keras.src.backend.common.stateless_scope import in_stateless_scope

from adamkit import state as state_storage
from adamkit.kernels import is_8bit, plain_state, quantized_state, state_names
from adamkit.kernels.build import compile_library
from adamkit.kernels.scalars import host_scalar_table

SOURCE = Path(__file__).with_name("adam_host.cc")
# adamkit_adam_host's kinds: (parameter dtype, state dtype) -> kind
KINDS = {(torch.float32, torch.float32): 0, (torch.float32, torch.bfloat16): 1,
         (torch.float64, torch.float64): 2}
RULES = {"ema": 0, "max": 1, "infinity_norm": 2}  # adam_update.h's Rule, by second moment
_LIBRARY: dict[str, object] = {}


def custom_kernel() -> bool:
    """Whether adamkit's host kernel is built and loaded (on first use; the reason said once)."""
    return _library() is not None


def _library():
    """adamkit's host kernel (``adam_host.cc``), or None where it cannot be had."""
    if "library" not in _LIBRARY:
        _LIBRARY["library"] = None
        if os.environ.get("ADAMKIT_BUILD_KERNEL", "1") != "0":
            try:
                library = _load()
                library.adamkit_adam_host.restype = ctypes.c_int
                library.adamkit_adam8bit_host.restype = ctypes.c_int
                _LIBRARY["library"] = library
            except (RuntimeError, OSError) as error:
                print(f"adamkit: could not build the fused Adam kernel for PyTorch ({error}); "
                      "using PyTorch's fused Adam where it applies, else the ops path (slower).",
                      file=sys.stderr)
    return _LIBRARY["library"]


def _load() -> ctypes.CDLL:
    """The kernel's library. Built with OpenMP where linking ``libgomp.so.1`` gives it PyTorch's
    own OpenMP team (``adam_host.cc`` says why); else, or where that build fails to compile or
    load, with threads of its own."""
    if _pytorch_runs_libgomp():
        try:
            return ctypes.CDLL(str(compile_library(SOURCE, ["-ffp-contract=off", "-fopenmp"])))
        except (RuntimeError, OSError):
            pass
    return ctypes.CDLL(str(compile_library(SOURCE, ["-ffp-contract=off", "-pthread"])))


def _pytorch_runs_libgomp() -> bool:
    """Whether PyTorch's parallel backend is OpenMP from a loaded ``libgomp.so.1`` (Linux wheels):
    a library that links it then joins that runtime, not a second one (conda's libiomp5 or a
    renamed libgomp would be a second)."""
    maps = Path("/proc/self/maps")
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info() or not maps.exists():
        return False
    return any(line.endswith("/libgomp.so.1") for line in maps.read_text().splitlines())


class InPlaceCount(keras.Variable):
    """Keras's iteration count, advanced in place. Keras's ``apply`` ends every step with
    ``iterations.assign_add(1)``, which on PyTorch forms ``self + 1`` as a new tensor, converts it
    and copies it back: 12.5 µs of Python a step, 2 in place. Any other value, and any call in a
    stateless scope (which records the new value instead), takes Keras's own way. Returns the
    count's own tensor (Keras's way returns a new one)."""

    def assign_add(self, value):
        if type(value) is int and self._value is not None and not in_stateless_scope():
            self._value.add_(value)
            return self._value
        return super().assign_add(value)


def count_in_place(counter) -> None:
    """Makes Keras's iteration count ``counter`` an ``InPlaceCount``: the same object (the
    optimizer tracks and saves it as it is), its class changed, where it is Keras's own."""
    if type(counter) is keras.Variable:
        counter.__class__ = InPlaceCount


def _dtype(x) -> str:
    return keras.backend.standardize_dtype(x.dtype)


def _tensor(variable) -> torch.Tensor:
    """The tensor a kernel updates in place: a Keras variable's own storage."""
    return _tensors([variable])[0]


def _tensors(variables) -> list[torch.Tensor]:
    """Each variable's own storage (``adamkit.state.held_value``)."""
    return [state_storage.held_value(v) for v in variables]


class HostKernel:
    """adamkit's kernel through its C ABI: every CPU variable of a dtype pair in ``KINDS``, or of
    float32 with 8-bit state, in one pass."""

    name = "adamkit kernel (C ABI)"

    def refuses(self, optimizer, variable, gradient, slots):
        if not custom_kernel():
            return "the kernel could not be built"
        theta = _tensor(variable)  # torch's own dtypes: Keras's dtype properties cost more per step
        if theta.device.type != "cpu":
            return f"on {theta.device.type}, not the CPU"
        if is_8bit(slots):
            return None if theta.dtype == torch.float32 else f"8-bit state with {theta.dtype}"
        state = plain_state(slots)
        stored = {_tensor(s).dtype for s in state.values()} if state is not None else set()
        if len(stored) == 1 and (theta.dtype, *stored) in KINDS:
            return None
        return f"{theta.dtype} parameters with {'/'.join(map(str, stored)) or 'mixed'} state"

    def groups(self, slots):
        return True

    def apply(self, job):  # no autograd guard: nothing here records a step of θ or its state
        storage = _storage(job)
        # Held here, not only their addresses: the call reads their memory (a gradient converted
        # to the parameters' dtype or made contiguous is a tensor of its own).
        scalars = _host_table(job, storage.dtype)
        grads = _gradients(job.gradients, storage.tensors[:len(job.variables)])
        rule, count = RULES[job.rule.second_moment], ctypes.c_int64(len(job.variables))
        step, threads = ctypes.c_int32(int(job.host_step)), ctypes.c_int(torch.get_num_threads())
        if storage.eight_bit:  # decode, update, re-encode block by block: adamkit.state's codec
            theta, codes, absmax = storage.pointers
            _run("adamkit_adam8bit_host", storage.tensors, rule, count, theta, _pointers(grads),
                 storage.sizes, codes, absmax, scalars, step,
                 *map(_pointer, _codec_tables()), threads)
        else:
            _run("adamkit_adam_host", storage.tensors, storage.kind, rule, count,
                 *storage.pointers, _pointers(grads), storage.sizes, scalars, step,
                 threads)


class _Storage:
    """A group's θ, m, v (and AMSGrad's v̂) as the kernel takes them: the tensors, an array of
    addresses for θ and for each state (8-bit: one for all the codes, one for all the absmax),
    and the sizes."""

    def __init__(self, job):
        self.eight_bit = is_8bit(job.slots[0])
        if self.eight_bit:
            groups = quantized_state(job.slots)
            state = [*groups[0::2], *groups[1::2]]  # every state's codes, then every absmax
        else:
            states = [plain_state(s) for s in job.slots]
            state = [[s[name] for s in states] for name in state_names(states[0])]
        self.variables = [*job.variables, *(x for group in state for x in group)]
        self.tensors = _tensors(self.variables)
        self.addresses = [t.data_ptr() for t in self.tensors]
        count = len(job.variables)
        thetas = self.tensors[:count]
        self.dtype = thetas[0].dtype
        self.sizes = (ctypes.c_int64 * count)(*(t.numel() for t in thetas))
        if self.eight_bit:
            per_part = count * len(state) // 2
            self.pointers = [_pointers(thetas), *(_pointers(self.tensors[i:i + per_part])
                                                  for i in range(count, len(self.tensors), per_part))]
            return
        self.kind = KINDS[self.dtype, self.tensors[count].dtype]
        self.pointers = [_pointers(self.tensors[i:i + count])
                         for i in range(0, len(self.tensors), count)]
        if len(state) == 2:
            self.pointers.append(None)  # no v̂

    def current(self) -> bool:
        """Whether every tensor is still its variable's storage, at the same address."""
        return all(getattr(v, "_value", v) is t and t.data_ptr() == a
                   for v, t, a in zip(self.variables, self.tensors, self.addresses))


def _storage(job) -> _Storage:
    """``job``'s storage, prepared once per group of variables and kept on the optimizer while it
    is ``current`` (forming the addresses took ~10 µs a step); in a stateless scope, made anew.
    Keyed by the parameters alone: their state variables are made once, at ``build``, and the
    entry holds the parameters, so that no other variable can take their ids."""
    if in_stateless_scope():
        return _Storage(job)
    key = ("host kernel", *map(id, job.variables))
    found = job.optimizer._prepared.get(key)
    if found is None or not found.current():
        found = job.optimizer._prepare(key, _Storage(job))
    return found


def _codec_tables() -> tuple:
    """adamkit.state's signed and unsigned codec tables as float32 tensors (made once)."""
    if "tables" not in _LIBRARY:
        _LIBRARY["tables"] = tuple(torch.as_tensor(state_storage.codec_table(signed))
                                   for signed in (True, False))
    return _LIBRARY["tables"]


class TorchFusedAdam:
    """PyTorch's fused Adam (``torch._fused_adam_``, what ``torch.optim.Adam(fused=True)`` runs),
    where adamkit's kernel cannot run: Adam's own rule in the paper's ε form on float32, AMSGrad's
    max over the raw v as adamkit's, decoupled weight decay in the same pass
    (``torch._fused_adamw_``). Not for float64: its AMSGrad step carries float32 rounding (7e-8
    relative at step 1, measured)."""

    name = "PyTorch's fused Adam"

    def refuses(self, optimizer, variable, gradient, slots):
        if not optimizer.rule.peer_exact:
            return "not Adam's rule in the paper's ε form"
        state = plain_state(slots)
        stored = {_tensor(s).dtype for s in state.values()} if state is not None else set()
        if _tensor(variable).dtype != torch.float32 or stored != {torch.float32}:
            return "not float32 parameters with float32 state"
        return None

    def groups(self, slots):
        return True

    @torch.no_grad()
    def apply(self, job):
        rule, rate = job.rule, float(job.learning_rate)
        groups: dict[float, list[int]] = {}
        for i, decay in enumerate(job.decays):
            groups.setdefault(1.0 if decay is None else float(decay), []).append(i)
        states = [plain_state(s) for s in job.slots]
        amsgrad = rule.second_moment == "max"
        step = torch.as_tensor(job.step, dtype=torch.float32)  # the step t, already advanced
        for factor, members in groups.items():
            # torch's AdamW kernel decays by 1 − α·λ formed in double; with λ = (1 − factor)/α
            # that rounds back to adamkit's float32 factor (1 − factor is exact).
            weight_decay = (1.0 - factor) / rate if factor != 1.0 else 0.0
            kernel = torch._fused_adamw_ if weight_decay else torch._fused_adam_
            kernel(
                [_tensor(job.variables[i]) for i in members],
                [torch.as_tensor(job.gradients[i], dtype=torch.float32) for i in members],
                [_tensor(states[i]["momentum"]) for i in members],
                [_tensor(states[i]["velocity"]) for i in members],
                [_tensor(states[i]["velocity_hat"]) for i in members] if amsgrad else [],
                [step] * len(members), lr=rate, beta1=rule.beta_1, beta2=rule.beta_2,
                weight_decay=weight_decay, eps=rule.epsilon, amsgrad=amsgrad, maximize=False)


def _host_table(job, dtype: torch.dtype) -> ctypes.Array:
    """The step's scalar rows (``kernels.scalars``) formed in double on the host, in ``dtype``:
    a C array, whose floats ctypes rounds from the doubles as a cast does (as NumPy's)."""
    rows = host_scalar_table(job.rule, job.host_scalars(), job.host_decays)
    kind = ctypes.c_float if dtype == torch.float32 else ctypes.c_double
    return (kind * (len(rows) * len(rows[0])))(*itertools.chain.from_iterable(rows))


def _gradients(gradients, thetas) -> list:
    """The gradients as contiguous CPU tensors of their parameters' dtype; a clear error for any
    the kernel cannot take."""
    grads = []
    for g, t in zip(gradients, thetas):
        if not (type(g) is torch.Tensor and g.dtype is t.dtype and g.is_contiguous()):
            g = torch.as_tensor(g, dtype=t.dtype).contiguous()
        if not g.is_cpu or g.shape != t.shape:  # is_cpu: a fifth of device.type's cost
            raise ValueError("adamkit's PyTorch kernel needs CPU gradients shaped like their "
                             "variables")
        grads.append(g)
    return grads


def _pointer(tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(tensor.data_ptr())


def _pointers(tensors) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))


def _run(entry: str, written: list, *arguments) -> None:
    """Calls the library's ``entry``; then tells autograd that ``written`` changed in place, as
    PyTorch's own in-place ops do."""
    if getattr(_library(), entry)(*arguments) != 0:
        raise RuntimeError(f"{entry} refused its arguments")
    torch.autograd.graph.increment_version(written)


EXECUTORS = (HostKernel(), TorchFusedAdam())
