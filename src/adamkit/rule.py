r"""A family member's step, stated once as data: the state it keeps and the scalars of each step.

Every member of the Adam family updates each parameter elementwise as

    m ← β1·m + (1 − β1)·g
    v ← β2·v + (1 − β2)·g²                       second moment "ema"
        then v̂max ← max(v̂max, v), used as v      "max" (AMSGrad)
    or  u ← max(β2·u, |g| + ε), the denominator   "infinity_norm" (AdaMax)
    θ ← θ·decay − (a·m + b·g) / (√v/√c + ε)

with four scalars per step: ``step_size`` a, ``gradient_step`` b (NAdam's look-ahead, else 0),
``correction`` c (v's bias correction 1 − β2ᵗ; absent where ε is added to √v as it is) and ε.
A rule names its second-moment kind and forms (a, b, c, ε) from the step t and the learning rate α
in ``scalars``: nothing else restates a member's math. ``Rule.moments`` and ``Rule.update`` are
the reference (ops) path on ``keras.ops`` tensors; the kernels take the same scalars as a table
(``adamkit.kernels.scalars``) and the lazy path runs ``moments`` and ``update`` on rows.

A rule whose step is not of that shape (schedule-free AdamW, whose parameter is an interpolation
of two iterates it keeps as state) ``assigns`` instead: ``Rule.assign`` returns the parameter's
new value and state, and only the ops path runs it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
from keras import ops
from keras.backend import standardize_dtype

from adamkit import ops as adam_ops

SECOND_MOMENTS = ("ema", "max", "infinity_norm")


@dataclasses.dataclass(frozen=True)
class Scalars:
    """One step's scalars (Python floats or tensors; NAdam's a and b: one entry per variable)."""

    step_size: Any
    epsilon: Any
    correction: Any = None  # None: √v as it is (ε̂ added before bias correction)
    gradient_step: Any = None  # None: b = 0


@dataclasses.dataclass(frozen=True)
class Rule:
    """A step of the family's shape (see the module docstring); subclasses define ``scalars``.

    Attributes:
        beta_1: β1, the first moment's decay.
        beta_2: β2, the second moment's decay (AdaMax: the infinity norm's).
        epsilon: ε.
        second_moment: ``"ema"``, ``"max"`` (AMSGrad) or ``"infinity_norm"`` (AdaMax).
    """

    beta_1: float
    beta_2: float
    epsilon: float
    second_moment: str = "ema"

    # Per-variable scalar state carried from step to step, with its initial value (NAdam's Πμ).
    carried: ClassVar[dict[str, float]] = {}

    def scalars(self, step, learning_rate, carried: dict) -> tuple[Scalars, dict]:
        """(a, b, c, ε) of step ``step`` (t, counted from 1) and the carried state's next values.
        ``step`` and ``learning_rate`` are tensors of one float dtype, or Python floats (NumPy
        doubles) where a kernel called from the host asks (``Job.host_scalars``: the pieces of
        ``adamkit.ops`` take each, and ``adamkit.ops.namespace`` says which a rule's own
        functions are);
        ``carried`` holds each name of ``carried`` as a tensor of the parameters' dtype (a
        vector: one entry per variable)."""
        raise NotImplementedError

    @property
    def scalars_in_parameter_dtype(self) -> bool:
        """Whether every path forms the scalars in the parameters' dtype, the kernels included
        (where a peer's rounding is the contract); else the kernels form them in double and
        round once."""
        return False

    @property
    def peer_exact(self) -> bool:
        """Whether the peers' Adam kernels (TensorFlow's ``ResourceApplyAdam``, PyTorch's fused
        Adam) compute this rule as adamkit does; a subclass with other scalars says no."""
        return False

    @property
    def state_names(self) -> tuple[str, ...]:
        """The per-parameter state, each tensor shaped like its parameter."""
        if self.second_moment == "infinity_norm":
            return ("momentum", "norm")
        if self.second_moment == "max":
            return ("momentum", "velocity", "velocity_hat")
        return ("momentum", "velocity")

    @property
    def signed_state(self) -> tuple[str, ...]:
        """The state that can be negative (the others get the unsigned 8-bit map)."""
        return ("momentum",)

    @property
    def exact_state(self) -> tuple[str, ...]:
        """The state kept in the parameters' compute dtype (float32, float64 for float64
        parameters) whatever ``state_dtype`` asks, carried scalars included (otherwise float32):
        iterates and sums whose rounding would move the parameters themselves."""
        return ()

    @property
    def assigns(self) -> bool:
        """Whether the step assigns each parameter a value formed from its state (``assign``)
        rather than θ ← θ·decay − update. Only executors that say so (the ops path) run such a
        rule; the kernels compute the update's shape only."""
        return False

    def assign(self, parameter, gradient, state: dict, scalars: Scalars, decay) -> tuple:
        """(the parameter's new value, its state after this step), for a rule that ``assigns``.
        ``decay``: the job's weight-decay entry for this variable (None where it is not decayed),
        as the member's optimizer forms it; the rule applies it itself."""
        raise NotImplementedError

    def moments(self, gradient, state: dict) -> dict:
        """The per-parameter state after this step's gradient."""
        new = {"momentum": adam_ops.first_moment(state["momentum"], gradient, self.beta_1)}
        if self.second_moment == "infinity_norm":
            new["norm"] = adam_ops.infinity_norm(state["norm"], gradient, self.beta_2, self.epsilon)
            return new
        new["velocity"] = adam_ops.second_moment(state["velocity"], gradient, self.beta_2)
        if self.second_moment == "max":
            new["velocity_hat"] = adam_ops.running_max(state["velocity_hat"], new["velocity"])
        return new

    def update(self, gradient, state: dict, scalars: Scalars):
        """(a·m + b·g)/(√v/√c + ε), from the state after ``moments``: θ ← θ·decay − update."""
        numerator = state["momentum"] * scalars.step_size
        if scalars.gradient_step is not None:
            numerator = numerator + gradient * scalars.gradient_step
        if self.second_moment == "infinity_norm":
            return numerator / state["norm"]
        root = ops.sqrt(state["velocity_hat" if self.second_moment == "max" else "velocity"])
        if scalars.correction is not None:
            root = root / ops.sqrt(scalars.correction)
        return numerator / (root + scalars.epsilon)


def constant(value: float, like):
    """``value`` as a tensor of ``like``'s dtype, from its double value (``ops.cast`` of a Python
    number would round it to float32 first); a NumPy value for a NumPy ``like``, a float for a
    float."""
    xp = adam_ops.namespace(like)
    if xp is adam_ops.Floats:
        return float(value)
    if xp is np:
        return np.asarray(value, like.dtype)
    return ops.convert_to_tensor(value, standardize_dtype(like.dtype))
