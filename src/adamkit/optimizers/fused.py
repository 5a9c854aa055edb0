"""The fused kernels' wiring, shared by the family members whose step has Adam's shape.

Adam, AdamW, AMSGrad, RAdam and NAdam all update θ ← θ·decay − (a·m + b·g)/(√v·s + ε) after
Adam's two moment updates, with step-dependent scalars a, b, s, ε: Adam a = α/(1 − β1ᵗ),
s = 1/√(1 − β2ᵗ), b = 0; RAdam, once ρₜ > 5, a = α·rₜ·√(1 − β2ᵗ)/(1 − β1ᵗ), s = 1, and before that
a = α/(1 − β1ᵗ), s = 0, ε = 1 (θ ← θ − α·m̂: its SGD-with-momentum phase); NAdam (Dozat's
look-ahead) a = α·μₜ₊₁/(1 − Πμ₁..ₜ₊₁), b = α·(1 − μₜ)/(1 − Πμ₁..ₜ), Adam's s. AdaMax differs
only in the second moment, its infinity norm u ← max(β2·u, |g| + ε) kept where v is and used as
the denominator itself, θ ← θ·decay − a·m/u with Adam's a: the kernels' one other rule. So one
kernel per backend serves them all (``adamkit.kernels``); this mixin picks it, hands it the
variables it can take and leaves the rest to ``update_step``.
"""

from __future__ import annotations

import keras
from keras import ops

from adamkit import sparse
from adamkit import state as state_storage
from adamkit.optimizers.base import check_bool
from adamkit.state import PlainSlot, QuantizedSlot


class FusedAdamStep:
    """Mixin for an ``AdamFamily`` optimizer with Adam's step shape (see the module docstring)."""

    rectified = False  # RAdam's rule: the kernels' scalars switch on at ρₜ > 5
    nesterov = False  # NAdam's rule: per-variable (a, b) from ``look_ahead``
    infinity_norm = False  # AdaMax's rule: u ← max(β2·u, |g| + ε) in v's place, no square root
    epsilon_mode = "paper"

    def look_ahead(self, slots: list, step, learning_rate):
        """NAdam's (a, b) for the step of the variables whose slots are listed, each a vector
        with one entry per variable, advancing their scalar state; None for the others (the
        kernels form Adam's or RAdam's scalars themselves)."""
        return None

    def select_kernel(self, fused: bool | None) -> None:
        """``fused``: None, the kernel wherever it applies; False, never; True, require one."""
        if fused is not None:
            check_bool("fused", fused)
        backend = keras.backend.backend()
        # PyTorch's fused kernel is Adam's, ε after bias correction: not RAdam's, NAdam's or
        # AdaMax's rule, not the ε̂ form.
        torch_applies = (self.epsilon_mode == "paper" and not self.rectified and not self.nesterov
                         and not self.infinity_norm)
        if fused and backend not in ("tensorflow", "jax", "torch"):
            raise ValueError(
                f"`fused=True` needs the TensorFlow, JAX or PyTorch backend; this is {backend}. "
                "Use fused=None (the fast path wherever it exists) or fused=False."
            )
        own_torch_kernel = False
        if fused is not False and backend == "torch":
            from adamkit.kernels import pytorch

            own_torch_kernel = pytorch.custom_kernel() is not None
        if fused and backend == "torch" and not torch_applies and not own_torch_kernel:
            what = ("RAdam" if self.rectified else "NAdam" if self.nesterov
                    else "AdaMax" if self.infinity_norm else "epsilon_mode='keras'")
            raise ValueError(f"`fused=True` on PyTorch without adamkit's kernel (it could not be "
                             f"built here) needs Adam with epsilon_mode='paper' (PyTorch's fused "
                             f"kernel adds ε after bias correction), not {what}; use fused=None "
                             "or fused=False.")
        self.fused = fused
        self._kernel = None
        self._kernel_groups = {}  # variable index -> _kernel_group's answer (FIXED_SUPPORT)
        if fused is not False and backend == "tensorflow":
            from adamkit.kernels import tensorflow as kernel

            self._kernel = kernel
        elif fused is not False and backend == "jax":
            from adamkit.kernels import jax as kernel

            self._kernel = kernel
        elif fused is not False and backend == "torch" and (torch_applies or own_torch_kernel):
            from adamkit.kernels import pytorch as kernel

            self._kernel = kernel

    def get_config(self) -> dict:
        config = super().get_config()
        config["fused"] = self.fused  # as given to select_kernel: None stays "wherever it applies"
        return config

    def _hyperparameters(self, step, learning_rate) -> dict:
        """The kernels' keyword arguments besides the tensors and the decay."""
        return dict(step=step, learning_rate=learning_rate, beta_1=self.beta_1, beta_2=self.beta_2,
                    epsilon=self.epsilon, epsilon_mode=self.epsilon_mode, rectify=self.rectified,
                    infinity_norm=self.infinity_norm)

    def _per_parameter(self, slots) -> dict:
        """The slots shaped like the parameter, without scalar state, by the kernels' names: m,
        v, v̂max as ``momentum``, ``velocity``, ``velocity_hat`` (AdaMax's ``norm`` as v)."""
        kernel_name = {"norm": "velocity"}
        return {kernel_name.get(name, name): slots[name] for name in slots
                if name not in self.scalar_state()}

    def _kernel_state(self, variable, gradient, slots) -> dict | None:
        """The state variables by name, where the kernel can take this variable with plain
        (float or bfloat16) state; else None."""
        slots = self._per_parameter(slots)
        if not all(isinstance(s, PlainSlot) for s in slots.values()):
            return None
        state = {name: slot.variable for name, slot in slots.items()}
        # Rules no peer kernel runs as adamkit promises (the fallbacks: TensorFlow's
        # ResourceApplyAdam forms 1 − β2 from float32 β2, so it is not Keras's Adam bit for bit;
        # PyTorch's fused Adam has no ε̂ form).
        own_kernel_only = (self.rectified or self.nesterov or self.infinity_norm
                           or self.epsilon_mode == "keras")
        supported = self._kernel.supports(variable, gradient, state, own_kernel_only=own_kernel_only)
        return state if supported else None

    def fused_update(self, gradient, variable, slots, step, learning_rate, decay) -> bool:
        if self._kernel is None:
            return False
        hyper = self._hyperparameters(step, learning_rate)
        if all(isinstance(s, QuantizedSlot) for s in self._per_parameter(slots).values()):
            if not self._kernel.supports_8bit(variable):
                return False
            self._kernel.apply_adam_8bit(variable, gradient, self._per_parameter(slots),
                                         decay=decay,
                                         look_ahead=self.look_ahead([slots], step, learning_rate),
                                         **hyper)
            return True
        state = self._kernel_state(variable, gradient, slots)
        if state is None:
            return False
        self._kernel.apply_adam(variable, gradient, state, decay=decay,
                                look_ahead=self.look_ahead([slots], step, learning_rate), **hyper)
        return True

    def _kernel_group(self, variable, gradient):
        """(group key: the dtypes of the variable and its state, the state) where the kernel
        takes this variable with plain state, else None. Asked once per variable where the
        kernel's answer cannot change (``FIXED_SUPPORT``: PyTorch, whose step runs this Python
        every time, ~10 µs a variable); TensorFlow's differs between XLA and not, and TensorFlow
        and JAX ask only while tracing."""
        fixed = self._kernel.FIXED_SUPPORT
        index = self._get_variable_index(variable) if fixed else None
        if fixed and index in self._kernel_groups:
            return self._kernel_groups[index]
        state = self._kernel_state(variable, gradient, self.slots_of(variable))
        found = None if state is None else ((variable.dtype, state["momentum"].dtype), state)
        if fixed:
            self._kernel_groups[index] = found
        return found

    def update_together(self, grads_and_variables, learning_rate):
        # Every float variable with plain state, grouped by dtype and state dtype, in one kernel
        # launch per group. Under a tf.distribute strategy Keras's per-variable loop does the
        # cross-replica work, so the variables go there.
        kernel = self._kernel
        if kernel is None or self.masks_dense_gradients() or not kernel.can_apply_together():
            return grads_and_variables
        groups, rest = {}, []
        for gradient, variable in grads_and_variables:
            found = None
            if gradient is not None and not sparse.is_sparse(gradient):
                found = self._kernel_group(variable, gradient)
            if found is None:
                rest.append((gradient, variable))
                continue
            key, state = found
            groups.setdefault(key, []).append((gradient, variable, state))
        step = self.iterations + 1
        for members in groups.values():
            dtype = state_storage.compute_dtype(members[0][1])
            rate, t = ops.cast(learning_rate, dtype), ops.cast(step, dtype)
            decay = self._decay_factor(rate, dtype) if self.weight_decay is not None else None
            look_ahead = (self.look_ahead([self.slots_of(v) for _, v, _ in members], t, rate)
                          if self.nesterov else None)
            kernel.apply_adam_together(
                [v for _, v, _ in members], [g for g, _, _ in members], [s for _, _, s in members],
                decays=[decay if self._decays(v) else None for _, v, _ in members],
                look_ahead=look_ahead,
                **self._hyperparameters(t, rate))
        return rest
