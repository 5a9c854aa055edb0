"""Executors: what applies a rule's step to variables, and the one place that chooses among them.

Every executor has one shape (``Executor``): it says why it cannot take a variable (or None when
it can), whether it takes many variables in one call, and applies a ``Job``, one step of the rule
on some variables. The ops path (``OpsPath``) is the reference and takes anything; the lazy paths
run the same rule on rows; each backend's kernels (``adamkit.kernels``) and the peers' kernels used
as fallbacks are executors too. ``choose`` asks them in order of speed, once per variable where
the answer cannot change, and ``AdamFamily.explain`` shows its answers.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import struct
from typing import Any, Protocol

import keras
import numpy as np
from keras import ops

from adamkit import chunks, sparse
from adamkit import state as state_storage


@dataclasses.dataclass
class Job:
    """One step of ``optimizer``'s rule on ``variables`` (one dtype, one state dtype).

    ``dtype`` is the variables' compute dtype; ``rate`` the learning rate as the optimizer hands
    it over; ``decaying`` says of each variable whether weight decay applies to it."""

    optimizer: Any
    variables: list
    gradients: list
    slots: list[dict]
    dtype: str
    rate: Any
    decaying: list[bool]

    @functools.cached_property
    def decays(self) -> list:
        """Each variable's weight-decay factor 1 − αₜλ as a tensor of the compute dtype, or None
        where it does not decay (one object shared by the variables that do)."""
        if not any(self.decaying):
            return [None] * len(self.decaying)
        factor = self.optimizer._decay_factor(self.learning_rate, self.dtype)
        return [factor if decaying else None for decaying in self.decaying]

    @functools.cached_property
    def host_decays(self) -> list:
        """``decays``' values as Python floats formed on the host, for a kernel called from the
        host (``_host_decay_factor``); read from ``decays`` where the optimizer cannot form it
        so."""
        if not any(self.decaying):
            return [None] * len(self.decaying)
        factor = self.optimizer._host_decay_factor(self.host_rate, self.dtype)
        if factor is None:
            return [None if d is None else float(d) for d in self.decays]
        return [factor if decaying else None for decaying in self.decaying]

    @functools.cached_property
    def step(self):
        """t, the step being taken, as a tensor of the compute dtype (formed on first use: a
        kernel called from the host reads ``host_step`` instead, without Keras ops)."""
        return ops.cast(self.optimizer.iterations + 1, self.dtype)

    @functools.cached_property
    def learning_rate(self):
        """αₜ as a tensor of the compute dtype."""
        return ops.cast(self.rate, self.dtype)

    @functools.cached_property
    def host_step(self) -> float:
        """``step``'s value as a Python float, read on the host: rounded to the compute dtype
        first, as ``step`` is."""
        return rounded(float(int(host_number(self.optimizer.iterations)) + 1), self.dtype)

    @functools.cached_property
    def host_rate(self) -> float:
        """``learning_rate``'s value as a Python float, read on the host, rounded as it is."""
        return rounded(host_number(self.rate), self.dtype)

    @property
    def rule(self):
        return self.optimizer.rule

    def scalars(self, dtype: str):
        """The rule's scalars of this step, formed in ``dtype`` (the parameters' own where the
        rule says so), one entry per variable where they differ; advances the state the rule
        carries (NAdam's Πμ, handed over in the parameters' dtype), which each executor asks for
        exactly once per step."""
        rule = self.rule
        parameter_dtype = self.dtype
        if rule.scalars_in_parameter_dtype:
            dtype = parameter_dtype
        step, rate = ops.cast(self.step, dtype), ops.cast(self.learning_rate, dtype)
        carried = {}  # in the parameters' dtype, whatever ``dtype`` the scalars are formed in
        for name in rule.carried:
            values = [ops.cast(s[name].read(), parameter_dtype) for s in self.slots]
            carried[name] = values[0] if len(values) == 1 else ops.stack(values)
        scalars, advanced = rule.scalars(step, rate, carried)
        if not advanced:
            return scalars
        written = ops.cast(self.optimizer.iterations + 1, "int32")
        for name, value in advanced.items():
            values = [value] if len(self.slots) == 1 else ops.unstack(value, num=len(self.slots))
            for s, v in zip(self.slots, values):
                s[name].write(self.optimizer, v, written)
        return scalars

    def host_scalars(self) -> Any:
        """``scalars("float64")`` as Python floats, for a kernel called from the host: the same
        equations (``adamkit.ops``) without a Keras op's dispatch each, the cost that PyTorch's
        step pays in Python. ``math``'s ``expm1`` and ``exp`` and a backend's may differ in a
        double's last bit (RAdam's ρₜ, a difference, makes that some 70), which float32 rows
        round away; float64 parameters, rules that carry state and rules that form their scalars
        in the parameters' dtype take the tensors' way. Where Python's floats raise (a division
        by zero, as in RAdam's ρ∞ − 4 at β2 = 0.6), NumPy's doubles give IEEE's infinities."""
        rule = self.rule
        if self.dtype != "float32" or rule.carried or rule.scalars_in_parameter_dtype:
            return self.scalars("float64")
        try:
            return rule.scalars(self.host_step, self.host_rate, {})[0]
        except (ArithmeticError, ValueError):
            return rule.scalars(np.float64(self.host_step), np.float64(self.host_rate), {})[0]

    def single(self) -> tuple:
        """(variable, gradient, decay factor or None, compute dtype) of a one-variable job."""
        (variable,), (gradient,), (decay,) = self.variables, self.gradients, self.decays
        return variable, gradient, decay, state_storage.compute_dtype(variable)

    def state(self, index: int) -> dict:
        """The per-parameter state of variable ``index`` as stored (slots), by name."""
        return {n: s for n, s in self.slots[index].items() if n not in self.rule.carried}


def rounded(x: float, dtype: str) -> float:
    """``x`` rounded to ``dtype`` (float32: to nearest, as a cast; struct's, a C cast, costs a
    tenth of NumPy's), as a Python float."""
    if dtype == "float32":
        return _FLOAT32.unpack(_FLOAT32.pack(x))[0]
    return float(np.dtype(dtype).type(x))


_FLOAT32 = struct.Struct("f")


def host_number(x) -> float:
    """A scalar tensor's or variable's value as a Python number, read on the host."""
    return float(state_storage.held_value(x))


class Executor(Protocol):
    """Applies a rule's step; see the module docstring. One without ``assigns = True`` is never
    given a rule that assigns its parameters (``Rule.assigns``)."""

    name: str

    def refuses(self, optimizer, variable, gradient, slots: dict) -> str | None:
        """Why this executor cannot take ``variable`` (with this gradient and state); None if it
        can. ``gradient`` may be None: a dense gradient shaped like the variable."""

    def groups(self, slots: dict) -> bool:
        """Whether it takes many variables (of one dtype and state dtype) in one call."""

    def apply(self, job: Job) -> None:
        """One step of ``job.rule`` on ``job.variables``, in place."""


def read_state(job: Job, index: int, dtype: str) -> dict:
    return {name: ops.cast(slot.read(), dtype) for name, slot in job.state(index).items()}


def write_state(job: Job, index: int, values: dict, wait=None) -> None:
    """Stores ``values`` as variable ``index``'s state; ``wait``: ``update_finished``'s zero, added
    to the step number that the state's encoders take (the dithers), which orders them after the
    parameter's update."""
    iteration = ops.cast(job.optimizer.iterations + 1, "int32")
    if wait is not None:
        iteration = iteration + wait
    for name, value in values.items():
        job.slots[index][name].write(job.optimizer, value, iteration)


def update_finished(variable):
    """An int32 0 that XLA computes from ``variable``'s new value, where XLA compiles the step
    (None elsewhere). The encoders that dither (bfloat16 and 8-bit state) take it in their step
    number and so wait for the parameter's update: both read the stored state, whose buffers the
    new state takes in place, and with neither ordered before the other XLA copied every such
    state tensor whole first (JAX, three Dense(4096) layers with bfloat16 state,
    ``fused=False``: 6.67 bytes a parameter of temporaries, 5.34 without the copies). Float32
    state is not ordered: on the ops path its new moments are tensors of their own, which the
    update reads, and lazy rows write it first (``MaskedRows``); ordered after the update through
    the rows' mask instead, XLA kept the new moments whole (a 100,000 × 64 table: 9.03 bytes a
    parameter of temporaries, 18 ms a step; written first, 1.03 and 1.0 ms)."""
    if not math.prod(variable.shape) or _split(variable):
        return None
    if not chunks.compiled_by_xla():  # TensorFlow without jit_compile, PyTorch
        return None
    value = ops.convert_to_tensor(variable)
    if not chunks.traced(value):  # eager JAX: nothing to order
        return None
    bits = ops.view(ops.cast(ops.reshape(value, (-1,))[0], "float32"), "int32")
    return ops.minimum(bits & 0x7FFFFFFF, 0)  # the sign bit cleared: ≥ 0, so the minimum is 0


def _split(variable) -> bool:
    """Whether the Keras distribution in effect splits ``variable`` across devices: reading one
    element of it would then be a collective each step (replicated ones are read where they
    are)."""
    distribution = keras.distribution.distribution()
    if distribution is None:
        return False
    try:
        layout = distribution.get_variable_layout(variable)
    except (AttributeError, KeyError, TypeError, ValueError):  # not a variable it knows
        return True
    return layout is not None and any(axis is not None for axis in layout.axes)


class OneAtATime:
    """An executor that takes one variable per call."""

    def groups(self, slots):
        return False


class OpsPath(OneAtATime):
    """The reference: the rule on ``keras.ops`` tensors, one variable at a time, every result
    assigned through the optimizer (which is what distribution strategies need)."""

    name = "ops"
    assigns = True

    def refuses(self, optimizer, variable, gradient, slots):
        return None

    def apply(self, job):
        optimizer, rule = job.optimizer, job.rule
        variable, gradient, decay, dtype = job.single()
        if rule.assigns:
            return _assign(job, variable, ops.cast(sparse.densified(gradient), dtype), decay, dtype)
        if decay is not None:
            optimizer.assign(variable, ops.cast(variable, dtype) * decay)
        gradient = ops.cast(sparse.densified(gradient), dtype)
        scalars = job.scalars(dtype)
        state = rule.moments(gradient, read_state(job, 0, dtype))
        optimizer.assign_sub(variable, ops.cast(rule.update(gradient, state, scalars),
                                                variable.dtype))
        write_state(job, 0, state, wait=update_finished(variable))


def _assign(job: Job, variable, gradient, decay, dtype: str) -> None:
    """The step of a rule that assigns the parameter its new value (``Rule.assign``)."""
    parameter, state = job.rule.assign(ops.cast(variable, dtype), gradient,
                                       read_state(job, 0, dtype), job.scalars(dtype), decay)
    job.optimizer.assign(variable, ops.cast(parameter, variable.dtype))
    write_state(job, 0, state, wait=update_finished(variable))


class Chunks(OneAtATime):
    """The ops path on chunks of a large variable whose state is lean (``adamkit.chunks``): the
    same results, without the decoded state's full-size temporaries. Its refusals are not
    listed by ``explain``: the ops path is the same step."""

    name = "ops, in chunks"
    listed = False

    def refuses(self, optimizer, variable, gradient, slots):
        return chunks.worth_chunking(variable, slots)

    def apply(self, job):
        chunks.chunked_step(job)


class MaskedRows(OneAtATime):
    """``lazy=True`` on JAX and PyTorch, whose gradients are dense: the rule on whole tensors, and
    only the rows the gradient touches (``sparse.named_rows``) take the results, decay included."""

    name = "lazy rows (masked)"

    def refuses(self, optimizer, variable, gradient, slots):
        if not optimizer.lazy:
            return "lazy=False"
        if keras.backend.backend() == "tensorflow":
            return "TensorFlow: sparse gradients name their rows"
        return None

    def apply(self, job):
        optimizer, rule = job.optimizer, job.rule
        variable, gradient, decay, dtype = job.single()
        touched = sparse.named_rows(gradient, variable.shape)
        gradient = ops.cast(sparse.densified(gradient), dtype)
        before = read_state(job, 0, dtype)
        state = rule.moments(gradient, before)
        scalars = job.scalars(dtype)
        stored = {k: ops.where(touched, v, before[k]) for k, v in state.items()}
        # State kept exactly (the compute dtype itself) is written first and read back for the
        # update, the same values on the touched rows: then nothing reads the old state after its
        # write, and XLA updates it in place (it copied m and v whole first); rounded state is
        # written after the update instead, its encoder made to wait for it.
        exact = all(slot.exact for slot in job.state(0).values())
        if exact:
            write_state(job, 0, stored)
            state = read_state(job, 0, dtype)
        update = rule.update(gradient, state, scalars)
        theta = ops.cast(variable, dtype)
        decayed = theta if decay is None else theta * decay
        optimizer.assign(variable, ops.where(touched, decayed - update, theta))
        if not exact:
            write_state(job, 0, stored, update_finished(variable))


class SparseRows(OneAtATime):
    """``lazy=True`` with a TensorFlow ``IndexedSlices`` gradient: the rule on the touched rows
    only (``sparse.lazy_sparse_step``)."""

    name = "lazy rows (sparse)"

    def refuses(self, optimizer, variable, gradient, slots):
        return sparse.lazy_refusal(optimizer, gradient)

    def apply(self, job):
        sparse.lazy_sparse_step(job)


def backend_executors(optimizer, lazy: bool = False) -> tuple:
    """The backend's kernels in order of preference (none with ``fused=False``); ``lazy``: its
    kernels for touched rows, which go before the lazy ops paths."""
    if optimizer.fused is False:
        return ()
    backend = keras.backend.backend()
    if backend == "tensorflow":
        from adamkit.kernels import tensorflow as kernels
    elif backend == "jax":
        from adamkit.kernels import jax as kernels
    elif backend == "torch":
        from adamkit.kernels import pytorch as kernels
    else:
        return ()
    return getattr(kernels, "LAZY_EXECUTORS", ()) if lazy else kernels.EXECUTORS


def candidates(optimizer) -> tuple:
    return (*backend_executors(optimizer, lazy=True), SparseRows(), MaskedRows(),
            *backend_executors(optimizer), Chunks(), OpsPath())


@dataclasses.dataclass
class Choice:
    """The executor a variable takes, and why each one before it in line did not take it."""

    variable: str
    executor: str
    passed_over: dict[str, str]

    def __str__(self) -> str:
        reasons = "; ".join(f"not {name}: {why}" for name, why in self.passed_over.items())
        return f"{self.variable}: {self.executor}" + (f" ({reasons})" if reasons else "")


def refusal(executor, optimizer, variable, gradient, slots) -> str | None:
    """Why ``executor`` does not take ``variable``: its own reason, or, for a rule that assigns
    its parameters, that it computes θ·decay − update only (``lazy=False`` stays the lazy rows'
    reason, which ``choose`` does not list)."""
    why = executor.refuses(optimizer, variable, gradient, slots)
    rule = optimizer.rule
    if rule.assigns and not getattr(executor, "assigns", False) and \
            not (why or "").startswith("lazy=False"):
        return f"{type(optimizer).__name__} assigns its parameters (kernels: θ·decay − update)"
    return why


def choose(optimizer, variable, gradient) -> tuple[Executor, dict[str, str]]:
    """The first executor in line that takes ``variable``, and the others' reasons."""
    slots = optimizer.slots_of(variable)
    passed_over = {}
    for executor in candidates(optimizer):
        why = refusal(executor, optimizer, variable, gradient, slots)
        if why is None:
            return executor, passed_over
        if not why.startswith("lazy=False") and getattr(executor, "listed", True):
            passed_over[executor.name] = why
    raise AssertionError("the ops path takes every variable")


class Explanation(list):
    """``explain()``'s answer: a list of ``Choice``; printed, one line per variable."""

    def __str__(self) -> str:
        return "\n".join(str(choice) for choice in self)


def check_fused(fused: object, rule) -> bool | None:
    """``fused``: None, the kernels wherever they apply; False, never; True, require them (a clear
    error where this backend has none for the rule)."""
    if fused is None or fused is False:
        return fused
    if fused is not True:
        raise TypeError(f"`fused` must be True, False or None; got {fused!r} "
                        f"({type(fused).__name__}).")
    if rule.assigns:
        raise ValueError(
            f"`fused=True`: no kernel computes {type(rule).__name__.removesuffix('Rule')}'s step "
            "(it assigns its parameters; the ops path runs it): use fused=None or fused=False.")
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax", "torch"):
        raise ValueError(
            f"`fused=True` needs the TensorFlow, JAX or PyTorch backend; this is {backend}. "
            "Use fused=None (the fast path wherever it exists) or fused=False.")
    # Without adamkit's kernel, TensorFlow's and PyTorch's own fused Adam serve Adam's rule in
    # the paper's ε form; JAX has none.
    if backend == "jax" or not rule.peer_exact:
        kernels = importlib.import_module(
            f"adamkit.kernels.{'pytorch' if backend == 'torch' else backend}")
        if not kernels.custom_kernel():
            if backend == "jax":
                raise ValueError(
                    "`fused=True` on JAX needs adamkit's kernel, which is not available here (no "
                    "C++ compiler, ADAMKIT_BUILD_KERNEL=0, or not on the CPU); use fused=None or "
                    "fused=False.")
            what = ("epsilon_mode='keras'" if getattr(rule, "epsilon_mode", "") == "keras"
                    else type(rule).__name__.removesuffix("Rule"))
            name = {"tensorflow": "TensorFlow", "torch": "PyTorch"}[backend]
            raise ValueError(
                f"`fused=True` on {name} without adamkit's kernel (it could not be built here) "
                f"needs Adam with epsilon_mode='paper' ({name}'s fused kernel adds ε after bias "
                f"correction), not {what}; use fused=None or fused=False.")
    return fused
