"""The tutorial's recipe: its model, loss and metric, data, and the optimizer by name — what
``adamkit train`` trains, and what ``adamkit lr-find`` and ``adamkit tune`` reuse."""

from __future__ import annotations

import functools
from typing import Any

import keras
import numpy as np

import adamkit
from adamkit.data import load_mnist
from adamkit.train.settings import TrainSettings


def seed_model(dropout: float = 0.2) -> keras.Model:
    """Flatten → Dense(128, relu) → Dropout → Dense(10), as in the tutorial (whose dropout is 0.2)."""
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28)),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(10),
        ]
    )


def seed_objective() -> dict[str, Any]:
    """The seed's loss and metric, as ``model.compile`` takes them."""
    return {"loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            "metrics": ["accuracy"]}


def make_optimizer(name: str, hyperparameters: dict[str, Any], schedule: str = "constant",
                   steps: int = 1) -> keras.optimizers.Optimizer:
    """The optimizer ``name`` with ``hyperparameters``; with ``schedule="cosine"`` its learning
    rate (given, or the optimizer's default) decays to 0 over ``steps``."""
    make = keras.optimizers.Adam if name == "keras-adam" else functools.partial(adamkit.get, name)
    if schedule == "cosine":
        rate = hyperparameters.get("learning_rate", make().learning_rate)
        decay = keras.optimizers.schedules.CosineDecay(float(rate), decay_steps=steps)
        hyperparameters = {**hyperparameters, "learning_rate": decay}
    return make(**hyperparameters)


def load_data(settings: TrainSettings, log=print) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """MNIST as ``train`` trains on it: ``(x_train, y_train), (x_test, y_test)``, pixels scaled to
    [0, 1] as float32, the training set cut to ``settings.train_examples`` if given."""
    (x_train, y_train), (x_test, y_test) = load_mnist(settings.data, log=log)
    if settings.train_examples is not None:
        x_train, y_train = x_train[:settings.train_examples], y_train[:settings.train_examples]
    return ((x_train / 255.0).astype("float32"), y_train), ((x_test / 255.0).astype("float32"), y_test)
