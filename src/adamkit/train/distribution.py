"""``adamkit train --distribute``: the tf.distribute strategy, the workers ``TF_CONFIG`` names, and
which process is the chief."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from adamkit.choices import DISTRIBUTE
from adamkit.train.settings import TrainSettings

# One strategy per process: TensorFlow's devices can be configured only before their first use.
_STRATEGY: dict[str, Any] = {}
TF_CONFIG_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["10.0.0.1:12345", "10.0.0.2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}\'')


class WorkerLost(RuntimeError):
    """A multi-worker run lost a peer: the job stops, and every worker can rerun with --resume."""


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


def _read_tf_config() -> tuple[str, dict]:
    """``TF_CONFIG``'s text and its JSON, or a message with an example."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ValueError(f"set TF_CONFIG on every worker (its own index in each), e.g. "
                         f"{TF_CONFIG_EXAMPLE}")
    try:
        return raw, json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}); e.g. {TF_CONFIG_EXAMPLE}") from None


def worker_cluster() -> tuple[list[str], int]:
    """The worker addresses and this worker's index, from ``TF_CONFIG`` (checked: a clear message
    for each way it can be wrong)."""
    raw, config = _read_tf_config()
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


def _make_strategy(distribute: str, log):
    import tensorflow as tf

    if distribute == "multi-worker":
        workers, index = worker_cluster()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        log(f"adamkit: MultiWorkerMirroredStrategy, worker {index} of {len(workers)}, "
            f"{strategy.num_replicas_in_sync} replica(s) in all")
        return strategy
    split_cpu(log)
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
    log(f"adamkit: {type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s)")
    return strategy


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
    _STRATEGY[distribute] = _make_strategy(distribute, log)
    return _STRATEGY[distribute]


def is_chief(settings: TrainSettings) -> bool:
    """Whether this process writes checkpoints and the run's files: worker 0 of a multi-worker
    run (the others write theirs under ``out/worker-N``), or the only process."""
    return settings.distribute != "multi-worker" or worker_cluster()[1] == 0


def distribution_scope(distribute: str | None, log) -> contextlib.AbstractContextManager:
    """The strategy's scope, in which the model and optimizer must be made; else a no-op."""
    strategy = prepare_strategy(distribute, log)
    return contextlib.nullcontext() if strategy is None else strategy.scope()
