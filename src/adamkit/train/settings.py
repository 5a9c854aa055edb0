"""What ``adamkit train`` runs: its settings, the named presets over them, and the steps per call
of Keras's train function that they come to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import keras

from adamkit import choices
from adamkit.choices import OPTIMIZERS as OPTIMIZERS  # what TrainSettings.optimizer takes
from adamkit.choices import SCHEDULES as SCHEDULES  # and TrainSettings.schedule


@dataclass
class TrainSettings:
    """What ``adamkit train`` runs; the defaults are the tutorial's example."""

    epochs: int = 3
    batch_size: int = 32
    dropout: float = 0.2
    optimizer: str = "adam"
    # Hyperparameters left as None take the chosen optimizer's own defaults.
    hyperparameters: dict[str, float] = field(default_factory=dict)
    # "constant" (the tutorial's) or "cosine": the learning rate falls to 0 over the run along half a
    # cosine, α·(1 + cos(π·step/steps))/2 (keras.optimizers.schedules.CosineDecay).
    schedule: str = "constant"
    seed: int = 0
    data: str | None = None
    out: str | None = None
    # Checkpoints (adamkit.checkpoint): every `checkpoint_every` steps and at each epoch's end.
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None
    keep: int = 3
    resume: bool = False
    # Keras's dtype policy: "float32", "mixed_float16" (Keras wraps the optimizer in its
    # LossScaleOptimizer) or "mixed_bfloat16"; variables stay float32 either way.
    precision: str = "float32"
    # "mirrored": tf.distribute.MirroredStrategy over this machine's devices; "multi-worker":
    # MultiWorkerMirroredStrategy over the workers in TF_CONFIG (TensorFlow only).
    distribute: str | None = None
    # Training steps per call of Keras's train function (``model.compile(steps_per_execution=)``):
    # None, 32 where Keras can run more than one (TensorFlow, JAX; not PyTorch, and not under a
    # tf.distribute strategy, where Keras 3.15 fails with "You must feed a value for placeholder
    # tensor", as in keras-team/keras#19246), else 1. The steps are the same either way (the same
    # weights, bit for bit); fewer calls cost less Python: the tutorial's 3 epochs at batch 32 fit in
    # about half the time with 32. Batch-level callbacks then run once a call.
    steps_per_execution: int | None = None
    # Train on the first N of MNIST's 60,000 training examples only (validation keeps the whole test
    # set): quick runs, such as `adamkit tune` trials on a budget, that `adamkit train` reproduces.
    train_examples: int | None = None
    # Log adamkit.callbacks.OptimizerMonitor's TensorBoard scalars into this folder (every 100
    # steps) and draw them into optimizer.png beside plot.png; None: no monitor.
    tensorboard: str | None = None


# The quickest recipe found to reach the tutorial's 0.9725 (benchmarks/README.md, "time to accuracy"):
# the tutorial's 3 epochs at 8× the batch, 12× the learning rate decaying to 0 along a cosine.
# `adamkit train --preset fast` applies it; explicit flags still win. (XLA was tried too: on this
# CPU it made the epochs 3× slower.) Its names are choices.PRESETS, which the CLI offers.
PRESETS: dict[str, dict[str, Any]] = {
    "seed": {},
    "fast": {"batch_size": 256, "schedule": "cosine", "hyperparameters": {"learning_rate": 0.012}},
}

# Where Keras runs several training steps per call of its train function (not on PyTorch).
STEPS_PER_EXECUTION = 32


def one_step_per_call(distribute: str | None) -> str | None:
    """Why Keras can run only one training step per call of its train function here, or None."""
    return choices.one_step_per_call(keras.backend.backend(), distribute)


def steps_per_execution(settings: TrainSettings) -> int:
    """The steps per call that ``settings`` ask for, or the default for this backend."""
    if settings.steps_per_execution is not None:
        return settings.steps_per_execution
    return 1 if one_step_per_call(settings.distribute) else STEPS_PER_EXECUTION
