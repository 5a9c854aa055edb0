"""``adamkit train`` as one call: the tutorial's Keras MLP trained on MNIST, with history, plot, model
and settings written next to each other. The parts live beside this module, one job each."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras

from adamkit.callbacks import schedule_free_optimizer
from adamkit.train import artifacts
from adamkit.train.checkpoints import agree_on_step, start_position
from adamkit.train.distribution import (
    distribution_scope,
    is_chief,
    prepare_strategy,
    worker_cluster,
)
from adamkit.train.loops import batches_per_epoch, fit, fit_multi_worker
from adamkit.train.recipe import load_data, make_optimizer, seed_model, seed_objective
from adamkit.train.settings import TrainSettings, steps_per_execution


def output_dir(settings: TrainSettings) -> Path:
    """``--out`` (or a new folder under runs/), made; a multi-worker run's workers other than
    the chief write under ``out/worker-N``."""
    chief = is_chief(settings)
    out = Path(settings.out) if settings.out else artifacts.default_out_dir(settings.optimizer,
                                                                              claim=chief)
    if not chief:
        out = out / f"worker-{worker_cluster()[1]}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def seed_everything(settings: TrainSettings) -> None:
    keras.utils.set_random_seed(settings.seed)
    if settings.checkpoint_dir and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()  # a resumed run must match bit for bit


def compiled_model(settings: TrainSettings, examples: int, log) -> tuple[keras.Model, Any, int]:
    """The seed's model compiled with the chosen optimizer (in the strategy's scope, if any), its
    optimizer built; returns (model, optimizer, steps per call)."""
    keras.mixed_precision.set_global_policy(settings.precision)
    with distribution_scope(settings.distribute, log):
        model = seed_model(settings.dropout)
        steps = settings.epochs * batches_per_epoch(examples, settings.batch_size)
        optimizer = make_optimizer(settings.optimizer, settings.hyperparameters,
                                   settings.schedule, steps)
        per_call = steps_per_execution(settings)
        model.compile(optimizer=optimizer, **seed_objective(), steps_per_execution=per_call)
        model.optimizer.build(model.trainable_variables)  # its variables must exist to be checkpointed
    return model, optimizer, per_call


def optimizer_monitor(settings: TrainSettings):
    """An ``OptimizerMonitor`` logging into ``settings.tensorboard``, or None without it."""
    if settings.tensorboard is None:
        return None
    if settings.distribute == "multi-worker":  # its custom loop runs no Keras callbacks
        raise ValueError("the optimizer monitor (--tensorboard) needs model.fit; "
                         "--distribute multi-worker trains in a loop of its own")
    from adamkit.tools.monitor import OptimizerMonitor

    return OptimizerMonitor(settings.tensorboard)


def write_outputs(settings: TrainSettings, out: Path, model, optimizer, history, wall_time: float,
                  per_call: int, monitor, log) -> dict[str, Any]:
    """Writes model.keras, the history, the plots and run.json into ``out``; returns the summary."""
    artifacts.save_portable(model, out / "model.keras")
    artifacts.write_history(history, out)
    plotted = artifacts.write_plots(history, out, settings, monitor, log)
    if monitor is not None:
        log(f"adamkit: wrote TensorBoard events to {settings.tensorboard}/"
            + (" and optimizer.png" if plotted else ""))
    summary = artifacts.run_summary(settings, out, model, optimizer, history, wall_time, per_call)
    if "skipped_steps" in summary:
        log(f"adamkit: skipped {summary['skipped_steps']} step(s) with non-finite gradients")
    (out / "run.json").write_text(artifacts.json_text(summary))
    log(f"Final validation accuracy: {history['val_accuracy'][-1]:.4f}")
    log(f"adamkit: wrote history, {'plot, ' if plotted else ''}model and run summary to {out}/")
    return summary


def train(settings: TrainSettings, log=print, callbacks: Sequence = ()) -> dict[str, Any]:
    """Trains the tutorial's model and writes history, plot, model and run summary to ``out``;
    ``callbacks`` (Keras callbacks) join every epoch's fit."""
    strategy = prepare_strategy(settings.distribute, log)
    out = output_dir(settings)
    seed_everything(settings)
    train_data, validation_data = load_data(settings, log)
    model, optimizer, per_call = compiled_model(settings, len(train_data[0]), log)
    position = start_position(model, settings, log)
    monitor = optimizer_monitor(settings)
    if monitor is not None:
        callbacks = [*callbacks, monitor]
    start = time.perf_counter()
    if settings.distribute == "multi-worker":
        agree_on_step(strategy, model)
        history = fit_multi_worker(model, strategy, settings, train_data, validation_data,
                                   position, log)
    else:
        history = fit(model, settings, train_data, validation_data, position, log, callbacks)
    wall_time = time.perf_counter() - start
    if schedule_free_optimizer(model) is not None:  # model.keras holds x, as it was validated
        schedule_free_optimizer(model).use_average()
    return write_outputs(settings, out, model, optimizer, history, wall_time, per_call, monitor,
                         log)
