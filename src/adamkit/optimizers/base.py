"""The Keras wiring every member of the Adam family shares.

A family member hands this class its rule (``adamkit.rule``: the state it keeps and the scalars of
each step). This class does the rest: validation, building the state, the decoupled weight decay,
skipping non-finite steps, serialisation, and handing each step to an executor
(``adamkit.executors``, chosen there).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import re
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from adamkit import executors, sparse
from adamkit import ops as adam_ops
from adamkit import state as state_storage
from adamkit.rule import Rule

Schedule = keras.optimizers.schedules.LearningRateSchedule
FloatOrSchedule = float | Schedule | Callable[[], Any]


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _describe(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_real(name: str, value: object, *, low: float, high: float = math.inf,
               low_open: bool = False, high_open: bool = False) -> float:
    """Returns ``value`` as a float, or raises a message that names ``name`` and its range."""
    bracket = ("(" if low_open else "[") + f"{low:g}, {high:g}" + (")" if high_open else "]")
    if not _is_real(value):
        raise TypeError(f"`{name}` must be a real number in {bracket}; got {_describe(value)}.")
    value = float(value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if math.isnan(value) or too_low or too_high or (math.isinf(value) and math.isinf(high)):
        raise ValueError(f"`{name}` must be a finite number in {bracket}; got {value!r}.")
    return value


def check_beta(name: str, value: object) -> float:
    return check_real(name, value, low=0.0, high=1.0, high_open=True)


def check_schedulable(name: str, value: object, *, positive: bool) -> FloatOrSchedule:
    """A hyperparameter that is a number, a ``LearningRateSchedule`` or a zero-argument callable."""
    if isinstance(value, Schedule) or (callable(value) and not _is_real(value)):
        return value
    if not _is_real(value):
        kind = "> 0" if positive else ">= 0"
        raise TypeError(
            f"`{name}` must be a finite number {kind}, a "
            f"keras.optimizers.schedules.LearningRateSchedule or a callable; got {_describe(value)}."
        )
    return check_real(name, value, low=0.0, low_open=positive)


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False; got {_describe(value)}.")
    return value


def check_count(name: str, value: object, low: int = 0) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"`{name}` must be a whole number >= {low}; got {_describe(value)}.")
    return int(value)


def check_choice(name: str, value: object, allowed: Sequence[str]) -> str:
    if value not in allowed:
        options = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"`{name}` must be one of {options}; got {_describe(value)}.")
    return value  # type: ignore[return-value]


class AdamFamily(keras.optimizers.Optimizer):
    """Base class of adamkit's optimizers: the shared Keras wiring, no math of its own.

    Weight decay, when set, is decoupled (Loshchilov & Hutter), as in every Keras optimizer:
    θ ← θ·(1 − αₜ·λ) before the step, with αₜ the (scheduled) learning rate. ``weight_decay`` may be
    a number, a ``LearningRateSchedule`` (called with the iteration count) or a callable.

    ``skip_nonfinite=True``: a step whose gradients hold any NaN or ±Inf leaves the parameters and
    all optimizer state, the iteration count included, as they were, and adds one to
    ``skipped_steps``. Off by default, as in Keras and PyTorch: silently dropping steps can hide a
    diverging run (mixed_float16 training already gets this from Keras's LossScaleOptimizer).

    ``lazy=True`` (see ``adamkit.sparse``): for a sparse gradient (an embedding's ``IndexedSlices``
    on TensorFlow) only the touched rows of θ, m and v change, decay included; untouched rows keep
    their values and their moments, bit for bit. On JAX and PyTorch, whose gradients are dense, rows
    whose gradient is entirely zero are left untouched in the same way.

    ``state_dtype`` (see ``adamkit.state``) is how the per-parameter state is stored: ``"float32"``
    (the default; float64 parameters keep float64 state), ``"bfloat16"`` (half the memory) or
    ``"int8"`` (block-wise 8-bit codes, about a quarter, for tensors of ``min_8bit_size`` values or
    more); or per variable, a mapping from name patterns to those or a callable taking the
    variable. The update is always computed in float32 (float64 for float64 parameters) from the
    decoded state, and re-encoded afterwards.

    ``fused``: None (the default) runs each variable on the fastest executor that takes it
    (adamkit's kernels, then the peers' where they compute the same rule, then the ops path);
    False, the ops path only; True, as None, but an error where this backend has no kernel for
    the rule. ``explain()`` lists each variable's executor and why the faster ones passed.
    """

    def __init__(
        self,
        learning_rate: FloatOrSchedule,
        rule: Rule,
        weight_decay: FloatOrSchedule | None = None,
        exclude_from_weight_decay: Sequence[str] | None = None,
        exclude_1d: bool = False,
        lazy: bool = False,
        skip_nonfinite: bool = False,
        state_dtype: state_storage.StateDtype = "float32",
        min_8bit_size: int = state_storage.MIN_QUANTIZED_SIZE,
        fused: bool | None = None,
        **kwargs: Any,
    ) -> None:
        learning_rate = check_schedulable("learning_rate", learning_rate, positive=True)
        if weight_decay is not None:
            weight_decay = check_schedulable("weight_decay", weight_decay, positive=False)
        exclude_from_weight_decay = _name_patterns(exclude_from_weight_decay)
        rule = dataclasses.replace(rule, beta_1=check_beta("beta_1", rule.beta_1),
                                   beta_2=check_beta("beta_2", rule.beta_2),
                                   epsilon=check_real("epsilon", rule.epsilon, low=0.0))
        fused = executors.check_fused(fused, rule)
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)
        self.rule, self.fused = rule, fused
        self.beta_1, self.beta_2, self.epsilon = rule.beta_1, rule.beta_2, rule.epsilon
        self.exclude_1d = check_bool("exclude_1d", exclude_1d)
        self.lazy = check_bool("lazy", lazy)
        self.skip_nonfinite = check_bool("skip_nonfinite", skip_nonfinite)
        self.state_dtype = state_storage.check_state_dtype(state_dtype)
        self.min_8bit_size = check_count("min_8bit_size", min_8bit_size)
        self._check_lazy()
        self._excluded_names = exclude_from_weight_decay
        if exclude_from_weight_decay:
            self.exclude_from_weight_decay(var_names=exclude_from_weight_decay)
        self._choices = {}  # variable index -> (executor, reasons), where the answer is fixed
        self._prepared = {}  # what is worked out once for a group of variables (PyTorch): _prepare
        if keras.backend.backend() == "torch":  # its step runs this Python every time
            from adamkit.kernels import pytorch

            pytorch.count_in_place(self._iterations)

    def _check_lazy(self, state_dtype: object = None) -> None:
        # A callable's answers are known at build: each is checked there.
        given = self.state_dtype if state_dtype is None else state_dtype
        int8 = given == "int8" or isinstance(given, dict) and "int8" in given.values()
        if self.lazy and int8:
            raise ValueError(
                "`lazy=True` cannot be combined with `state_dtype='int8'`: 8-bit state is stored in "
                "blocks of 256 values that span rows, so a row cannot be updated alone. Use "
                "state_dtype='bfloat16' (rows are stored independently) or lazy=False."
            )
        if self.lazy and self.rule.carried:
            raise ValueError(
                f"`lazy=True` is not available for {type(self).__name__}: its state includes "
                f"{', '.join(self.rule.carried)}, a per-variable scalar that advances at every "
                "step, so untouched rows cannot simply be skipped. Lazy updates are available for "
                "Adam, AMSGrad, AdamW, Adamax and RAdam."
            )

    # -- state -----------------------------------------------------------------------------------

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        rule = self.rule
        self._state = {
            name: [
                None if self._overwrite_variable_with_gradient(variable) else
                state_storage.create_slot(
                    self, variable, name,
                    "float32" if name in rule.exact_state else self._state_dtype_of(variable),
                    signed=name in rule.signed_state, min_8bit_size=self.min_8bit_size)
                for variable in var_list
            ]
            for name in rule.state_names
        }
        for name, initial in rule.carried.items():
            self._state[name] = [
                state_storage.PlainSlot(self.add_variable(
                    (),
                    initializer=keras.initializers.Constant(initial),
                    dtype=dtype,
                    name=state_storage.slot_name(variable, name),
                ), dtype)
                for variable in var_list
                for dtype in [state_storage.compute_dtype(variable)
                              if name in rule.exact_state else "float32"]
            ]
        if self.skip_nonfinite:
            self.skipped_steps = self.add_variable((), initializer="zeros", dtype="int32",
                                                   name="skipped_steps")

    def _state_dtype_of(self, variable) -> str:
        dtype = state_storage.state_dtype_of(self.state_dtype, variable)
        if dtype == "int8" and math.prod(variable.shape) >= self.min_8bit_size:
            self._check_lazy(dtype)
        return dtype

    def slots_of(self, variable) -> dict:
        """This parameter's state as stored (``adamkit.state`` slots), by name."""
        try:
            index = self._get_variable_index(variable)
        except (KeyError, AttributeError):
            raise ValueError(self._unknown(variable)) from None
        return {name: slots[index] for name, slots in self._state.items()}

    def _unknown(self, variable) -> str:
        """Why ``variable`` has no state here: the optimizer is not built, or does not hold it."""
        if not self.built:
            return ("the optimizer is not built yet, so it holds no state: call "
                    "build(variables) or apply() first.")
        return (f"{getattr(variable, 'path', variable)!r} is not one of this optimizer's "
                "variables (those given to build or to its first apply).")

    def state_of(self, variable) -> dict:
        """This parameter's optimizer state, by name, decoded to float tensors."""
        return {name: slot.read() for name, slot in self.slots_of(variable).items()}

    def state_values(self) -> dict:
        """Every parameter's decoded state: ``{name: [tensor per parameter]}``."""
        if not self.built:
            raise ValueError(self._unknown(None))
        return {name: [slot.read() for slot in slots] for name, slots in self._state.items()}

    # -- the step --------------------------------------------------------------------------------

    def explain(self) -> executors.Explanation:
        """Which executor each variable's step takes (for a dense gradient) and why the faster
        ones passed it over: dtype, device, state dtype, strategy, a kernel that could not be
        built. Call it after the optimizer is built (``build`` or a first step).

        Examples:
            >>> import keras, adamkit
            >>> optimizer = adamkit.Adam(fused=False)
            >>> optimizer.build([keras.Variable([1.0, 2.0], name="w")])
            >>> print(optimizer.explain())
            w: ops
        """
        if not self.built:
            raise ValueError("explain() needs a built optimizer: call build(variables) or apply() "
                             "first.")
        return executors.Explanation(
            executors.Choice(getattr(v, "path", v.name), executor.name, reasons)
            for v in self._trainable_variables
            for executor, reasons, _ in [self._executor(v, None)])

    def _executor(self, variable, gradient) -> tuple:
        """(executor, the others' reasons, group key: None where it runs alone) for this variable
        and gradient: ``executors.choose``'s answer, asked once per variable where it is fixed
        (PyTorch, whose step runs this Python every time); TensorFlow and JAX ask only while
        tracing, and TensorFlow's answer differs under XLA and not."""
        fixed = self._choices_fixed()
        index = self._get_variable_index(variable) if fixed else None
        if index in self._choices:
            return self._choices[index]
        executor, reasons = executors.choose(self, variable, gradient)
        slots, group = self.slots_of(variable), None
        dense = gradient is None or not sparse.is_sparse(gradient)  # sparse: one at a time
        if dense and executor.groups(slots):
            group = (executor.name, variable.dtype,
                     *(v.dtype for s in slots.values() for v in s.variables))
        found = (executor, reasons, group)
        if fixed:
            self._choices[index] = found
        return found

    def _choices_fixed(self) -> bool:
        """Whether each variable's executor, once chosen, stays its executor: on PyTorch, whose
        step runs this Python every time (lazy updates choose by each step's gradient)."""
        return keras.backend.backend() == "torch" and not self.lazy

    def _job(self, pairs: list, learning_rate) -> executors.Job:
        """The step of these (gradient, variable) pairs, which share a compute dtype."""
        dtype = state_storage.compute_dtype(pairs[0][1])
        return executors.Job(self, [v for _, v in pairs], [g for g, _ in pairs],
                             [self.slots_of(v) for _, v in pairs], dtype, learning_rate,
                             [self._decays(v) for _, v in pairs])

    def _apply_grouped(self, grads_and_variables: list, learning_rate) -> list:
        """Runs the variables whose executor takes many at once, one call per executor, dtype and
        state dtype; returns the (gradient, variable) pairs left for Keras's per-variable loop."""
        groups, rest = self._groups(grads_and_variables)
        for executor, members, dtype, slots, decaying in groups:
            pairs = [grads_and_variables[i] for i in members]
            executor.apply(executors.Job(self, [v for _, v in pairs], [g for g, _ in pairs],
                                         slots, dtype, learning_rate, decaying))
        return [grads_and_variables[i] for i in rest]

    def _groups(self, grads_and_variables: list) -> tuple:
        """([(executor, its pairs' indices, their compute dtype, slots and whether each decays)],
        the indices of the pairs that run alone). Worked out once for a list of variables where
        the executors' choices are fixed (``_executor``: PyTorch, whose step runs this Python every
        time), keyed by the variables' ids: Keras's ``apply`` takes only variables the optimizer
        holds, so no other object can take one of their ids."""
        fixed = self._choices_fixed()
        key = ("groups", self.weight_decay is None, self.exclude_1d,  # what _decays reads
               *(id(v) for _, v in grads_and_variables)) if fixed else None
        found = self._prepared.get(key)
        if found is not None:
            return found
        groups, rest = {}, []
        for index, (gradient, variable) in enumerate(grads_and_variables):
            executor, _, group = self._executor(variable, gradient) if gradient is not None \
                else (None, None, None)
            if group is None:
                rest.append(index)
            else:
                groups.setdefault(group, (executor, []))[1].append(index)
        found = ([(executor, members, state_storage.compute_dtype(grads_and_variables[members[0]][1]),
                   [self.slots_of(grads_and_variables[i][1]) for i in members],
                   [self._decays(grads_and_variables[i][1]) for i in members])
                  for executor, members in groups.values()], rest)
        return self._prepare(key, found) if fixed else found

    def _prepare(self, key: tuple, value):
        """Keeps ``value``, worked out once for the variables that ``key`` names (PyTorch runs
        each step's Python: the groups here, a kernel's addresses), and returns it. A model whose
        steps leave out ever new sets of variables would add entries without end: past
        ``PREPARED`` of them, the oldest goes."""
        if len(self._prepared) >= PREPARED:
            del self._prepared[next(iter(self._prepared))]
        self._prepared[key] = value
        return value

    def update_step(self, gradient, variable, learning_rate):
        executor, _, _ = self._executor(variable, gradient)
        executor.apply(self._job([(gradient, variable)], learning_rate))

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        def run_update():
            if getattr(self, "_chunks_done", None) is not None:  # Keras's __setattr__ costs ~1 µs
                self._chunks_done = None  # chunks.after_previous: a new step, maybe a new trace
            rest = self._apply_grouped(list(zip(grads, trainable_variables)), learning_rate)
            if rest:  # Keras's loop: update_step for each variable
                super(AdamFamily, self)._backend_update_step(
                    [g for g, _ in rest], [v for _, v in rest], learning_rate)

        if not self.skip_nonfinite:
            return run_update()
        finite = ops.all(ops.stack([ops.all(ops.isfinite(ops.convert_to_tensor(g))) for g in grads]))

        if keras.backend.backend() == "jax":
            # JAX traces cond's branches and forbids side effects in them: update, then select.
            state = [*trainable_variables, *self.variables]
            before = [ops.convert_to_tensor(v) for v in state]  # immutable arrays: no copy made
            run_update()
            for variable, old in zip(state, before):
                variable.assign(ops.where(finite, ops.convert_to_tensor(variable), old))
        else:
            ops.cond(finite, run_update, lambda: None)
        self._step_finite = finite  # read by the EMA update that Keras runs after this step
        skipped = ops.cast(ops.logical_not(finite), "int32")
        self.skipped_steps.assign_add(skipped)
        # apply() adds one to the iteration count afterwards; a skipped step must not advance it.
        self._iterations.assign_sub(ops.cast(skipped, self._iterations.dtype))

    def _finite_step(self):
        """Whether this step's gradients were finite, where ``skip_nonfinite`` checked them (the
        tensor of the step being traced or run); None where it did not."""
        return getattr(self, "_step_finite", None) if self.skip_nonfinite else None

    def _update_model_variables_moving_average(self, trainable_variables):
        # A step that skip_nonfinite skipped leaves the EMA of the weights as it was, too.
        finite = self._finite_step()
        if finite is None:
            return super()._update_model_variables_moving_average(trainable_variables)
        averages = [a for a in self._model_variables_moving_average if a is not None]
        before = [ops.copy(a) for a in averages]
        super()._update_model_variables_moving_average(trainable_variables)
        for average, old in zip(averages, before):
            average.assign(ops.where(finite, ops.convert_to_tensor(average), old))

    def finalize_variable_values(self, var_list):
        # After training, outside any step: the average holds every finite step's, whether the
        # last step was skipped or not, and that step's check belongs to a trace that has ended.
        self._step_finite = None
        super().finalize_variable_values(var_list)

    def _overwrite_model_variables_with_average_value(self, trainable_variables):
        finite = self._finite_step()
        if finite is None:
            return super()._overwrite_model_variables_with_average_value(trainable_variables)
        ops.cond(finite, lambda: super(AdamFamily, self)
                 ._overwrite_model_variables_with_average_value(trainable_variables),
                 lambda: None)

    # -- weight decay ----------------------------------------------------------------------------

    def _decay_factor(self, learning_rate, dtype):
        return adam_ops.decay_factor(learning_rate, ops.cast(self._current_weight_decay(), dtype))

    def _host_decay_factor(self, rate: float, dtype: str):
        """``_decay_factor`` formed on the host in NumPy from the learning rate's value, for a
        kernel called from the host: the same product and difference in ``dtype``, its value a
        Python float; None where the weight decay is a schedule or a callable."""
        if not isinstance(self.weight_decay, numbers.Real):
            return None
        return _host_decay_factor(float(rate), self.weight_decay, dtype)

    def _apply_weight_decay(self, variables):
        """Keras's own pass is replaced: the executors decay inside the step."""

    def _decays(self, variable) -> bool:
        if self.weight_decay is None:
            return False
        if self.exclude_1d and len(variable.shape) <= 1:
            return False
        return self._use_weight_decay(variable)

    def _current_weight_decay(self):
        decay = self.weight_decay
        if isinstance(decay, Schedule):
            return decay(self.iterations)
        if callable(decay):
            return decay()
        return decay

    # -- serialisation ---------------------------------------------------------------------------

    def get_config(self) -> dict:
        config = super().get_config()
        if isinstance(self.weight_decay, Schedule) or callable(self.weight_decay):
            config["weight_decay"] = keras.saving.serialize_keras_object(self.weight_decay)
        config.update(
            beta_1=self.beta_1,
            beta_2=self.beta_2,
            epsilon=self.epsilon,
            exclude_from_weight_decay=self._excluded_names,
            exclude_1d=self.exclude_1d,
            lazy=self.lazy,
            skip_nonfinite=self.skip_nonfinite,
            state_dtype=(keras.saving.serialize_keras_object(self.state_dtype)
                         if callable(self.state_dtype) else self.state_dtype),
            min_8bit_size=self.min_8bit_size,
            fused=self.fused,  # as given: None stays "wherever it applies"
        )
        return config

    @classmethod
    def from_config(cls, config: dict, custom_objects=None):
        config = dict(config)
        if isinstance(config.get("weight_decay"), dict):
            config["weight_decay"] = keras.saving.deserialize_keras_object(
                config["weight_decay"], custom_objects=custom_objects
            )
        if _serialized_object(config.get("state_dtype")):  # a callable's (a mapping's is as given)
            config["state_dtype"] = keras.saving.deserialize_keras_object(
                config["state_dtype"], custom_objects=custom_objects)
        return super().from_config(config, custom_objects=custom_objects)


PREPARED = 256  # entries AdamFamily._prepare keeps


def _serialized_object(value) -> bool:
    """Whether ``value`` is what ``keras.saving.serialize_keras_object`` makes of a function or
    of a registered object, rather than a mapping of name patterns to dtypes."""
    keys = {"module", "class_name", "config", "registered_name"}
    return isinstance(value, dict) and {"class_name", "config", "registered_name"} <= set(value) \
        <= keys


@functools.lru_cache(maxsize=64)
def _host_decay_factor(rate: float, weight_decay: float, dtype: str):
    """``AdamFamily._host_decay_factor``, kept for a rate (most steps share one). λ as ``ops.cast``
    makes a Python number a tensor of ``dtype`` (TensorFlow rounds it to float32 first, PyTorch
    does not). One-element arrays, not scalars: NumPy 1.x promotes a float32 scalar met by a
    Python float to float64."""
    weight_decay = np.reshape(ops.convert_to_numpy(ops.cast(weight_decay, dtype)), (1,))
    return float(adam_ops.decay_factor(np.full(1, rate, dtype), weight_decay)[0])


def _name_patterns(patterns: Sequence[str] | None) -> list[str] | None:
    if patterns is None:
        return None
    if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
        raise TypeError("`exclude_from_weight_decay` must be a list of name patterns (strings); "
                        f"got {_describe(patterns)}.")
    for pattern in patterns:
        try:
            re.compile(pattern)  # Keras matches them with re.search
        except re.error as error:
            raise ValueError(f"`exclude_from_weight_decay`: {pattern!r} is not a regular "
                             f"expression ({error}).") from None
    return list(patterns)
