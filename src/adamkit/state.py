"""How optimizer state is stored: float32, bfloat16, or 8-bit block-wise codes.

The update math always sees float32 (float64 for float64 parameters) tensors: a slot *reads* its
stored form into that dtype before the step and *writes* the new value back after it.

``int8`` follows Dettmers et al., "8-bit Optimizers via Block-wise Quantization" (ICLR 2022). A
tensor is cut into blocks of ``BLOCK_SIZE`` values; each block keeps one float32 absmax and one
int8 code per value, the code indexing a dynamic (tree) quantisation map of [0, 1]:

    value(e, k) = 10^-(e+1) + (k + 1)·0.9·10^-e / 2^(F-e),   e = 0 … F,  k = 0 … 2^(F-e) − 1

plus 0: decade e (values in (10^-(e+1), 10^-e]) gets 2^(F-e) evenly spaced points, so relative
precision is kept over F+1 decades, densest near 1 where Adam's large entries sit. The map is
monotone in the code, and a block's largest entry (normalised to 1) is stored exactly. The first
moment is signed (F = 6, the code's sign is the value's sign, 255 values); the second moment and the
other non-negative states use the sign bit as one more bit of precision (F = 7, 256 values, stored
as code − 128). Encoding is arithmetic (decade from threshold comparisons, then rounding within
the decade's uniform grid, from a small table), not a search, so it stays elementwise and fuses
under XLA; the kernels (``kernels/adam_update.h``) read the same table and write the same codes,
eagerly, under ``tf.function`` and under XLA alike (``magnitude_index`` says how).

``BLOCK_SIZE`` = 256, as bitsandbytes: an outlier only coarsens its own 256 neighbours, and the
absmax costs 4/256 byte per value, 2.03 bytes per parameter for Adam's two moments. Tensors under
``min_8bit_size`` values (``MIN_QUANTIZED_SIZE`` by default: biases, norms) stay float32: they are a
rounding error of the memory and the most sensitive to quantisation.

A state dtype may be chosen per variable (``state_dtype_of``): a mapping from name patterns to
dtypes, or a callable taking the variable, as bitsandbytes' per-parameter overrides do.

``bfloat16``: moments stored in bfloat16, arithmetic in float32.

Both round stochastically when they store (see ``dither_bits``): to the nearest value, a stored v
that should shrink by 0.1% a step would never move.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np
from keras import ops
from keras.src.backend.common.stateless_scope import in_stateless_scope

from adamkit.choices import STATE_DTYPES as STATE_DTYPES  # kept keras-free there for the CLI's parser

BLOCK_SIZE = 256
MIN_QUANTIZED_SIZE = 4096

# One dtype for every variable, a mapping from name patterns to dtypes, or a callable.
StateDtype = str | Mapping[str, str] | Callable[[Any], str]
SIGNED_FRACTION_BITS = 6
UNSIGNED_FRACTION_BITS = 7
DECADES = 8  # F + 1 ≤ 8 decades in either map
CODEC_TABLE_SIZE = 256 + 4 * DECADES
# Fraction bits of a value's fixed-point position on the map (``magnitude_index``): positions are
# below 2^8, so position, first index and dither together stay below 2^31.
FIXED_POINT = 22


def fraction_bits(signed: bool) -> int:
    return SIGNED_FRACTION_BITS if signed else UNSIGNED_FRACTION_BITS


# -- the dynamic quantisation map ------------------------------------------------------------------


def _magnitudes(bits: int) -> np.ndarray:
    """The map's 2^(bits+1) magnitudes by index p (float64): p = 0 is 0; p = 2^(F-e) + k is the
    (k+1)-th point of decade e."""
    values = [0.0]
    for p in range(1, 2 ** (bits + 1)):
        octave = p.bit_length() - 1  # 2^octave points in decade e = F − octave
        scale = 10.0 ** (octave - bits)
        values.append(0.1 * scale + (p - 2**octave + 1) * 0.9 * scale / 2**octave)
    return np.array(values)


@functools.cache
def codec_table(signed: bool) -> np.ndarray:
    """Everything the 8-bit codec needs, as one float32 array of ``CODEC_TABLE_SIZE`` entries:

    - [0, 256): the decoded value of each code c at c + 128;
    - then ``DECADES`` entries each of: the decade thresholds 10^-1 … 10^-F (padded with −1, never
      reached); each decade's floor (10^-(e+1), 0 for the last); its scale 2^FIXED_POINT / spacing,
      which turns a's distance from the floor into fixed point (``magnitude_index``); and its point
      count.

    The Python codec and the C++ kernels (``kernels/adam_update.h``) both read this table and take
    the same float32 and integer operations, so they encode and decode bit for bit alike.
    """
    bits = fraction_bits(signed)
    magnitudes = _magnitudes(bits)
    codes = np.arange(-128, 128)
    if signed:  # the code's sign is the value's; −128 is never written
        # (odd: −c decodes to minus c's value and −128 to −1, which the kernels' decoder relies on)
        decode = np.sign(codes) * magnitudes[np.minimum(np.abs(codes), len(magnitudes) - 1)]
    else:  # the sign bit is one more bit of precision
        decode = magnitudes[codes + 128]
    decades = np.arange(bits + 1)
    thresholds = np.full(DECADES, -1.0)
    thresholds[:bits] = 10.0 ** -(decades[1:])
    floor = np.zeros(DECADES)
    floor[:bits] = 10.0 ** -(decades[:-1] + 1.0)
    count = np.ones(DECADES)
    count[: bits + 1] = 2.0 ** (bits - decades)
    spacing = np.ones(DECADES)
    spacing[:bits] = 0.9 * 10.0 ** -decades[:-1] / count[:bits]
    spacing[bits] = 10.0**-bits  # the last decade holds one point, 10^-F, stitched to 0
    scale = 2.0**FIXED_POINT / spacing
    table = np.concatenate([decode, thresholds, floor, scale, count]).astype(np.float32)
    assert table.shape == (CODEC_TABLE_SIZE,)
    return table


def _table_part(table, part: str):
    begin = 256 + ("thresholds", "floor", "scale", "count").index(part) * DECADES
    return table[begin : begin + DECADES]


def magnitude_index(a, signed: bool, dither=None):
    """The index p ∈ [0, 2^(F+1) − 1] (int32) of a map value next to ``a`` ∈ [0, 1] (float32).

    In decade e the value of index p = 2^(F-e) + k is floor_e + (k + 1)·spacing_e, so a sits at
    position (a − floor_e)/spacing_e + count_e − 1 on the map. Since the decades' uniform grids
    meet at 10^-(e+1), rounding within a's decade rounds on the whole map (below the decade's
    first point, down to the next decade's top; in the last decade, to 0). The position is taken
    in fixed point with ``FIXED_POINT`` fraction bits: ⌊(a − floor_e)·scale_e⌋, a subtract and a
    multiply (no division), then integer adds of (count_e − 1)·2^FIXED_POINT and the dither, and
    a shift. Integer adds are exact in any order, and nothing fuses a multiply that no float add
    follows (XLA fuses a multiply and an add into one rounding, an FMA): every backend, compiled
    or not, and the kernels get the same index. ``dither``: int32 in [0, 2^FIXED_POINT), which
    rounds up with probability equal to the fraction (stochastic rounding, unbiased when uniform);
    None: half of it, the nearest value (a tie rounds up).
    """
    table = codec_table(signed)
    bits = fraction_bits(signed)
    decade = ops.zeros(ops.shape(a), "int32")
    for threshold in _table_part(table, "thresholds")[:bits]:  # e = #{thresholds ≥ a}
        decade = decade + ops.cast(a <= float(threshold), "int32")
    floor, scale, count = (ops.take(ops.convert_to_tensor(_table_part(table, part)), decade)
                           for part in ("floor", "scale", "count"))
    fixed = ops.cast((a - floor) * scale, "int32")  # a > floor_e: truncation is the floor
    first = ops.cast(count - 1.0, "int32") * 2**FIXED_POINT
    half = 2 ** (FIXED_POINT - 1)
    index = ops.right_shift(fixed + first + (half if dither is None else dither), FIXED_POINT)
    return ops.clip(index, 0, 2 ** (bits + 1) - 1)


def quantization_map(signed: bool) -> np.ndarray:
    """Every value the codes can take, ascending (as decoded in float32): for tests and docs."""
    decode = codec_table(signed)[:256].astype(np.float64)
    return decode[1:] if signed else decode  # code −128 is unused in the signed map


def quantize(x, signed: bool, step=None, first_position=0):
    """``x`` (float32, any shape) → (int8 codes shaped (blocks, BLOCK_SIZE), float32 absmax (blocks,)).

    Rounds to the nearest code, or stochastically when ``step`` (the int32 iteration) is given;
    ``first_position``: the flat index of x's first value in its tensor (for the dither), where
    x is one chunk of it.
    """
    flat = ops.reshape(ops.cast(x, "float32"), (-1,))
    size = flat.shape[0]
    if size == 0:  # no block (and no max over one: TensorFlow and PyTorch refuse it)
        return ops.zeros((0, BLOCK_SIZE), "int8"), ops.zeros((0,), "float32")
    padded = math.ceil(size / BLOCK_SIZE) * BLOCK_SIZE
    if padded != size:
        flat = ops.pad(flat, [(0, padded - size)])
    blocks = ops.reshape(flat, (-1, BLOCK_SIZE))
    absmax = ops.max(ops.abs(blocks), axis=1)
    divisor, reciprocal = block_scales(absmax)
    # (x / d)·r, not x·(1/d)·r: TensorFlow's graph optimiser would fold a chain of two multiplies
    # into one by (1/d)·r, which is not a float32 number for the largest blocks.
    normalised = blocks / ops.expand_dims(divisor, 1) * ops.expand_dims(reciprocal, 1)
    dither = None
    if step is not None:
        positions = flat_positions((padded // BLOCK_SIZE, BLOCK_SIZE)) + first_position
        dither = dither_bits(positions, step, FIXED_POINT)
    index = magnitude_index(ops.abs(normalised), signed, dither)
    code = ops.where(normalised < 0, -index, index) if signed else index - 128
    return ops.cast(code, "int8"), absmax


def block_scales(absmax):
    """Per block, (d, r): its values x normalise to (x / d)·r, where d is 1 or a power of two, so
    that the kernels do it with two multiplies (by 1/d, exact, and by r) and no division.

    d is 2^-64 where absmax is below 2^-64 and 2^64 where it is above 2^64: absmax / d then lies in
    [2^-85, 2^64] (2^-149 is float32's least), so that r = float32(1 / (absmax / d)) is a normal
    number (1 for an all-zero block). Where (absmax / d)·r rounds below 1, r is one ulp
    larger: the block's largest value normalises to at least 1, the top code, and is stored
    exactly.
    """
    divisor = ops.where(absmax < 2.0**-64, 2.0**-64, ops.where(absmax > 2.0**64, 2.0**64, 1.0))
    scaled = absmax / divisor
    scaled = ops.where(scaled > 0, scaled, 1.0)
    # 2/(2·scaled) is 1/scaled exactly; written so because TensorFlow's graph optimiser rewrites
    # 1/x as its Reciprocal op, which is not correctly rounded (a third of float32 values differ).
    reciprocal = 2.0 / (2.0 * scaled)
    short = ops.cast(scaled * reciprocal < 1.0, "int32")
    return divisor, ops.view(ops.view(reciprocal, "int32") + short, "float32")


def dequantize(codes, absmax, shape, signed: bool, dtype="float32"):
    """The inverse of ``quantize``: a float tensor of ``shape``."""
    flat = decoded_blocks(codes, absmax, signed)
    size = math.prod(shape)
    if flat.shape[0] != size:
        flat = flat[:size]
    return ops.cast(ops.reshape(flat, shape), dtype)


def decoded_blocks(codes, absmax, signed: bool):
    """Codes (blocks, BLOCK_SIZE) and their absmax → the flat float32 values, padding included."""
    decode = ops.convert_to_tensor(codec_table(signed)[:256])
    values = ops.take(decode, ops.cast(codes, "int32") + 128)
    return ops.reshape(values * ops.expand_dims(absmax, 1), (-1,))


# -- stochastic rounding ---------------------------------------------------------------------------

# Weyl-sequence multipliers: 2^32 times the fractional parts of the golden ratio and of √2.
_POSITION_MULTIPLIER = -1640531535  # 0x9E3779B1 as int32
_STEP_MULTIPLIER = 0x6A09E667


def dither_bits(positions, step, bits: int):
    """``bits`` pseudo-random bits per element, from its flat position and the step (int32 tensors).

    Rounding to nearest loses every change smaller than half a code: β2 = 0.999 moves v by 0.1% a
    step, under one code of either bfloat16 or the 8-bit map, so a stored v could never decay.
    Stochastic rounding keeps the stored value right on average. The dither is the top bits of
    (position·φ + step·(√2 − 1)) mod 1 in 32-bit fixed point: a stateless low-discrepancy sequence,
    even over each element's steps and over a block's elements, and the same on a resumed run.
    """
    mixed = positions * _POSITION_MULTIPLIER + ops.cast(step, "int32") * _STEP_MULTIPLIER
    return ops.bitwise_and(ops.right_shift(mixed, 32 - bits), (1 << bits) - 1)


def round_to_bfloat16(x, positions, step):
    """float32 → bfloat16 with stochastic rounding (exact: the low 16 bits are cleared first)."""
    raw = ops.view(ops.cast(x, "float32"), "int32")
    raw = ops.bitwise_and(raw + dither_bits(positions, step, 16), -65536)  # 0xFFFF0000
    return ops.cast(ops.view(raw, "float32"), "bfloat16")


def flat_positions(shape):
    return ops.reshape(ops.arange(math.prod(shape), dtype="int32"), shape)


# -- slots: one state tensor of one parameter, as stored ----------------------------------------


class PlainSlot:
    """A state tensor kept as one variable (float32, float64 or bfloat16)."""

    def __init__(self, variable, compute_dtype: str) -> None:
        self.variable = variable
        self.compute_dtype = compute_dtype

    @property
    def variables(self) -> list:
        return [self.variable]

    def read(self):
        return ops.cast(self.variable, self.compute_dtype)

    @property
    def rounds_stochastically(self) -> bool:
        return keras.backend.standardize_dtype(self.variable.dtype) == "bfloat16"

    @property
    def exact(self) -> bool:
        """Whether it stores the compute dtype itself: read back, a write gives its values."""
        return keras.backend.standardize_dtype(self.variable.dtype) == self.compute_dtype

    def encode(self, value, positions, step):
        """``value`` in the stored dtype; ``positions``: the elements' flat indices, for the
        bfloat16 dither (unused, and may be None, otherwise)."""
        if self.rounds_stochastically:
            return round_to_bfloat16(value, positions, step)
        return ops.cast(value, self.variable.dtype)

    def write(self, optimizer, value, step) -> None:
        # Positions only where a dither needs them: elsewhere they would be N int32 per write.
        positions = flat_positions(tuple(self.variable.shape)) if self.rounds_stochastically else None
        optimizer.assign(self.variable, self.encode(value, positions, step))

    # Chunks (``adamkit.chunks``): the stored tensor as ``count`` rows of ``size`` values.

    def stored_chunks(self, count: int, size: int) -> tuple:
        return (in_chunks(self.variable, count, size),)

    def decode_chunk(self, parts: tuple):
        return ops.cast(parts[0], self.compute_dtype)

    def encode_chunk(self, value, positions, step) -> tuple:
        return (self.encode(value, positions, step),)

    def write_chunks(self, optimizer, parts: tuple) -> None:
        optimizer.assign(self.variable, from_chunks(parts[0], tuple(self.variable.shape)))


class QuantizedSlot:
    """A state tensor kept as int8 codes plus one float32 absmax per block."""

    def __init__(self, codes, absmax, shape: tuple, signed: bool) -> None:
        self.codes = codes
        self.absmax = absmax
        self.shape = shape
        self.signed = signed

    @property
    def variables(self) -> list:
        return [self.codes, self.absmax]

    exact = False  # codes on a map

    def read(self):
        return dequantize(self.codes, self.absmax, self.shape, self.signed)

    def write(self, optimizer, value, step) -> None:
        codes, absmax = quantize(value, self.signed, step)
        optimizer.assign(self.codes, codes)
        optimizer.assign(self.absmax, absmax)

    # Chunks of ``size`` values (a multiple of BLOCK_SIZE): size / BLOCK_SIZE blocks each.

    def stored_chunks(self, count: int, size: int) -> tuple:
        blocks = size // BLOCK_SIZE
        return (in_chunks(self.codes, count, blocks, (BLOCK_SIZE,)),
                in_chunks(self.absmax, count, blocks))

    def decode_chunk(self, parts: tuple):
        return decoded_blocks(*parts, self.signed)

    def encode_chunk(self, value, positions, step) -> tuple:
        return quantize(value, self.signed, step, first_position=positions[0])

    def write_chunks(self, optimizer, parts: tuple) -> None:
        codes, absmax = parts
        optimizer.assign(self.codes, from_chunks(codes, tuple(self.codes.shape)))
        optimizer.assign(self.absmax, from_chunks(absmax, tuple(self.absmax.shape)))


def in_chunks(x, count: int, size: int, inner: tuple = ()):
    """``x`` as ``count`` chunks of ``size`` rows of shape ``inner`` (zeros after its end)."""
    rows = ops.reshape(x, (-1, *inner))
    missing = count * size - rows.shape[0]
    if missing:
        rows = ops.pad(rows, [(0, missing)] + [(0, 0)] * len(inner))
    return ops.reshape(rows, (count, size, *inner))


def from_chunks(chunks, shape: tuple):
    """The inverse of ``in_chunks``: the first rows of ``chunks``, as ``shape``."""
    inner = tuple(chunks.shape[2:])
    rows = ops.reshape(chunks, (-1, *inner))
    count = math.prod(shape) // max(math.prod(inner), 1)
    if rows.shape[0] != count:
        rows = rows[:count]
    return ops.reshape(rows, shape)


def held_value(x):
    """A Keras variable's own storage (outside a stateless scope, where it has one), else its
    ``value``; anything else as it is. ``Variable.value`` would first check the scopes, autocasting
    and device (~1–5 µs a read on PyTorch, whose step runs this Python every time); an autocast
    copy would not be the storage anyway."""
    if not isinstance(x, keras.Variable):
        return x
    return x._value if x._value is not None and not in_stateless_scope() else x.value


def compute_dtype(variable) -> str:
    """Float64 parameters keep float64 math; everything else (16-bit included) uses float32."""
    return "float64" if keras.backend.standardize_dtype(variable.dtype) == "float64" else "float32"


def slot_name(variable, name: str) -> str:
    """The name of ``variable``'s state ``name``, as Keras names its optimizers' state: from the
    variable's path, or (a plain ``tf.Variable`` has none) from its name."""
    path = getattr(variable, "path", None)
    if path is None:
        path = str(variable.name).replace(":", "_")
    return f"{path.replace('/', '_')}_{name}"


def variable_path(variable) -> str:
    """The name patterns of a ``state_dtype`` mapping are searched in this: the variable's path
    (``"dense/kernel"``), or its name where it has none."""
    return str(getattr(variable, "path", None) or variable.name)


def check_state_dtype(value: object) -> StateDtype:
    """``value`` if it is a valid ``state_dtype``, else a ValueError naming what is allowed."""
    allowed = ", ".join(repr(d) for d in STATE_DTYPES)
    if isinstance(value, str) and value in STATE_DTYPES:
        return value
    if isinstance(value, Mapping):
        for pattern, dtype in value.items():
            if not isinstance(pattern, str):
                raise ValueError(f"`state_dtype` patterns must be strings, got {pattern!r}.")
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"`state_dtype` pattern {pattern!r} is not a regular "
                                 f"expression: {error}.") from None
            if dtype not in STATE_DTYPES:
                raise ValueError(f"`state_dtype` maps {pattern!r} to {dtype!r}; each dtype must "
                                 f"be one of {allowed}.")
        return dict(value)
    if callable(value):
        return value
    raise ValueError(f"`state_dtype` must be one of {allowed}, a mapping from variable-name "
                     f"patterns to those, or a callable taking a variable; got {value!r}.")


def state_dtype_of(state_dtype: StateDtype, variable) -> str:
    """The state dtype ``state_dtype`` gives ``variable``: a mapping's first pattern found in the
    variable's path (``re.search``) decides, float32 where none is; a callable is asked."""
    if isinstance(state_dtype, str):
        return state_dtype
    if isinstance(state_dtype, Mapping):
        path = variable_path(variable)
        return next((dtype for pattern, dtype in state_dtype.items() if re.search(pattern, path)),
                    "float32")
    dtype = state_dtype(variable)
    if dtype not in STATE_DTYPES:
        raise ValueError(f"`state_dtype` returned {dtype!r} for variable "
                         f"{variable_path(variable)!r}; it must return one of "
                         f"{', '.join(repr(d) for d in STATE_DTYPES)}.")
    return dtype


def create_slot(optimizer, variable, name: str, state_dtype: str, signed: bool,
                min_8bit_size: int = MIN_QUANTIZED_SIZE):
    """Adds the variables that store state ``name`` of ``variable`` and returns its slot; int8
    applies to tensors of ``min_8bit_size`` values or more (smaller ones keep float32)."""
    dtype = compute_dtype(variable)
    size = math.prod(variable.shape)
    prefix = slot_name(variable, name)
    if state_dtype == "int8" and size >= min_8bit_size:
        blocks = math.ceil(size / BLOCK_SIZE)
        codes = optimizer.add_variable((blocks, BLOCK_SIZE), initializer="zeros", dtype="int8",
                                       name=f"{prefix}_codes")
        # absmax 0 decodes every code to 0, so zero codes are a valid all-zero state.
        absmax = optimizer.add_variable((blocks,), initializer="zeros", dtype="float32",
                                        name=f"{prefix}_absmax")
        return QuantizedSlot(codes, absmax, tuple(variable.shape), signed)
    stored = "bfloat16" if state_dtype == "bfloat16" else dtype
    if stored == keras.backend.standardize_dtype(variable.dtype):
        slot = optimizer.add_variable_from_reference(variable, name=name)
    else:
        slot = optimizer.add_variable(tuple(variable.shape), initializer="zeros", dtype=stored,
                                      name=prefix, layout=getattr(variable, "_layout", None))
    return PlainSlot(slot, dtype)
