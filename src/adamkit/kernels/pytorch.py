"""PyTorch backend: the whole Adam/AMSGrad step of one variable in PyTorch's fused kernel.

``torch._fused_adam_`` (what ``torch.optim.Adam(fused=True)`` runs) computes Algorithm 1,
θ ← θ − α·m̂/(√v̂ + ε), with AMSGrad's max taken over the raw v as adamkit does, in one vectorised
multi-threaded pass per variable. It serves adamkit's ``epsilon_mode="paper"`` (the default); the
``"keras"`` form (ε added before bias correction) takes the ``adamkit.ops`` path. Decoupled weight
decay is applied first as θ ← θ·(1 − αₜλ), the factor adamkit computes for every backend.

On this backend Keras's own Adam runs PyTorch's ``_foreach`` ops (several passes over the state);
the fused kernel makes one.
"""

from __future__ import annotations

import keras
import torch

# float32 only: for float64 parameters PyTorch's fused AMSGrad step carries float32 rounding
# (measured: 7e-8 relative at step 1), so float64 takes the ops path and keeps float64 math.
SUPPORTED_DTYPES = ("float32",)


def _tensor(variable) -> torch.Tensor:
    return variable.value if isinstance(variable, keras.Variable) else variable


def supports(variable, gradient, state) -> bool:
    """A float32 variable with float32 state."""
    dtype = keras.backend.standardize_dtype(variable.dtype)
    stored = {keras.backend.standardize_dtype(s.dtype) for s in state.values()}
    return dtype in SUPPORTED_DTYPES and stored == {dtype}


def can_apply_together() -> bool:
    return False  # one call per variable (update_step's path)


def supports_8bit(variable) -> bool:
    return False  # 8-bit state takes the portable path on this backend


@torch.no_grad()
def apply_adam(variable, gradient, state, *, step, learning_rate, beta_1, beta_2, epsilon,
               epsilon_mode, decay=None):
    """One step of Adam (AMSGrad when ``state`` has ``velocity_hat``) on ``variable``, in place,
    after θ ← θ·decay when ``decay`` is given."""
    if epsilon_mode != "paper":
        raise ValueError("PyTorch's fused kernel computes epsilon_mode='paper' only")
    theta = _tensor(variable)
    if decay is not None:
        theta.mul_(decay)
    amsgrad = "velocity_hat" in state
    torch._fused_adam_(
        [theta], [torch.as_tensor(gradient, dtype=theta.dtype)], [_tensor(state["momentum"])],
        [_tensor(state["velocity"])], [_tensor(state["velocity_hat"])] if amsgrad else [],
        [torch.as_tensor(step, dtype=torch.float32)],  # the step t, already advanced
        lr=torch.as_tensor(learning_rate, dtype=torch.float32), beta1=beta_1, beta2=beta_2,
        weight_decay=0.0, eps=epsilon, amsgrad=amsgrad, maximize=False)
