"""Lean optimizer state (``adamkit.state``): the 8-bit codec, bfloat16 storage, and whole optimizers
running on them, against float32 state. Portable: runs on every backend."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from keras import ops

import adamkit
from adamkit import state as st
from conftest import compiled_step, optimised_training_hlo

FAMILY = ["adam", "amsgrad", "adamw", "nadam", "adamax", "radam"]


def numpy(x):
    return np.asarray(ops.convert_to_numpy(x), np.float64)


def roundtrip(x, signed, step=None):
    codes, absmax = st.quantize(ops.convert_to_tensor(np.asarray(x, np.float32)), signed, step)
    return numpy(st.dequantize(codes, absmax, tuple(np.shape(x)), signed)), codes, absmax


def nearest_on_map(x, signed):
    """Brute force: each value's nearest map entry, block by block (float64)."""
    qmap = st.quantization_map(signed)
    flat = np.asarray(x, np.float64).ravel()
    padded = np.pad(flat, (0, -len(flat) % st.BLOCK_SIZE)).reshape(-1, st.BLOCK_SIZE)
    absmax = np.abs(padded).max(axis=1, keepdims=True)
    scale = np.where(absmax > 0, absmax, 1.0)
    nearest = qmap[np.abs(padded[..., None] / scale[..., None] - qmap).argmin(-1)] * scale
    gaps = np.diff(qmap)
    return nearest.ravel()[: len(flat)], gaps, scale


@pytest.mark.parametrize("signed", [True, False])
def test_the_map_is_the_dynamic_tree_map(signed):
    qmap = st.quantization_map(signed)
    assert len(qmap) == (255 if signed else 256)  # signed: ±127 codes and one zero
    assert np.all(np.diff(qmap) > 0)
    assert qmap[-1] == 1.0 and 0.0 in qmap and (qmap[0] == -1.0 if signed else qmap[0] == 0.0)
    positive = qmap[qmap > 0]
    bits = 6 if signed else 7
    # One more decade of range per exponent bit; the densest decade (above 0.1, which is stored
    # as float32(0.1) = 0.10000000149) holds half the codes.
    assert positive.min() == pytest.approx(10.0 ** -bits)
    assert np.sum(positive > 0.1 * (1 + 1e-6)) == 2**bits


@pytest.mark.parametrize("signed", [True, False])
def test_rounding_to_nearest_picks_the_nearest_code_within_its_bound(signed, rng):
    x = rng.standard_normal(5000) * np.exp(rng.uniform(-25, 2, 5000))
    x = x if signed else np.abs(x)
    decoded, codes, absmax = roundtrip(x, signed)
    nearest, gaps, scale = nearest_on_map(x, signed)
    np.testing.assert_allclose(decoded, nearest, rtol=1e-6, atol=0)
    assert keras.backend.standardize_dtype(codes.dtype) == "int8"
    assert tuple(codes.shape) == (math.ceil(5000 / st.BLOCK_SIZE), st.BLOCK_SIZE)
    # Per block: the error is at most half the widest gap of the map, times the absmax.
    error = np.abs(decoded - x).ravel()
    bound = np.repeat(scale.ravel(), st.BLOCK_SIZE)[:5000] * gaps.max() / 2 * (1 + 1e-6)
    assert np.all(error <= bound)


@pytest.mark.parametrize("signed", [True, False])
def test_special_blocks(signed, rng):
    values = rng.uniform(0.5, 2.0, st.BLOCK_SIZE) * (rng.choice([-1, 1], st.BLOCK_SIZE) if signed else 1)
    blocks = {
        "zero": np.zeros(st.BLOCK_SIZE),
        "constant": np.full(st.BLOCK_SIZE, -3.25 if signed else 3.25),
        "huge": values * 1e30,
        "tiny": values * 1e-30,
        "normal": values,
    }
    decoded, _, _ = roundtrip(np.concatenate(list(blocks.values())), signed)
    parts = dict(zip(blocks, np.split(decoded, len(blocks))))
    assert np.all(parts["zero"] == 0)
    np.testing.assert_array_equal(parts["constant"], blocks["constant"])  # absmax is exact
    for name in ("huge", "tiny"):  # scale-free: the same codes as the normal block
        assert np.all(np.isfinite(parts[name]))
        np.testing.assert_allclose(parts[name] / parts["normal"], blocks[name] / values, rtol=1e-5)


def test_stochastic_rounding_is_unbiased_and_lands_on_neighbouring_codes():
    x = np.linspace(0.05, 1.0, st.BLOCK_SIZE)  # absmax 1: each value sits between two map entries
    qmap = st.quantization_map(False)
    below = qmap[np.searchsorted(qmap, x, side="right") - 1]
    above = qmap[np.minimum(np.searchsorted(qmap, x, side="left"), len(qmap) - 1)]
    total = np.zeros_like(x)
    steps = 512
    for t in range(1, steps + 1):
        decoded, _, _ = roundtrip(x, False, step=ops.convert_to_tensor(t, "int32"))
        assert np.all((np.abs(decoded - below) < 1e-6) | (np.abs(decoded - above) < 1e-6))
        total += decoded
    gap = above - below
    assert np.all(np.abs(total / steps - x) <= 0.05 * gap + 1e-6)
    # Nearest rounding would be off by up to half a gap on average; this is 10× closer.


def test_bfloat16_stochastic_rounding_is_exact_and_unbiased():
    x = np.float32(1.0) + np.arange(1, 257, dtype=np.float32) * np.float32(2.0**-12)
    positions = st.flat_positions((256,))
    total = np.zeros(256)
    for t in range(1, 257):
        rounded = st.round_to_bfloat16(ops.convert_to_tensor(x), positions, t)
        as_float = numpy(ops.cast(rounded, "float32"))
        assert np.all((as_float == np.floor(x * 128) / 128) | (as_float == np.ceil(x * 128) / 128))
        total += as_float
    np.testing.assert_allclose(total / 256, x, atol=2.0**-7 * 0.05)


def model_parameters(count_millions: float):
    width = int(math.sqrt(count_millions * 1e6))
    return [keras.Variable(np.zeros((width, width), np.float32), name="kernel"),
            keras.Variable(np.zeros((width,), np.float32), name="bias")]


@pytest.mark.parametrize("state_dtype, budget", [("int8", 2.1), ("bfloat16", 4.1), ("float32", 8.01)])
def test_bytes_per_parameter_on_a_ten_million_parameter_model(state_dtype, budget):
    """Every optimizer variable (iteration count and learning rate included) over the parameters."""
    variables = model_parameters(10.2)
    optimizer = adamkit.Adam(state_dtype=state_dtype)
    optimizer.build(variables)
    parameters = sum(math.prod(v.shape) for v in variables)
    state_bytes = sum(
        math.prod(v.shape) * np.dtype(keras.backend.standardize_dtype(v.dtype).replace(
            "bfloat16", "float16")).itemsize
        for v in optimizer.variables
    )
    assert budget - 0.1 < state_bytes / parameters <= budget  # and the state really is there


def test_small_tensors_stay_float32():
    optimizer = adamkit.Adam(state_dtype="int8")
    small = keras.Variable(np.zeros((64, 63), np.float32), name="small")  # 4032 < 4096 values
    large = keras.Variable(np.zeros((64, 64), np.float32), name="large")
    optimizer.build([small, large])
    dtypes = {v.name: keras.backend.standardize_dtype(v.dtype) for v in optimizer.variables}
    assert [d for n, d in dtypes.items() if "small" in n] == ["float32", "float32"]
    assert sorted(d for n, d in dtypes.items() if "large" in n) == ["float32", "float32", "int8", "int8"]


def least_squares(state_dtype, name, steps, seed=0):
    """Full-batch least squares, the gradient written out (portable across backends)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((512, 256)).astype(np.float32)
    y = x @ rng.standard_normal((256, 64)).astype(np.float32)
    y += 0.1 * rng.standard_normal(y.shape).astype(np.float32)
    x_t, y_t = ops.convert_to_tensor(x), ops.convert_to_tensor(y)
    weights = keras.Variable(np.zeros((256, 64), np.float32), name="weights")
    schedule = keras.optimizers.schedules.CosineDecay(0.01, steps)
    optimizer = adamkit.get(name, learning_rate=schedule, state_dtype=state_dtype)

    def gradient():
        residual = ops.matmul(x_t, weights) - y_t
        return [ops.matmul(ops.transpose(x_t), residual) * (2.0 / y.size)]

    step = compiled_step(optimizer, [weights], gradient)
    for _ in range(steps):
        step()
    loss = float(np.mean((x @ numpy(weights) - y) ** 2))
    state = {k: numpy(v[0]) for k, v in optimizer.state_values().items()}
    return loss, numpy(weights), state


@pytest.fixture(scope="module")
def float32_runs():
    return {name: least_squares("float32", name, 600) for name in FAMILY}


@pytest.mark.parametrize("state_dtype", ["int8", "bfloat16"])
@pytest.mark.parametrize("name", FAMILY)
def test_least_squares_converges_as_with_float32_state(name, state_dtype, float32_runs):
    loss, weights, _ = least_squares(state_dtype, name, 600)
    reference_loss, reference_weights, _ = float32_runs[name]
    assert loss <= 1.05 * reference_loss, f"{name} {state_dtype}: {loss} vs {reference_loss}"
    # The stated bound on the trajectory: the end point is within 2% of the distance travelled.
    distance = np.linalg.norm(weights - reference_weights) / np.linalg.norm(reference_weights)
    assert distance < 0.02, f"{name} {state_dtype}: parameters {distance:.3%} away"


def test_fit_and_keras_file_keep_the_compressed_state(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 64)).astype(np.float32)
    y = (x[:, :1] > 0).astype(np.float32)
    sizes = {}
    for state_dtype in ("float32", "int8"):
        model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, activation="relu"),
                                  keras.layers.Dense(1, activation="sigmoid")])
        model.compile(adamkit.Adam(state_dtype=state_dtype), "binary_crossentropy")
        model.fit(x, y, epochs=2, batch_size=32, verbose=0)
        path = tmp_path / f"{state_dtype}.keras"
        model.save(path)
        sizes[state_dtype] = path.stat().st_size
        loaded = keras.saving.load_model(path)
        assert loaded.optimizer.state_dtype == state_dtype
        for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
            assert keras.backend.standardize_dtype(a.dtype) == keras.backend.standardize_dtype(b.dtype)
            np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
        # Two more epochs from the file equal two more epochs in memory.
        model.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
        loaded.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
        for a, b in zip(model.weights, loaded.weights):
            np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    # The 64×128 kernel's two moments drop from 8 to ~2 bytes per value in the file.
    assert sizes["float32"] - sizes["int8"] > 0.7 * 64 * 128 * 6


def test_state_dtype_is_validated_and_lazy_int8_is_refused():
    with pytest.raises(ValueError, match="state_dtype.*'float32', 'bfloat16', 'int8'"):
        adamkit.Adam(state_dtype="float16")
    with pytest.raises(ValueError, match="lazy=True.*state_dtype='int8'.*bfloat16"):
        adamkit.Adam(lazy=True, state_dtype="int8")
    assert adamkit.AdamW(state_dtype="bfloat16").get_config()["state_dtype"] == "bfloat16"


def stored_dtypes(optimizer, variable) -> set[str]:
    return {keras.backend.standardize_dtype(v.dtype)
            for slot in optimizer.slots_of(variable).values() for v in slot.variables}


@keras.saving.register_keras_serializable(package="adamkit_tests")
def int8_for_kernels(variable) -> str:
    return "int8" if "kernel" in variable.path else "bfloat16"


@keras.saving.register_keras_serializable(package="adamkit_tests")
class Int8FromSize:
    """A callable object as ``state_dtype``: int8 state for variables of ``size`` values or more."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, variable) -> str:
        return "int8" if np.prod(variable.shape) >= self.size else "float32"

    def get_config(self) -> dict:
        return {"size": self.size}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)


def test_a_registered_callable_object_as_state_dtype_survives_its_config():
    """Not only functions: an object of a registered class, serialised with its config."""
    optimizer = adamkit.Adam(state_dtype=Int8FromSize(64))
    again = adamkit.Adam.from_config(optimizer.get_config())
    assert isinstance(again.state_dtype, Int8FromSize) and again.state_dtype.size == 64
    mapping = {"class_name": "int8", "config": "bfloat16"}  # patterns that look like its keys
    assert adamkit.Adam.from_config(adamkit.Adam(state_dtype=mapping).get_config()).state_dtype \
        == mapping


def dense_model() -> keras.Model:
    return keras.Sequential([keras.Input((64,), dtype="int32"),
                             keras.layers.Embedding(300, 16, name="embedding"),
                             keras.layers.Flatten(), keras.layers.Dense(128, activation="relu",
                                                                        name="dense"),
                             keras.layers.Dense(8, name="out"), keras.layers.Dense(1, name="one")])


@pytest.mark.parametrize("state_dtype", [
    {"embedding": "int8", "dense/kernel": "bfloat16"},  # the rest: float32
    int8_for_kernels,
], ids=["mapping", "callable"])
def test_state_dtype_per_variable_trains_and_survives_a_keras_file(state_dtype, tmp_path):
    """A mapping from name patterns (first match decides) or a callable picks each variable's
    state dtype; ``min_8bit_size`` moves the float32 threshold; both round-trip through
    ``get_config`` and a ``.keras`` file, and training resumes from the file bit for bit."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 300, (128, 64)).astype(np.int32)
    y = (x[:, :1] > 150).astype(np.float32)
    model = dense_model()
    model.compile(adamkit.Adam(state_dtype=state_dtype, min_8bit_size=1000),
                  keras.losses.BinaryCrossentropy(from_logits=True))
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    optimizer = model.optimizer
    found = {v.path.split("/", 1)[1]: stored_dtypes(optimizer, v)
             for v in model.trainable_variables}
    int8 = {"int8", "float32"}  # codes and absmax
    if isinstance(state_dtype, dict):
        assert found == {"embedding/embeddings": int8, "dense/kernel": {"bfloat16"},
                         "dense/bias": {"float32"}, "out/kernel": {"float32"},
                         "out/bias": {"float32"}, "one/kernel": {"float32"},
                         "one/bias": {"float32"}}
    else:  # out/kernel: 1024 values ≥ min_8bit_size=1000 (int8); one/kernel: 8 (float32)
        assert found == {"embedding/embeddings": {"bfloat16"}, "dense/kernel": int8,
                         "dense/bias": {"bfloat16"}, "out/kernel": int8, "out/bias": {"bfloat16"},
                         "one/kernel": {"float32"}, "one/bias": {"bfloat16"}}
    clone = type(optimizer).from_config(optimizer.get_config())
    assert clone.state_dtype == state_dtype and clone.min_8bit_size == 1000
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.optimizer.state_dtype == state_dtype
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, shuffle=False)
    loaded.fit(x, y, epochs=1, batch_size=32, verbose=0, shuffle=False)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))


def test_per_variable_state_dtype_is_validated():
    with pytest.raises(ValueError, match="maps 'dense' to 'int4'.*'float32', 'bfloat16', 'int8'"):
        adamkit.Adam(state_dtype={"dense": "int4"})
    with pytest.raises(ValueError, match="pattern '\\(' is not a regular expression"):
        adamkit.Adam(state_dtype={"(": "int8"})
    with pytest.raises(ValueError, match="min_8bit_size.*whole number >= 0.*2.5"):
        adamkit.Adam(min_8bit_size=2.5)
    with pytest.raises(ValueError, match="lazy=True.*state_dtype='int8'"):
        adamkit.Adam(lazy=True, state_dtype={"embedding": "int8"})
    optimizer = adamkit.Adam(state_dtype=lambda variable: "float16")
    with pytest.raises(ValueError, match="returned 'float16' for variable 'w'"):
        optimizer.build([keras.Variable(np.zeros((64, 64), np.float32), name="w")])
    lazy = adamkit.Adam(lazy=True, state_dtype=lambda variable: "int8")
    lazy.build([keras.Variable(np.zeros((8,), np.float32), name="small")])  # under 4096: float32
    with pytest.raises(ValueError, match="lazy=True.*state_dtype='int8'"):
        adamkit.Adam(lazy=True, state_dtype=lambda variable: "int8").build(
            [keras.Variable(np.zeros((64, 64), np.float32), name="w")])


@pytest.mark.parametrize("shape", [(601, 501), (512, 512)])
@pytest.mark.parametrize("state_dtype", ["int8", "bfloat16"])
@pytest.mark.parametrize("name", ["amsgrad", "nadam", "adamax"])
def test_the_chunked_ops_path_equals_the_whole_tensor_one(name, state_dtype, shape, monkeypatch):
    """A variable of 2.3 chunks (301,101 values: the last chunk partial, its last 8-bit block
    too) and one of exactly two: parameters and stored state after three steps are those of the
    ops path on whole tensors, bit for bit."""
    from adamkit import chunks

    rng = np.random.default_rng(0)
    gradients = [rng.standard_normal(shape).astype(np.float32) * 10.0 ** rng.uniform(-3, 1)
                 for _ in range(3)]

    def run(chunked: bool):
        if not chunked:
            monkeypatch.setattr(chunks, "worth_chunking", lambda *args: "off for the test")
        variable = keras.Variable(np.ones(shape, np.float32), name="w")
        optimizer = adamkit.get(name, learning_rate=0.01, state_dtype=state_dtype, fused=False,
                                weight_decay=0.01)
        optimizer.build([variable])
        executor = optimizer.explain()[0].executor
        if keras.backend.backend() == "jax":  # as its trainer runs it: under jit (XLA)
            import jax

            apply = jax.jit(optimizer.stateless_apply)
            params, state = [variable.value], [v.value for v in optimizer.variables]
            for g in gradients:
                params, state = apply(state, [g], params)
            values = [*params, *state]
        else:
            feed = iter(gradients)
            step = compiled_step(optimizer, [variable],
                                 lambda: [ops.convert_to_tensor(next(feed))])
            for _ in gradients:
                step()
            values = [variable, *optimizer.variables]
        monkeypatch.undo()
        return executor, [ops.convert_to_numpy(v) for v in values]

    (chunked_path, chunked), (whole_path, whole) = run(True), run(False)
    jax_bfloat16 = keras.backend.backend() == "jax" and state_dtype == "bfloat16"
    assert (chunked_path, whole_path) == ("ops" if jax_bfloat16 else "ops, in chunks", "ops")
    for a, b in zip(chunked, whole):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="XLA's memory analysis, under jax.jit")
def test_the_chunked_step_updates_its_rows_in_place_under_jit():
    """Three 2M-parameter variables with int8 state, the step compiled as the trainer compiles it
    (parameters and state donated): its temporaries stay under one variable's float32 values,
    and no tensor larger than a chunk is copied. Reading the chunks from the tensors as they
    were, XLA copied every carried tensor whole before the loop (7.7 bytes a parameter)."""
    import re

    import jax

    from adamkit import chunks

    variables = [keras.Variable(np.ones((2048, 1024), np.float32), name=f"w{i}") for i in range(3)]
    optimizer = adamkit.Adam(state_dtype="int8", fused=False)
    optimizer.build(variables)
    assert {row.executor for row in optimizer.explain()} == {"ops, in chunks"}
    params, state = [v.value for v in variables], [v.value for v in optimizer.variables]
    step = jax.jit(lambda params, state, grads: optimizer.stateless_apply(state, grads, params),
                   donate_argnums=(0, 1))
    compiled = step.lower(params, state, params).compile()
    one_variable = 2048 * 1024 * 4
    assert compiled.memory_analysis().temp_size_in_bytes < one_variable
    # nor a copy of any tensor larger than a chunk (an 8-bit codes tensor would fit in the bound)
    sizes = [math.prod(int(d) for d in dims.split(",") if d) for dims in
             re.findall(r"= [a-z0-9]+\[([0-9,]*)\]\{[0-9,]*\} copy\(", compiled.as_text())]
    assert all(size <= chunks.CHUNK for size in sizes), sizes


def test_model_fit_retraces_a_chunked_step():
    """``model.fit`` whose last batch is smaller traces its step twice: each chunked step waits
    for the previous one of its own trace (a step's loop from the first trace, held over, made
    the second trace fail on JAX)."""
    model = keras.Sequential([keras.Input((512,)), keras.layers.Dense(512, use_bias=False),
                              keras.layers.Dense(512, use_bias=False)])
    model.compile(adamkit.Adam(state_dtype="int8", fused=False), "mse")
    x = np.random.default_rng(0).standard_normal((48, 512)).astype(np.float32)
    history = model.fit(x, x, batch_size=32, epochs=2, verbose=0)
    assert {row.executor for row in model.optimizer.explain()} == {"ops, in chunks"}
    assert np.all(np.isfinite(history.history["loss"]))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's jit_compile")
@pytest.mark.parametrize("state_dtype", ["int8", "bfloat16"])
def test_the_chunked_ops_path_compiles_with_xla_and_equals_the_whole_tensor_one(state_dtype,
                                                                               monkeypatch):
    """Under ``jit_compile=True`` a chunk's row is written by XLA's own update (a strided slice
    wants constant bounds there): the same parameters and state as the whole-tensor ops path
    compiled alike, after two steps."""
    import tensorflow as tf

    from adamkit import chunks

    gradient = tf.constant(np.random.default_rng(1).standard_normal((601, 501)), "float32")

    def run(chunked: bool):
        if not chunked:
            monkeypatch.setattr(chunks, "worth_chunking", lambda *args: "off for the test")
        variable = keras.Variable(np.ones((601, 501), np.float32), name="w")
        optimizer = adamkit.Adam(learning_rate=0.01, state_dtype=state_dtype, fused=False)
        optimizer.build([variable])
        executor = optimizer.explain()[0].executor
        step = tf.function(lambda: optimizer.apply([gradient], [variable]), jit_compile=True)
        step()
        step()
        monkeypatch.undo()
        return executor, [ops.convert_to_numpy(v) for v in [variable, *optimizer.variables]]

    (chunked_path, chunked), (whole_path, whole) = run(True), run(False)
    assert (chunked_path, whole_path) == ("ops, in chunks", "ops")
    for a, b in zip(chunked, whole, strict=True):
        np.testing.assert_array_equal(a, b)


# The encoders adam_update.h picks by what it is compiled for: the best this CPU has (AVX-512 or
# AVX2), the AVX2 one with AVX-512 switched off, and the scalar one with both off; CI's CPU
# would otherwise test only the first.
ENCODERS = {"native": [], "avx2": ["-mno-avx512f"], "scalar": ["-mno-avx512f", "-mno-avx2"]}


def encoder_library(encoder: str = "native", source: str = "encoder_check"):
    """tests/native/encoder_check.cc, or ``source="adam_host"`` the PyTorch kernel's own entry
    points (adamkit/kernels/adam_host.cc), built against the kernels' header for ``encoder``
    (skips without a compiler, or for AVX2 where the CPU has none)."""
    import ctypes
    import hashlib
    from pathlib import Path

    from adamkit import kernels
    from adamkit.kernels.build import compile_library, cpu_identity

    if encoder == "avx2" and "avx2" not in cpu_identity().split():
        pytest.skip("this CPU has no AVX2")
    header = Path(kernels.__file__).parent / "adam_update.h"
    folder = Path(__file__).parent / "native" if source == "encoder_check" else header.parent
    try:
        library = compile_library(folder / f"{source}.cc",
                                  [f"-I{header.parent}", "-ffp-contract=off", "-pthread",
                                   *ENCODERS[encoder]],
                                  salt=hashlib.sha256(header.read_bytes()).hexdigest())
    except RuntimeError as error:  # no compiler: the kernels fall back too, nothing to check
        pytest.skip(str(error))
    return ctypes.CDLL(str(library))


@pytest.mark.parametrize("encoder", ["native", "avx2"])
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_the_kernels_encoder_is_exact_over_every_float_in_the_unit_interval(signed, encoder):
    """Every float32 in [−1, 1] (all 1,065,353,217 magnitudes; signs alternate in the signed map)
    through a vector encoder of the kernels, alone and as the step encodes m and v together, and
    the scalar one: the same codes, each one of the two map values that bracket the value, with
    the dither."""
    import ctypes

    library = encoder_library(encoder)
    tables = [np.ascontiguousarray(st.codec_table(s)) for s in (True, False)]
    counts = (ctypes.c_int64 * 3)()
    library.adamkit_check_encoder(
        int(signed), *(t.ctypes.data_as(ctypes.c_void_p) for t in tables),
        ctypes.c_uint32(0x6A09E667 * 3), counts)
    checked, disagree, outside = counts
    assert checked == 0x3F800000 + 1
    assert (disagree, outside) == (0, 0)


@pytest.mark.parametrize("encoder", list(ENCODERS))
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_the_kernels_encoder_writes_the_codecs_codes_at_every_scale(signed, encoder, rng):
    """Blocks at every scale — zero, 1e-30 and 1e-20 (below 2^-64: prescaled), ordinary ones,
    1e20, 1e30 and 3e38 (above 2^64), constant blocks (whose one value must reach the top code)
    — through the kernels' encoder and adamkit.state.quantize: the same codes and absmax."""
    import ctypes

    library = encoder_library(encoder)
    scales = [0.0, 1e-30, 1e-20, 1e-3, 1.0, 7.0, 1e20, 1e30, 3e38]
    values = rng.choice([-1.0, 1.0], (len(scales), st.BLOCK_SIZE)) * np.exp(
        rng.uniform(-12, 0, (len(scales), st.BLOCK_SIZE)))  # no subnormals: TensorFlow reads them as 0
    values = values / np.abs(values).max(axis=1, keepdims=True) * np.array(scales)[:, None]
    constant = rng.uniform(0.1, 10.0, (64, 1)) * np.ones((1, st.BLOCK_SIZE))
    x = np.concatenate([values, constant]).astype(np.float32)
    x = x if signed else np.abs(x)
    blocks = x.shape[0]
    step = 17
    codes = np.zeros(x.shape, np.int8)
    absmax = np.zeros(blocks, np.float32)
    table = np.ascontiguousarray(st.codec_table(signed))
    library.adamkit_encode_blocks(
        int(signed), table.ctypes.data_as(ctypes.c_void_p), x.ctypes.data_as(ctypes.c_void_p),
        ctypes.c_int64(blocks), ctypes.c_uint32((step * 0x6A09E667) % 2**32),
        codes.ctypes.data_as(ctypes.c_void_p), absmax.ctypes.data_as(ctypes.c_void_p))
    expected_codes, expected_absmax = st.quantize(ops.convert_to_tensor(x), signed,
                                                  ops.convert_to_tensor(step, "int32"))
    np.testing.assert_array_equal(codes, ops.convert_to_numpy(expected_codes))
    np.testing.assert_array_equal(absmax, ops.convert_to_numpy(expected_absmax))
    assert np.all(codes[len(scales):] == 127)  # the top code (unsigned: 255 − 128): exact


@pytest.mark.parametrize("encoder", list(ENCODERS))
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_the_kernels_decoder_reads_every_code_as_the_codec_does(signed, encoder, rng):
    """All 256 codes, in a different order in each block, at block scales from ±0 and 1e-30 to
    3e38, inf and NaN, through the kernels' decoder and adamkit.state.dequantize: the same floats, bit for bit
    (the signed map's decoder looks up |c| in the table's second half; −128, which no encoder
    writes, must still decode as the codec's −1)."""
    import ctypes

    library = encoder_library(encoder)
    scales = np.array([0.0, -0.0, 1e-30, 1e-20, 1e-3, 0.37, 1.0, 7.0, 1e20, 3e38, np.inf, np.nan],
                      np.float32)  # a NaN absmax: a diverged state
    codes = np.stack([rng.permutation(256) - 128 for _ in scales]).astype(np.int8)
    decoded = np.zeros(codes.shape, np.float32)
    table = np.ascontiguousarray(st.codec_table(signed))
    library.adamkit_decode_blocks(
        int(signed), table.ctypes.data_as(ctypes.c_void_p), codes.ctypes.data_as(ctypes.c_void_p),
        scales.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(len(scales)),
        decoded.ctypes.data_as(ctypes.c_void_p))
    expected = ops.convert_to_numpy(st.dequantize(ops.convert_to_tensor(codes),
                                                  ops.convert_to_tensor(scales), codes.shape, signed))
    np.testing.assert_array_equal(decoded.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_the_kernels_pair_encoder_writes_the_codecs_codes_at_every_scale(encoder, rng):
    """m and v encoded together, as the 8-bit step does, at every scale of the test above, m's
    scale and v's paired every way (either, both or neither prescaled: below 2^-64 or above
    2^64): the codes and absmax of adamkit.state.quantize for each."""
    import ctypes

    library = encoder_library(encoder)
    scales = np.array([0.0, 1e-30, 1e-20, 1e-3, 1.0, 7.0, 1e20, 1e30, 3e38])
    pairs = np.array([(a, b) for a in scales for b in scales])
    values = rng.choice([-1.0, 1.0], (2, len(pairs), st.BLOCK_SIZE)) * np.exp(
        rng.uniform(-12, 0, (2, len(pairs), st.BLOCK_SIZE)))
    values = values / np.abs(values).max(axis=2, keepdims=True) * pairs.T[:, :, None]
    m, v = values[0].astype(np.float32), np.abs(values[1]).astype(np.float32)
    step = 23
    codes = np.zeros((2, *m.shape), np.int8)
    absmax = np.zeros((2, len(pairs)), np.float32)
    tables = [np.ascontiguousarray(st.codec_table(s)) for s in (True, False)]
    pointer = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    library.adamkit_encode_moments(
        *(pointer(t) for t in tables), pointer(m), pointer(v), ctypes.c_int64(len(pairs)),
        ctypes.c_uint32((step * 0x6A09E667) % 2**32), pointer(codes[0]), pointer(codes[1]),
        pointer(absmax[0]), pointer(absmax[1]))
    for index, (x, signed) in enumerate(((m, True), (v, False))):
        expected_codes, expected_absmax = st.quantize(ops.convert_to_tensor(x), signed,
                                                      ops.convert_to_tensor(step, "int32"))
        np.testing.assert_array_equal(codes[index], ops.convert_to_numpy(expected_codes))
        np.testing.assert_array_equal(absmax[index], ops.convert_to_numpy(expected_absmax))


@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_a_block_holding_nan_keeps_a_nan_absmax_in_every_encoder(encoder, rng):
    """A diverged state stays visibly diverged: every encoder's absmax of a block holding one NaN
    is NaN, as adamkit.state.quantize's (a float max, as AVX2's once was, drops it)."""
    import ctypes

    x = rng.normal(size=(2, st.BLOCK_SIZE)).astype(np.float32)
    x[0, 77] = np.nan
    codes = np.zeros(x.shape, np.int8)
    absmax = np.zeros(2, np.float32)
    table = np.ascontiguousarray(st.codec_table(True))
    encoder_library(encoder).adamkit_encode_blocks(
        1, table.ctypes.data_as(ctypes.c_void_p), x.ctypes.data_as(ctypes.c_void_p),
        ctypes.c_int64(2), ctypes.c_uint32(0), codes.ctypes.data_as(ctypes.c_void_p),
        absmax.ctypes.data_as(ctypes.c_void_p))
    _, expected = st.quantize(ops.convert_to_tensor(x), True, ops.convert_to_tensor(0, "int32"))
    assert np.isnan(absmax[0]) and np.isnan(ops.convert_to_numpy(expected)[0])
    assert absmax[1] == np.abs(x[1]).max()


def test_the_avx512_store_clamps_the_unsigned_maps_codes():
    """The AVX-512 encoder leaves the unsigned map's clamp to [0, 255] to the saturating packs
    that store its codes: every index an int32 shifted right by 22 can hold comes out clamped, and
    the maps' top indices are the ones the encoders assume (127 signed, 255 unsigned)."""
    for signed, top in ((True, 127), (False, 255)):
        table = st.codec_table(signed)
        assert 2 * int(table[256 + 3 * st_decades()]) - 1 == top
    wrong = encoder_library("native").adamkit_check_saturating_store
    wrong.restype = __import__("ctypes").c_int64
    if wrong() == -1:
        pytest.skip("this CPU has no AVX-512 encoder")
    assert wrong() == 0


def st_decades() -> int:
    """The codec table's decade count (its rows after the 256 decoded values: thresholds, floors,
    scales and point counts, one per decade)."""
    return (len(st.codec_table(True)) - 256) // 4


@pytest.mark.parametrize("encoder", ["native", "avx2"])
@pytest.mark.parametrize("rule", ["adam", "amsgrad", "adamax"])
def test_the_8bit_step_is_the_same_in_every_build(encoder, rule, rng):
    """The whole 8-bit step (the PyTorch kernel's entry, adam_host.cc, on one thread) built for
    this CPU's vector encoder against the scalar build, six steps: the same θ, codes and absmax,
    bit for bit. Blocks of ordinary gradients, of zeros (absmax 0), of tiny and huge ones
    (prescaled below 2^-64 and above 2^64), one with −0 and zeros among them, and a partial last
    block; every scalar of the step away from its neutral value."""
    import ctypes

    builds = [encoder_library(e, source="adam_host") for e in (encoder, "scalar")]
    size = 6 * st.BLOCK_SIZE - 37
    huge = 1e21 if rule == "adamax" else 1e12  # v (g², or AdaMax's |g|) above 2^64
    scales = np.repeat([1e-3, 0.0, 1e-25, huge, 1e-3, 1.0], st.BLOCK_SIZE)[:size]
    tables = [np.ascontiguousarray(st.codec_table(s)) for s in (True, False)]
    beta_2_term = 0.999 if rule == "adamax" else 0.001
    scalars = np.array([0.999, 0.1, beta_2_term, 1e-3, 1.3, 1e-7, 1e-4], np.float32)
    theta0 = rng.normal(size=size).astype(np.float32)
    states = []
    for _ in builds:
        codes = np.zeros((3, size + 37), np.int8)
        codes[1:] = -128  # v and v̂max start at the unsigned map's 0
        states.append((theta0.copy(), codes, np.zeros((3, 6), np.float32)))
    pointer = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    for step in range(1, 7):
        g = (rng.normal(size=size) * scales).astype(np.float32)
        g[4 * st.BLOCK_SIZE:5 * st.BLOCK_SIZE:3] = -0.0
        g[4 * st.BLOCK_SIZE + 1:5 * st.BLOCK_SIZE:5] = 0.0
        for library, (theta, codes, absmax) in zip(builds, states):
            assert library.adamkit_adam8bit_host(
                ["adam", "amsgrad", "adamax"].index(rule), ctypes.c_int64(1),
                (ctypes.c_void_p * 1)(pointer(theta)), (ctypes.c_void_p * 1)(pointer(g)),
                (ctypes.c_int64 * 1)(size), (ctypes.c_void_p * 3)(*(pointer(c) for c in codes)),
                (ctypes.c_void_p * 3)(*(pointer(a) for a in absmax)), pointer(scalars),
                ctypes.c_int32(step), *(pointer(t) for t in tables), 1) == 0
        (theta, codes, absmax), (theta_s, codes_s, absmax_s) = states
        assert np.isfinite(theta).all()
        np.testing.assert_array_equal(theta.view(np.int32), theta_s.view(np.int32))
        np.testing.assert_array_equal(codes, codes_s)
        np.testing.assert_array_equal(absmax.view(np.int32), absmax_s.view(np.int32))
    assert 0 < states[0][2][0, 2] < 2.0**-64 and states[0][2][1, 3] > 2.0**64  # both prescales


def test_block_scales_normalise_the_largest_value_to_the_top_code(rng):
    """(x / d)·r reaches 1 for x = absmax at every scale: d a power of two bringing absmax into
    [2^-85, 2^64], r float32(1 / (absmax / d)) or one ulp more, always a normal float32."""
    # Normal numbers only: TensorFlow's and XLA's threads read subnormals as 0 (so do the kernels
    # on those threads), and the all-zero block has its own test.
    absmax = np.concatenate([np.exp(rng.uniform(-87, 88, 20000)), [1.2e-38, 1e-30, 3.4e38, 1.0]])
    absmax = absmax.astype(np.float32)
    divisor, reciprocal = (numpy(t).astype(np.float32)
                           for t in st.block_scales(ops.convert_to_tensor(absmax)))
    scaled = absmax / divisor
    assert np.all(np.log2(divisor) % 1 == 0) and np.all((scaled >= 2.0**-85) & (scaled <= 2.0**64))
    assert np.all(reciprocal >= np.finfo(np.float32).tiny)
    nearest = np.float32(1) / scaled
    assert np.all((reciprocal == nearest) | (reciprocal == np.nextafter(nearest, np.float32(np.inf))))
    assert np.all(scaled * reciprocal >= 1)
    assert np.any(reciprocal != nearest)  # the rounding up is needed, for about one block in eight


def test_the_kernels_block_scales_are_the_codecs():
    """The kernels' BlockScale against adamkit.state.block_scales: 1/d and r the same floats, on
    absmax values over float32's whole normal range (r rounded up for about one in eight)."""
    import ctypes

    library = encoder_library()
    rng = np.random.default_rng(3)
    absmax = np.concatenate([np.exp(rng.uniform(-87, 88, 20000)), [0.0, 2.0**-64, 2.0**64, 1.0]])
    absmax = np.ascontiguousarray(absmax, np.float32)
    prescale, reciprocal = np.zeros_like(absmax), np.zeros_like(absmax)
    pointer = ctypes.c_void_p
    library.adamkit_block_scales(absmax.ctypes.data_as(pointer), ctypes.c_int64(len(absmax)),
                                 prescale.ctypes.data_as(pointer), reciprocal.ctypes.data_as(pointer))
    divisor, expected = (numpy(t) for t in st.block_scales(ops.convert_to_tensor(absmax)))
    np.testing.assert_array_equal(prescale, (1.0 / divisor).astype(np.float32))
    np.testing.assert_array_equal(reciprocal, expected.astype(np.float32))


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_positions_stay_inside_their_decade(signed):
    """For the first and last 200,000 floats of every decade, the fixed-point distance from the
    decade's floor, ⌊(a − floor)·scale⌋, lies in [0, count·2^FIXED_POINT]: rounding never carries
    a value past a neighbouring code, whatever its dither (the exhaustive check tries one dither
    per value)."""
    table = st.codec_table(signed)
    thresholds, floor, scale, count = (st._table_part(table, part) for part in
                                       ("thresholds", "floor", "scale", "count"))
    decades = st.fraction_bits(signed) + 1
    for e in range(decades):
        bottom = thresholds[e] if e < decades - 1 else np.float32(0)
        top = thresholds[e - 1] if e > 0 else np.float32(1)
        steps = np.arange(1, 200_001, dtype=np.int32)
        first = (bottom.view(np.int32) + steps).view(np.float32)
        last = (top.view(np.int32) + 1 - steps).view(np.float32)
        a = np.concatenate([first[first <= top], last[last > bottom]])
        fixed = ((a - floor[e]) * scale[e]).astype(np.int64)
        assert fixed.min() >= 0 and fixed.max() <= count[e] * 2**st.FIXED_POINT, e


def _bfloat16_copies(hlo: str) -> list[str]:
    shapes = ("64,512", "512,512", "512,64", "512", "64")
    return [line for line in hlo.splitlines()
            if " copy(" in line and any(f"= bf16[{shape}]" in line for shape in shapes)]


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's jit of Keras's training step")
@pytest.mark.parametrize(("lazy", "executor"), [(False, "ops"), (True, "lazy rows (masked)")])
def test_jax_ops_path_writes_bfloat16_state_without_copying_it(lazy, executor):
    """Keras's training step compiled as its JAX trainer compiles it (the state donated), bfloat16
    state on the ops path and on lazy rows: the stored state's buffers take the new state in
    place. The parameter's update and the encoder both read the stored state; unordered, XLA
    copied every state tensor whole first (2 bytes a parameter each)."""
    model, hlo = optimised_training_hlo(adamkit.Adam(state_dtype="bfloat16", fused=False,
                                                     lazy=lazy))
    assert {row.executor for row in model.optimizer.explain()} == {executor}
    copies = _bfloat16_copies(hlo)
    assert "bf16[512,512]" in hlo and not copies, copies


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's jit_compile")
def test_tensorflow_xla_ops_path_writes_bfloat16_state_without_copying_it():
    """The same under TensorFlow's ``jit_compile=True``: no copies of the bfloat16 state in the
    optimised HLO of a training step. Here the variables below two chunks take the ops path
    (the 512×512 kernel takes it in chunks); each of theirs was copied."""
    optimizer = adamkit.Adam(state_dtype="bfloat16", fused=False)
    _, hlo = optimised_training_hlo(optimizer)
    assert {row.executor for row in optimizer.explain()} == {"ops", "ops, in chunks"}
    copies = _bfloat16_copies(hlo)
    assert "bf16[512,512]" in hlo and not copies, copies


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="Keras's distribution API, on JAX")
def test_the_encoders_wait_for_no_variable_a_distribution_splits():
    """Under jit the encoders wait for a zero made from the new parameters' first element; for a
    variable that the Keras distribution splits across devices that read would be a collective
    each step, so none is made there (replicated variables, under DataParallel too, keep it)."""
    import jax
    from keras.src.backend.common.stateless_scope import StatelessScope

    from adamkit import executors

    def zero_in_jit(variable):
        made = []

        def trace(value):
            with StatelessScope(state_mapping=[(variable, value)]):
                made.append(executors.update_finished(variable))
            return value

        jax.jit(trace).lower(variable.value)
        return made[0]

    mesh = keras.distribution.DeviceMesh((1,), ["model"], jax.devices()[:1])
    layouts = keras.distribution.LayoutMap(mesh)
    layouts["split.*"] = (None, "model")
    model_parallel = keras.distribution.ModelParallel(layout_map=layouts, batch_dim_name="model")
    with model_parallel.scope():
        split = keras.Variable(np.ones((4, 8), np.float32), name="split_kernel")
        whole = keras.Variable(np.ones((4, 8), np.float32), name="whole_kernel")
        assert zero_in_jit(split) is None
        assert zero_in_jit(whole) is not None
    with keras.distribution.DataParallel(devices=jax.devices()[:1]).scope():
        assert zero_in_jit(whole) is not None
    assert zero_in_jit(whole) is not None
    assert executors.update_finished(whole) is None  # eager: nothing to order
