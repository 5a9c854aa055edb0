"""Distributed training: adamkit's optimizers on tf.distribute.MirroredStrategy over 2 logical CPU
devices, and on JAX's keras.distribution.DataParallel over 2 host devices, against one device on
the same global batches; `adamkit train --distribute multi-worker` as 2 real worker processes on
127.0.0.1, one of them SIGKILLed mid-run and the job resumed. Each run is a fresh process (devices
are fixed when a backend starts)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import BACKEND

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(BACKEND != "tensorflow", reason="spawned from the default backend")]

MIRRORED_VS_ONE = textwrap.dedent("""
    import numpy as np, tensorflow as tf
    tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import keras, adamkit

    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 16)).astype(np.float32)
    y = (x @ rng.normal(size=(16, 1))).astype(np.float32)

    def train(strategy, name, options):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(256, activation="relu"),
                                      keras.layers.Dense(1)])
            model.compile(optimizer=adamkit.get(name, learning_rate=0.01, **options), loss="mse")
        model.fit(x, y, batch_size=64, epochs=3, shuffle=False, verbose=0)
        return [v.numpy() for v in model.weights]

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    # Float32 state only: with bfloat16/int8 state a last-bit difference in the all-reduced gradient
    # can flip a stochastic rounding, one code of the state (measured: 2e-4 on the weights here).
    for name, options in [("adam", {}), ("amsgrad", {}), ("adamw", {}), ("nadam", {}),
                          ("radam", {}), ("adamax", {}),
                          ("schedule-free", {"weight_decay": 0.01, "warmup_steps": 20})]:
        one = train(tf.distribute.get_strategy(), name, options)
        two = train(mirrored, name, options)
        worst = max(float(np.max(np.abs(a - b))) for a, b in zip(one, two))
        print(name, options, "max |difference|", worst)
        assert worst < 1e-5, (name, options, worst)
    print("mirrored matches one device")
""")


def test_mirrored_on_two_devices_matches_one_device():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    result = subprocess.run([sys.executable, "-c", MIRRORED_VS_ONE], capture_output=True, text=True,
                            env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "mirrored matches one device" in result.stdout


def test_adamkit_train_distribute_mirrored(tmp_path):
    adamkit = shutil.which("adamkit", path=os.path.dirname(sys.executable)) or "adamkit"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", ADAMKIT_CPU_DEVICES="2")
    result = subprocess.run([adamkit, "train", "--distribute", "mirrored", "--preset", "fast",
                             "--epochs", "1", "--out", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MirroredStrategy with 2 replica(s)" in result.stdout
    assert json.loads((tmp_path / "run.json").read_text())["final"]["val_accuracy"] >= 0.93


DATA_PARALLEL_VS_ONE = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["KERAS_BACKEND"] = "jax"
    import jax, keras, numpy as np, adamkit
    assert len(jax.devices()) == 2, jax.devices()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 16)).astype(np.float32)
    y = (x @ rng.normal(size=(16, 1))).astype(np.float32)

    def train(name, options):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(256, activation="relu"),
                                  keras.layers.Dense(1)])
        model.compile(optimizer=adamkit.get(name, learning_rate=0.01, **options), loss="mse")
        model.fit(x, y, batch_size=64, epochs=3, shuffle=False, verbose=0)
        return model

    for name, options in [("adam", {}), ("amsgrad", {}), ("adamw", {}), ("nadam", {}),
                          ("radam", {}), ("adamax", {}), ("adam", {"state_dtype": "int8"}),
                          ("schedule-free", {"weight_decay": 0.01, "warmup_steps": 20})]:
        keras.distribution.set_distribution(None)
        one = train(name, options)
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
        two = train(name, options)
        assert len(two.weights[0].value.sharding.device_set) == 2  # replicated on both devices
        worst = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                    for a, b in zip(one.weights, two.weights))
        print(name, options, "max |difference|", worst)
        assert worst < 1e-5, (name, options, worst)
    print("data parallel matches one device")
""")


def test_jax_data_parallel_on_two_devices_matches_one_device():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="jax")
    result = subprocess.run([sys.executable, "-c", DATA_PARALLEL_VS_ONE], capture_output=True,
                            text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "data parallel matches one device" in result.stdout


# -- multi-worker: real worker processes talking over loopback ---------------------------------

ADAMKIT = shutil.which("adamkit", path=os.path.dirname(sys.executable)) or "adamkit"
# 235 steps of batch 256 without dropout (so that one process can reproduce the same arithmetic).
SHORT_RUN = ["--preset", "fast", "--epochs", "1", "--dropout", "0"]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(tmp_path: Path, name: str, *flags: str, own=((), ())) -> list[subprocess.Popen]:
    """Two `adamkit train --distribute multi-worker` processes, TF_CONFIG naming both; ``own``:
    flags for worker 0 and for worker 1 only."""
    ports = free_ports(2)
    workers = []
    for index in range(2):
        config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                  "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(config), TF_CPP_MIN_LOG_LEVEL="3")
        with open(tmp_path / f"{name}-worker{index}.log", "w") as log:  # the child keeps its copy
            workers.append(subprocess.Popen(
                [ADAMKIT, "train", "--distribute", "multi-worker", *SHORT_RUN,
                 "--out", str(tmp_path / name), *flags, *own[index]], stdout=log,
                stderr=subprocess.STDOUT,
                env=env))
    return workers


def finish(workers) -> list[int]:
    return [w.wait(timeout=600) for w in workers]


def logs(tmp_path: Path, name: str) -> str:
    return "".join((tmp_path / f"{name}-worker{i}.log").read_text() for i in range(2))


def weights(out: Path) -> list[np.ndarray]:
    import keras

    import adamkit  # noqa: F401  (registers the optimizers the file names)

    return keras.saving.load_model(out / "model.keras").get_weights()


def test_multi_worker_matches_one_process_and_survives_a_killed_worker(tmp_path):
    # 1. Two workers, uninterrupted: the same weights on both, and those of one process.
    workers = start_workers(tmp_path, "straight", "--checkpoint-dir", str(tmp_path / "c0"))
    assert finish(workers) == [0, 0], logs(tmp_path, "straight")[-4000:]
    assert "MultiWorkerMirroredStrategy, worker 1 of 2, 2 replica(s) in all" in logs(
        tmp_path, "straight")
    chief, other = weights(tmp_path / "straight"), weights(tmp_path / "straight" / "worker-1")
    assert all(np.array_equal(a, b) for a, b in zip(chief, other))
    single = subprocess.run([ADAMKIT, "train", *SHORT_RUN, "--out", str(tmp_path / "single")],
                            capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert single.returncode == 0, single.stderr[-3000:]
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(chief, weights(tmp_path / "single")))
    # The all-reduce adds two half-batch gradients where one process sums the whole batch: float32
    # rounding, carried through 235 Adam steps (measured 3.3e-6).
    assert worst < 1e-4, worst

    # 2. The same job, worker 1 SIGKILLed once a checkpoint exists: worker 0 stops with a clear
    #    message; both restarted with --resume finish with the uninterrupted run's weights.
    flags = ["--checkpoint-dir", str(tmp_path / "c1"), "--checkpoint-every", "50"]
    workers = start_workers(tmp_path, "killed", *flags)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "c1").glob("ckpt-*.npz")):
        assert time.monotonic() < deadline and workers[1].poll() is None, logs(tmp_path, "killed")
        time.sleep(0.05)
    workers[1].send_signal(signal.SIGKILL)
    codes = finish(workers)
    assert codes == [1, -signal.SIGKILL], (codes, logs(tmp_path, "killed")[-4000:])
    message = logs(tmp_path, "killed")
    assert "lost a worker of the multi-worker run" in message
    assert "Traceback" not in message
    assert f"with --resume to continue from the newest checkpoint in {tmp_path / 'c1'}" in message
    workers = start_workers(tmp_path, "resumed", *flags, "--resume")
    assert finish(workers) == [0, 0], logs(tmp_path, "resumed")[-4000:]
    assert logs(tmp_path, "resumed").count("adamkit: resumed from") == 2
    resumed = weights(tmp_path / "resumed")
    assert all(np.array_equal(a, b) for a, b in zip(resumed, weights(tmp_path / "resumed" / "worker-1")))
    assert all(np.array_equal(a, b) for a, b in zip(resumed, chief))  # deterministic ops: bit-exact

    # 3. Workers resuming from different checkpoint folders (one finished, one empty) would diverge:
    #    both stop with a usage message instead.
    workers = start_workers(tmp_path, "mixed", "--resume", own=(
        ["--checkpoint-dir", str(tmp_path / "c0")], ["--checkpoint-dir", str(tmp_path / "empty")]))
    assert finish(workers) == [2, 2], logs(tmp_path, "mixed")[-4000:]
    assert logs(tmp_path, "mixed").count("the workers resumed at different steps ([0, 235])") == 2
    assert "Traceback" not in logs(tmp_path, "mixed")


@pytest.mark.parametrize("tf_config, problem", [
    (None, "set TF_CONFIG on every worker"),
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}', '"worker": ["host:port"'),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}',
     '"index": 0 … 0'),
    ('{"cluster": {"worker": ["127.0.0.1:1"], "ps": ["127.0.0.1:2"]}, '
     '"task": {"type": "worker", "index": 0}}', 'only a "worker" list'),
])
def test_multi_worker_needs_a_valid_tf_config(tmp_path, tf_config, problem):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    if tf_config is not None:
        env["TF_CONFIG"] = tf_config
    result = subprocess.run([ADAMKIT, "train", "--distribute", "multi-worker", "--out",
                             str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert problem in result.stderr and "Traceback" not in result.stderr
