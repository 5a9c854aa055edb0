"""adamkit.callbacks.OptimizerMonitor: its TensorBoard scalars, read back with TensorBoard's own
reader, against values computed here independently."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import adamkit
from adamkit.callbacks import OptimizerMonitor
from adamkit.tools.monitor import moments, read_histograms, read_scalars, step_sizes
from conftest import BACKEND

pytest.importorskip("tensorboard")

ONE_STEP_ONLY = BACKEND == "torch"  # Keras's PyTorch trainer runs one step per call


def linear_model(optimizer, steps_per_execution: int = 1) -> keras.Model:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(optimizer=optimizer, loss="mse", steps_per_execution=steps_per_execution)
    return model


def data(scale: float = 1.0, n: int = 16):
    rng = np.random.default_rng(0)
    x = (scale * rng.normal(size=(n, 4))).astype("float32")
    y = rng.normal(size=(n, 1)).astype("float32")
    return x, y


def monitored_fit(model, x, y, log_dir, every, epochs, batch_size=None):
    monitor = OptimizerMonitor(log_dir, every=every)
    model.fit(x, y, batch_size=batch_size or len(x), epochs=epochs, shuffle=False, verbose=0,
              callbacks=[monitor])
    monitor.close()
    return monitor


def test_tags_are_written_and_read_back_by_tensorboard(tmp_path):
    x, y = np.random.default_rng(1).normal(size=(64, 6)).astype("float32"), np.arange(64) % 3
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3)])
    model.compile(optimizer=adamkit.Adam(skip_nonfinite=True),
                  loss="sparse_categorical_crossentropy")
    monitor = monitored_fit(model, x, y, tmp_path, every=2, epochs=1, batch_size=16)
    scalars = read_scalars(tmp_path)
    assert scalars == {tag: [(s, pytest.approx(v)) for s, v in values]
                       for tag, values in monitor.history.items()}
    assert scalars["optimizer/learning_rate"] == [(2, pytest.approx(1e-3)), (4, pytest.approx(1e-3))]
    assert scalars["optimizer/skipped_steps"] == [(2, 0.0), (4, 0.0)]
    histograms = read_histograms(tmp_path)
    assert set(histograms) == {f"optimizer/log10_effective_lr/{v.path}"
                               for v in model.trainable_variables}
    assert all([s for s, _ in found] == [2, 4] for found in histograms.values())
    for variable in model.trainable_variables:
        for kind in ("update_ratio", "grad_norm", "epsilon_dominated", "effective_lr/{}/mean",
                     "effective_lr/{}/p10", "effective_lr/{}/p50", "effective_lr/{}/p90"):
            tag = (f"optimizer/{kind.format(variable.path)}" if "{}" in kind
                   else f"optimizer/{kind}/{variable.path}")
            assert [s for s, _ in scalars[tag]] == [2, 4], tag
            assert all(np.isfinite(v) for _, v in scalars[tag])


def test_update_ratio_grad_norm_and_step_size_match_a_computation_by_hand(tmp_path):
    """Adam on a linear least-squares model, one full batch a step: θ, g, m, v computed here in
    float64 from the same start, and the monitor's numbers compared with them."""
    x, y = data()
    model = linear_model(adamkit.Adam(learning_rate=0.01))
    theta = keras.ops.convert_to_numpy(model.trainable_variables[0]).astype("float64")
    monitor = monitored_fit(model, x, y, tmp_path, every=1, epochs=4)
    name = model.trainable_variables[0].path
    m = v = np.zeros_like(theta)
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    for t in range(1, 5):
        g = 2.0 / len(x) * x.T.astype("float64") @ (x.astype("float64") @ theta - y)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        sizes = lr / (np.sqrt(v / (1 - b2 ** t)) + eps)
        new = theta - sizes * m / (1 - b1 ** t)
        expected = {
            "update_ratio": np.linalg.norm(new - theta) / np.linalg.norm(theta),
            "grad_norm": np.linalg.norm(g),
            "effective_lr": sizes.mean(),
        }
        theta = new
        for kind, value in expected.items():
            tag = f"optimizer/{kind}/{name}" + ("/mean" if kind == "effective_lr" else "")
            step, logged = monitor.history[tag][t - 1]
            assert step == t
            assert logged == pytest.approx(value, rel=2e-4), (kind, t)
        assert monitor.history[f"optimizer/epsilon_dominated/{name}"][t - 1] == (t, 0.0)


FAMILY = [
    adamkit.Adam, lambda **k: adamkit.Adam(amsgrad=True, **k), adamkit.AdamW, adamkit.Nadam,
    adamkit.Adamax, adamkit.RAdam, lambda **k: adamkit.Adam(epsilon_mode="keras", **k),
    lambda **k: adamkit.Adam(state_dtype="bfloat16", **k),
    lambda **k: adamkit.Adam(state_dtype="int8", **k),
    lambda **k: keras.optimizers.Adam(**{"epsilon": 1e-8, **k}),
]
NAMES = ["adam", "amsgrad", "adamw", "nadam", "adamax", "radam", "adam-keras-eps", "adam-bf16",
         "adam-int8", "keras-adam"]


@pytest.mark.parametrize("make", FAMILY, ids=NAMES)
@pytest.mark.parametrize("scale, dominated", [(1e-10, 1.0), (1.0, 0.0)])
def test_epsilon_dominated_where_gradients_are_below_epsilon(make, scale, dominated, tmp_path):
    """Inputs of 1e-10 make gradients of about 1e-10, below ε = 1e-8 on every coordinate; inputs
    of 1 make them far above it. Six steps: RAdam's rectified branch starts at the sixth."""
    x, y = data(scale)
    model = linear_model(make(epsilon=1e-8))
    monitor = monitored_fit(model, x, y, tmp_path, every=6, epochs=6)
    name = model.trainable_variables[0].path
    assert monitor.history[f"optimizer/epsilon_dominated/{name}"] == [(6, dominated)]
    effective = monitor.history[f"optimizer/effective_lr/{name}/p50"][0][1]
    # ε-dominated coordinates get about α/ε, a thousand times or more the step of the others
    assert (effective > 1e4 * 1e-3) if dominated else (effective < 1e2 * 1e-3)


@pytest.mark.parametrize("make", [m for m, n in zip(FAMILY, NAMES) if n != "nadam"],
                         ids=[n for n in NAMES if n != "nadam"])
def test_step_sizes_are_the_step_the_optimizer_applies(make):
    """θ before minus θ after the step = step size × m̂ (after the decoupled decay), coordinate by
    coordinate, from the state the optimizer itself stored. (Nadam's step mixes in the gradient.)"""
    optimizer = make(learning_rate=0.01)
    variable = keras.Variable(np.linspace(-1, 1, 12).reshape(3, 4).astype("float32"))
    rng = np.random.default_rng(2)
    for t in range(1, 8):
        before = keras.ops.convert_to_numpy(variable).astype("float64")
        gradient = rng.normal(size=(3, 4)).astype("float32")
        optimizer.apply([keras.ops.convert_to_tensor(gradient)], [variable])
        after = keras.ops.convert_to_numpy(variable).astype("float64")
        state = moments(optimizer, variable)
        sizes, _ = step_sizes(optimizer, state, t, 0.01)
        decay = getattr(optimizer, "weight_decay", None) or 0.0
        m_hat = state["momentum"] / (1 - optimizer.beta_1 ** t)
        rtol = {"int8": 0.02, "bfloat16": 0.02}.get(getattr(optimizer, "state_dtype", ""), 1e-4)
        np.testing.assert_allclose(before * (1 - 0.01 * decay) - after, sizes * m_hat,
                                   rtol=rtol, atol=1e-7, err_msg=f"step {t}")


def test_works_with_int8_state(tmp_path):
    """8-bit state: the step size and ε-dominated fraction from the decoded state, close to the
    float32 run's; no gradient norm (the codes are too coarse to difference)."""
    x, y = data(n=64)
    runs = {}
    for dtype in ("float32", "int8"):
        keras.utils.set_random_seed(3)
        # min_8bit_size=0: the 4-value kernel is stored as codes (by default it would keep float32)
        model = linear_model(adamkit.Adam(state_dtype=dtype, min_8bit_size=0))
        history = monitored_fit(model, x, y, tmp_path / dtype, every=4, epochs=3,
                                batch_size=16).history
        # the variable's name holds the model's number: keyed by the rest
        name = model.trainable_variables[0].path
        runs[dtype] = {tag.replace(name, "kernel"): values for tag, values in history.items()}
    int8, float32 = runs["int8"], runs["float32"]
    assert "optimizer/grad_norm/kernel" in float32 and "optimizer/grad_norm/kernel" not in int8
    for tag in ("optimizer/effective_lr/kernel/p50", "optimizer/update_ratio/kernel"):
        assert [s for s, _ in int8[tag]] == [4, 8, 12]
        ratio = np.array([v for _, v in int8[tag]]) / np.array([v for _, v in float32[tag]])
        assert np.all((ratio > 0.7) & (ratio < 1.4)), (tag, ratio)
    assert len(read_scalars(tmp_path / "int8")) == len(int8)


@pytest.mark.parametrize("steps_per_execution, logged", [
    (1, [5, 10, 15, 20]),
    # four steps a call: the calls holding steps 5, 10, 15, 20, logged at their last step
    pytest.param(4, [8, 12, 16, 20], marks=pytest.mark.skipif(
        ONE_STEP_ONLY, reason="Keras's PyTorch trainer runs one step per call")),
])
def test_logs_only_every_n_steps(steps_per_execution, logged, tmp_path):
    x, y = data(n=23 * 2)
    model = linear_model(adamkit.Adam(), steps_per_execution)
    monitor = monitored_fit(model, x, y, tmp_path, every=5, epochs=1, batch_size=2)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 23
    assert {tag: [s for s, _ in values] for tag, values in read_scalars(tmp_path).items()} == {
        tag: logged for tag in monitor.history}


def test_every_must_be_a_positive_integer(tmp_path):
    for every in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="every"):
            OptimizerMonitor(tmp_path, every=every)


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="the command runs on the default backend")
def test_train_flag_writes_events_and_optimizer_png(tmp_path):
    from test_cli import adamkit as run_adamkit

    board, out = tmp_path / "tb", tmp_path / "out"
    result = run_adamkit("train", "--train-examples", "6400", "--epochs", "1", "--tensorboard",
                         str(board), "--out", str(out), timeout=300)
    assert result.returncode == 0, result.stderr
    scalars = read_scalars(board)
    # 200 steps, 32 a call: the calls holding steps 100 and 200 end at 128 and 200
    assert [s for s, _ in scalars["optimizer/update_ratio/sequential/dense/kernel"]] == [128, 200]
    assert {tag.split("/")[1] for tag in scalars} == {
        "learning_rate", "update_ratio", "grad_norm", "effective_lr", "epsilon_dominated"}
    png = (out / "optimizer.png").read_bytes()
    assert png.startswith(b"\x89PNG") and (out / "plot.png").exists()
    assert json.loads((out / "run.json").read_text())["settings"]["tensorboard"] == str(board)


def test_large_variable_statistics_match_numpy_on_the_full_state(tmp_path):
    """A 300 × 40 kernel (12,000 coordinates, more than the 4,096 the percentiles are taken
    from): the mean step size and the ε-dominated fraction are NumPy's over every coordinate of
    the state after the logged step; the percentiles are within a few per cent of the exact ones."""
    rng = np.random.default_rng(4)
    # a third of the inputs always zero: their weights get no gradient, so v = 0 (ε-dominated)
    x = rng.normal(size=(64, 300)).astype("float32") * (np.arange(300) % 3 > 0)
    y = rng.normal(size=(64, 40)).astype("float32")
    model = keras.Sequential([keras.Input((300,)), keras.layers.Dense(40, use_bias=False)])
    model.compile(optimizer=adamkit.Adam(learning_rate=0.01), loss="mse")
    monitor = monitored_fit(model, x, y, tmp_path, every=8, epochs=2, batch_size=16)
    variable = model.trainable_variables[0]
    state = moments(model.optimizer, variable)
    sizes, dominated = step_sizes(model.optimizer, state, 8, 0.01)
    name = variable.path
    assert monitor.history[f"optimizer/effective_lr/{name}/mean"] == [
        (8, pytest.approx(sizes.mean(), rel=1e-6))]
    assert monitor.history[f"optimizer/epsilon_dominated/{name}"] == [
        (8, pytest.approx(dominated.mean(), rel=1e-6))]
    assert 0.3 < dominated.mean() < 0.4
    for q in (10, 50, 90):
        [(_, logged)] = monitor.history[f"optimizer/effective_lr/{name}/p{q}"]
        assert logged == pytest.approx(np.percentile(sizes, q), rel=0.05), q
    # the histogram of log10 of the step size, over the sample (every third coordinate)
    [(step, histogram)] = read_histograms(tmp_path)[f"optimizer/log10_effective_lr/{name}"]
    sample = np.log10(sizes.ravel()[::3])
    assert step == 8 and histogram.num == len(sample) == 4000
    assert sum(histogram.bucket) == 4000
    assert (histogram.min, histogram.max) == (pytest.approx(sample.min(), abs=1e-5),
                                              pytest.approx(sample.max(), abs=1e-5))
    assert histogram.sum == pytest.approx(sample.sum(), rel=1e-4)
    limits = np.array(histogram.bucket_limit)
    expected = np.histogram(sample, bins=[-np.inf, *limits[:-1], np.inf])[0]
    # float32 logarithms on the device: a coordinate next to an edge may fall on its other side
    assert np.abs(np.array(histogram.bucket) - expected).sum() <= 2
    # the ε-dominated third sits at α/ε = 1e6, mid-bucket
    assert histogram.bucket[int(np.searchsorted(limits, 6.0))] == np.sum(sample > 5.99) > 1000


def test_batch_end_callbacks_stay_asynchronous(tmp_path):
    """The monitor does its work when a call begins and defines no ``on_train_batch_end``: Keras
    keeps dispatching batch-end callbacks (the progress bar's) on a thread rather than waiting
    for each call's results."""
    monitor = OptimizerMonitor(tmp_path)
    assert "on_train_batch_end" not in vars(OptimizerMonitor)
    callbacks = keras.callbacks.CallbackList([monitor])
    assert callbacks._async_train == keras.src.backend.IS_THREAD_SAFE


def test_logged_calls_are_read_and_written_off_the_training_thread(tmp_path, monkeypatch):
    """Only the snapshots are taken on the thread that trains: reading them, the statistics and
    the event are the monitor's own thread's work, done in order, and all done when fit returns."""
    import threading

    from adamkit.tools import monitor as module

    threads, steps = set(), []
    write_pair = module.OptimizerMonitor._write_pair

    def recorded(self, before, after):
        threads.add(threading.current_thread().name)
        write_pair(self, before, after)
        steps.append(self.history["optimizer/learning_rate"][-1][0])

    monkeypatch.setattr(module.OptimizerMonitor, "_write_pair", recorded)
    x, y = data(n=64)
    monitor = monitored_fit(linear_model(adamkit.Adam(0.01)), x, y, tmp_path, every=2, epochs=2,
                            batch_size=8)
    assert threads and threading.current_thread().name not in threads
    assert all(name.startswith("OptimizerMonitor") for name in threads)
    assert steps == list(range(2, 17, 2))
    assert [s for s, _ in read_scalars(tmp_path)["optimizer/learning_rate"]] == steps
    assert monitor._worker is None  # stopped at the end of training


def test_an_error_in_the_monitors_thread_is_raised_from_fit(tmp_path, monkeypatch):
    from adamkit.tools import monitor as module

    def failing(self, before, after):
        raise RuntimeError("statistics failed")

    monkeypatch.setattr(module.OptimizerMonitor, "_write_pair", failing)
    x, y = data(n=32)
    with pytest.raises(RuntimeError, match="statistics failed"):
        monitored_fit(linear_model(adamkit.Adam(0.01)), x, y, tmp_path, every=2, epochs=1,
                      batch_size=8)


def test_learning_rate_is_the_one_the_call_used(tmp_path):
    """A callback that changes the learning rate at the end of an epoch, before the monitor logs
    the epoch's last call: the logged rate is still the one that call trained with."""
    class Halve(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.optimizer.learning_rate.assign(self.model.optimizer.learning_rate * 0.5)

    x, y = data()
    model = linear_model(adamkit.Adam(learning_rate=0.01))
    monitor = OptimizerMonitor(tmp_path, every=1)
    model.fit(x, y, batch_size=len(x), epochs=3, shuffle=False, verbose=0,
              callbacks=[Halve(), monitor])
    monitor.close()
    assert monitor.history["optimizer/learning_rate"] == [
        (1, pytest.approx(0.01)), (2, pytest.approx(0.005)), (3, pytest.approx(0.0025))]


def test_radam_step_size_is_alpha_until_rectified():
    """RAdam is momentum SGD until ρₜ > 5 (t = 6 with the default β2): its effective step size is
    α before that and α·rₜ/(√v̂ + …) after, smaller here."""
    optimizer = adamkit.RAdam(learning_rate=0.1)
    weight = keras.Variable(np.ones(4, "float32"))
    for step in range(1, 8):
        optimizer.apply([keras.ops.ones(4)], [weight])
        state = {k: keras.ops.convert_to_numpy(v) for k, v in optimizer.state_of(weight).items()}
        sizes, _ = step_sizes(optimizer, state, step, 0.1)
        if step < 6:
            np.testing.assert_allclose(sizes, 0.1)
        else:
            assert np.all(sizes < 0.01), (step, sizes)


def test_every_snapshot_is_one_compiled_function(tmp_path):
    """The snapshots before and after each logged call come from one compiled function, traced
    once when the optimizer's state exists before training (as in ``adamkit train``), however
    many calls log, across several ``fit`` calls; on JAX, from none (its arrays are copied as
    they are)."""
    x, y = data(n=32)
    model = linear_model(adamkit.Nadam())  # its scalar state (mu_product) is left out
    model.optimizer.build(model.trainable_variables)
    monitor = OptimizerMonitor(tmp_path, every=2)
    for _ in range(2):
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[monitor])
    monitor.close()
    assert [s for s, _ in monitor.history["optimizer/learning_rate"]] == list(range(2, 17, 2))
    compiled = list(monitor._probe._compiled.values())
    assert len(compiled) == (0 if BACKEND == "jax" else 1)
    if BACKEND == "tensorflow":
        assert compiled[0].experimental_get_tracing_count() == 1


def test_event_checksum_is_crc32c_masked_as_tensorflow_does():
    """The word-at-a-time checksum equals CRC-32C computed a byte at a time, at every length
    (whole words and a tail of 1–3 bytes), and CRC-32C's published check value."""
    from adamkit.tools.monitor import _CRC32C, masked_crc32c

    def masked(crc):
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    def bytewise(data):
        crc = 0xFFFFFFFF
        for byte in data:
            crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
        return masked(crc ^ 0xFFFFFFFF)

    assert masked_crc32c(b"123456789") == masked(0xE3069283)
    data = np.random.default_rng(5).integers(0, 256, size=1027, dtype=np.uint8).tobytes()
    for n in (0, 1, 3, 4, 5, 8, 11, 1024, 1027):
        assert masked_crc32c(data[:n]) == bytewise(data[:n]), n


def test_every_variable_is_reduced_on_its_own_coordinates(tmp_path):
    """Variables of several sizes (one over the 4,096-coordinate sample, some of a few
    coordinates), reduced together in one pass: each one's numbers are NumPy's on its own state."""
    rng = np.random.default_rng(6)
    x = (rng.normal(size=(64, 150)) * (np.arange(150) % 4 > 0)).astype("float32")
    y = rng.integers(0, 3, 64)
    model = keras.Sequential([keras.Input((150,)), keras.layers.Dense(40, activation="relu"),
                              keras.layers.Dense(3)])
    model.compile(optimizer=adamkit.Adam(learning_rate=0.01),
                  loss="sparse_categorical_crossentropy")
    monitor = monitored_fit(model, x, y, tmp_path, every=8, epochs=2, batch_size=16)
    histograms = read_histograms(tmp_path)
    for variable in model.trainable_variables:
        sizes, dominated = step_sizes(model.optimizer, moments(model.optimizer, variable), 8, 0.01)
        name, sample = variable.path, np.sort(sizes.ravel()[::-(-sizes.size // 4096)])
        assert monitor.history[f"optimizer/effective_lr/{name}/mean"] == [
            (8, pytest.approx(sizes.mean(), rel=1e-6))]
        assert monitor.history[f"optimizer/epsilon_dominated/{name}"] == [
            (8, pytest.approx(dominated.mean(), rel=1e-6))]
        for q in (10, 50, 90):
            [(_, logged)] = monitor.history[f"optimizer/effective_lr/{name}/p{q}"]
            assert logged == pytest.approx(np.percentile(sample, q), rel=1e-5), (name, q)
        [(_, histogram)] = histograms[f"optimizer/log10_effective_lr/{name}"]
        logs = np.log10(sample)
        assert histogram.num == sum(histogram.bucket) == len(sample), name
        assert (histogram.min, histogram.max) == (pytest.approx(logs[0], abs=1e-5),
                                                  pytest.approx(logs[-1], abs=1e-5))
        limits = np.array(histogram.bucket_limit)
        expected = np.histogram(logs, bins=[-np.inf, *limits[:-1], np.inf])[0]
        assert np.abs(np.array(histogram.bucket) - expected).sum() <= 2, name


@pytest.mark.skipif(BACKEND != "jax", reason="JAX's trainer keeps its state outside the variables")
def test_jax_state_is_read_where_the_trainer_keeps_it(tmp_path, monkeypatch):
    """Keras copies JAX's training state into the variables once per epoch; the monitor adds no
    copy of its own (reading ``self.model`` in a callback would add one per snapshot), and its
    numbers are those of the state it read (the hand computation above checks them)."""
    x, y = data(n=64)
    model = linear_model(adamkit.Adam(), steps_per_execution=2)
    synced = []
    sync = type(model).jax_state_sync

    def counting(self):
        synced.append(getattr(self, "_jax_state", None) is not None and not self._jax_state_synced)
        return sync(self)

    monkeypatch.setattr(type(model), "jax_state_sync", counting)
    monitor = monitored_fit(model, x, y, tmp_path, every=4, epochs=2, batch_size=8)
    assert [s for s, _ in monitor.history["optimizer/learning_rate"]] == [4, 8, 12, 16]
    assert sum(synced) == 2  # the trainer's own, at each epoch's end


def test_a_variable_of_no_values_is_left_out(tmp_path):
    """A trainable weight of zero size (the optimizer steps it) has nothing to measure: the
    monitor reports the others only (it reported one for it, and on other models raised an
    IndexError out of fit)."""

    class WithEmpty(keras.layers.Layer):
        def build(self, shape):
            self.empty = self.add_weight(shape=(0,), initializer="zeros", name="empty")

        def call(self, x):
            return x + keras.ops.sum(self.empty)

    model = keras.Sequential([keras.Input((4,)), WithEmpty(), keras.layers.Dense(1)])
    model.compile(adamkit.Adam(), "mse")
    x, y = data()
    monitor = monitored_fit(model, x, y, tmp_path, every=1, epochs=2, batch_size=8)
    assert sorted(t for t in monitor.history if "update_ratio" in t) == sorted(
        f"optimizer/update_ratio/{v.path}" for v in model.layers[-1].trainable_variables)
