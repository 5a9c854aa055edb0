"""PyTorch backend: the whole Adam/AMSGrad step of all float32 variables in one call of PyTorch's
fused kernel.

``torch._fused_adam_`` (what ``torch.optim.Adam(fused=True)`` runs) computes Algorithm 1,
θ ← θ − α·m̂/(√v̂ + ε), with AMSGrad's max taken over the raw v as adamkit does, in one vectorised
multi-threaded pass over a list of tensors. It serves adamkit's ``epsilon_mode="paper"`` (the default); the
``"keras"`` form (ε added before bias correction) takes the ``adamkit.ops`` path. Decoupled weight
decay, θ ← θ·(1 − αₜλ) first, runs inside the same pass (``torch._fused_adamw_``).

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


def supports(variable, gradient, state, own_kernel_only: bool = False) -> bool:
    """A float32 variable with float32 state, for Adam's own rule (not RAdam's or NAdam's:
    ``own_kernel_only``)."""
    dtype = keras.backend.standardize_dtype(variable.dtype)
    stored = {keras.backend.standardize_dtype(s.dtype) for s in state.values()}
    return dtype in SUPPORTED_DTYPES and stored == {dtype} and not own_kernel_only


def can_apply_together() -> bool:
    return True  # one fused call takes lists of tensors


def supports_8bit(variable) -> bool:
    return False  # 8-bit state takes the portable path on this backend


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
    """One step of Adam (AMSGrad when the states have ``velocity_hat``) on float32 variables, in
    place, each first decayed by its factor in ``decays`` (None: no decay): one call of PyTorch's
    fused kernel per distinct factor (AdamW's decayed and excluded variables: two)."""
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
