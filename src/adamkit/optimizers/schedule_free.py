"""Schedule-free AdamW: no learning-rate schedule; the model trains at an interpolation y of the
Adam iterate z and its weighted average x, and is evaluated and saved at x."""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
from typing import Any

import keras
from keras import ops

from adamkit import ops as adam_ops
from adamkit.optimizers.base import AdamFamily, FloatOrSchedule, check_real
from adamkit.optimizers.docs import shared_args
from adamkit.rule import Rule, Scalars


@dataclasses.dataclass(frozen=True)
class ScheduleFreeScalars(Scalars):
    """Adam's (lr_t as the step size, c = 1 − β2ᵗ, ε), plus the averaging weight cₜ and whether
    this is the variable's first step (its z and x then start from the parameter)."""

    average_weight: Any = None
    first: Any = None


@dataclasses.dataclass(frozen=True)
class ScheduleFreeRule(Rule):
    """Schedule-free AdamW's step. Each variable carries the running maximum of lr_t and the
    weight sum Σw (a compensated pair, so that it stays exact over long runs), both in the
    parameters' dtype; z and x stay there too, only v takes ``state_dtype``."""

    warmup_steps: int = 0
    r: float = 0.0
    weight_lr_power: float = 2.0
    carried = {"lr_max": 0.0, "weight_sum": 0.0, "weight_sum_low": 0.0}

    @property
    def state_names(self):
        return ("z", "x", "velocity")

    @property
    def signed_state(self):
        return ("z", "x")

    @property
    def exact_state(self):
        return ("z", "x", *self.carried)

    @property
    def assigns(self):
        return True

    def scalars(self, step, learning_rate, carried):
        dtype = carried["lr_max"].dtype
        t, rate = ops.cast(step, dtype), ops.cast(learning_rate, dtype)
        rate = rate * adam_ops.warmup(t, self.warmup_steps)
        first = carried["lr_max"] <= 0.0  # every earlier lr_t was 0 (or there was none): z = x = y
        lr_max = adam_ops.larger(carried["lr_max"], rate)
        weight = adam_ops.averaging_weight(t, lr_max, self.r, self.weight_lr_power)
        high, low = adam_ops.compensated_add(carried["weight_sum"], carried["weight_sum_low"],
                                             weight)
        total = high + low
        average_weight = ops.where(total > 0.0, weight / ops.where(total > 0.0, total, 1.0), 0.0)
        return ScheduleFreeScalars(rate, self.epsilon,
                                   correction=adam_ops.bias_correction(self.beta_2, t),
                                   average_weight=average_weight, first=first), \
            {"lr_max": lr_max, "weight_sum": high, "weight_sum_low": low}

    def assign(self, parameter, gradient, state, scalars, decay):
        z = ops.where(scalars.first, parameter, state["z"])
        x = ops.where(scalars.first, parameter, state["x"])
        rate = scalars.step_size
        if decay is not None:  # λ, applied to z at y (the reference's default)
            z = z - parameter * (rate * decay)
        velocity = adam_ops.second_moment(state["velocity"], gradient, self.beta_2)
        z = z - gradient / (ops.sqrt(velocity / scalars.correction) + scalars.epsilon) * rate
        x = adam_ops.interpolate(x, z, scalars.average_weight)
        y = adam_ops.interpolate(x, z, 1.0 - self.beta_1)
        return y, {"z": z, "x": x, "velocity": velocity}

    def training_point(self, state):
        """y = β1·x + (1 − β1)·z, as the step forms it."""
        return adam_ops.interpolate(state["x"], state["z"], 1.0 - self.beta_1)


@keras.saving.register_keras_serializable(package="adamkit")
@shared_args
class ScheduleFreeAdamW(AdamFamily):
    r"""Schedule-free AdamW (Defazio et al., NeurIPS 2024): no learning-rate schedule to choose,
    and no run length to know in advance.

    Per step t = 1, 2, … with gradient gₜ taken at the model's variables y, and z = x = y at the
    start (the model trains at y; evaluate and save at x, ``averaged()``):

        lrₜ = α·min(1, t/warmup_steps),   lr_max = max(lr_max, lrₜ)
        wₜ = t^r·lr_max^weight_lr_power,   cₜ = wₜ/Σ₁..ₜ wᵢ
        z ← z − lrₜ·λ·y
        v ← β2·v + (1 − β2)·gₜ²
        z ← z − lrₜ·gₜ/(√(v/(1 − β2ᵗ)) + ε)
        x ← (1 − cₜ)·x + cₜ·z
        y ← β1·x + (1 − β1)·z

    This is ``AdamWScheduleFreeReference`` of the authors' ``schedulefree`` package (1.4.1),
    which it matches step for step: parameters, x, z and v. α is the Keras learning rate (a
    schedule, if one is given, multiplies the warm-up). Weight decay λ acts on z at y inside the
    step, not through Keras's decoupled decay (``exclude_from_weight_decay`` and ``exclude_1d``
    still choose the decayed variables). Keras's own ``ScheduleFreeAdamW`` differs: cₜ = 1/t
    (no learning-rate weighting, which matters during warm-up), decay applied to y by the base
    class, and it evaluates and saves y.

    The average x is what the method's guarantees are about: ``with optimizer.averaged():``
    holds x in the variables inside the block, ``use_average()`` and ``use_training_point()``
    switch between x and y, and ``adamkit.callbacks.ScheduleFreeEval`` does it around every
    evaluation inside ``fit`` and leaves x in the model at the end. Models with
    BatchNormalization: their running statistics were gathered at y; recompute them at x with
    ``adamkit.callbacks.recompute_batch_statistics``.

    State per parameter: z and x (in the parameters' compute dtype, whatever ``state_dtype``) and
    v (``state_dtype``: float32, bfloat16 or 8-bit); per variable the weight sum and lr_max. The
    step runs on the ops path (no kernel computes it, ``explain()`` says so); no ``lazy=True``.

    Args:
        learning_rate: α > 0: a float, a ``keras.optimizers.schedules.LearningRateSchedule``, or a
            zero-argument callable. Defaults to 0.0025, the reference's (the authors advise 1–10×
            a scheduled AdamW's).
        beta_1: β1 in [0, 1), the interpolation between x and z (the authors: 0.95–0.98 for long
            runs). Defaults to 0.9.
        beta_2: β2 in [0, 1), the second moment's decay. Defaults to 0.999.
        epsilon: ε ≥ 0, added to √v̂. Defaults to 1e-8.
        weight_decay: λ ≥ 0, applied to z at y inside the step: a number, a
            ``LearningRateSchedule`` (called with the iteration count) or a zero-argument
            callable; 0 or None: none. Defaults to 0.
        warmup_steps: steps of the linear warm-up of lrₜ, an integer ≥ 0. Defaults to 0.
        r: r ≥ 0, the power of t in the averaging weight. Defaults to 0.
        weight_lr_power: p ≥ 0, the power of lr_max in the averaging weight (0: weight by t^r
            only). Defaults to 2.
        {{shared_args}}

    Examples:
        >>> import keras, adamkit
        >>> w, g = keras.Variable([1.0, 2.0]), keras.ops.convert_to_tensor([0.5, -0.5])
        >>> optimizer = adamkit.ScheduleFreeAdamW(learning_rate=0.1)
        >>> optimizer.apply([g], [w])
        >>> w.numpy().round(4)  # after one step y = x = z, moved by α against the gradient
        array([0.9, 2.1], dtype=float32)
        >>> optimizer.apply([g], [w])
        >>> with optimizer.averaged():  # x, the mean of z₁ = 0.9 and z₂ = 0.8
        ...     print(w.numpy().round(4))
        [0.85 2.15]
        >>> w.numpy().round(4)  # y = 0.9·x + 0.1·z₂ again
        array([0.845, 2.155], dtype=float32)

    References:
        - A. Defazio, X. Yang, H. Mehta, K. Mishchenko, A. Khaled, A. Cutkosky. The Road Less
          Scheduled. NeurIPS 2024. arXiv:2405.15682.
        - facebookresearch/schedule_free, ``AdamWScheduleFreeReference`` (``schedulefree`` 1.4.1).
    """

    def __init__(
        self,
        learning_rate: FloatOrSchedule = 0.0025,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        weight_decay: FloatOrSchedule | None = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        fused: bool | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, numbers.Integral) \
                or warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be an integer >= 0; got {warmup_steps!r}.")
        warmup_steps = int(warmup_steps)
        rule = ScheduleFreeRule(beta_1, beta_2, epsilon, warmup_steps=warmup_steps,
                                r=check_real("r", r, low=0.0),
                                weight_lr_power=check_real("weight_lr_power", weight_lr_power,
                                                           low=0.0))
        if weight_decay == 0 and not callable(weight_decay):
            weight_decay = None  # nothing to compute
        super().__init__(learning_rate, rule, weight_decay=weight_decay, fused=fused, **kwargs)
        self.warmup_steps, self.r, self.weight_lr_power = warmup_steps, rule.r, rule.weight_lr_power
        self._training_point = None  # y, kept aside while x is in the variables
        self._x_in = None  # holds_average's value on the host, where known (PyTorch's step reads it)

    def _host_decay_factor(self, rate, dtype):
        return None  # λ itself (below), which the rule's own step takes

    def _decay_factor(self, learning_rate, dtype):
        # The rule decays z by lrₜ·λ·y inside its step: the job carries λ itself (a number
        # converted from its double value: ops.cast would round it to float32 first).
        decay = self._current_weight_decay()
        if isinstance(decay, (int, float)):
            return ops.convert_to_tensor(decay, dtype)
        return ops.cast(decay, dtype)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        # Whether the variables hold x (saved with the state: a model saved at x knows it).
        self.holds_average = self.add_variable((), initializer="zeros", dtype="int32",
                                               name="holds_average")
        self._x_in = False

    # -- x and y ---------------------------------------------------------------------------------

    def _holding(self) -> bool:
        return bool(ops.convert_to_numpy(self.holds_average))

    def use_average(self) -> None:
        """Puts x into the variables (y kept aside): evaluate, predict or save at x. Variables
        never stepped keep their value. Does nothing before the optimizer is built or while x
        is already in."""
        if not self.built or self._holding():
            self._x_in = self.built or None
            return
        self._training_point = [ops.copy(v) for v in self._trainable_variables]
        for variable in self._trainable_variables:
            slots = self.slots_of(variable)
            stepped = slots["lr_max"].read() > 0.0
            average = ops.cast(slots["x"].read(), variable.dtype)
            variable.assign(ops.where(stepped, average, ops.convert_to_tensor(variable)))
        self.holds_average.assign(1)
        self._x_in = True

    def use_training_point(self) -> None:
        """Puts y back into the variables, as it was; where x was put in by another process (a
        model saved at x and loaded), y is recomputed from x and z as the step forms it."""
        if not self.built or not self._holding():
            self._training_point = None  # a step at x put y back already, or none was kept
            self._x_in = False if self.built else None
            return
        kept = self._training_point or [None] * len(self._trainable_variables)
        for variable, value in zip(self._trainable_variables, kept):
            variable.assign(self._recomputed_y(variable) if value is None else value)
        self._training_point = None
        self.holds_average.assign(0)
        self._x_in = False

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # A step taken while x is in the variables (use_average, or ScheduleFreeEval at the end
        # of fit) starts from y; else the step would move x, and use_training_point would later
        # put back the y kept before it, undoing the training. (Its gradient was taken at x:
        # the forward pass has run.)
        if keras.backend.backend() == "torch":  # eager: asked on the host, without a sync a step
            if self._x_in is None:  # not known since build or a load: read once
                self._x_in = self._holding()
            if self._x_in:
                self.use_training_point()
        else:  # traced once for every later step: asked in the step
            self._training_point_first(trainable_variables)
        return super()._backend_update_step(grads, trainable_variables, learning_rate)

    def _training_point_first(self, trainable_variables):
        """y, recomputed from x and z as use_training_point does, into the variables that hold
        x, inside the step being traced."""
        holding = self.holds_average > 0
        jax = keras.backend.backend() == "jax"  # no side effects in cond's branches: a select

        def training_point():
            for variable in trainable_variables:
                variable.assign(self._recomputed_y(variable, holding if jax else None))

        if jax:
            training_point()
        else:
            ops.cond(holding, training_point, lambda: None)
        self.holds_average.assign(0)

    def _recomputed_y(self, variable, where=None):
        """y = β1·x + (1 − β1)·z, as the step forms it, for ``variable`` where it has been stepped
        (and ``where`` holds); elsewhere its value as it is."""
        slots = self.slots_of(variable)
        stepped = slots["lr_max"].read() > 0.0
        if where is not None:
            stepped = ops.logical_and(stepped, where)
        y = self.rule.training_point({k: slots[k].read() for k in ("x", "z")})
        return ops.where(stepped, ops.cast(y, variable.dtype), ops.convert_to_tensor(variable))

    def load_own_variables(self, store):
        super().load_own_variables(store)
        self._x_in = None  # holds_average may have come in as 1

    @contextlib.contextmanager
    def averaged(self):
        """``with optimizer.averaged():`` x in the variables inside the block, y after it."""
        held = self.built and self._holding()
        self.use_average()
        try:
            yield self
        finally:
            if not held:
                self.use_training_point()

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(warmup_steps=self.warmup_steps, r=self.r,
                      weight_lr_power=self.weight_lr_power)
        return config
