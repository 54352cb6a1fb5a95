"""Drawing faults for a tensor and applying them to its codes; the ``corrupt`` verb."""

from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass, field

import numpy as np
import torch

from .._errors import QFaultConfigError
from ..formats import FloatFormat, IntFormat, NumberFormat, calibrate, get_format
from ..formats._base import gather_param
from ._models import (
    BitFlip, FaultModel, FullFlip, HwPeriodic, LSBFlip, MSBFlip, RandomValue, StuckAt, get_fault,
)
from ._sampling import bernoulli_array, bernoulli_positions, ceil_count, distinct_array, make_generator

XOR, STUCK, RANDOM = "xor", "stuck", "random"


@dataclass
class FaultDraw:
    """Faults drawn for one tensor: which elements, and what happens to each.

    Attributes:
        index: unique flat element indices, sorted, int64 ``[k]``.
        op: ``"xor"`` (flip ``mask``), ``"stuck"`` (force ``mask`` bits to ``value``) or
            ``"random"`` (modular add of ``value`` over the code range).
        mask: per-element bit pattern ``[k]`` (int64).
        value: per-element stuck pattern or random operand ``[k]`` (int64), or None.
        bit_sites: ``[m, 2]`` (element index, bit) pairs for bit-level models, or None.
    """

    index: torch.Tensor
    op: str
    mask: torch.Tensor
    value: torch.Tensor | None = None
    bit_sites: torch.Tensor | None = None
    #: the CPU ``(index, mask)`` as numpy arrays sharing their memory, where the draw made them
    arrays: tuple | None = field(default=None, repr=False, compare=False)

    def to(self, device: torch.device | str) -> "FaultDraw":
        if self.index.device == (device if isinstance(device, torch.device) else torch.device(device)):
            return self
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return FaultDraw(move(self.index), self.op, move(self.mask), move(self.value), move(self.bit_sites))

    def offset(self, delta: int) -> "FaultDraw":
        """The same draw with element indices shifted by ``delta`` (for per-image draws)."""
        sites = None if self.bit_sites is None else self.bit_sites + torch.tensor([delta, 0])
        return FaultDraw(self.index + delta, self.op, self.mask, self.value, sites)

    @staticmethod
    def cat(draws: list["FaultDraw"]) -> "FaultDraw":
        first = draws[0]
        sites = [d.bit_sites for d in draws if d.bit_sites is not None]
        return FaultDraw(
            torch.cat([d.index for d in draws]), first.op, torch.cat([d.mask for d in draws]),
            None if first.value is None else torch.cat([d.value for d in draws]),
            torch.cat(sites) if sites else None,
        )

    def __len__(self) -> int:
        return int(self.index.numel())


class _LazyDraw(FaultDraw):
    """XOR bit flips kept as Python or numpy values; the tensor fields are built on first access
    (the CPU fast paths never touch them unless a listener or statistic does)."""

    op, value = XOR, None

    def _build(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _materialize(self) -> tuple:
        if self._tensors is None:
            self._tensors = self._build()
        return self._tensors

    index = property(lambda self: self._materialize()[0])
    mask = property(lambda self: self._materialize()[1])
    bit_sites = property(lambda self: self._materialize()[2])

    def to(self, device: torch.device | str) -> FaultDraw:
        return self if torch.device(device).type == "cpu" else super().to(device)


class ScalarDraw(_LazyDraw):
    """A few XOR bit flips as Python ints, one per distinct element, elements ascending. At
    batch 1 a flip per image is one element, and any tensor or array operation costs more than
    its arithmetic."""

    def __init__(self, elements: list[int], bits: list[int]):
        self.elements, self.bits = elements, bits
        self.arrays, self._tensors = None, None

    def _build(self):
        elements = torch.tensor(self.elements, dtype=torch.int64)
        bits = torch.tensor(self.bits, dtype=torch.int64)
        return elements, torch.bitwise_left_shift(1, bits), torch.stack([elements, bits], 1)

    def __len__(self) -> int:
        return len(self.elements)


class ArrayDraw(_LazyDraw):
    """XOR bit flips drawn on the CPU as numpy arrays: ``arrays = (index, mask)`` per distinct
    element and the (element, bit) pairs; the tensors share their memory."""

    def __init__(self, index: np.ndarray, mask: np.ndarray, elements: np.ndarray, bits: np.ndarray):
        self.arrays, self._pairs, self._tensors = (index, mask), (elements, bits), None

    def _build(self):
        return torch.from_numpy(self.arrays[0]), torch.from_numpy(self.arrays[1]), _pairs(*self._pairs)

    def __len__(self) -> int:
        return len(self.arrays[0])


def xor_scalars(fmt: IntFormat, values: list[float], masks: list[int], scale: float | None = None,
                zero: int | None = None) -> tuple[list[int], list[int], list[float]]:
    """The float32 tensor codec of :func:`fault_values` for XOR faults on a few finite float32
    ``values``, in Python arithmetic: ``(old codes, new codes, faulty values)``.

    Exact: each float32 operation (a quotient, sum or product of two float32 numbers) is
    computed in double and rounded once to float32, which gives the float32 result.
    """
    olds, news, faulty = [], [], []
    zero = zero or 0
    scale = None if scale is None else _float32(scale)  # the tensor codec computes in float32
    sign = 1 << (fmt.bits - 1)
    for value, mask in zip(values, masks):  # a handful of faults, not the tensor's elements
        q = value if scale is None else _float32(value / scale)
        if math.isinf(q):  # a quotient beyond float32 clamps to the range's end
            old = fmt.code_max if q > 0 else fmt.code_min
        else:
            q = math.floor(_float32(q + 0.5)) if fmt.rounding == "half_up" else round(q)
            old = min(max(q + zero, fmt.code_min), fmt.code_max)
        pattern = (old & fmt.bit_mask) ^ mask
        new = (pattern ^ sign) - sign if fmt.signed else pattern
        result = float(new - zero)
        if scale is not None:
            result = _float32(result * scale)
        olds.append(old)
        news.append(new)
        faulty.append(result if new != old else value)
    return olds, news, faulty


_FLOAT32 = struct.Struct("f")


def _float32(value: float) -> float:
    """``value`` rounded to the nearest float32 (ties to even), as a Python float."""
    try:
        return _FLOAT32.unpack(_FLOAT32.pack(value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


@dataclass
class FaultRecord:
    """What a fault did to a tensor.

    Attributes:
        index: flat indices of the elements hit, int64 ``[k]``.
        old: their codes before the fault ``[k]``.
        new: their codes after the fault ``[k]`` (may equal ``old``, e.g. a bit stuck at its value).
        bit_sites: ``[m, 2]`` (element index, bit) pairs for bit-level models, or None.
    """

    index: torch.Tensor
    old: torch.Tensor
    new: torch.Tensor
    bit_sites: torch.Tensor | None = None

    @property
    def changed(self) -> torch.Tensor:
        """Boolean ``[k]``: which hit elements actually changed code."""
        return self.old != self.new


@functools.lru_cache(maxsize=512)
def resolve_bits(bits: tuple | None, fmt: NumberFormat) -> torch.Tensor:
    """Bit positions (int64, sorted, unique) allowed by a fault's ``bits`` field (read only)."""
    if bits is None:
        return torch.arange(fmt.bits, dtype=torch.int64)
    out = []
    for b in bits:
        pos = fmt.bits - 1 if b == "msb" else 0 if b == "lsb" else b
        if pos < 0:
            pos += fmt.bits
        if not 0 <= pos < fmt.bits:
            raise QFaultConfigError("bits", b, f"positions 0..{fmt.bits - 1} (or -1..-{fmt.bits}) for {fmt.name}")
        out.append(pos)
    return torch.tensor(sorted(set(out)), dtype=torch.int64)


def _group_bit_sites(elements: np.ndarray, bits: np.ndarray, values: np.ndarray | None = None):
    """Combine (element, bit) pairs, sorted by element, into one pattern per unique element
    (numpy in, numpy out): ``(elements, masks, stuck patterns or None)``."""
    el, weights = elements, np.left_shift(1, bits)
    stuck = None if values is None else weights * values
    if el.size > 1:
        first = np.empty(el.size, dtype=bool)
        first[0] = True
        np.not_equal(el[1:], el[:-1], out=first[1:])
        if not first.all():
            starts = np.flatnonzero(first)
            el, weights = el[starts], np.add.reduceat(weights, starts)
            stuck = None if stuck is None else np.add.reduceat(stuck, starts)
    return el, weights, stuck


def _bit_level(numel: int, fmt: NumberFormat, fault, gen: torch.Generator, *, p: float | None,
               count: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Random (element, bit) pairs sorted by element, as numpy int64 arrays."""
    allowed = resolve_bits(fault.bits, fmt)
    per_element = allowed.numel()
    population = numel * per_element
    if p is not None:
        flat = bernoulli_array(population, p, gen)
    else:
        if count > population:
            raise QFaultConfigError("count", count, f"at most {population} (bits available in the tensor)")
        flat = distinct_array(population, count, gen)
    if per_element & (per_element - 1) == 0:  # a power of two: shift and mask beat a division
        elements, bits = np.right_shift(flat, per_element.bit_length() - 1), np.bitwise_and(flat, per_element - 1)
    else:
        elements, bits = np.divmod(flat, per_element)
    if fault.bits is not None:
        bits = allowed.numpy()[bits]
    return elements, bits


def _pairs(elements: np.ndarray, bits: np.ndarray) -> torch.Tensor:
    sites = np.empty((elements.size, 2), dtype=np.int64)
    sites[:, 0], sites[:, 1] = elements, bits
    return torch.from_numpy(sites)


@torch.no_grad()
def draw_faults(fault: FaultModel, shape: torch.Size | tuple[int, ...], fmt: NumberFormat,
                generator: torch.Generator) -> FaultDraw:
    """Sample the faults of ``fault`` for a tensor of ``shape`` in ``fmt`` (on the CPU)."""
    shape = tuple(shape)
    numel = math.prod(shape)
    if isinstance(fault, BitFlip):
        if fault.sites is not None:
            sites = torch.tensor(fault.sites, dtype=torch.int64).view(-1, 2)
            bad = (sites[:, 0] >= numel) | (sites[:, 1] >= fmt.bits)
            if bool(bad.any()):
                raise QFaultConfigError("sites", tuple(sites[bad][0].tolist()),
                                        f"element < {numel} and bit < {fmt.bits}")
            sites = torch.unique(sites, dim=0).numpy()
            elements, bits = sites[:, 0].copy(), sites[:, 1].copy()
        else:
            elements, bits = _bit_level(numel, fmt, fault, gen=generator, p=fault.ber, count=fault.count)
        index, mask, _ = _group_bit_sites(elements, bits)
        return ArrayDraw(index, mask, elements, bits)
    if isinstance(fault, StuckAt):
        if fault.rate is None:
            stuck_mask = torch.as_tensor(fault.stuck_mask).reshape(-1).to("cpu", torch.int64)
            if stuck_mask.numel() != numel:
                raise QFaultConfigError("stuck_mask", tuple(torch.as_tensor(fault.stuck_mask).shape),
                                        f"a tensor with {numel} elements (the target's shape {shape})")
            stuck_value = torch.as_tensor(fault.stuck_value).reshape(-1).to("cpu", torch.int64)
            index = torch.nonzero(stuck_mask & fmt.bit_mask).view(-1)
            mask = stuck_mask[index] & fmt.bit_mask
            return FaultDraw(index, STUCK, mask, stuck_value[index] & mask)
        elements, bits = _bit_level(numel, fmt, fault, gen=generator, p=fault.rate / 100.0, count=None)
        ones = (torch.rand(elements.size, generator=generator, dtype=torch.float64) < fault.p_one).long().numpy()
        index, mask, value = _group_bit_sites(elements, bits, ones)
        return FaultDraw(torch.from_numpy(index), STUCK, torch.from_numpy(mask), torch.from_numpy(value),
                         _pairs(elements, bits))
    if isinstance(fault, (RandomValue, LSBFlip, MSBFlip, FullFlip)):
        index = bernoulli_positions(numel, fault.probability / 100.0, generator)
        return _element_draw(type(fault), index, fmt, generator)
    if isinstance(fault, HwPeriodic):
        index = hw_periodic_index(shape, fault, generator)
        kind = {"random_value": RandomValue, "lsb_flip": LSBFlip, "msb_flip": MSBFlip,
                "full_flip": FullFlip}[fault.strategy]
        return _element_draw(kind, index, fmt, generator)
    raise QFaultConfigError("fault", type(fault).__name__, "a registered fault model")  # pragma: no cover


def _element_draw(kind: type, index: torch.Tensor, fmt: NumberFormat, gen: torch.Generator) -> FaultDraw:
    k = index.numel()
    if kind is RandomValue:
        low, high = fmt.code_min, fmt.code_max
        operand = torch.randint(low, high + 1, (k,), generator=gen, dtype=torch.int64)
        return FaultDraw(index, RANDOM, torch.zeros(k, dtype=torch.int64), operand)
    pattern = {LSBFlip: 1, MSBFlip: 1 << (fmt.bits - 1), FullFlip: fmt.bit_mask}[kind]
    return FaultDraw(index, XOR, torch.full((k,), pattern, dtype=torch.int64))


def hw_periodic_pattern(fault: HwPeriodic, generator: torch.Generator) -> torch.Tensor:
    """The shuffled 0/1 pattern of ``frequency_value`` slots (bool, CPU)."""
    slots = fault.frequency_value
    ones = ceil_count(slots, fault.probability)
    pattern = torch.zeros(slots, dtype=torch.bool)
    pattern[torch.randperm(slots, generator=generator)[:ones]] = True
    return pattern


def hw_periodic_mask(shape: tuple[int, ...], pattern: torch.Tensor) -> torch.Tensor:
    """Lay the periodic pattern over a tensor of ``shape`` (bool mask, CPU). See docs/faults.md."""
    period = pattern.numel()
    if math.prod(shape) == 0:
        return torch.zeros(shape, dtype=torch.bool)
    if len(shape) == 4:
        batch, channels, height, width = shape
        if channels > period:
            per_pixel = pattern.repeat(-(-channels // period))[:channels]
            return per_pixel.view(1, channels, 1, 1).expand(shape).clone()
        if height == 1 and width == 1:
            return pattern[:channels].view(1, channels, 1, 1).expand(shape).clone()
        groups = period // channels
        position = torch.arange(batch * height * width).view(batch, height, width)
        start = (position % groups) * channels
        gathered = pattern[start.unsqueeze(-1) + torch.arange(channels)]  # [B, H, W, C]
        return gathered.permute(0, 3, 1, 2).contiguous()
    if len(shape) == 2:
        batch, width = shape
        row = pattern.repeat(-(-width // period))[:width]
        return row.view(1, width).expand(shape).clone()
    numel = math.prod(shape)
    return pattern.repeat(-(-numel // period))[:numel].view(shape)



def hw_periodic_index(shape: tuple[int, ...], fault: HwPeriodic, generator: torch.Generator) -> torch.Tensor:
    pattern = hw_periodic_pattern(fault, generator)
    return torch.nonzero(hw_periodic_mask(shape, pattern).reshape(-1)).view(-1)


def apply_to_codes(fmt: NumberFormat, codes: torch.Tensor, draw: FaultDraw) -> torch.Tensor:
    """New codes for the hit elements: ``codes`` are the old codes at ``draw.index`` ([k])."""
    if draw.op == XOR:
        return fmt.xor(codes, draw.mask.to(fmt.pattern_dtype))
    if draw.op == STUCK:
        return fmt.set_bits(codes, draw.mask.to(fmt.pattern_dtype), draw.value.to(fmt.pattern_dtype))
    # RANDOM: seed 001's modular addition over [code_min, code_max]
    low, size = fmt.code_min, fmt.code_max - fmt.code_min + 1
    shifted = torch.remainder(codes.to(torch.int64) + draw.value - low, size) + low
    return shifted.to(codes.dtype)


def _check_codes(x: torch.Tensor, fmt: NumberFormat) -> None:
    """Refuse integer tensors whose values are not bit patterns of ``fmt`` (any storable code)."""
    if x.numel() == 0:
        return
    low, high = fmt.storable_min, fmt.storable_max
    lo, hi = int(x.min()), int(x.max())
    if lo < low or hi > high:
        raise QFaultConfigError(
            "codes", f"[{lo}, {hi}]", f"codes in [{low}, {high}] for {fmt.name}",
            hint="the integer tensor does not fit the format's bit width",
        )


@torch.no_grad()
def corrupt(
    x: torch.Tensor,
    fmt: "NumberFormat | str" = "int8",
    fault: "FaultModel | str | dict" = "bit_flip",
    *,
    seed: int | None = None,
    scale: torch.Tensor | float | None = None,
    zero_point: torch.Tensor | int | None = None,
    axis: int | None = None,
    **fault_kwargs,
) -> tuple[torch.Tensor, FaultRecord]:
    """Apply a fault model to a tensor viewed in a number format.

    An integer tensor is taken as codes of ``fmt``. A float tensor is viewed through ``fmt``:
    for int/fixed formats with ``scale``/``zero_point`` (per tensor, or per channel along
    ``axis``; calibrated from ``x`` when omitted), for IEEE formats through its raw bits.
    Only hit elements whose code changes get a new value (the dequantized faulty code);
    every other element is returned unchanged. Runs on ``x``'s device.

    Args:
        x: the tensor (any shape, CPU or CUDA).
        fmt: a format object or name (``"int8"``, ``"float16"``...).
        fault: a fault model, its registered name (with ``fault_kwargs``) or a dict.
        seed: fixes every draw; the same seed gives the same faults on any device.

    Returns:
        ``(faulty, record)``: a new tensor like ``x`` and the :class:`FaultRecord`.

    Raises:
        QFaultConfigError: unknown names, out-of-range parameters, codes outside the format.

    Example:
        >>> codes = torch.zeros(4, dtype=torch.int8)
        >>> faulty, record = corrupt(codes, "int8", "bit_flip", sites=((2, 7),), seed=0)
        >>> faulty.tolist()
        [0, 0, -128, 0]
    """
    fmt = get_format(fmt)
    fault = get_fault(fault, **fault_kwargs)
    generator = make_generator(("corrupt", seed)) if seed is not None else make_generator(None)
    draw = draw_faults(fault, x.shape, fmt, generator).to(x.device)
    return apply_draw(x, fmt, draw, scale=scale, zero_point=zero_point, axis=axis)


def apply_draw(x: torch.Tensor, fmt: NumberFormat, draw: FaultDraw, *, scale=None, zero_point=None,
               axis: int | None = None, check: bool = True) -> tuple[torch.Tensor, FaultRecord]:
    """Apply a drawn fault to ``x`` (codes or floats); returns a new tensor and the record."""
    flat = x.reshape(-1)
    index = draw.index
    if x.numel() == 0 or index.numel() == 0:
        if check and not x.is_floating_point():
            _check_codes(x, fmt)
        empty = index.new_empty(0)
        codes = torch.empty(0, dtype=fmt.code_dtype, device=x.device)
        return x.clone(), FaultRecord(empty, codes, codes.clone(), draw.bit_sites)
    if not x.is_floating_point():
        if check:
            _check_codes(x, fmt)
        old = flat[index].to(fmt.code_dtype)
        new = apply_to_codes(fmt, old, draw)
        out = flat.clone()
        out[index] = new.to(x.dtype)
        return out.view_as(x), FaultRecord(index, old, new, draw.bit_sites)
    values = flat[index]
    if isinstance(fmt, IntFormat):
        if scale is None:
            scale, zero_point = calibrate(fmt, x, axis)
        scale, zero_point = _param_at(scale, x, axis, index), _param_at(zero_point, x, axis, index)
    else:
        scale = zero_point = None
    old, new, faulty = fault_values(fmt, values, draw, scale, zero_point)
    out = flat.clone()
    out[index] = faulty
    return out.view_as(x), FaultRecord(index, old, new, draw.bit_sites)


def fault_values(fmt: NumberFormat, values: torch.Tensor, draw: FaultDraw, scale=None, zero_point=None,
                 finite: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Faulted values of the hit elements ``values`` ([k] floats, ``draw`` order).

    ``scale``/``zero_point`` are per hit element (or scalars). Returns ``(old codes, new codes,
    faulty values)``; a value whose code does not change is returned unchanged. In int and
    fixed-point formats NaN/inf have no code and stay as they are (``finite=True`` skips that check
    when the caller knows); IEEE formats flip their bits like any other.
    """
    if isinstance(fmt, FloatFormat):
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


def _scalar(param) -> float | int | None:
    """A per-tensor parameter as a Python number (None: not per tensor)."""
    if param is None or isinstance(param, (int, float)):
        return param
    if isinstance(param, torch.Tensor) and param.numel() == 1 and param.device.type == "cpu":
        return param.item()
    return None


def xor_values_numpy(fmt: IntFormat, values: np.ndarray, mask: np.ndarray, scale=None, zero=None):
    """The tensor codec of :func:`fault_values` for XOR faults on finite float32 ``values``, in
    numpy: ``(old codes int32, new codes int32, faulty float32)``, bit-identical to the torch path.

    ``scale`` is None, a number or a float32 array per value; ``zero`` None, a number or an
    array per value (zero points are small integers, exact in float32).
    """
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
    if fmt.rounding == "half_up":
        q = np.floor(q + np.float32(0.5))
    else:
        q = np.rint(q, out=None if q is values else q)
    if zero is not None:
        q += zero
    # clamp (np.clip's wrapper costs more than the two ufuncs)
    np.minimum(np.maximum(q, np.float32(fmt.code_min), out=q), np.float32(fmt.code_max), out=q)
    old = q.astype(np.int32)
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


def _param_at(param, x: torch.Tensor, axis: int | None, index: torch.Tensor):
    """The per-element value of a scale/zero point at flat ``index`` of ``x``."""
    if isinstance(param, torch.Tensor):
        param = param.to(x.device)
    return gather_param(param, tuple(x.shape), index, axis)
