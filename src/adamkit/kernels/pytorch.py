"""PyTorch backend: the whole Adam/AMSGrad step of all float32 variables in one call of PyTorch's
fused kernel.

``torch._fused_adam_`` (what ``torch.optim.Adam(fused=True)`` runs) computes Algorithm 1,
θ ← θ − α·m̂/(√v̂ + ε), with AMSGrad's max taken over the raw v as adamkit does, in one vectorised
multi-threaded pass over a list of tensors. It serves adamkit's ``epsilon_mode="paper"`` (the default); the
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


def supports(variable, gradient, state, rectify: bool = False) -> bool:
    """A float32 variable with float32 state."""
    dtype = keras.backend.standardize_dtype(variable.dtype)
    stored = {keras.backend.standardize_dtype(s.dtype) for s in state.values()}
    return dtype in SUPPORTED_DTYPES and stored == {dtype} and not rectify


def can_apply_together() -> bool:
    return True  # one fused call takes lists of tensors


def supports_8bit(variable) -> bool:
    return False  # 8-bit state takes the portable path on this backend


def apply_adam(variable, gradient, state, *, step, learning_rate, beta_1, beta_2, epsilon,
               epsilon_mode, decay=None, rectify=False):
    """One step of Adam (AMSGrad when ``state`` has ``velocity_hat``) on ``variable``, in place,
    after θ ← θ·decay when ``decay`` is given."""
    apply_adam_together([variable], [gradient], [state], step=step, learning_rate=learning_rate,
                        beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, epsilon_mode=epsilon_mode,
                        decays=[decay], rectify=rectify)


@torch.no_grad()
def apply_adam_together(variables, gradients, states, *, step, learning_rate, beta_1, beta_2,
                        epsilon, epsilon_mode, decays, rectify=False):
    """One step of Adam (AMSGrad when the states have ``velocity_hat``) on float32 variables, in
    place, in one call of PyTorch's fused kernel; each variable first decays by its factor in
    ``decays`` (None: no decay)."""
    if epsilon_mode != "paper" or rectify:
        raise ValueError("PyTorch's fused kernel computes Adam with epsilon_mode='paper' only")
    thetas = [_tensor(v) for v in variables]
    for theta, decay in zip(thetas, decays):
        if decay is not None:
            theta.mul_(decay)
    amsgrad = "velocity_hat" in states[0]
    step = torch.as_tensor(step, dtype=torch.float32)  # the step t, already advanced
    torch._fused_adam_(
        thetas, [torch.as_tensor(g, dtype=t.dtype) for g, t in zip(gradients, thetas)],
        [_tensor(s["momentum"]) for s in states], [_tensor(s["velocity"]) for s in states],
        [_tensor(s["velocity_hat"]) for s in states] if amsgrad else [], [step] * len(thetas),
        lr=torch.as_tensor(learning_rate, dtype=torch.float32), beta1=beta_1, beta2=beta_2,
        weight_decay=0.0, eps=epsilon, amsgrad=amsgrad, maximize=False)
