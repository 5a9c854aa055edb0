"""The seed's example as a job: a Keras MLP trained on MNIST, with history, plot, model and settings
written next to each other."""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np

import adamkit
from adamkit import checkpoint, choices
from adamkit.choices import DISTRIBUTE
from adamkit.choices import OPTIMIZERS as OPTIMIZERS  # re-exported: benchmarks/soak.py reads it here
from adamkit.choices import SCHEDULES as SCHEDULES
from adamkit.data import load_mnist


@dataclass
class TrainSettings:
    """What ``adamkit train`` runs; the defaults are the seed's example."""

    epochs: int = 3
    batch_size: int = 32
    dropout: float = 0.2
    optimizer: str = "adam"
    # Hyperparameters left as None take the chosen optimizer's own defaults.
    hyperparameters: dict[str, float] = field(default_factory=dict)
    # "constant" (the seed's) or "cosine": the learning rate falls to 0 over the run along half a
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
    # weights, bit for bit); fewer calls cost less Python: the seed's 3 epochs at batch 32 fit in
    # about half the time with 32. Batch-level callbacks then run once a call.
    steps_per_execution: int | None = None
    # Train on the first N of MNIST's 60,000 training examples only (validation keeps the whole test
    # set): quick runs, such as `adamkit tune` trials on a budget, that `adamkit train` reproduces.
    train_examples: int | None = None
    # Log adamkit.callbacks.OptimizerMonitor's TensorBoard scalars into this folder (every 100
    # steps) and draw them into optimizer.png beside plot.png; None: no monitor.
    tensorboard: str | None = None


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


def seed_objective() -> dict[str, Any]:
    """The seed's loss and metric, as ``model.compile`` takes them."""
    return {"loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            "metrics": ["accuracy"]}


def save_portable(model: keras.Model, path: Path) -> None:
    """Saves ``model`` (the seed's, compiled by ``train`` with ``seed_objective``: weights,
    optimizer state, compile config) to ``path`` so that it loads and trains on every backend:
    compiled again, with the same optimizer object and its state, for one step per call (Keras's
    default; PyTorch's trainer refuses a model compiled for more)."""
    if model.steps_per_execution != 1:
        model.compile(optimizer=model.optimizer, **seed_objective())
    model.save(path)


# The quickest recipe found to reach the seed's 0.9725 (benchmarks/README.md, "time to accuracy"):
# the seed's 3 epochs at 8× the batch, 12× the learning rate decaying to 0 along a cosine.
# `adamkit train --preset fast` applies it; explicit flags still win. (XLA was tried too: on this
# CPU it made the epochs 3× slower.)
PRESETS: dict[str, dict[str, Any]] = {
    "seed": {},
    "fast": {"batch_size": 256, "schedule": "cosine", "hyperparameters": {"learning_rate": 0.012}},
}


def seed_model(dropout: float = 0.2) -> keras.Model:
    """Flatten → Dense(128, relu) → Dropout → Dense(10), as in the seed (whose dropout is 0.2)."""
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28)),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(10),
        ]
    )


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


def state_bytes_per_parameter(model: keras.Model) -> float:
    """Bytes of every optimizer variable over the number of trainable parameters."""

    def nbytes(variable) -> int:
        dtype = keras.backend.standardize_dtype(variable.dtype)
        return int(np.prod(variable.shape)) * (2 if dtype == "bfloat16" else np.dtype(dtype).itemsize)

    parameters = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    return sum(nbytes(v) for v in model.optimizer.variables) / parameters


def default_out_dir(optimizer: str) -> Path:
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{optimizer}"


def versions() -> dict[str, str]:
    found = {
        "adamkit": adamkit.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "backend": keras.backend.backend(),
    }
    backend_module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[found["backend"]]
    found[backend_module] = sys.modules[backend_module].__version__
    return found


def write_history(history: dict[str, list[float]], out: Path) -> None:
    (out / "history.json").write_text(json.dumps(history, indent=2))
    keys = list(history)
    with open(out / "history.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", *keys])
        for epoch, row in enumerate(zip(*(history[k] for k in keys)), start=1):
            writer.writerow([epoch, *row])


def plot_history(history: dict[str, list[float]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    epochs = range(1, len(history["loss"]) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, history[metric], "o-", label="train")
        ax.plot(epochs, history[f"val_{metric}"], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "plot.png", dpi=100)
    plt.close(fig)


def split_cpu(log=print) -> None:
    """``ADAMKIT_CPU_DEVICES=N`` splits the CPU into N logical devices, to run several replicas on
    one CPU (as the tests do). Must run before TensorFlow initialises its devices."""
    value = os.environ.get("ADAMKIT_CPU_DEVICES", "1")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"ADAMKIT_CPU_DEVICES must be a whole number >= 1; got {value!r}")
    count = int(value)
    if count == 1:
        return
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or []) != count:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
        log(f"adamkit: split the CPU into {count} logical devices (ADAMKIT_CPU_DEVICES)")


_STRATEGY: dict[str, Any] = {}
TF_CONFIG_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["10.0.0.1:12345", "10.0.0.2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}\'')


class CheckpointConflict(ValueError):
    """``--checkpoint-dir`` holds checkpoints this run would replace (and prune) without using."""


class WorkerLost(RuntimeError):
    """A multi-worker run lost a peer: the job stops, and every worker can rerun with --resume."""


def worker_cluster() -> tuple[list[str], int]:
    """The worker addresses and this worker's index, from ``TF_CONFIG`` (checked: a clear message
    for each way it can be wrong)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ValueError(f"set TF_CONFIG on every worker (its own index in each), e.g. "
                         f"{TF_CONFIG_EXAMPLE}")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}); e.g. {TF_CONFIG_EXAMPLE}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    workers = cluster.get("worker") if isinstance(cluster, dict) else None
    if (not isinstance(workers, list) or not workers
            or not all(isinstance(w, str) and ":" in w for w in workers)):
        raise ValueError(f'TF_CONFIG needs "cluster": {{"worker": ["host:port", ...]}}; got {raw}')
    if set(cluster) != {"worker"}:
        raise ValueError(f"TF_CONFIG: only a \"worker\" list is supported (worker 0 is the chief); "
                         f"got {sorted(cluster)}")
    task = config.get("task")
    index = task.get("index") if isinstance(task, dict) else None
    if (not isinstance(task, dict) or task.get("type") != "worker" or not isinstance(index, int)
            or isinstance(index, bool) or not 0 <= index < len(workers)):
        raise ValueError(f'TF_CONFIG needs "task": {{"type": "worker", "index": 0 … '
                         f"{len(workers) - 1}}}; got {task!r}")
    return workers, index


def prepare_strategy(distribute: str | None, log=print):
    """The ``tf.distribute`` strategy for ``distribute`` (None: none), made once per process and
    before anything else touches TensorFlow's devices.

    ``"mirrored"``: ``MirroredStrategy``, one replica per local GPU, else per logical CPU.
    ``"multi-worker"``: ``MultiWorkerMirroredStrategy`` over the workers listed in ``TF_CONFIG``
    (gradients all-reduced across all of them at every step)."""
    if distribute is None:
        return None
    if distribute in _STRATEGY:
        return _STRATEGY[distribute]
    if distribute not in DISTRIBUTE:
        raise ValueError(f"must be one of {', '.join(DISTRIBUTE)}; got {distribute!r}")
    import tensorflow as tf

    if distribute == "multi-worker":
        workers, index = worker_cluster()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        log(f"adamkit: MultiWorkerMirroredStrategy, worker {index} of {len(workers)}, "
            f"{strategy.num_replicas_in_sync} replica(s) in all")
    else:
        split_cpu(log)
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
        log(f"adamkit: {type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s)")
    _STRATEGY[distribute] = strategy
    return strategy


def is_chief(settings: TrainSettings) -> bool:
    """Whether this process writes checkpoints and the run's files: worker 0 of a multi-worker
    run (the others write theirs under ``out/worker-N``), or the only process."""
    return settings.distribute != "multi-worker" or worker_cluster()[1] == 0


def distribution_scope(distribute: str | None, log):
    strategy = prepare_strategy(distribute, log)
    return contextlib.nullcontext() if strategy is None else strategy.scope()


def run_variables(model: keras.Model) -> list:
    """Everything a bit-exact resume needs: weights, dropout's random-generator state, and every
    optimizer variable (the iteration count included)."""
    return [*model.variables, *model.optimizer.variables]


class Checkpointer(keras.callbacks.Callback):
    """Saves a checkpoint each time the optimizer's step passes a multiple of
    ``settings.checkpoint_every`` in this epoch's fit (its batches counted from ``first``): at
    that step, or with several steps per call of the train function, at the end of the call;
    in the epoch's last call, the epoch's own checkpoint at its end stands for it."""

    def __init__(self, settings: TrainSettings, epoch: int, first: int, batches: int,
                 history: dict) -> None:
        super().__init__()
        self.settings, self.epoch, self.first, self.history = settings, epoch, first, history
        self.batches = batches  # in the whole epoch
        self.step = 0

    def on_train_begin(self, logs=None):
        if self.settings.checkpoint_every:
            self.step = optimizer_step(self.model)

    def on_train_batch_end(self, batch, logs=None):
        every = self.settings.checkpoint_every
        if not every:  # epoch-end checkpoints only: no per-batch read
            return
        previous, self.step = self.step, optimizer_step(self.model)
        # ``batch``: the last batch this call was to run, counted in this fit's data (a call cut
        # short where the data ends gives the batch it would have reached)
        done = min(self.first + batch + 1, self.batches)
        # At the epoch's last batch the epoch's own checkpoint follows its validation: one here
        # would resume into an epoch with nothing left to train and no validation recorded.
        if self.step // every > previous // every and done < self.batches:
            save_checkpoint(self.model, self.settings,
                            {"epoch": self.epoch, "batch": done, "history": self.history})


def optimizer_step(model: keras.Model) -> int:
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def save_checkpoint(model: keras.Model, settings: TrainSettings, position: dict) -> None:
    if not is_chief(settings):  # the workers hold the same values; one writes them
        return
    checkpoint.save(settings.checkpoint_dir, optimizer_step(model), run_variables(model), position,
                    settings.keep)


def batches_per_epoch(examples: int, batch_size: int) -> int:
    """Batches in an epoch, the last one possibly short."""
    return -(-examples // batch_size)


def remaining_epochs(settings: TrainSettings, position: dict, examples: int, log):
    """Yields (epoch, first batch, order of the examples) for each epoch still to run, announcing
    it. Epoch e's order is a permutation drawn from (seed, e) alone, so a run can stop and resume at
    any batch; the first epoch resumed starts at ``position["batch"]``."""
    for epoch in range(position["epoch"], settings.epochs):
        first = position["batch"] if epoch == position["epoch"] else 0
        log(f"Epoch {epoch + 1}/{settings.epochs}" + (f" (from batch {first})" if first else ""))
        yield epoch, first, np.random.default_rng([settings.seed, epoch]).permutation(examples)


def fit(model, settings: TrainSettings, train_data, validation_data, position, log,
        extra_callbacks: Sequence = (), verbose: int | None = None) -> dict:
    """``model.fit`` one epoch at a time over our own shuffled order (``remaining_epochs``), so
    that a run can stop and resume at any batch. ``verbose`` is Keras's; by default a progress
    bar on a terminal, else a line per epoch."""
    x, y = train_data
    history: dict[str, list[float]] = {k: list(v) for k, v in position["history"].items()}
    saving = settings.checkpoint_dir is not None
    batches = batches_per_epoch(len(x), settings.batch_size)
    for epoch, first, order in remaining_epochs(settings, position, len(x), log):
        rest = order[first * settings.batch_size:]
        callbacks = [Checkpointer(settings, epoch, first, batches, history)] if saving else []
        callbacks += list(extra_callbacks)
        epoch_history = model.fit(
            x[rest], y[rest], batch_size=settings.batch_size, epochs=1, shuffle=False,
            validation_data=validation_data, callbacks=callbacks,
            verbose=(1 if sys.stdout.isatty() else 2) if verbose is None else verbose,
        ).history
        for key, values in epoch_history.items():
            history.setdefault(key, []).append(float(values[-1]))
        if saving:
            save_checkpoint(model, settings, {"epoch": epoch + 1, "batch": 0, "history": history})
    return history


def fit_multi_worker(model, strategy, settings: TrainSettings, train_data, validation_data,
                     position, log) -> dict:
    """``fit``'s epochs as a custom loop, for ``MultiWorkerMirroredStrategy`` (on which Keras 3's
    own ``fit`` fails, keras-team/keras#20585): the same order, checkpoints and history. Every
    worker holds all the data; each global batch is split across all replicas of all workers, and
    the optimizer all-reduces (sums) their gradients of loss-sum / global-batch-size."""
    import tensorflow as tf

    x, y = train_data
    optimizer = model.optimizer
    replicas = strategy.num_replicas_in_sync
    summed_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")
    lost_peer = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                 tf.errors.CancelledError, tf.errors.AbortedError, tf.errors.InternalError)

    @tf.function
    def train_step(inputs, labels, batch_size):
        def replica_step(inputs, labels):
            with tf.GradientTape() as tape:
                logits = tf.cast(model(inputs, training=True), "float32")
                loss = summed_loss(labels, logits) / batch_size
                scaled = optimizer.scale_loss(loss)  # LossScaleOptimizer's scale; else unchanged
            optimizer.apply(tape.gradient(scaled, model.trainable_variables),
                            model.trainable_variables)
            right = tf.reduce_sum(tf.cast(tf.argmax(logits, -1) == labels, "float32"))
            return loss, right

        loss, right = strategy.run(replica_step, args=(inputs, labels))
        return strategy.reduce("SUM", loss, axis=None), strategy.reduce("SUM", right, axis=None)

    def distributed(batch_x, batch_y):
        parts = list(zip(np.array_split(batch_x, replicas), np.array_split(batch_y, replicas)))
        return strategy.experimental_distribute_values_from_function(
            lambda context: parts[context.replica_id_in_sync_group])

    history: dict[str, list[float]] = {k: list(v) for k, v in position["history"].items()}
    batches = batches_per_epoch(len(x), settings.batch_size)
    for epoch, first, order in remaining_epochs(settings, position, len(x), log):
        loss_sum = right_sum = seen = 0.0
        started = time.perf_counter()
        for batch in range(first, batches):
            chosen = order[batch * settings.batch_size:(batch + 1) * settings.batch_size]
            inputs, labels = distributed(x[chosen], y[chosen].astype("int64"))
            try:
                loss, right = train_step(inputs, labels, tf.constant(len(chosen), "float32"))
                loss_sum += float(loss) * len(chosen)
            except lost_peer as error:
                raise WorkerLost(str(error).strip().splitlines()[-1][:300]) from None
            right_sum += float(right)
            seen += len(chosen)
            if settings.checkpoint_every and optimizer_step(model) % settings.checkpoint_every == 0:
                save_checkpoint(model, settings, {"epoch": epoch, "batch": batch + 1,
                                                  "history": history})
        val_loss, val_accuracy = evaluate(model, validation_data)
        results = {"accuracy": right_sum / max(seen, 1), "loss": loss_sum / max(seen, 1),
                   "val_accuracy": val_accuracy, "val_loss": val_loss}
        for key, value in results.items():
            history.setdefault(key, []).append(float(value))
        log(f"{batches - first}/{batches} - {time.perf_counter() - started:.0f}s - "
            + " - ".join(f"{k}: {v:.4f}" for k, v in results.items()))
        if settings.checkpoint_dir is not None:
            save_checkpoint(model, settings, {"epoch": epoch + 1, "batch": 0, "history": history})
    return history


def evaluate(model, data, batch_size: int = 1000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``data`` = (x, y), on this process alone."""
    x, y = data
    loss_sum = right = 0.0
    summed_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")
    for begin in range(0, len(x), batch_size):
        logits = keras.ops.cast(model(x[begin:begin + batch_size], training=False), "float32")
        labels = y[begin:begin + batch_size]
        loss_sum += float(summed_loss(labels, logits))
        right += float(np.sum(np.argmax(keras.ops.convert_to_numpy(logits), -1) == labels))
    return loss_sum / len(x), right / len(x)


def agree_on_step(strategy, model) -> None:
    """Multi-worker resume: every worker must continue from the same step."""
    import tensorflow as tf

    step = optimizer_step(model)
    steps = set(strategy.gather(strategy.run(lambda: tf.constant([step])), axis=0).numpy().tolist())
    if len(steps) > 1:
        raise CheckpointConflict(f"the workers resumed at different steps ({sorted(steps)}): give "
                                 "every worker the same --checkpoint-dir")


def load_data(settings: TrainSettings, log=print) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """MNIST as ``train`` trains on it: ``(x_train, y_train), (x_test, y_test)``, pixels scaled to
    [0, 1] as float32, the training set cut to ``settings.train_examples`` if given."""
    (x_train, y_train), (x_test, y_test) = load_mnist(settings.data, log=log)
    if settings.train_examples is not None:
        x_train, y_train = x_train[:settings.train_examples], y_train[:settings.train_examples]
    return ((x_train / 255.0).astype("float32"), y_train), ((x_test / 255.0).astype("float32"), y_test)


def train(settings: TrainSettings, log=print, callbacks: Sequence = ()) -> dict[str, Any]:
    """Trains the seed's model and writes history, plot, model and run summary to ``out``;
    ``callbacks`` (Keras callbacks) join every epoch's fit."""
    out = Path(settings.out) if settings.out else default_out_dir(settings.optimizer)
    strategy = prepare_strategy(settings.distribute, log)
    if not is_chief(settings):
        out = out / f"worker-{worker_cluster()[1]}"
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(settings.seed)
    if settings.checkpoint_dir and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()  # a resumed run must match bit for bit

    (x_train, y_train), (x_test, y_test) = load_data(settings, log)

    keras.mixed_precision.set_global_policy(settings.precision)
    with distribution_scope(settings.distribute, log):
        model = seed_model(settings.dropout)
        steps = settings.epochs * batches_per_epoch(len(x_train), settings.batch_size)
        optimizer = make_optimizer(settings.optimizer, settings.hyperparameters,
                                   settings.schedule, steps)
        per_call = steps_per_execution(settings)
        model.compile(optimizer=optimizer, **seed_objective(), steps_per_execution=per_call)
        model.optimizer.build(model.trainable_variables)  # its variables must exist to be checkpointed
    position = {"epoch": 0, "batch": 0, "history": {}}
    existing = checkpoint.checkpoints(settings.checkpoint_dir) if settings.checkpoint_dir else []
    if existing and not settings.resume:
        raise CheckpointConflict(
            f"{settings.checkpoint_dir} already holds checkpoints ({existing[0].name}, …) that "
            "this run would replace: pass --resume to continue that run, or choose another "
            "--checkpoint-dir")
    if settings.resume:
        record = checkpoint.restore_latest(settings.checkpoint_dir, run_variables(model), log)
        if record is not None:
            position = record["position"]
        elif existing:  # starting afresh there would prune them: keep them for the user to see
            raise CheckpointConflict(
                f"none of the {len(existing)} checkpoint(s) in {settings.checkpoint_dir} fits "
                "this model and optimizer (reasons above): check the flags match the run that "
                "wrote them, or choose another --checkpoint-dir")
        else:
            log(f"adamkit: no checkpoint in {settings.checkpoint_dir} yet; starting afresh")
    monitor = None
    if settings.tensorboard is not None:
        if settings.distribute == "multi-worker":  # its custom loop runs no Keras callbacks
            raise ValueError("the optimizer monitor (--tensorboard) needs model.fit; "
                             "--distribute multi-worker trains in a loop of its own")
        from adamkit.tools.monitor import OptimizerMonitor

        monitor = OptimizerMonitor(settings.tensorboard)
        callbacks = [*callbacks, monitor]
    start = time.perf_counter()
    if settings.distribute == "multi-worker":
        agree_on_step(strategy, model)
        history = fit_multi_worker(model, strategy, settings, (x_train, y_train), (x_test, y_test),
                                   position, log)
    else:
        history = fit(model, settings, (x_train, y_train), (x_test, y_test), position, log,
                      callbacks)
    wall_time = time.perf_counter() - start

    save_portable(model, out / "model.keras")
    write_history(history, out)
    plot_history(history, out, f"{settings.optimizer} on MNIST ({keras.backend.backend()})")
    if monitor is not None:
        from adamkit.tools.monitor import plot_optimizer

        monitor.close()
        plot_optimizer(monitor.history, out / "optimizer.png",
                       f"{settings.optimizer} on MNIST ({keras.backend.backend()}): the optimizer")
        log(f"adamkit: wrote TensorBoard events to {settings.tensorboard}/ and optimizer.png")
    summary = {
        "settings": asdict(settings) | {"out": str(out), "steps_per_execution": per_call},
        "optimizer_config": {k: _jsonable(v) for k, v in optimizer.get_config().items()},
        "versions": versions(),
        "wall_time_s": wall_time,
        "final": {k: v[-1] for k, v in history.items()},
        "finished": datetime.now().isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
    }
    summary["optimizer_state_bytes_per_parameter"] = state_bytes_per_parameter(model)
    summary["optimizer_class"] = type(model.optimizer).__name__  # LossScaleOptimizer if float16
    if getattr(optimizer, "skip_nonfinite", False):
        summary["skipped_steps"] = int(keras.ops.convert_to_numpy(optimizer.skipped_steps))
        log(f"adamkit: skipped {summary['skipped_steps']} step(s) with non-finite gradients")
    (out / "run.json").write_text(json.dumps(summary, indent=2))
    log(f"Final validation accuracy: {history['val_accuracy'][-1]:.4f}")
    log(f"adamkit: wrote history, plot, model and run summary to {out}/")
    return summary


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)
