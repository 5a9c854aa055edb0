"""Distributed training: adamkit's optimizers on tf.distribute.MirroredStrategy over 2 logical CPU
devices, and on JAX's keras.distribution.DataParallel over 2 host devices, against one device on
the same global batches. Each run is a fresh process (devices are fixed when a backend starts)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

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
                          ("radam", {}), ("adamax", {})]:
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
                          ("radam", {}), ("adamax", {}), ("adam", {"state_dtype": "int8"})]:
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
