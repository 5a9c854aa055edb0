"""Schedule-free AdamW: step for step against the float64 oracle and the authors' own
``AdamWScheduleFreeReference`` (parameters, x, z and v), evaluation at x, its callback and
BatchNormalization helper, Keras's keywords, saving, lean state and validation."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import torch
from keras import ops
from schedulefree import AdamWScheduleFreeReference

import adamkit
import reference
from conftest import BACKEND, assert_close, make_variables, run_optimizer

STEPS = 80
SHAPES = [(7,), (4, 3), (2, 3, 2)]
FLOAT32_RTOL = 2e-6
# Every configuration runs through warm-up (or none) with and without weight decay.
CONFIGS = {
    "warmup-decay": dict(learning_rate=0.01, weight_decay=0.1, warmup_steps=10),
    "defaults": dict(),
    "decay-no-warmup": dict(learning_rate=0.02, weight_decay=0.05, beta_1=0.95, beta_2=0.99),
    "polynomial-weights": dict(learning_rate=0.01, warmup_steps=30, r=1.0, weight_lr_power=0.0),
    "long-warmup-power-3": dict(learning_rate=0.005, weight_decay=0.01, warmup_steps=100,
                                weight_lr_power=3.0, epsilon=1e-6),
}


def oracle_arguments(config: dict) -> dict:
    names = {"learning_rate": "lr", "beta_1": "b1", "beta_2": "b2", "epsilon": "eps",
             "weight_decay": "wd"}
    return {names.get(k, k): v for k, v in config.items()}


def gradient_steps(rng, kind: str) -> list:
    steps = []
    for t in range(STEPS):
        scale = 1.0 if kind == "normal" else (0.0 if t % 4 == 3 else 10.0 ** rng.uniform(-4, 2))
        steps.append([(rng.normal(size=s) * scale).astype(np.float32) for s in SHAPES])
    return steps


def run_reference(config: dict, initial, steps):
    """schedulefree's AdamWScheduleFreeReference (PyTorch, float32): parameters and x, z, v."""
    params = [torch.tensor(x, requires_grad=True) for x in initial]
    arguments = {"lr": config.get("learning_rate", 0.0025),
                 "betas": (config.get("beta_1", 0.9), config.get("beta_2", 0.999)),
                 "eps": config.get("epsilon", 1e-8),
                 "weight_decay": config.get("weight_decay", 0.0),
                 "warmup_steps": config.get("warmup_steps", 0), "r": config.get("r", 0.0),
                 "weight_lr_power": config.get("weight_lr_power", 2.0)}
    optimizer = AdamWScheduleFreeReference(params, **arguments)
    optimizer.train()
    for grads in steps:
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g)
        optimizer.step()
    state = {ours: [optimizer.state[p][theirs].numpy() for p in params]
             for ours, theirs in (("x", "x"), ("z", "z"), ("velocity", "exp_avg_sq"))}
    return [p.detach().numpy() for p in params], state


def relative_difference(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


@pytest.fixture(scope="module")
def worst():
    """The largest differences seen, printed at the end (``pytest -s``) for the record."""
    found: dict[str, float] = {}
    yield found
    print(f"\n[{BACKEND}] largest relative differences, float32: "
          + ", ".join(f"{k} {v:.2e}" for k, v in sorted(found.items())))


@pytest.mark.parametrize("kind", ["normal", "mixed"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_oracle_and_the_authors_reference_each_step(name, kind, rng, worst):
    config = CONFIGS[name]
    initial = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    steps = gradient_steps(rng, kind)
    params, state = run_optimizer(adamkit.ScheduleFreeAdamW(**config), initial, steps)
    theirs, their_state = run_reference(config, initial, steps)
    for i in range(len(SHAPES)):
        oracle, oracle_state = reference.schedule_free_adamw(
            initial[i], [s[i] for s in steps], **oracle_arguments(config))
        pairs = [("θ", params[i], oracle, theirs[i])]
        pairs += [(k, state[k][i], oracle_state[k], their_state[k][i])
                  for k in ("x", "z", "velocity")]
        for what, ours, exact, torch_value in pairs:
            assert_close(ours, exact, FLOAT32_RTOL, f"{name}/{kind}: {what} vs oracle")
            assert_close(ours, torch_value, FLOAT32_RTOL, f"{name}/{kind}: {what} vs reference")
            for against, value in (("oracle", exact), ("reference", torch_value)):
                key = f"{what} vs {against}"
                worst[key] = max(worst.get(key, 0.0), relative_difference(ours, value))


def float64_available() -> bool:
    """False on JAX without jax_enable_x64, whose float64 variables hold float32 arrays."""
    return ops.convert_to_numpy(keras.Variable(np.zeros(1), dtype="float64")).dtype == np.float64


def test_float64_matches_the_oracle_closely(rng):
    if not float64_available():
        pytest.skip("float64 variables need jax_enable_x64 on JAX")
    config = CONFIGS["warmup-decay"]
    initial = [rng.normal(size=s) for s in SHAPES]
    steps = [[rng.normal(size=s) for s in SHAPES] for _ in range(STEPS)]
    variables = [keras.Variable(x, dtype="float64") for x in initial]
    optimizer = adamkit.ScheduleFreeAdamW(**config)
    for grads in steps:
        optimizer.apply([ops.convert_to_tensor(g, "float64") for g in grads], variables)
    state = optimizer.state_values()
    # Keras keeps the learning rate in a float32 variable, whatever the parameters' dtype.
    arguments = {**oracle_arguments(config), "lr": float(np.float32(config["learning_rate"]))}
    for i, variable in enumerate(variables):
        oracle, oracle_state = reference.schedule_free_adamw(
            initial[i], [s[i] for s in steps], **arguments)
        assert_close(ops.convert_to_numpy(variable), oracle, 1e-12, "θ, float64")
        for key in ("x", "z", "velocity"):
            assert_close(ops.convert_to_numpy(state[key][i]), oracle_state[key], 1e-12, key)


def test_learning_rate_schedule_multiplies_the_warmup(rng):
    schedule = keras.optimizers.schedules.ExponentialDecay(0.02, decay_steps=1, decay_rate=0.97)
    initial = [rng.normal(size=(6,)).astype(np.float32)]
    steps = [[rng.normal(size=(6,)).astype(np.float32)] for _ in range(40)]
    (ours,), _ = run_optimizer(adamkit.ScheduleFreeAdamW(learning_rate=schedule, warmup_steps=5,
                                                         weight_decay=0.1), initial, steps)
    rates = [0.02 * 0.97**t for t in range(40)]
    oracle, _ = reference.schedule_free_adamw(initial[0], [s[0] for s in steps], lrs=rates,
                                              wd=0.1, warmup_steps=5)
    assert_close(ours, oracle, 2e-6, "θ with a schedule")


def test_excluded_variables_are_not_decayed(rng):
    initial = [rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=(2,)).astype(np.float32)]
    steps = [[rng.normal(size=x.shape).astype(np.float32) for x in initial] for _ in range(30)]
    (kernel, bias), _ = run_optimizer(adamkit.ScheduleFreeAdamW(learning_rate=0.01,
                                                                weight_decay=0.5, exclude_1d=True),
                                      initial, steps)
    decayed, _ = reference.schedule_free_adamw(initial[0], [s[0] for s in steps], lr=0.01, wd=0.5)
    undecayed, _ = reference.schedule_free_adamw(initial[1], [s[1] for s in steps], lr=0.01)
    assert_close(kernel, decayed, 2e-6, "the decayed kernel")
    assert_close(bias, undecayed, 2e-6, "the excluded bias")


def test_keras_schedule_free_is_the_unweighted_average_without_decay(rng):
    """weight_lr_power=0 (and r=0) weighs every step alike, cₜ = 1/t: Keras's own
    ScheduleFreeAdamW, which recovers x from y instead of keeping it. On TensorFlow and PyTorch
    Keras 3.15 recovers x with z already updated (``momentum.value`` there is the variable
    itself, updated in place before it is read), from the second step on; JAX's arrays are
    immutable, so there it computes what it means to."""
    initial = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    steps = gradient_steps(rng, "normal")
    ours, _ = run_optimizer(adamkit.ScheduleFreeAdamW(learning_rate=0.01, warmup_steps=10,
                                                      weight_lr_power=0.0), initial, steps)
    variables = make_variables(initial)
    keras_optimizer = keras.optimizers.ScheduleFreeAdamW(learning_rate=0.01, warmup_steps=10)
    for grads in steps:
        keras_optimizer.apply([ops.convert_to_tensor(g) for g in grads], variables)
    theirs = numpy_values(variables)
    if BACKEND == "jax":
        for a, b in zip(ours, theirs):
            assert_close(a, b, 1e-5, "against keras.optimizers.ScheduleFreeAdamW")
    else:
        assert max(relative_difference(a, b) for a, b in zip(ours, theirs)) > 1e-4
    weighted, _ = run_optimizer(adamkit.ScheduleFreeAdamW(learning_rate=0.01, warmup_steps=10),
                                initial, steps)
    assert max(relative_difference(a, b) for a, b in zip(weighted, theirs)) > 1e-3


# -- the ops path only -------------------------------------------------------------------------

def test_every_kernel_refuses_it_and_says_why():
    optimizer = adamkit.ScheduleFreeAdamW()
    optimizer.build(make_variables([np.zeros(8192), np.zeros(3)]))
    explanation = optimizer.explain()
    assert {choice.executor for choice in explanation} == {"ops"}
    kernels = [why for choice in explanation for why in choice.passed_over.values()]
    assert kernels and all("ScheduleFreeAdamW assigns its parameters" in why for why in kernels)
    assert "lazy" not in str(explanation)
    with pytest.raises(ValueError, match="`fused=True`: no kernel computes ScheduleFree"):
        adamkit.ScheduleFreeAdamW(fused=True)


# -- evaluation at x ---------------------------------------------------------------------------

def trained(rng, steps=12):
    initial = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    variables = make_variables(initial)
    optimizer = adamkit.ScheduleFreeAdamW(learning_rate=0.05, warmup_steps=3)
    for _ in range(steps):
        optimizer.apply([ops.convert_to_tensor(rng.normal(size=s).astype(np.float32))
                         for s in SHAPES], variables)
    return optimizer, variables


def numpy_values(variables):
    return [ops.convert_to_numpy(v).copy() for v in variables]


def test_averaged_holds_x_inside_and_puts_y_back_exactly(rng):
    optimizer, variables = trained(rng)
    y = numpy_values(variables)
    x = [ops.convert_to_numpy(v) for v in optimizer.state_values()["x"]]
    with optimizer.averaged():
        for a, b in zip(numpy_values(variables), x):
            np.testing.assert_array_equal(a, b)
        with optimizer.averaged():  # nested: x stays until the outer block ends
            pass
        assert int(ops.convert_to_numpy(optimizer.holds_average)) == 1
        for a, b in zip(numpy_values(variables), x):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(numpy_values(variables), y):
        np.testing.assert_array_equal(a, b)
    assert int(ops.convert_to_numpy(optimizer.holds_average)) == 0


def test_y_is_recomputed_where_it_was_not_kept(rng):
    """A model saved at x and loaded elsewhere has no copy of y: it comes back from x and z."""
    optimizer, variables = trained(rng)
    y = numpy_values(variables)
    optimizer.use_average()
    optimizer._training_point = None  # as in another process
    optimizer.use_training_point()
    for a, b in zip(numpy_values(variables), y):
        assert_close(a, b, 1e-6, "y from x and z")


def test_before_any_step_x_is_the_variables_themselves(rng):
    variables = make_variables([rng.normal(size=(3,))])
    before = numpy_values(variables)
    optimizer = adamkit.ScheduleFreeAdamW()
    optimizer.build(variables)
    with optimizer.averaged():
        np.testing.assert_array_equal(numpy_values(variables)[0], before[0])


def small_model(batch_norm=False):
    layers = [keras.Input((6,)), keras.layers.Dense(8, activation="tanh")]
    if batch_norm:
        layers.append(keras.layers.BatchNormalization())
    return keras.Sequential([*layers, keras.layers.Dense(3)])


def regression_data(rng, n=128):
    x = rng.normal(size=(n, 6)).astype(np.float32)
    return x, (x @ rng.normal(size=(6, 3))).astype(np.float32)


def test_callback_validates_at_x_and_training_is_unchanged(rng):
    x, y = regression_data(rng)
    models = []
    for callbacks in ([adamkit.callbacks.ScheduleFreeEval()], []):
        keras.utils.set_random_seed(3)
        model = small_model()
        model.compile(optimizer=adamkit.ScheduleFreeAdamW(learning_rate=0.01), loss="mse")
        history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
                            validation_data=(x, y) if callbacks else None, callbacks=callbacks)
        models.append((model, history.history))
    (with_eval, history), (plain, _) = models
    assert int(ops.convert_to_numpy(with_eval.optimizer.holds_average)) == 1  # x at the end
    with plain.optimizer.averaged():
        at_x = plain.evaluate(x, y, verbose=0)
        for a, b in zip(with_eval.get_weights(), plain.get_weights()):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(history["val_loss"][-1], at_x, rtol=1e-5)
    assert abs(plain.evaluate(x, y, verbose=0) - at_x) > 1e-6  # y is another point
    with_eval.optimizer.use_training_point()
    for a, b in zip(with_eval.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(a, b)  # evaluating never moved the training


def test_a_second_fit_trains_on_from_y(rng):
    x, y = regression_data(rng)
    runs = []
    for fits in (2, 1):
        keras.utils.set_random_seed(4)
        model = small_model()
        model.compile(optimizer=adamkit.ScheduleFreeAdamW(learning_rate=0.01), loss="mse")
        for _ in range(fits):
            model.fit(x, y, batch_size=16, epochs=2 // fits, shuffle=False, verbose=0,
                      callbacks=[adamkit.callbacks.ScheduleFreeEval()])
        runs.append(model.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_a_step_taken_at_x_starts_from_y_and_is_kept():
    """After ``use_average``, a step starts from y, recomputed from x and z, and
    ``use_training_point`` no longer puts back the y kept before that step (it did, discarding
    the step)."""
    results = []
    for switch_back_first in (False, True):
        optimizer = adamkit.ScheduleFreeAdamW(learning_rate=0.1)
        variable = keras.Variable([1.0, 2.0])
        for g in ([0.1, 0.2], [0.3, -0.2]):
            optimizer.apply([ops.convert_to_tensor(g)], [variable])
        optimizer.use_average()
        if switch_back_first:
            optimizer.use_training_point()
        optimizer.apply([ops.convert_to_tensor([0.2, 0.1])], [variable])
        stepped = ops.convert_to_numpy(variable).copy()
        optimizer.use_training_point()  # y is in already: nothing to put back
        np.testing.assert_array_equal(ops.convert_to_numpy(variable), stepped)
        results.append(stepped)
    assert_close(results[0], results[1], 1e-6, "a step at x against one at y")


def test_a_fit_after_one_that_left_x_in_trains_on_from_y(rng):
    """``ScheduleFreeEval`` leaves x in the model at the end of ``fit``; a second ``fit`` without
    it trains on from y, as one with it does, and keeps its training. Only its first gradient
    differs, taken at x (the forward pass runs before the step): the two runs differ by ~1e-4,
    where undoing the second fit moved them by up to 4e-2."""
    x, y = regression_data(rng)
    runs = []
    for second in ([adamkit.callbacks.ScheduleFreeEval()], []):
        keras.utils.set_random_seed(4)
        model = small_model()
        model.compile(optimizer=adamkit.ScheduleFreeAdamW(learning_rate=0.01), loss="mse")
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
                  callbacks=[adamkit.callbacks.ScheduleFreeEval()])
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=second)
        model.optimizer.use_training_point()
        runs.append(model.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-3)


def test_batch_statistics_are_recomputed_at_x(rng):
    x, y = regression_data(rng)
    keras.utils.set_random_seed(5)
    model = small_model(batch_norm=True)
    model.compile(optimizer=adamkit.ScheduleFreeAdamW(learning_rate=0.01), loss="mse")
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    norm = model.layers[1]
    at_y = [ops.convert_to_numpy(v).copy() for v in (norm.moving_mean, norm.moving_variance)]
    with model.optimizer.averaged():
        assert adamkit.callbacks.recompute_batch_statistics(model, x, batch_size=32) == 4
        kernel, bias = (ops.convert_to_numpy(v) for v in model.layers[0].weights)
        batches = np.tanh(x @ kernel + bias).reshape(4, 32, 8)
        np.testing.assert_allclose(ops.convert_to_numpy(norm.moving_mean),
                                   batches.mean(axis=1).mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ops.convert_to_numpy(norm.moving_variance),
                                   batches.var(axis=1).mean(axis=0), rtol=1e-4, atol=1e-6)
    assert norm.momentum == 0.99
    callback = adamkit.callbacks.ScheduleFreeEval(average_at_end=False, statistics_data=x)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, validation_data=(x, y),
              callbacks=[callback])
    assert not np.array_equal(ops.convert_to_numpy(norm.moving_mean), at_y[0])  # trained on


def test_batch_statistics_of_a_model_of_two_inputs(rng):
    """x as a dict of inputs: four batches of 32 from each, not one batch of all (len(x) counted
    the inputs); a batch size of 0 is refused when given, not after an epoch with x left in."""
    first, second = keras.Input((6,), name="a"), keras.Input((6,), name="b")
    hidden = keras.layers.BatchNormalization()(keras.layers.Add()([first, second]))
    model = keras.Model({"a": first, "b": second}, keras.layers.Dense(1)(hidden))
    model.compile(optimizer=adamkit.ScheduleFreeAdamW(), loss="mse")
    x = {"a": rng.normal(size=(128, 6)).astype(np.float32),
         "b": rng.normal(size=(128, 6)).astype(np.float32)}
    assert adamkit.callbacks.recompute_batch_statistics(model, x, batch_size=32) == 4
    np.testing.assert_allclose(ops.convert_to_numpy(model.layers[-2].moving_mean),
                               (x["a"] + x["b"]).reshape(4, 32, 6).mean(axis=1).mean(axis=0),
                               rtol=1e-5, atol=1e-6)
    for bad in ({"batch_size": 0}, {"statistics_steps": -1}):
        with pytest.raises(ValueError, match="must be a whole number >= 1"):
            adamkit.callbacks.ScheduleFreeEval(statistics_data=x, **bad)


def test_an_evaluation_after_fit_leaves_x_in(rng):
    """x, left in by fit's callback, stays in through an evaluation with a callback of its own
    (which took it out again, as if it had put it in)."""
    x, y = regression_data(rng)
    model = small_model()
    model.compile(optimizer=adamkit.ScheduleFreeAdamW(learning_rate=0.01), loss="mse")
    model.fit(x, y, epochs=1, verbose=0, callbacks=[adamkit.callbacks.ScheduleFreeEval()])
    at_x = model.evaluate(x, y, verbose=0)
    model.evaluate(x, y, verbose=0, callbacks=[adamkit.callbacks.ScheduleFreeEval()])
    assert int(ops.convert_to_numpy(model.optimizer.holds_average)) == 1
    assert model.evaluate(x, y, verbose=0) == at_x


def test_callback_needs_schedule_free(rng):
    model = small_model()
    model.compile(optimizer=adamkit.Adam(), loss="mse")
    x, y = regression_data(rng, 16)
    with pytest.raises(TypeError, match="ScheduleFreeAdamW"):
        model.fit(x, y, verbose=0, callbacks=[adamkit.callbacks.ScheduleFreeEval()])


# -- Keras's keywords, saving, lean state --------------------------------------------------------

def test_clipping_and_accumulation_keywords_apply(rng):
    initial = [rng.normal(size=(5,)).astype(np.float32)]
    steps = [[rng.normal(size=(5,)).astype(np.float32) * 3] for _ in range(20)]
    (ours,), _ = run_optimizer(adamkit.ScheduleFreeAdamW(learning_rate=0.01, clipvalue=0.5),
                               initial, steps)
    clipped = [np.clip(s[0], -0.5, 0.5) for s in steps]
    assert_close(ours, reference.schedule_free_adamw(initial[0], clipped, lr=0.01)[0], 2e-6,
                 "clipvalue")
    (ours,), _ = run_optimizer(adamkit.ScheduleFreeAdamW(learning_rate=0.01,
                                                         gradient_accumulation_steps=2),
                               initial, steps)
    means = [(a[0] + b[0]) / 2 for a, b in zip(steps[::2], steps[1::2])]
    assert_close(ours, reference.schedule_free_adamw(initial[0], means, lr=0.01)[0], 2e-6,
                 "gradient_accumulation_steps")
    for keywords in ({"clipnorm": 1.0}, {"global_clipnorm": 1.0}, {"use_ema": True},
                     {"use_ema": True, "ema_overwrite_frequency": 3}, {"loss_scale_factor": 8.0},
                     {"skip_nonfinite": True}, {"name": "sf"}):
        (ours,), _ = run_optimizer(adamkit.ScheduleFreeAdamW(**keywords), initial, steps)
        assert np.all(np.isfinite(ours)), keywords


def test_skip_nonfinite_leaves_everything_untouched(rng):
    optimizer = adamkit.ScheduleFreeAdamW(skip_nonfinite=True)
    variables = make_variables([rng.normal(size=(4,))])
    optimizer.apply([ops.convert_to_tensor(rng.normal(size=(4,)).astype(np.float32))], variables)
    before = numpy_values([*variables, *optimizer.variables])
    optimizer.apply([ops.convert_to_tensor(np.array([1.0, np.nan, 0.0, 1.0], np.float32))],
                    variables)
    after = numpy_values([*variables, *optimizer.variables])
    for a, b, v in zip(before, after, ["θ", *[v.name for v in optimizer.variables]]):
        if v != "skipped_steps":
            np.testing.assert_array_equal(a, b, err_msg=v)


def test_config_round_trip():
    optimizer = adamkit.ScheduleFreeAdamW(learning_rate=0.01, weight_decay=0.02, warmup_steps=7,
                                          r=0.5, weight_lr_power=1.0, beta_1=0.95,
                                          state_dtype="bfloat16", exclude_1d=True)
    config = optimizer.get_config()
    assert (config["warmup_steps"], config["r"], config["weight_lr_power"]) == (7, 0.5, 1.0)
    again = adamkit.ScheduleFreeAdamW.from_config(config)
    assert again.get_config() == config
    by_name = {k: v for k, v in adamkit.get("schedule-free").get_config().items() if k != "name"}
    assert by_name == {k: v for k, v in adamkit.ScheduleFreeAdamW().get_config().items()
                       if k != "name"}


@pytest.mark.parametrize("at", ["y", "x"])
def test_keras_file_round_trip_resumes(at, tmp_path, rng):
    x, y = regression_data(rng, 64)
    keras.utils.set_random_seed(1)
    model = small_model()
    model.compile(optimizer=adamkit.ScheduleFreeAdamW(learning_rate=0.01, warmup_steps=5,
                                                      weight_decay=0.01), loss="mse")
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    if at == "x":
        model.optimizer.use_average()
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    names = [v.name for v in model.optimizer.variables]
    assert any(n.endswith("weight_sum") for n in names) and "holds_average" in names
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    for m in (model, loaded):
        m.optimizer.use_training_point()  # the loaded one recomputes y from x and z
        m.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        if at == "y":
            np.testing.assert_array_equal(a, b)
        else:
            assert_close(a, b, 1e-5, "trained on from a model saved at x")


@pytest.mark.parametrize("state_dtype", ["bfloat16", "int8"])
def test_lean_state_keeps_the_iterates_exact(state_dtype, rng):
    shape = (64, 128)  # 8192 values: int8 stores v in blocks
    target = rng.normal(size=shape).astype(np.float32)
    results = {}
    for dtype in ("float32", state_dtype):
        (w,) = make_variables([np.zeros(shape)])
        optimizer = adamkit.ScheduleFreeAdamW(learning_rate=0.02, warmup_steps=20,
                                              state_dtype=dtype)
        for _ in range(200):
            optimizer.apply([(w - target) * 2.0], [w])
        stored = {s.name.rsplit("_", 1)[-1]: keras.backend.standardize_dtype(s.dtype)
                  for s in optimizer.variables}
        results[dtype] = (ops.convert_to_numpy(w), stored)
    lean, stored = results[state_dtype]
    assert stored["z"] == stored["x"] == stored["sum"] == "float32"
    assert stored["velocity" if state_dtype == "bfloat16" else "codes"] == state_dtype
    exact = results["float32"][0]
    assert np.max(np.abs(lean - exact)) < 0.05 * np.max(np.abs(target - exact)) + 1e-3
    assert np.mean((lean - target) ** 2) < 0.05 * np.mean(target**2)


BAD = [({"beta_1": 1.0}, ValueError, "beta_1"), ({"beta_2": -0.1}, ValueError, "beta_2"),
       ({"epsilon": -1e-8}, ValueError, "epsilon"), ({"learning_rate": 0.0}, ValueError,
                                                      "learning_rate"),
       ({"weight_decay": -0.1}, ValueError, "weight_decay"),
       ({"warmup_steps": -1}, ValueError, "warmup_steps"),
       ({"warmup_steps": 2.5}, ValueError, "warmup_steps"),
       ({"r": -1.0}, ValueError, "`r`"), ({"weight_lr_power": float("nan")}, ValueError,
                                          "weight_lr_power"),
       ({"weight_lr_power": "2"}, TypeError, "weight_lr_power"),
       ({"lazy": True}, ValueError, "lazy=True"), ({"fused": True}, ValueError, "fused")]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD)
def test_bad_hyperparameters_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        adamkit.ScheduleFreeAdamW(**kwargs)


def test_converges_at_x_on_a_parabola():
    target = np.array([3.0, -2.0, 0.5, 10.0], np.float32)
    (w,) = make_variables([np.zeros(4)])
    optimizer = adamkit.ScheduleFreeAdamW(learning_rate=0.5, warmup_steps=50)
    for _ in range(1500):
        optimizer.apply([2.0 * (w - target)], [w])
    with optimizer.averaged():
        np.testing.assert_allclose(ops.convert_to_numpy(w), target, atol=3e-2)


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="the training job, on the default backend")
def test_adamkit_train_validates_at_x_checkpoints_y_and_saves_x(tmp_path):
    from adamkit import checkpoint
    from adamkit.train import TrainSettings, evaluate, load_data, train

    settings = TrainSettings(optimizer="schedule-free", epochs=1, train_examples=2000,
                             hyperparameters={"warmup_steps": 10}, out=str(tmp_path / "out"),
                             checkpoint_dir=str(tmp_path / "ckpt"))
    summary = train(settings, log=lambda *_: None)
    model = keras.saving.load_model(tmp_path / "out" / "model.keras")
    assert int(ops.convert_to_numpy(model.optimizer.holds_average)) == 1
    _, accuracy = evaluate(model, load_data(settings, log=lambda *_: None)[1])
    assert accuracy == pytest.approx(summary["final"]["val_accuracy"], abs=1e-4)
    at_x = numpy_values(model.trainable_variables)
    model.optimizer.use_training_point()  # y, recomputed from x and z: the checkpoint's weights
    with np.load(checkpoint.checkpoints(tmp_path / "ckpt")[0]) as saved:
        stored = [saved[k] for k in sorted(saved.files) if k != "record"]
    for y, x in zip(numpy_values(model.trainable_variables), at_x):
        assert any(a.shape == y.shape and np.allclose(a, y, rtol=1e-5, atol=1e-7)
                   for a in stored)
        assert not np.allclose(x, y)
