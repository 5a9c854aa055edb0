"""``adamkit train``: the tutorial's MNIST model trained as a job, an application of the library
(nothing in the optimizers imports it). One module per job:

- ``settings``: ``TrainSettings``, the presets, the steps per call;
- ``recipe``: the tutorial's model, loss, data and the optimizer by name;
- ``distribution``: the tf.distribute strategy and ``TF_CONFIG``;
- ``checkpoints``: what a resume needs, when to save, where a resumed run starts;
- ``loops``: ``model.fit`` per epoch, and the multi-worker loop;
- ``artifacts``: model.keras, history, plots (matplotlib, optional) and run.json;
- ``job``: ``train``, which runs them in order.
"""

from adamkit.train.artifacts import (
    can_plot,
    default_out_dir,
    plot_history,
    run_summary,
    save_portable,
    state_bytes_per_parameter,
    versions,
    write_history,
    write_plots,
)
from adamkit.train.checkpoints import (
    CheckpointConflict,
    Checkpointer,
    agree_on_step,
    optimizer_step,
    run_variables,
    save_checkpoint,
    start_position,
)
from adamkit.train.distribution import (
    TF_CONFIG_EXAMPLE,
    WorkerLost,
    distribution_scope,
    is_chief,
    prepare_strategy,
    split_cpu,
    worker_cluster,
)
from adamkit.train.job import train
from adamkit.train.loops import (
    batches_per_epoch,
    evaluate,
    fit,
    fit_multi_worker,
    remaining_epochs,
)
from adamkit.train.recipe import load_data, make_optimizer, seed_model, seed_objective
from adamkit.train.settings import (
    OPTIMIZERS,
    PRESETS,
    SCHEDULES,
    STEPS_PER_EXECUTION,
    TrainSettings,
    one_step_per_call,
    steps_per_execution,
)

__all__ = [
    "OPTIMIZERS", "PRESETS", "SCHEDULES", "STEPS_PER_EXECUTION", "TF_CONFIG_EXAMPLE",
    "CheckpointConflict", "Checkpointer", "TrainSettings", "WorkerLost", "agree_on_step",
    "batches_per_epoch", "can_plot", "default_out_dir", "distribution_scope", "evaluate", "fit",
    "fit_multi_worker", "is_chief", "load_data", "make_optimizer", "one_step_per_call",
    "optimizer_step", "plot_history", "prepare_strategy", "remaining_epochs", "run_summary",
    "run_variables", "save_checkpoint", "save_portable", "seed_model", "seed_objective",
    "split_cpu", "start_position", "state_bytes_per_parameter", "steps_per_execution", "train",
    "versions", "worker_cluster", "write_history", "write_plots",
]
