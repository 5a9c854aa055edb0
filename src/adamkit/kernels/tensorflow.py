"""TensorFlow: the whole Adam/AMSGrad step of one variable in one fused kernel launch.

TensorFlow's ``ResourceApplyAdam`` (and ``...WithAmsgrad``) kernels compute Kingma & Ba's Section-2
form, θ ← θ − α·√(1 − β2ᵗ)/(1 − β1ᵗ)·m/(√v + ε̂). Passing ε̂ = ε·√(1 − β2ᵗ) makes that equal to
Algorithm 1, θ ← θ − α·m̂/(√v̂ + ε), so one kernel serves both of adamkit's epsilon modes. Under
``tf.function`` without XLA (what ``model.fit`` runs on a CPU) this replaces a dozen small ops per
variable with one multi-threaded pass over θ, g, m and v.

Precision: in float32 the kernel forms 1 − β2 from β2's float32 value, i.e. it runs Adam with
β2 = 0.99900001… in both terms of the moment update, where the ops path and PyTorch form 1 − β2 in
double precision. The second moment then differs by up to 1.3e-5 relative (β2's own rounding); the
tests hold the two paths to that.
"""

from __future__ import annotations

import keras
import tensorflow as tf

# 16-bit variables take the ops path, which computes in float32.
SUPPORTED_DTYPES = (tf.float32, tf.float64)


def tf_variable(variable):
    """The ``tf.Variable`` under a ``keras.Variable`` (or the variable itself)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def _handle(variable):
    return tf_variable(variable).handle


def supports(variable, gradient, state) -> bool:
    """A float32/float64 variable whose state tensors share its dtype. A sparse gradient is
    densified first: without ``lazy=True`` every row's moments decay anyway."""
    dtype = tf.as_dtype(variable.dtype)
    return dtype in SUPPORTED_DTYPES and all(tf.as_dtype(s.dtype) == dtype for s in state.values())


def apply_adam(variable, gradient, state, *, step, learning_rate, beta_1, beta_2, epsilon,
               epsilon_mode):
    """One step of Adam (AMSGrad when ``state`` has ``velocity_hat``) on ``variable``, in place."""
    dtype = tf.as_dtype(variable.dtype)
    step = tf.cast(step, dtype)
    beta_2_power = tf.pow(tf.constant(beta_2, dtype), step)
    epsilon_hat = tf.constant(epsilon, dtype)
    if epsilon_mode == "paper":
        epsilon_hat = epsilon_hat * tf.sqrt(1.0 - beta_2_power)
    arguments = dict(
        var=_handle(variable),
        m=_handle(state["momentum"]),
        v=_handle(state["velocity"]),
        beta1_power=tf.pow(tf.constant(beta_1, dtype), step),
        beta2_power=beta_2_power,
        lr=tf.cast(learning_rate, dtype),
        beta1=tf.constant(beta_1, dtype),
        beta2=tf.constant(beta_2, dtype),
        epsilon=epsilon_hat,
        grad=tf.cast(tf.convert_to_tensor(gradient), dtype),
        use_locking=False,
    )
    if "velocity_hat" in state:
        return tf.raw_ops.ResourceApplyAdamWithAmsgrad(vhat=_handle(state["velocity_hat"]),
                                                       **arguments)
    return tf.raw_ops.ResourceApplyAdam(**arguments)
