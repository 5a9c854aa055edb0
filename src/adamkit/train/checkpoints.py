"""``adamkit train``'s checkpoints (written by ``adamkit.checkpoint``): what a bit-exact resume
needs, when the loops save, and where a resumed run starts."""

from __future__ import annotations

import json

import keras

from adamkit import checkpoint
from adamkit.train.distribution import is_chief
from adamkit.train.settings import TrainSettings


class CheckpointConflict(ValueError):
    """``--checkpoint-dir`` holds checkpoints this run would replace (and prune) without using."""


def run_variables(model: keras.Model) -> list:
    """Everything a bit-exact resume needs: weights, dropout's random-generator state, and every
    optimizer variable (the iteration count included)."""
    return [*model.variables, *model.optimizer.variables]


def optimizer_step(model: keras.Model) -> int:
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


# The settings a resumed run must share with the one that wrote the checkpoint: those that say
# which examples a position's batch count stands for, and how the step is taken. (The learning
# rate lives in a variable the checkpoint restores: a new one would be ignored.)
SAME_RUN = ("optimizer", "hyperparameters", "schedule", "batch_size", "seed", "train_examples",
            "dropout", "precision")


def run_record(settings: TrainSettings) -> dict:
    """The settings of ``SAME_RUN``, as a checkpoint keeps them (JSON: tuples as lists)."""
    return json.loads(json.dumps({name: getattr(settings, name) for name in SAME_RUN}))


def save_checkpoint(model: keras.Model, settings: TrainSettings, position: dict) -> None:
    if not is_chief(settings):  # the workers hold the same values; one writes them
        return
    checkpoint.save(settings.checkpoint_dir, optimizer_step(model), run_variables(model),
                    {**position, "run": run_record(settings)}, settings.keep)


def _differences(stored: dict, settings: TrainSettings) -> list[str]:
    here = run_record(settings)
    return [f"{name} {stored[name]!r} there, {here[name]!r} here" for name in SAME_RUN
            if name in stored and stored[name] != here[name]]


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


def start_position(model: keras.Model, settings: TrainSettings, log=print) -> dict:
    """Where the run starts: ``{"epoch", "batch", "history"}`` of the newest checkpoint that fits
    (restored into ``model``) with ``settings.resume``, else the beginning. Refuses to start afresh
    where that would replace (and prune) checkpoints already there."""
    position = {"epoch": 0, "batch": 0, "history": {}}
    existing = checkpoint.checkpoints(settings.checkpoint_dir) if settings.checkpoint_dir else []
    if existing and not settings.resume:
        raise CheckpointConflict(
            f"{settings.checkpoint_dir} already holds checkpoints ({existing[0].name}, …) that "
            "this run would replace: pass --resume to continue that run, or choose another "
            "--checkpoint-dir")
    if not settings.resume:
        return position
    record = checkpoint.restore_latest(settings.checkpoint_dir, run_variables(model), log)
    if record is not None:
        differences = _differences(record["position"].get("run", {}), settings)
        if differences:  # before anything is trained or written over
            raise CheckpointConflict(
                f"the checkpoint at step {record['step']} was written by a run with other "
                f"settings ({'; '.join(differences)}): resume with the flags of that run, or "
                "choose another --checkpoint-dir")
        return {k: v for k, v in record["position"].items() if k != "run"}
    if existing:  # starting afresh there would prune them: keep them for the user to see
        raise CheckpointConflict(
            f"none of the {len(existing)} checkpoint(s) in {settings.checkpoint_dir} fits "
            "this model and optimizer (reasons above): check the flags match the run that "
            "wrote them, or choose another --checkpoint-dir")
    log(f"adamkit: no checkpoint in {settings.checkpoint_dir} yet; starting afresh")
    return position


def agree_on_step(strategy, model: keras.Model) -> None:
    """Multi-worker resume: every worker must continue from the same step."""
    import tensorflow as tf

    step = optimizer_step(model)
    steps = set(strategy.gather(strategy.run(lambda: tf.constant([step])), axis=0).numpy().tolist())
    if len(steps) > 1:
        raise CheckpointConflict(f"the workers resumed at different steps ({sorted(steps)}): give "
                                 "every worker the same --checkpoint-dir")
