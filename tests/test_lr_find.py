"""The learning-rate range test: the ramp, the stop, the suggestion rule, the model and optimizer
put back bit for bit, and `adamkit lr-find`. Portable: runs under JAX and PyTorch too."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

import adamkit
from adamkit.callbacks import LRFinder
from adamkit.tools.lr_find import RULE, RangeTest, exponential_ramp, suggest
from conftest import BACKEND


def test_ramp_is_exponential_from_start_to_end():
    rates = exponential_ramp(1e-7, 10.0, 200)
    assert rates[0] == 1e-7 and rates[-1] == 10.0 and len(rates) == 200
    ratios = rates[1:] / rates[:-1]
    np.testing.assert_allclose(ratios, (10.0 / 1e-7) ** (1 / 199), rtol=1e-12)


def test_smoothed_loss_is_the_bias_corrected_average():
    test = RangeTest(1e-3, 1.0, 50, smooth=0.9, diverge=4.0)
    for loss in (2.0, 1.0, 3.0):
        test.record(loss)
    expected = [2.0, (0.9 * 0.1 * 2 + 0.1 * 1) / (1 - 0.9 ** 2)]
    expected.append((0.9 * (0.9 * 0.1 * 2 + 0.1 * 1) + 0.1 * 3) / (1 - 0.9 ** 3))
    np.testing.assert_allclose(test.smoothed, expected, rtol=1e-12)
    np.testing.assert_allclose(test.learning_rates, exponential_ramp(1e-3, 1.0, 50)[:3])


def test_stops_once_the_smoothed_loss_passes_diverge_times_its_best():
    test = RangeTest(1e-5, 1.0, 100, smooth=0.0, diverge=4.0)
    for loss in (1.0, 0.5, 0.4, 1.2, 1.59):
        assert not test.record(loss)
    assert test.record(1.61)  # > 4 × 0.4
    assert "diverged" in test.stopped and test.step == 6


def test_stops_on_a_non_finite_loss_and_at_the_ramps_end():
    test = RangeTest(1e-5, 1.0, 10, smooth=0.98, diverge=4.0)
    assert not test.record(1.0)
    assert test.record(float("nan")) and "non-finite" in test.stopped
    test = RangeTest(1e-5, 1.0, 10, smooth=0.98, diverge=4.0)
    assert [test.record(1.0) for _ in range(10)] == [False] * 9 + [True]
    assert test.stopped == "end of the ramp"


def valley_curve(rates, rng=None, noise=0.0):
    """A range test's typical loss: a plateau at 2.3, a fall to 0.3 centred on 1e-3 (in log
    learning rate, over about two decades), then a climb from 1e-1 on."""
    x = np.log10(rates)
    loss = 0.3 + 2.0 / (1 + np.exp(3 * (x + 3))) + 0.5 * np.maximum(x + 1, 0) ** 2
    if rng is not None:
        loss = loss * (1 + noise * rng.standard_normal(len(loss)))
    return loss


def test_suggestion_on_a_known_valley():
    """Unsmoothed: the loss falls from 10% to 90% of its drop between 10^(-3 ∓ ln 9 / 3), so the
    valley's midpoint in log learning rate is 1e-3."""
    rates = exponential_ramp(1e-7, 10.0, 801)
    index = suggest(rates, valley_curve(rates))
    assert rates[index] == pytest.approx(1e-3, rel=0.05)
    assert suggest(rates, np.linspace(1.0, 2.0, len(rates))) is None  # the loss never fell


def test_suggestion_is_stable_under_noise():
    """Through the smoothing, the suggestion on noisy copies of one curve stays within a factor
    of 2 of each other; the steepest slope of the same smoothed curves (Lightning's rule) does
    not."""
    rates = exponential_ramp(1e-7, 10.0, 200)
    suggestions = []
    for seed in range(8):
        test = RangeTest(1e-7, 10.0, 200, smooth=0.98, diverge=4.0)
        for loss in valley_curve(rates, np.random.default_rng(seed), noise=0.08):
            if test.record(loss):
                break
        suggestions.append(test.learning_rates[suggest(test.learning_rates, test.smoothed)])
    assert max(suggestions) / min(suggestions) < 2, suggestions
    assert all(3e-4 < s < 3e-2 for s in suggestions), suggestions


def tutorial_model(dropout=0.2, batch_norm=False):
    layers = [keras.Input(shape=(28, 28)), keras.layers.Flatten()]
    if batch_norm:
        layers.append(keras.layers.BatchNormalization())
    layers += [keras.layers.Dense(128, activation="relu"), keras.layers.Dropout(dropout),
               keras.layers.Dense(10)]
    return keras.Sequential(layers)


@pytest.fixture(scope="module")
def mnist():
    from adamkit.data import load_mnist

    (x, y), _ = load_mnist(log=lambda *_: None)
    return (x[:6400] / 255.0).astype("float32"), y[:6400]


def compile_model(model, optimizer, steps_per_execution=1):
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=["accuracy"], steps_per_execution=steps_per_execution)


def values(variables):
    return [np.array(keras.ops.convert_to_numpy(v), copy=True) for v in variables]


def torch_generator_state():
    """PyTorch's global random state (as bytes), which lr_find puts back; None elsewhere."""
    if BACKEND != "torch":
        return None
    import torch

    return bytes(torch.get_rng_state().numpy())


OPTIMIZERS = {
    "adamkit-adam": lambda: adamkit.Adam(learning_rate=3e-4),
    "adamkit-adam-int8": lambda: adamkit.Adam(learning_rate=3e-4, state_dtype="int8"),
    "adamkit-adamw-unfused": lambda: adamkit.AdamW(learning_rate=3e-4, fused=False),
    "keras-adam": lambda: keras.optimizers.Adam(learning_rate=3e-4),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_model_and_optimizer_are_restored_bit_for_bit(name, mnist):
    """After a few real steps (state, step count and batch-norm statistics not trivial), a range
    test that runs into divergence leaves every variable of the model (weights, batch-norm
    statistics, dropout's seed) and of the optimizer (moments, iterations, learning rate) as it
    was; training on from there gives what it gives without the test."""
    x, y = mnist
    per_call = 1 if BACKEND == "torch" else 4

    def trained_model():
        keras.utils.set_random_seed(3)
        model = tutorial_model(batch_norm=True)
        compile_model(model, OPTIMIZERS[name](), per_call)
        model.fit(x[:640], y[:640], batch_size=64, epochs=1, shuffle=False, verbose=0)
        return model

    model = trained_model()
    variables = [*model.variables, *model.optimizer.variables]
    before = values(variables)
    generator = torch_generator_state()
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 10
    result = adamkit.lr_find(model, x, y, num_steps=60, start_lr=1e-4, end_lr=100.0,
                             batch_size=64)
    assert len(result.learning_rates) >= 10
    assert [id(v) for v in [*model.variables, *model.optimizer.variables]] == [id(v) for v in variables]
    for variable, old, new in zip(variables, before, values(variables), strict=True):
        assert old.dtype == new.dtype
        np.testing.assert_array_equal(new, old, err_msg=f"{variable.path} changed")
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == np.float32(3e-4)
    assert model.steps_per_execution == per_call
    assert torch_generator_state() == generator

    if name != "adamkit-adam-int8":  # the twin's check once, on the most intricate state
        return
    # one more epoch from here matches one more epoch of an untouched twin, bit for bit
    twin = trained_model()
    for trainee in (model, twin):
        # the same global random state for both: on PyTorch, unseeded dropout draws from it
        keras.utils.set_random_seed(4)
        trainee.fit(x[640:1280], y[640:1280], batch_size=64, shuffle=False, verbose=0)
    for a, b in zip(values(model.variables), values(twin.variables), strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_unbuilt_optimizer_is_built_and_left_fresh(mnist):
    x, y = mnist
    model = tutorial_model()
    compile_model(model, adamkit.Adam())
    adamkit.lr_find(model, x, y, num_steps=20)
    assert model.optimizer.built
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 0
    for state in values(model.optimizer.variables[2:]):
        assert not state.any()


def test_ramp_inside_fit_follows_the_schedule(mnist):
    """LRFinder in a user's own fit: step i runs at ramp[i] (the optimizer's learning rate read
    back by a callback after it), and the test ends at the ramp's end."""
    x, y = mnist
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    model = tutorial_model()
    compile_model(model, adamkit.Adam())
    finder = LRFinder(start_lr=1e-6, end_lr=1e-2, num_steps=30)
    model.fit(x[:64 * 50], y[:64 * 50], batch_size=64, callbacks=[finder, Spy()], verbose=0)
    ramp = exponential_ramp(1e-6, 1e-2, 30)
    assert finder.result.learning_rates == list(ramp)
    np.testing.assert_allclose(seen, ramp, rtol=1e-6)  # the variable holds float32
    assert finder.result.stopped == "end of the ramp"
    assert len(finder.result.losses) == 30 and all(math.isfinite(v) for v in finder.result.losses)


def test_losses_are_each_batchs_own(mnist):
    """The recorded loss of a step is that batch's loss, not Keras's running mean over the epoch:
    with a learning rate too small to move anything, it equals the loss evaluated on the batch."""
    x, y = mnist
    model = tutorial_model(dropout=0.0)
    compile_model(model, adamkit.Adam())
    finder = LRFinder(start_lr=1e-30, end_lr=1e-29, num_steps=10)
    model.fit(x[:320], y[:320], batch_size=32, shuffle=False, callbacks=[finder], verbose=0)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    expected = [float(keras.ops.convert_to_numpy(loss(y[i:i + 32], model(x[i:i + 32]))))
                for i in range(0, 320, 32)]
    np.testing.assert_allclose(finder.result.losses, expected, rtol=1e-4)


def test_stops_on_divergence_in_a_real_fit(mnist):
    x, y = mnist
    model = tutorial_model()
    compile_model(model, keras.optimizers.SGD())
    result = adamkit.lr_find(model, x, y, num_steps=200, start_lr=1e-3, end_lr=1e6)
    assert len(result.learning_rates) < 200
    assert "diverged" in result.stopped or "non-finite" in result.stopped
    json.loads(result.to_json())  # NaN and Inf written as null, valid JSON


def test_adam_on_the_tutorial_model_gets_a_sane_suggestion(mnist):
    x, y = mnist
    keras.utils.set_random_seed(0)
    model = tutorial_model()
    compile_model(model, adamkit.Adam())
    result = adamkit.lr_find(model, x, y)
    assert result.rule == RULE and result.suggestion_index is not None
    assert 1e-4 <= result.suggestion <= 1e-1, result.suggestion
    assert result.learning_rates[result.suggestion_index] == result.suggestion


def test_bad_settings_and_models_are_refused_with_the_reason(mnist):
    x, y = mnist
    model = tutorial_model()
    with pytest.raises(ValueError, match="compiled"):
        adamkit.lr_find(model, x, y)
    compile_model(model, adamkit.Adam(learning_rate=keras.optimizers.schedules.ExponentialDecay(
        1e-3, 100, 0.5)))
    with pytest.raises(ValueError, match="schedule"):
        adamkit.lr_find(model, x, y, num_steps=20)
    compile_model(model, adamkit.Adam())
    for kwargs, complaint in (({"start_lr": 0.0}, "start_lr"), ({"end_lr": 1e-8}, "end_lr"),
                              ({"num_steps": 5}, "num_steps"), ({"smooth": 1.0}, "smooth"),
                              ({"diverge": 1.0}, "diverge"), ({"batch_size": 0}, "batch_size")):
        with pytest.raises(ValueError, match=complaint):
            adamkit.lr_find(model, x, y, **kwargs)
    if BACKEND != "torch":
        compile_model(model, adamkit.Adam(), steps_per_execution=8)
        with pytest.raises(ValueError, match="steps_per_execution=1"):
            model.fit(x[:640], y[:640], callbacks=[LRFinder(num_steps=10)], verbose=0)


ADAMKIT = shutil.which("adamkit", path=os.path.dirname(sys.executable)) or shutil.which("adamkit")


def adamkit_command(*args):
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    return subprocess.run([ADAMKIT, *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the command is tested from the default backend")
def test_command_prints_the_suggestion_and_writes_both_files(tmp_path):
    out = tmp_path / "lr"
    result = adamkit_command("lr-find", "--steps", "100", "--start-lr", "1e-6", "--end-lr", "1",
                             "--out", str(out))
    assert result.returncode == 0, result.stderr
    line = [x for x in result.stdout.splitlines() if x.startswith("Suggested learning rate: ")]
    suggestion = float(line[0].split(": ")[1])
    saved = json.loads((out / "lr_find.json").read_text())
    assert saved["suggestion"] == pytest.approx(suggestion, rel=1e-2)
    assert 1e-4 <= suggestion <= 1e-1
    assert saved["rule"] == RULE and len(saved["learning_rates"]) == len(saved["losses"])
    assert saved["settings"]["num_steps"] == 100 and saved["settings"]["optimizer"] == "adam"
    assert (out / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["lr_find.json", "lr_find.png"]  # no temp


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the command is tested from the default backend")
@pytest.mark.parametrize(("args", "complaint"), [
    (["--steps", "5"], "--steps"),
    (["--start-lr", "0"], "--start-lr"),
    (["--start-lr", "1", "--end-lr", "0.1"], "--end-lr 0.1 must be larger than --start-lr 1"),
    (["--optimizer", "sgd"], "--optimizer"),
    (["--optimizer", "keras-adam", "--state-dtype", "int8"], "state_dtype"),
    (["--batch-size", "0"], "--batch-size"),
])
def test_command_refuses_bad_input_with_exit_2(args, complaint, tmp_path):
    result = adamkit_command("lr-find", *args, "--out", str(tmp_path / "o"))
    assert result.returncode == 2, result.stderr
    assert "usage: adamkit lr-find" in result.stderr and complaint in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "o").exists()


def test_the_batches_are_drawn_as_fit_asks_for_them():
    """Memory follows a batch, not steps × batch size: 50 steps of 512 examples of 4 KB would be a
    100 MB copy made up front (NumPy's allocations, which tracemalloc sees)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 1000)).astype(np.float32)
    y = x[:, :1].copy()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1000,)), keras.layers.Dense(1)])
    model.compile(adamkit.Adam(), "mse")
    tracemalloc.start()
    try:
        result = adamkit.lr_find(model, x, y, num_steps=50, batch_size=512, end_lr=1.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(result.learning_rates) > 10
    assert peak < 30e6, f"{peak / 1e6:.0f} MB traced"


def test_a_model_of_two_inputs_without_targets():
    """x a list of inputs and y None (a loss the model adds itself): each batch reaches fit as
    (inputs,), which it cannot read as (x, y)."""
    rng = np.random.default_rng(0)
    a, b = (rng.normal(size=(64, 4)).astype(np.float32) for _ in range(2))

    class SquaredSum(keras.layers.Layer):
        def call(self, inputs):
            total = keras.ops.sum(inputs[0] + inputs[1], axis=-1, keepdims=True)
            self.add_loss(keras.ops.mean(keras.ops.square(total)))
            return total

    first, second = keras.Input((4,)), keras.Input((4,))
    hidden = [keras.layers.Dense(4)(first), keras.layers.Dense(4)(second)]
    model = keras.Model([first, second], SquaredSum()(hidden))
    model.compile(adamkit.Adam())
    result = adamkit.lr_find(model, [a, b], None, num_steps=20, batch_size=16, end_lr=1.0)
    assert len(result.losses) > 5 and all(math.isfinite(v) for v in result.losses[:5])

