"""The names adamkit's options accept, and the rules over them that need no framework.

This module imports nothing, Keras least of all: the ``adamkit`` command builds its parser and
checks its flags from it before it starts a backend (which takes seconds), and the library reads
the same names, so that the two cannot drift apart.
"""

from __future__ import annotations

# The Keras backends adamkit runs on.
BACKENDS = ("tensorflow", "jax", "torch")

# adamkit.get's names (the keys of adamkit.FAMILY, in its order).
FAMILY_NAMES = ("adam", "amsgrad", "adamw", "nadam", "adamax", "radam", "schedule-free")

# What `adamkit train --optimizer` takes: the family, and Keras's own Adam for comparison.
OPTIMIZERS = (*FAMILY_NAMES, "keras-adam")

# How optimizer state is stored (adamkit.state).
STATE_DTYPES = ("float32", "bfloat16", "int8")

# `adamkit train`'s recipes (adamkit.train.PRESETS), learning-rate schedules, Keras dtype policies
# and tf.distribute strategies.
PRESETS = ("seed", "fast")
SCHEDULES = ("constant", "cosine")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
DISTRIBUTE = ("mirrored", "multi-worker")

# `adamkit reproduce`'s papers (adamkit.reproduce's functions, with "_" for "-") and `adamkit bench`'s
# suites (adamkit.bench.command's functions).
PAPERS = ("reddi", "kingma-ba")
BENCH_SUITES = ("step", "lazy")

# `adamkit tune`'s Optuna pruners: "median" stops a trial whose validation accuracy after an epoch
# is below the median of earlier trials' at that epoch (optuna.pruners.MedianPruner).
PRUNERS = ("median", "none")


# `adamkit lr-find --steps` and adamkit.lr_find's num_steps: fewer leave too few points to smooth.
LR_FIND_MIN_STEPS = 10


def one_step_per_call(backend: str, distribute: str | None) -> str | None:
    """Why Keras can run only one training step per call of its train function on ``backend``
    (under the tf.distribute strategy ``distribute``, if any), or None where it can run more."""
    if backend == "torch":
        return "Keras runs one step per call on the PyTorch backend"
    if distribute is not None:
        return "Keras 3 fails with more than one step per call under a tf.distribute strategy"
    return None
