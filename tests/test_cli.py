"""``adamkit`` as a user runs it: real processes, real MNIST."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

ADAMKIT = shutil.which("adamkit", path=os.path.dirname(sys.executable)) or shutil.which("adamkit")


def adamkit(*args, timeout=900, env=None):
    return subprocess.run([ADAMKIT, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_help_shows_examples():
    top = adamkit("--help")
    assert top.returncode == 0 and "examples:" in top.stdout and "train" in top.stdout
    train = adamkit("train", "--help")
    assert train.returncode == 0
    for flag in ("--epochs", "--batch-size", "--learning-rate", "--beta-1", "--beta-2",
                 "--epsilon", "--optimizer", "--backend", "--seed", "--data", "--out",
                 "--state-dtype"):
        assert flag in train.stdout
    assert "adamkit train --optimizer keras-adam" in train.stdout


# Parses argv as the `adamkit` command does, then prints which frameworks that imported.
PARSE_ONLY = """
import sys, time
import adamkit_cli
start = time.perf_counter()
try:
    adamkit_cli.parse(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
else:
    code = 0
heavy = sorted(m for m in ("keras", "tensorflow", "jax", "torch", "adamkit") if m in sys.modules)
print("RESULT", code, ",".join(heavy) or "-", file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["--version"],
                                  ["train", "--epochs", "0"], ["train", "--resume"],
                                  ["train", "--backend", "torch", "--steps-per-execution", "4"],
                                  ["nonsense"]])
def test_parsing_imports_no_framework(args):
    """--help, --version and usage errors are answered before Keras or a backend is imported:
    the command reads its choices from adamkit/choices.py without running adamkit/__init__."""
    result = subprocess.run([sys.executable, "-c", PARSE_ONLY, *args], capture_output=True,
                            text=True, timeout=60)
    code, imported = result.stderr.split("RESULT ")[-1].split()
    assert code == ("0" if args[-1] in ("--help", "--version") else "2"), result.stderr
    assert imported == "-", f"parsing {args} imported {imported}"


def test_version():
    from importlib.metadata import version

    result = adamkit("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"adamkit {version('adamkit')}"


def test_help_and_usage_errors_answer_at_once():
    """What a person sees: the whole command (interpreter start-up included) answers in well
    under a second, where starting TensorFlow first took seconds."""
    import time

    for args, code in ((["--help"], 0), (["train", "--help"], 0), (["train", "--epochs", "x"], 2)):
        start = time.perf_counter()
        result = adamkit(*args, timeout=60)
        elapsed = time.perf_counter() - start
        assert result.returncode == code, result.stderr
        assert elapsed < 1.5, f"adamkit {' '.join(args)} took {elapsed:.2f} s"
        assert "oneDNN" not in result.stderr and "cpu_feature_guard" not in result.stderr


def test_choices_are_the_librarys():
    """The parser's names, kept keras-free in adamkit.choices, are the ones the library takes: each
    list against the library's own table where it has one, else each name used as the library uses
    it."""
    import keras

    import adamkit
    from adamkit import choices, reproduce, state, train
    from adamkit.bench import command as bench

    assert tuple(adamkit.FAMILY) == choices.FAMILY_NAMES
    assert tuple(train.PRESETS) == choices.PRESETS
    assert state.STATE_DTYPES == choices.STATE_DTYPES
    assert (*adamkit.FAMILY, "keras-adam") == train.OPTIMIZERS == choices.OPTIMIZERS
    for name in choices.OPTIMIZERS:
        assert isinstance(train.make_optimizer(name, {}), keras.optimizers.Optimizer)
    for state_dtype in choices.STATE_DTYPES:
        assert adamkit.Adam(state_dtype=state_dtype).state_dtype == state_dtype
    constant, cosine = (train.make_optimizer("adam", {}, s, steps=10) for s in choices.SCHEDULES)
    assert isinstance(constant.learning_rate, float) or constant.learning_rate.shape == ()
    assert type(cosine._learning_rate).__name__ == "CosineDecay"
    for precision in choices.PRECISIONS:
        assert keras.DTypePolicy(precision).variable_dtype == "float32"
    assert set(choices.BACKENDS) == {"tensorflow", "jax", "torch"}
    for paper in choices.PAPERS:
        assert callable(getattr(reproduce, paper.replace("-", "_")))
    for suite in choices.BENCH_SUITES:
        assert callable(getattr(bench, suite))


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--epochs", "0"], "--epochs"),
        (["--epochs", "three"], "--epochs"),
        (["--batch-size", "-5"], "--batch-size"),
        (["--learning-rate", "-1"], "--learning-rate"),
        (["--learning-rate", "nan"], "--learning-rate"),
        (["--beta-1", "1.0"], "--beta-1"),
        (["--beta-2", "x"], "--beta-2"),
        (["--epsilon", "-1e-8"], "--epsilon"),
        (["--epsilon", "0"], "--epsilon"),  # NaN from the first step: blank pixels' 0/0
        (["--optimizer", "sgd"], "--optimizer"),
        (["--backend", "numpy"], "--backend"),
        (["--seed", "-1"], "--seed"),
        (["--weight-decay", "inf"], "--weight-decay"),
        (["--no-such-flag"], "unrecognized arguments"),
        (["--optimizer", "keras-adam", "--skip-nonfinite"], "skip_nonfinite"),
        (["--state-dtype", "float16"], "--state-dtype"),
        (["--precision", "float64"], "--precision"),
        (["--resume"], "--resume needs --checkpoint-dir"),
        (["--checkpoint-every", "10"], "--checkpoint-every needs --checkpoint-dir"),
        (["--checkpoint-dir", "c", "--checkpoint-every", "0"], "--checkpoint-every"),
        (["--checkpoint-dir", "c", "--keep", "-1"], "--keep"),
        (["--optimizer", "keras-adam", "--state-dtype", "int8"], "state_dtype"),
        (["--steps-per-execution", "0"], "--steps-per-execution"),
        (["--backend", "torch", "--steps-per-execution", "4"], "one step per call"),
        (["--distribute", "mirrored", "--steps-per-execution", "4"], "one step per call"),
        (["--seed", str(2**32)], "--seed"),  # Keras seeds NumPy with 32 bits
        (["--out", __file__], "--out"),  # a file where a folder is meant
        (["--out", os.path.join(__file__, "sub")], "is a file; expected a folder"),
        (["--checkpoint-dir", __file__], "--checkpoint-dir"),
        (["--tensorboard", __file__], "--tensorboard"),
    ],
)
def test_bad_flags_give_usage_and_exit_2(args, complaint):
    result = adamkit("train", *args)
    assert result.returncode == 2, result.stderr
    assert "usage: adamkit train" in result.stderr
    assert complaint in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["lr-find"], ["tune"], ["reproduce", "reddi"],
                                     ["bench", "step"]])
def test_every_output_folder_is_checked_before_anything_runs(command):
    result = adamkit(*command, "--out", os.path.join(__file__, "sub"), timeout=60)
    assert result.returncode == 2 and f"usage: adamkit {command[0]}" in result.stderr
    assert "--out" in result.stderr and "is a file" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_output_folder_is_checked_and_used_as_a_shell_reads_it(tmp_path, monkeypatch):
    """A quoted ~ is expanded (checked at $HOME and written there, not into a folder named ~),
    and a link's target is what is checked."""
    import adamkit_cli

    monkeypatch.setenv("HOME", str(tmp_path))
    args, _ = adamkit_cli.parse(["train", "--out", "~/runs"])
    assert args.out == str(tmp_path / "runs")
    (tmp_path / "file").write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    with pytest.raises(SystemExit):
        adamkit_cli.parse(["train", "--out", str(tmp_path / "link" / "sub")])


@pytest.mark.parametrize("command", [["train"], ["reproduce", "reddi"]])
def test_a_backend_from_the_environment_that_adamkit_does_not_run_is_a_usage_error(command):
    """argparse holds --backend to its choices but not its default, which KERAS_BACKEND (or
    keras.json) gives: Keras's NumPy backend trained nothing and ended in a traceback."""
    result = adamkit(*command, timeout=60, env={"KERAS_BACKEND": "numpy"})
    assert result.returncode == 2 and "the Keras backend 'numpy'" in result.stderr
    assert "tensorflow, jax, torch" in result.stderr and "Traceback" not in result.stderr


# Runs `adamkit` as if PyTorch were not installed (a None entry in sys.modules makes its import fail
# with ModuleNotFoundError, as a missing package does).
WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None
from adamkit_cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_backend_that_is_not_installed_is_named_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, "train", "--backend", "torch",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "the Keras backend 'torch' needs 'torch', which is not installed" in result.stderr
    assert "pip install 'adamkit[torch]'" in result.stderr and "Traceback" not in result.stderr


def test_data_pointing_at_garbage_is_a_usage_error(tmp_path):
    garbage = tmp_path / "mnist.npz"
    garbage.write_bytes(os.urandom(2048))
    result = adamkit("train", "--data", str(garbage), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert f"--data {garbage}" in result.stderr and "not a readable .npz" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_default_train_is_the_seed_example_and_reaches_097(tmp_path):
    """The main job exactly as the README runs it: 3 epochs, batch 32, adamkit.Adam defaults."""
    out = tmp_path / "run"
    result = adamkit("train", "--out", str(out))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert any(line.startswith("Epoch 3/3") for line in lines)
    final = [line for line in lines if line.startswith("Final validation accuracy: ")]
    accuracy = float(final[0].split(": ")[1])
    assert accuracy >= 0.970

    history = json.loads((out / "history.json").read_text())
    assert len(history["val_accuracy"]) == 3
    assert round(history["val_accuracy"][-1], 4) == accuracy
    rows = list(csv.DictReader((out / "history.csv").read_text().splitlines()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["epochs"] == 3 and run["settings"]["batch_size"] == 32
    assert run["settings"]["steps_per_execution"] == 32  # the default where Keras allows it
    assert run["optimizer_config"]["epsilon"] == 1e-8
    assert run["versions"]["backend"] == "tensorflow" and run["wall_time_s"] > 0
    assert run["final"]["val_accuracy"] == history["val_accuracy"][-1]
    assert (out / "model.keras").stat().st_size > 0
    # trained 32 steps per call, saved to load and train on every backend, state and all
    loaded = subprocess.run([sys.executable, "-c", CONTINUE_ON_TORCH, str(out / "model.keras")],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "KERAS_BACKEND": "torch"})
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["torch", "5625", "5626"]


# Loads a model.keras on the PyTorch backend, prints the backend and the optimizer's step before
# and after training on one batch.
CONTINUE_ON_TORCH = """
import sys
import keras, numpy as np
import adamkit
model = keras.saving.load_model(sys.argv[1])
before = int(model.optimizer.iterations)
model.fit(np.zeros((32, 28, 28), "float32"), np.zeros(32, "int64"), verbose=0)
print(keras.backend.backend(), before, int(model.optimizer.iterations))
"""


@pytest.mark.slow
def test_steps_per_execution_changes_no_bit_of_the_result(tmp_path):
    """Several steps per call of the train function run the very same steps: 1 per call and 7
    (which leaves a short last call in each epoch of 235 batches) end with identical weights."""
    import keras
    import numpy as np

    weights = []
    for steps in ("1", "7"):
        out = tmp_path / steps
        result = adamkit("train", "--preset", "fast", "--epochs", "2", "--steps-per-execution",
                         steps, "--out", str(out))
        assert result.returncode == 0, result.stderr
        assert json.loads((out / "run.json").read_text())["settings"]["steps_per_execution"] == int(steps)
        model = keras.saving.load_model(out / "model.keras", compile=False)
        weights.append(model.get_weights())
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_checkpoints_land_where_the_step_passes_each_multiple(tmp_path):
    """With 32 steps per call, --checkpoint-every 100 saves at the end of the calls in which the
    step passes 100 and 200 (steps 128 and 224 of 235), each recording where its epoch resumes."""
    import numpy as np

    from adamkit import checkpoint

    result = adamkit("train", "--preset", "fast", "--epochs", "1", "--steps-per-execution", "32",
                     "--checkpoint-dir", str(tmp_path / "c"), "--checkpoint-every", "100",
                     "--keep", "9", "--out", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    saved = sorted(checkpoint.checkpoints(tmp_path / "c"), key=lambda p: p.stat().st_mtime)
    assert [p.name for p in saved] == ["ckpt-128.npz", "ckpt-224.npz", "ckpt-235.npz"]
    positions = []
    for path in saved:
        with np.load(path) as data:
            positions.append(json.loads(bytes(data["record"]).decode())["position"])
    assert [(p["epoch"], p["batch"]) for p in positions] == [(0, 128), (0, 224), (1, 0)]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_train_on_other_backends(backend, tmp_path):
    out = tmp_path / backend
    result = adamkit("train", "--backend", backend, "--epochs", "1", "--batch-size", "128",
                     "--optimizer", "adamw", "--weight-decay", "0.01", "--out", str(out))
    assert result.returncode == 0, result.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["versions"]["backend"] == backend
    assert run["settings"]["steps_per_execution"] == (1 if backend == "torch" else 32)
    assert run["final"]["val_accuracy"] >= 0.93


@pytest.mark.slow
def test_bench_lazy_prints_a_table(tmp_path):
    result = adamkit("bench", "lazy", "--rows", "20000", "--touched", "10", "1000", "--repeats", "2",
                     "--rounds", "2", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "bench_lazy.json").read_text())
    assert saved["command"] == ("adamkit bench lazy --rows 20000 --touched 10 1000 --repeats 2 "
                                "--rounds 2")
    assert saved["machine"]["cpu"] and saved["machine"]["libraries"]["keras"]
    assert [r[0] for r in saved["rows"]] == [10, 1000] and saved["rows"][0][3] > 0
    # the lazy step's time per step with 32 a call, and a call that does next to nothing
    assert all(row[6] > 0 and row[7] > 0 for row in saved["rows"])
    assert (tmp_path / "bench_lazy.png").read_bytes()[:4] == b"\x89PNG"
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["10", "1,000"]
    assert all(r[-1].endswith("x") for r in rows)


@pytest.mark.slow
def test_preset_fast_reaches_the_seed_accuracy_and_flags_override_it(tmp_path):
    result = adamkit("train", "--preset", "fast", "--out", str(tmp_path / "fast"))
    assert result.returncode == 0, result.stderr
    run = json.loads((tmp_path / "fast" / "run.json").read_text())
    assert run["settings"]["batch_size"] == 256 and run["settings"]["epochs"] == 3
    schedule = run["optimizer_config"]["learning_rate"]
    assert schedule["class_name"] == "CosineDecay"  # over the whole run: 3 × 235 steps
    assert schedule["config"]["initial_learning_rate"] == pytest.approx(0.012)
    assert schedule["config"]["decay_steps"] == 705
    assert run["final"]["val_accuracy"] >= 0.9725  # the seed's own figure
    overridden = adamkit("train", "--preset", "fast", "--epochs", "1", "--learning-rate", "0.002",
                         "--schedule", "constant", "--skip-nonfinite", "--out", str(tmp_path / "mixed"))
    assert overridden.returncode == 0, overridden.stderr
    run = json.loads((tmp_path / "mixed" / "run.json").read_text())
    assert run["settings"]["epochs"] == 1 and run["settings"]["batch_size"] == 256
    assert run["optimizer_config"]["learning_rate"] == pytest.approx(0.002)
    assert run["skipped_steps"] == 0 and "skipped 0 step(s)" in overridden.stdout


@pytest.mark.slow
def test_bench_step_prints_every_path_against_the_limit(tmp_path):
    result = adamkit("bench", "step", "--sizes", "1", "--repeats", "2", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "bench_step.json").read_text())
    assert saved["command"] == "adamkit bench step --sizes 1 --repeats 2 --rounds 3"
    rows = {row[1]: row for row in saved["rows"]}
    assert all(row[0] == "1.0M" for row in saved["rows"])
    assert rows["bandwidth limit (best of stream, torch fused)"][4] == 1.0
    assert rows["torch.optim.Adam fused"][2] > 0 and rows["torch.optim.Adam fused"][3] == 1.0
    assert (tmp_path / "bench_step.png").read_bytes()[:4] == b"\x89PNG"
    for path in ("bandwidth limit", "torch.optim.Adam fused", "adamkit Adam, tf.function (fused kernel)",
                 "keras Adam, tf.function", "keras Adam, XLA", "tf raw ResourceApplyAdam",
                 "optax adam, jax.jit", "torch.optim.Adam foreach", "keras Adam, JAX backend, jit",
                 "adamkit Adam, JAX backend, jit", "keras Adam, torch backend",
                 "adamkit AMSGrad, torch backend"):
        assert path in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adam", "amsgrad", "adamw", "nadam", "adamax", "radam"])
def test_train_with_int8_state_for_every_optimizer(optimizer, tmp_path):
    out = tmp_path / optimizer
    result = adamkit("train", "--preset", "fast", "--epochs", "1", "--optimizer", optimizer,
                     "--state-dtype", "int8", "--out", str(out))
    assert result.returncode == 0, result.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["optimizer_config"]["state_dtype"] == "int8"
    # One epoch: it learned (RAdam's warm-up makes it the slowest starter: 0.9288 measured).
    assert run["final"]["val_accuracy"] >= 0.90
    # The 784×128 kernel's state is 8-bit; the small tensors (1.4% of the model) stay float32.
    extra = 4 if optimizer == "amsgrad" else 0  # a third state tensor: v̂max
    assert run["optimizer_state_bytes_per_parameter"] < 2.2 + extra / 3


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_reaches_the_seed_accuracy(precision, tmp_path):
    result = adamkit("train", "--preset", "fast", "--precision", precision, "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["final"]["val_accuracy"] >= 0.97
    # Keras wraps the optimizer for float16 (dynamic loss scaling), not for bfloat16.
    expected = "LossScaleOptimizer" if precision == "mixed_float16" else "Adam"
    assert run["optimizer_class"] == expected
