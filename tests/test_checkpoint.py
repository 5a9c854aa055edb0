"""Checkpoints: atomic files, corrupted ones detected and passed over, and training runs killed with
SIGKILL that resume to the same bits as a run never interrupted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from adamkit import checkpoint
from conftest import BACKEND


def variables(shapes, fill=0.0):
    return [keras.Variable(np.full(s, fill, np.float32), name=f"v{i}") for i, s in enumerate(shapes)]


def values(vs):
    return [keras.ops.convert_to_numpy(v).copy() for v in vs]


def test_round_trip_keeps_the_newest_n_and_ignores_temporary_files(tmp_path):
    source = variables([(3, 4), (4,)])
    for step in (10, 20, 30, 40):
        for v in source:
            v.assign(np.full(v.shape, float(step), np.float32))
        checkpoint.save(tmp_path, step, source, {"epoch": 0, "batch": step}, keep=2)
    (tmp_path / ".ckpt-50.npz.tmp-123").write_bytes(b"half a checkpoint")  # a write cut short
    assert [p.name for p in checkpoint.checkpoints(tmp_path)] == ["ckpt-40.npz", "ckpt-30.npz"]
    target = variables([(3, 4), (4,)])
    record = checkpoint.restore_latest(tmp_path, target, log=lambda _: None)
    assert record["step"] == 40 and record["position"] == {"epoch": 0, "batch": 40}
    assert all(np.all(a == 40.0) for a in values(target))


@pytest.mark.parametrize(("step", "keep", "position", "complaint"), [
    (5.0, 3, {}, "step must be an integer"), (-1, 3, {}, "step must be an integer"),
    (True, 3, {}, "step must be an integer"), (5, 0, {}, "keep must be an integer >= 1"),
    (5, 3, {"batch": object()}, "position must hold only what JSON can"),
])
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, step, keep, position,
                                                               complaint):
    """A float step made a checkpoint that restore never found; keep=0 deleted the checkpoint just
    written."""
    with pytest.raises(ValueError, match=complaint):
        checkpoint.save(tmp_path / "c", step, variables([(2,)]), position, keep=keep)
    assert not (tmp_path / "c").exists()


def test_numpy_integers_are_steps(tmp_path):
    saved = checkpoint.save(tmp_path, np.int64(7), variables([(2,)]), {"batch": 7}, keep=1)
    assert saved.name == "ckpt-7.npz" and checkpoint.checkpoints(tmp_path) == [saved]


@pytest.mark.parametrize("damage", ["random bytes", "truncated", "zero length", "bit flip",
                                    "another model"])
def test_a_damaged_newest_checkpoint_is_reported_and_the_previous_one_loaded(tmp_path, damage):
    source = variables([(64, 32), (32,)], fill=1.0)
    checkpoint.save(tmp_path, 1, source, {"batch": 1}, keep=5)
    for v in source:
        v.assign(np.full(v.shape, 2.0, np.float32))
    newest = checkpoint.save(tmp_path, 2, source, {"batch": 2}, keep=5)
    data = newest.read_bytes()
    if damage == "random bytes":
        newest.write_bytes(np.random.default_rng(0).bytes(len(data)))
    elif damage == "truncated":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "zero length":
        newest.write_bytes(b"")
    elif damage == "bit flip":  # inside the stored arrays: only the checksum can tell
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x01
        newest.write_bytes(bytes(flipped))
    else:
        checkpoint.save(tmp_path, 2, variables([(64, 16), (32,)]), {"batch": 2}, keep=5)
    messages = []
    target = variables([(64, 32), (32,)])
    record = checkpoint.restore_latest(tmp_path, target, log=messages.append)
    assert record["step"] == 1, messages
    assert all(np.all(a == 1.0) for a in values(target))
    assert "skipping checkpoint" in messages[0] and "ckpt-2.npz" in messages[0]
    if damage == "another model":
        assert "'v0'" in messages[0] and "(64, 32)" in messages[0] and "(64, 16)" in messages[0]


def test_nothing_is_loaded_when_no_checkpoint_fits(tmp_path):
    checkpoint.save(tmp_path, 1, variables([(8,), (9,)], fill=5.0), {}, keep=3)
    target = variables([(8,), (10,)], fill=-1.0)  # the first variable would fit, the second not
    messages = []
    assert checkpoint.restore_latest(tmp_path, target, log=messages.append) is None
    assert all(np.all(a == -1.0) for a in values(target))
    assert "'v1'" in messages[0]


def adamkit_command(*args):
    return [shutil.which("adamkit", path=os.path.dirname(sys.executable)) or "adamkit", *args]


def final_state(checkpoint_dir: Path) -> list[np.ndarray]:
    """Every array of the run's last checkpoint: weights, dropout's generator, optimizer state."""
    with np.load(checkpoint.checkpoints(checkpoint_dir)[0]) as data:
        return [data[k] for k in sorted(data.files) if k != "record"]  # history differs


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="runs the CLI on its default backend")
@pytest.mark.parametrize("optimizer", ["adamw", "schedule-free"])
def test_runs_killed_with_sigkill_resume_bit_exactly(tmp_path, optimizer):
    flags = ["train", "--preset", "fast", "--epochs", "2", "--checkpoint-every", "9",
             "--keep", "2", "--optimizer", optimizer]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")

    straight = subprocess.run(adamkit_command(*flags, "--checkpoint-dir", str(tmp_path / "c0"),
                                              "--out", str(tmp_path / "o0")),
                              env=env, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]

    # The same command, with --resume, killed at several moments until it finishes by itself:
    # mid-epoch, just after a checkpoint appeared, and at random points (some inside a write).
    command = adamkit_command(*flags, "--checkpoint-dir", str(tmp_path / "c1"),
                              "--out", str(tmp_path / "o1"), "--resume")
    kills, delays = 0, iter([0.0, 0.3, 1.1, 0.05, 0.6])
    for _ in range(12):
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        delay = next(delays, None)
        if delay is not None:
            seen = {p.name for p in checkpoint.checkpoints(tmp_path / "c1")}
            deadline = time.monotonic() + 120
            while process.poll() is None and time.monotonic() < deadline:  # a new checkpoint
                if {p.name for p in checkpoint.checkpoints(tmp_path / "c1")} - seen:
                    break
                time.sleep(0.02)
            time.sleep(delay)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
        output, _ = process.communicate(timeout=600)
        if process.returncode == 0:
            break
        assert process.returncode == -signal.SIGKILL, output[-3000:]
    assert process.returncode == 0 and kills >= 3, output[-3000:]
    assert "resumed from" in output

    for a, b in zip(final_state(tmp_path / "c0"), final_state(tmp_path / "c1"), strict=True):
        np.testing.assert_array_equal(a, b)
    first, again = (keras.saving.load_model(tmp_path / o / "model.keras") for o in ("o0", "o1"))
    for a, b in zip(values(first.trainable_variables), values(again.trainable_variables), strict=True):
        np.testing.assert_array_equal(a, b)


def test_compressed_optimizer_state_round_trips_as_stored(tmp_path):
    import adamkit

    rng = np.random.default_rng(0)
    params = variables([(64, 128), (128,)])
    optimizers = {d: adamkit.Adam(state_dtype=d) for d in ("int8", "bfloat16")}
    for optimizer in optimizers.values():
        for _ in range(3):
            optimizer.apply([keras.ops.convert_to_tensor(rng.normal(size=p.shape).astype(np.float32))
                             for p in params], params)
        saved = list(optimizer.variables)
        checkpoint.save(tmp_path / optimizer.state_dtype, 3, saved, {}, keep=1)
        fresh = adamkit.Adam(state_dtype=optimizer.state_dtype)
        fresh.build(variables([(64, 128), (128,)]))
        assert checkpoint.restore_latest(tmp_path / optimizer.state_dtype, fresh.variables,
                                         log=lambda _: None) is not None
        dtypes = set()
        for a, b in zip(saved, fresh.variables, strict=True):
            dtypes.add(keras.backend.standardize_dtype(b.dtype))
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
        assert {"int8"} <= dtypes if optimizer.state_dtype == "int8" else {"bfloat16"} <= dtypes


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="runs the CLI on its default backend")
@pytest.mark.parametrize("resume", [False, True])
def test_checkpoints_of_another_run_are_never_replaced(tmp_path, resume):
    """A run would prune checkpoints it does not continue from (--keep): it refuses instead."""
    checkpoint.save(tmp_path, 7, variables([(3, 4)]), {"epoch": 0, "batch": 7}, keep=3)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    result = subprocess.run(
        adamkit_command("train", "--checkpoint-dir", str(tmp_path), "--out", str(tmp_path / "o"),
                        *(["--resume"] if resume else [])),
        capture_output=True, text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    expected = "none of the 1 checkpoint(s)" if resume else "already holds checkpoints (ckpt-7.npz"
    assert expected in result.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="runs the CLI on its default backend")
def test_a_resume_with_other_settings_is_refused_and_changes_nothing(tmp_path):
    """A checkpoint's batch count stands for examples of its own batch size, order and count: a
    resume with another --batch-size ran out of data, then failed and wrote over the checkpoint;
    another --learning-rate was ignored (the checkpoint restores the rate). Both are refused."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    common = ("train", "--train-examples", "640", "--epochs", "1", "--checkpoint-dir",
              str(tmp_path / "c"), "--checkpoint-every", "10", "--steps-per-execution", "1")
    first = subprocess.run(adamkit_command(*common, "--out", str(tmp_path / "o1")),
                           capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    before = {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()}
    for flags, difference in ((["--batch-size", "64"], "batch_size 32 there, 64 here"),
                              (["--learning-rate", "0.05"], "'learning_rate': 0.05")):
        result = subprocess.run(adamkit_command(*common, "--resume", *flags, "--out",
                                                str(tmp_path / "o2")),
                                capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 2, result.stderr[-2000:]
        assert difference in result.stderr and "Traceback" not in result.stderr
        assert {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()} == before
    again = subprocess.run(adamkit_command(*common, "--resume", "--out", str(tmp_path / "o3")),
                           capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
