"""The memory-bandwidth limit of an Adam step, measured: ``stream.cc`` moves a step's bytes with
next to no arithmetic, and runs adamkit's own Adam loop with no framework around it. ``adamkit
bench step`` needs the limit (its last column), so the source ships in the package; it includes
the kernels' header, so its library is rebuilt when that changes."""

from __future__ import annotations

import ctypes
import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from adamkit.kernels.build import compile_library

SOURCE = Path(__file__).with_name("stream.cc")
HEADER = Path(__file__).parents[1] / "kernels" / "adam_update.h"


def stream_library() -> ctypes.CDLL:
    """``stream.cc`` built (once, cached) and loaded."""
    # The cache's key covers headers beside the source only: the kernels' header goes in the salt.
    salt = hashlib.sha256(HEADER.read_bytes()).hexdigest()
    return ctypes.CDLL(str(compile_library(SOURCE, ["-fopenmp", "-ffp-contract=off"], salt)))


def stream_step(count: int, amsgrad: bool = False) -> Callable[[], None]:
    """A function that streams an Adam step's bytes for ``count`` parameters — read θ, g, m, v;
    write θ, m, v: 28 bytes each; with ``amsgrad`` v̂max read and written too, 36 bytes — with
    next to no arithmetic, on every core (``stream.cc``): the memory-bandwidth limit of a
    step."""
    stream = stream_library().adamkit_stream
    arrays = [np.ones(count, np.float32) for _ in range(5 if amsgrad else 4)]  # written: no page
    pointers = [a.ctypes.data_as(ctypes.POINTER(ctypes.c_float)) for a in arrays]  # shared with 0s
    theta, m, v, g = pointers[0], pointers[1], pointers[2], pointers[-1]
    vhat = pointers[3] if amsgrad else None
    return lambda: stream(theta, m, v, vhat, g, ctypes.c_int64(count), ctypes.c_float(0.0))


def kernel_loop_step(count: int) -> Callable[[], None]:
    """A function that runs adamkit's own Adam loop (``adam_update.h``, float32, as the kernels
    do) over ``count`` parameters in plain arrays, on every core, with no framework around it
    (``stream.cc``): what the kernel costs apart from a framework's call."""
    loop = stream_library()
    arrays = [np.ones(count, np.float32) for _ in range(4)]  # θ, m, v, g
    # decay, 1 − β1, 1 − β2, a, s, ε, b: Adam's defaults at step 10
    scalars = np.array([1.0, 0.1, 0.001, 1e-3 / (1 - 0.9**10), (1 - 0.999**10) ** -0.5, 1e-8, 0],
                       np.float32)
    pointers = [a.ctypes.data_as(ctypes.POINTER(ctypes.c_float)) for a in [*arrays, scalars]]
    theta, m, v, g, s = pointers
    return lambda: loop.adamkit_adam_loop(theta, m, v, g, ctypes.c_int64(count), s,
                                          ctypes.c_int32(10))
