"""Training checkpoints: every model and optimizer variable plus where the run stands, saved
atomically and verified before anything is loaded.

A checkpoint is one ``.npz`` file (NumPy arrays, read with ``allow_pickle=False``: loading never
runs code from the file) named ``ckpt-<step>.npz``. Besides the variables it holds a JSON record:
the training position (the run's own state: epoch, batch, history so far), the variables' paths,
shapes and dtypes, and a SHA-256 over all of it. Writing goes to a temporary file in the same
folder, is flushed to disk, then renamed over the final name: a reader sees a whole checkpoint or
none. The newest ``keep`` are kept.

``restore_latest`` walks the checkpoints from newest to oldest and loads the first that is
complete, intact and fits the model; for each one it passes over it reports why (unreadable,
truncated, checksum mismatch, a variable of another shape — named). Every check runs before the
first variable is assigned, so a bad file never leaves a model half loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import ml_dtypes
import numpy as np

PATTERN = re.compile(r"^ckpt-(\d+)\.npz$")


class CheckpointError(Exception):
    """A checkpoint that cannot be used, with the reason."""


def _stored(array: np.ndarray) -> np.ndarray:
    # bfloat16 has no portable .npy form: stored as its 16 bits, the dtype kept in the record.
    return array.view(np.uint16) if array.dtype.name == "bfloat16" else array


def _digest(arrays: Sequence[np.ndarray], record: dict) -> str:
    h = hashlib.sha256(json.dumps(record, sort_keys=True).encode())
    for array in arrays:
        h.update(str(array.shape).encode() + array.dtype.str.encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def describe(variables) -> list[dict]:
    return [{"path": v.path, "shape": list(v.shape), "dtype": keras.backend.standardize_dtype(v.dtype)}
            for v in variables]


def save(directory: str | Path, step: int, variables, position: dict[str, Any], keep: int) -> Path:
    """Writes ``variables`` (a list of Keras variables) and ``position`` as checkpoint ``step``,
    then removes all but the newest ``keep``.

    Args:
        directory: the checkpoints' folder (made where missing).
        step: the checkpoint's number, an integer ≥ 0 (NumPy's integers too): the newest is the
            highest.
        variables: the Keras variables to store.
        position: anything JSON can hold, stored beside them (where training stands).
        keep: how many checkpoints to keep, ≥ 1.
    """
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) or keep < 1:
        raise ValueError(f"keep must be an integer >= 1 (the checkpoint just written is one), "
                         f"got {keep!r}")
    step = int(step)
    try:
        json.dumps(position)
    except (TypeError, ValueError) as error:
        raise ValueError(f"position must hold only what JSON can ({error})") from None
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = [_stored(np.asarray(keras.ops.convert_to_numpy(v))) for v in variables]
    record = {"format": 1, "step": step, "position": position, "variables": describe(variables)}
    record["sha256"] = _digest(arrays, record)
    final = directory / f"ckpt-{step}.npz"
    temporary = directory / f".ckpt-{step}.npz.tmp-{os.getpid()}"
    with open(temporary, "wb") as f:
        np.savez(f, record=np.frombuffer(json.dumps(record).encode(), np.uint8),
                 **{f"v{i}": a for i, a in enumerate(arrays)})
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, final)
    _sync_folder(directory)
    for old in checkpoints(directory)[keep:]:
        old.unlink(missing_ok=True)
    return final


def _sync_folder(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not every platform can open a folder
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoints(directory: str | Path) -> list[Path]:
    """The folder's checkpoint files, newest (highest step) first; temporary files excluded."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := PATTERN.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def read(path: Path, variables) -> tuple[list[np.ndarray], dict]:
    """Reads and verifies ``path`` against ``variables``; raises ``CheckpointError``. Assigns
    nothing."""
    try:
        with np.load(path, allow_pickle=False) as data:
            record = json.loads(bytes(data["record"]).decode())
            arrays = [data[f"v{i}"] for i in range(len(record["variables"]))]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError,
            json.JSONDecodeError, TypeError) as error:
        raise CheckpointError(f"unreadable ({type(error).__name__}: {error})") from None
    expected = record.pop("sha256", None)
    if _digest(arrays, record) != expected:
        raise CheckpointError("checksum mismatch: the file was altered or only partly written")
    saved = record["variables"]
    wanted = describe(variables)
    if len(saved) != len(wanted):
        raise CheckpointError(f"it holds {len(saved)} variables, this model and optimizer have "
                              f"{len(wanted)}: it is from another model or optimizer")
    for ours, theirs in zip(wanted, saved):
        # Paths are compared loosely: Keras numbers auto-named layers per process ("dense_3").
        if (ours["shape"], ours["dtype"]) != (theirs["shape"], theirs["dtype"]):
            raise CheckpointError(
                f"variable '{ours['path']}' is {tuple(ours['shape'])} {ours['dtype']} here but "
                f"'{theirs['path']}' {tuple(theirs['shape'])} {theirs['dtype']} in the checkpoint"
            )
    return arrays, record


def restore_latest(directory: str | Path, variables, log: Callable[[str], None] = print) -> dict | None:
    """Loads the newest usable checkpoint into ``variables``; returns its record, or None."""
    for path in checkpoints(directory):
        try:
            arrays, record = read(path, variables)
        except CheckpointError as error:
            log(f"adamkit: skipping checkpoint {path}: {error}")
            continue
        for variable, array, info in zip(variables, arrays, record["variables"]):
            if info["dtype"] == "bfloat16":
                array = array.view(ml_dtypes.bfloat16)
            variable.assign(array)
        log(f"adamkit: resumed from {path} (step {record['step']})")
        return record
    return None
