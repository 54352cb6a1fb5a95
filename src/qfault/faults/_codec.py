"""Codecs: the faulted values of a tensor's hit elements, computed in one of three arithmetics.

A codec turns the hit elements' values into codes of a format, applies the draw's operation
(XOR a mask, force stuck bits, modular add) and decodes the new codes:
``(old codes, new codes, faulty values)``. A value whose code does not change is returned as it
was. Three implementations compute exactly the same numbers (one equivalence test over every
registered codec and format checks it):

- ``torch``: tensors on any device, every format and operation, usable under autograd. The default.
- ``numpy``: XOR and random-value faults in int formats and XOR faults in float32/float16 bits,
  on finite float32 values, numpy arrays (CPU).
- ``scalar``: XOR faults in int formats on a handful of Python floats, each float32 step computed
  in double and rounded once to float32, which gives the float32 result.

The runtime picks a codec once per site from the format and fault (:func:`fast_codec_for`) and falls
back to ``torch`` for tensors the others do not serve (autograd, another device, non-finite values).
"""

from __future__ import annotations

import functools
import math
import struct
from typing import Any, Protocol

import numpy as np
import torch

from .._registry import Registry
from ..formats import NumberFormat

XOR, STUCK, RANDOM = "xor", "stuck", "random"


class Codec(Protocol):
    """Faulted values of hit elements in one arithmetic (see the module docstring)."""

    name: str
    #: whether scales and zero points may differ per element (else one per tensor)
    per_element_params: bool

    def supports(self, fmt: NumberFormat, op: str) -> bool:
        """Whether this codec computes ``op`` faults in ``fmt``."""

    def code(self, fmt: NumberFormat, values: Any, op: str, mask: Any, operand: Any = None, scale: Any = None,
             zero: Any = None) -> tuple[Any, Any, Any]:
        """``(old codes, new codes, faulty values)`` of finite ``values`` ([k]) hit by ``op`` with
        per-element ``mask`` (bit patterns) and ``operand`` (stuck pattern or random addend);
        ``scale``/``zero`` are per element or scalars. Containers are the codec's own."""

    def square_norm(self, fmt: NumberFormat, x: Any, scale: Any = None, zero: Any = None,
                    axis: int | None = None) -> float:
        """``sum(code ** 2)`` over every element of ``x`` encoded in ``fmt``, exactly (the
        clean-tensor norm of the injection statistics)."""

    def wrap(self, values: torch.Tensor, mask: torch.Tensor, scale: Any, zero: Any) -> tuple:
        """Tensor arguments in this codec's containers (for callers and tests)."""

    def unwrap(self, result: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A :meth:`code` result as ``(int codes, int codes, float32 values)`` tensors."""


CODECS: Registry = Registry("codec")


class _OpDraw:
    """The operation of a draw without its indices (what :func:`apply_to_codes` reads)."""

    __slots__ = ("op", "mask", "value")

    def __init__(self, op: str, mask: torch.Tensor, value: torch.Tensor | None):
        self.op, self.mask, self.value = op, mask, value


class TorchCodec:
    """Tensors on any device, every format and operation (the reference arithmetic)."""

    name = "torch"
    per_element_params = True

    def supports(self, fmt: NumberFormat, op: str) -> bool:
        return True

    def code(self, fmt, values, op, mask, operand=None, scale=None, zero=None, finite: bool = True):
        return fault_values(fmt, values, _OpDraw(op, mask, operand), scale, zero, finite)

    #: CPU: elements per chunk of the exact norm, whose codes stay in cache between the passes
    #: over them (quant_cnv's evaluation with statistics: the faults' time per batch of 64 went
    #: from 25-27 to 23-25 ms)
    NORM_CHUNK = 1 << 18

    def square_norm(self, fmt, x, scale=None, zero=None, axis=None) -> float:
        if fmt.encodes_non_finite:  # value units: the bits are the value
            return float(torch.linalg.vector_norm(x, dtype=torch.float64)) ** 2
        block = _exact_block(fmt)
        if block is None or x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return float(fmt.encode(x, scale, zero, axis).to(torch.float64).square().sum())  # exact below 2**53
        if x.device.type != "cpu" or axis is not None or x.numel() <= self.NORM_CHUNK \
                or not all(_per_tensor(param) for param in (scale, zero)):
            return _square_codes(fmt, x, scale, zero, axis, block)
        # chunks of whole blocks, or within one block (then one dot product each)
        flat, step = x.reshape(-1), (self.NORM_CHUNK // block * block if block <= self.NORM_CHUNK else self.NORM_CHUNK)
        # integer totals below 2**53: their float sum is exact
        return sum(_square_codes(fmt, flat[start:start + step], scale, zero, None, block)
                   for start in range(0, flat.numel(), step))

    def wrap(self, values, mask, scale, zero):
        return values, mask, scale, zero

    def unwrap(self, result):
        return result


class NumpyCodec:
    """XOR and random-value faults in int formats and XOR faults in the raw bits of
    float32/float16, on finite float32 numpy arrays; bit-identical to ``torch``."""

    name = "numpy"
    per_element_params = True

    def supports(self, fmt: NumberFormat, op: str) -> bool:
        if op == RANDOM:
            return fmt.needs_qparams
        return op == XOR and (fmt.needs_qparams or _numpy_ieee(fmt) is not None)

    def code(self, fmt, values, op, mask, operand=None, scale=None, zero=None):
        return fault_values_numpy(fmt, values, op, mask, operand, scale, zero)

    #: above this many elements the torch passes (in place, multi-threaded) cost less
    NORM_ELEMENTS = 1 << 16

    def square_norm(self, fmt, x, scale=None, zero=None, axis=None) -> float:
        """For a float32 array with a per-tensor scale (a number) and integer zero point."""
        flat = x.reshape(-1)
        if fmt.encodes_non_finite or flat.size > self.NORM_ELEMENTS:
            return TORCH.square_norm(fmt, torch.from_numpy(x), scale, zero, axis)
        block = _exact_block(fmt)
        if block is None or axis is not None or flat.dtype != np.float32:
            return TORCH.square_norm(fmt, torch.from_numpy(x), scale, zero, axis)
        q = flat / np.float32(scale) if scale is not None else flat.copy()
        q = _round_numpy(q, fmt.rounding, in_place=True)
        if zero:
            q += np.float32(zero)
        np.clip(q, np.float32(fmt.code_min), np.float32(fmt.code_max), out=q)  # one pass over the tensor
        np.square(q, out=q)  # exact in float32: squares below 2**24
        # blocks of float32 sums below 2**24 (exact), then the block sums in float64
        full = q.size // block * block
        total = float(q[:full].reshape(-1, block).sum(axis=1).sum(dtype=np.float64)) if full else 0.0
        total += float(q[full:].sum(dtype=np.float64))
        if not math.isfinite(total):  # NaN inputs: they encode as 0.0 does (rare: recompute)
            return TORCH.square_norm(fmt, torch.from_numpy(x), scale, zero, axis)
        return total

    def wrap(self, values, mask, scale, zero):
        return values.numpy(), mask.numpy(), _as_numpy(scale), _as_numpy(zero)

    def unwrap(self, result):
        return tuple(torch.from_numpy(np.asarray(a)) for a in result)


class ScalarCodec:
    """XOR faults in int formats on a few finite float32 values as Python numbers, with a
    per-tensor scale and integer zero point; bit-identical to ``torch``."""

    name = "scalar"
    per_element_params = False

    def supports(self, fmt: NumberFormat, op: str) -> bool:
        return op == XOR and fmt.needs_qparams

    def code(self, fmt, values, op, mask, operand=None, scale=None, zero=None):
        return xor_scalars(fmt, values, mask, scale, zero)

    def square_norm(self, fmt, x, scale=None, zero=None, axis=None) -> float:
        """Of a whole tensor, in numpy (Python numbers serve only the few hit elements)."""
        return NUMPY.square_norm(fmt, np.asarray(x, dtype=np.float32), scale, zero, axis)

    def wrap(self, values, mask, scale, zero):
        scale, zero = scalar_param(scale), scalar_param(zero)
        return values.tolist(), mask.tolist(), scale, None if zero is None else int(zero)

    def unwrap(self, result):
        old, new, faulty = result
        return (torch.tensor(old, dtype=torch.int32), torch.tensor(new, dtype=torch.int32),
                torch.tensor(faulty, dtype=torch.float32))


TORCH, NUMPY, SCALAR = TorchCodec(), NumpyCodec(), ScalarCodec()
for _codec in (TORCH, NUMPY, SCALAR):
    CODECS.register(_codec.name, _codec)


def _square_codes(fmt: NumberFormat, x: torch.Tensor, scale, zero, axis, block: int) -> float:
    """``sum(code**2)`` of ``x`` in an int format whose squared codes a float32 sum of ``block``
    of them holds exactly: one float32 dot product when ``x`` fits one block, else float32 sums
    of whole blocks, then the block sums in float64."""
    for keep_nan in (True, False):  # NaN kept (one pass fewer) shows in the total: then encoded as 0
        codes = fmt.float_codes(x.float(), scale, zero, axis, keep_nan=keep_nan).reshape(-1)
        if codes.numel() <= block:  # every partial sum is an integer below 2**24: exact in any order
            total = float(torch.dot(codes, codes))
        else:
            squares = codes.square_()
            full = squares.numel() // block * block
            total = float(squares[:full].view(-1, block).sum(dim=1).double().sum()) if full else 0.0
            total += float(squares[full:].sum())
        if math.isfinite(total):
            break
    return total


def _per_tensor(param) -> bool:
    """A scale or zero point that is absent, a number or a one-element tensor."""
    return param is None or isinstance(param, (int, float)) or (isinstance(param, torch.Tensor) and param.numel() == 1)


@functools.lru_cache(maxsize=64)
def _exact_block(fmt: NumberFormat) -> int | None:
    """How many squared codes of ``fmt`` a float32 sum holds exactly (integers below 2**24), or
    None where a squared code is not exact in float32 (codes beyond 2**12)."""
    largest = max(fmt.code_min ** 2, fmt.code_max ** 2, 1)
    if fmt.bits > 24 or largest > 1 << 24:
        return None
    block = (1 << 24) // largest
    return block if block >= 2 else None


def fast_codec_for(fmt: NumberFormat | None, op: str) -> Codec | None:
    """The codec a site uses for ``op`` faults in ``fmt`` on CPU float32 values outside autograd
    (``fmt`` None: a quantized tensor's own int format): ``numpy`` where it serves them, else
    None (the ``torch`` codec). Chosen once, when the site is built."""
    if op in (XOR, RANDOM) and (fmt is None or NUMPY.supports(fmt, op)):
        return NUMPY
    return None


def scalar_param(param) -> float | int | None:
    """A per-tensor parameter as a Python number (None: absent, or not per tensor)."""
    if param is None or isinstance(param, (int, float)):
        return param
    if isinstance(param, torch.Tensor) and param.numel() == 1 and param.device.type == "cpu":
        return param.item()
    return None


def _as_numpy(param):
    if isinstance(param, torch.Tensor) and param.dim():
        return param.numpy()
    return scalar_param(param)


# -- the arithmetic ---------------------------------------------------------------------------


def apply_to_codes(fmt: NumberFormat, codes: torch.Tensor, draw) -> torch.Tensor:
    """New codes for the hit elements: ``codes`` are the old codes at ``draw.index`` ([k])."""
    if draw.op == XOR:
        return fmt.xor(codes, draw.mask.to(fmt.pattern_dtype))
    if draw.op == STUCK:
        return fmt.set_bits(codes, draw.mask.to(fmt.pattern_dtype), draw.value.to(fmt.pattern_dtype))
    # RANDOM: seed 001's modular addition over [code_min, code_max]
    low, size = fmt.code_min, fmt.code_max - fmt.code_min + 1
    shifted = torch.remainder(codes.to(torch.int64) + draw.value - low, size) + low
    return shifted.to(codes.dtype)


def fault_values(fmt: NumberFormat, values: torch.Tensor, draw, scale=None, zero_point=None,
                 finite: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Faulted values of the hit elements ``values`` ([k] floats, ``draw`` order).

    ``scale``/``zero_point`` are per hit element (or scalars). Returns ``(old codes, new codes,
    faulty values)``; a value whose code does not change is returned unchanged. In int and
    fixed-point formats NaN/inf have no code and stay as they are (``finite=True`` skips that check
    when the caller knows); IEEE formats flip their bits like any other.
    """
    if fmt.encodes_non_finite:  # IEEE: the bits of every value, NaN and inf included
        old = fmt.encode(values)
        new = apply_to_codes(fmt, old, draw)
        faulty = fmt.decode(new, dtype=values.dtype)
    else:
        old = fmt.encode(values, scale, zero_point)
        new = apply_to_codes(fmt, old, draw)
        if not finite:
            new = torch.where(torch.isfinite(values), new, old)
        faulty = fmt.decode(new, scale, zero_point, dtype=values.dtype)
    return old, new, torch.where(new != old, faulty, values)


def _numpy_ieee(fmt: NumberFormat) -> tuple | None:
    """``(numpy float dtype, numpy unsigned dtype of its bits)`` of an IEEE format numpy holds."""
    if not fmt.encodes_non_finite:
        return None
    return {torch.float32: (np.float32, np.uint32), torch.float16: (np.float16, np.uint16)}.get(fmt.dtype)


def _round_numpy(q: np.ndarray, rounding: str, in_place: bool) -> np.ndarray:
    """:func:`qfault.formats.round_codes` on a float32 array (in place where allowed)."""
    if rounding == "half_away":
        return np.copysign(np.floor(np.abs(q) + np.float32(0.5)), q)
    if rounding == "half_up":
        shifted = np.add(q, np.float32(0.5), out=q if in_place else None)
        return np.floor(shifted, out=shifted)
    return np.rint(q, out=q if in_place else None)


def fault_values_numpy(fmt: NumberFormat, values: np.ndarray, op: str, mask: np.ndarray, operand=None,
                       scale=None, zero=None):
    """The tensor codec of :func:`fault_values` for XOR (``mask``) and, in int formats,
    random-value faults (``operand``: int64 per value, added modulo the code range) on finite
    float32 ``values``, in numpy: ``(old codes int32, new codes int32, faulty float32)``,
    bit-identical to the torch path.

    ``scale`` is None, a number or a float32 array per value; ``zero`` None, a number or an
    array per value (zero points are small integers, exact in float32). In an IEEE format
    (float32, float16) the codes are the values' bit patterns and the scale is unused.
    """
    ieee = _numpy_ieee(fmt)
    if ieee is not None:
        float_dtype, bits_dtype = ieee
        if float_dtype is np.float32:
            stored = values.astype(np.float32, copy=False)
        else:  # round to the format, as the torch codec does (beyond its range: infinity)
            with np.errstate(over="ignore"):
                stored = values.astype(float_dtype)
        old = stored.view(bits_dtype).astype(np.int64 if fmt.bits == 32 else np.int32)
        new = old ^ mask.astype(old.dtype, copy=False)
        faulty = new.astype(bits_dtype).view(float_dtype).astype(values.dtype)
        return old, new, np.where(new != old, faulty, values)
    if isinstance(scale, np.ndarray):
        scale = scale.astype(np.float32, copy=False)
    elif scale is not None:
        scale = np.float32(scale)
    if isinstance(zero, np.ndarray):
        zero = zero.astype(np.float32, copy=False) if zero.any() else None
    elif zero:
        zero = np.float32(zero)
    else:
        zero = None
    q = values if scale is None else values / scale
    q = _round_numpy(q, fmt.rounding, in_place=q is not values)
    if zero is not None:
        q += zero
    # clamp (np.clip's wrapper costs more than the two ufuncs)
    np.minimum(np.maximum(q, np.float32(fmt.code_min), out=q), np.float32(fmt.code_max), out=q)
    old = q.astype(np.int32)
    if op == RANDOM:  # seed 001's modular addition over [code_min, code_max], as apply_to_codes
        low, size = fmt.code_min, fmt.code_max - fmt.code_min + 1
        shifted = np.remainder(old.astype(np.int64) + (operand - low), size)
        new = np.add(shifted, low, out=shifted).astype(np.int32)
    else:
        patterns = (old & fmt.bit_mask) ^ mask
        if fmt.signed:  # sign-extend the b-bit pattern
            sign = 1 << (fmt.bits - 1)
            np.bitwise_xor(patterns, sign, out=patterns)
            np.subtract(patterns, sign, out=patterns)
        new = patterns.astype(np.int32, copy=False)
    faulty = new.astype(np.float32)
    if zero is not None:
        faulty -= zero
    if scale is not None:
        faulty *= scale
    return old, new, np.where(new != old, faulty, values)


def xor_scalars(fmt: NumberFormat, values: list[float], masks: list[int], scale: float | None = None,
                zero: int | None = None) -> tuple[list[int], list[int], list[float]]:
    """The float32 tensor codec of :func:`fault_values` for XOR faults on a few finite float32
    ``values``, in Python arithmetic: ``(old codes, new codes, faulty values)``.

    Exact: each float32 operation (a quotient, sum or product of two float32 numbers) is
    computed in double and rounded once to float32, which gives the float32 result.
    """
    olds, news, faulty = [], [], []
    zero = zero or 0
    scale = None if scale is None else to_float32(scale)  # the tensor codec computes in float32
    sign = 1 << (fmt.bits - 1)
    for value, mask in zip(values, masks):  # a handful of faults, not the tensor's elements
        q = value if scale is None else to_float32(value / scale)
        if math.isinf(q):  # a quotient beyond float32 clamps to the range's end
            old = fmt.code_max if q > 0 else fmt.code_min
        else:
            if fmt.rounding == "half_away":
                q = int(math.copysign(math.floor(to_float32(abs(q) + 0.5)), q))
            else:
                q = math.floor(to_float32(q + 0.5)) if fmt.rounding == "half_up" else round(q)
            old = min(max(q + zero, fmt.code_min), fmt.code_max)
        pattern = (old & fmt.bit_mask) ^ mask
        new = (pattern ^ sign) - sign if fmt.signed else pattern
        result = float(new - zero)
        if scale is not None:
            result = to_float32(result * scale)
        olds.append(old)
        news.append(new)
        faulty.append(result if new != old else value)
    return olds, news, faulty


_FLOAT32 = struct.Struct("f")


def to_float32(value: float) -> float:
    """``value`` rounded to the nearest float32 (ties to even), as a Python float."""
    try:
        return _FLOAT32.unpack(_FLOAT32.pack(value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)
