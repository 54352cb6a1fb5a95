"""Drawing faults: which elements of a tensor are hit and what happens to each, in O(#faults).

A sampler is registered per fault model type (:func:`register_sampler`); :func:`draw_faults`
dispatches through that registry, so a new fault model brings its own sampler and needs no edit
here. Every draw uses a seeded CPU ``torch.Generator``; indices move to the target device
afterwards, so the same seed gives the same faults on CPU and CUDA. Draws make tensors from
generators only (nothing autograd records), so they need no ``no_grad`` context of their own.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .._errors import QFaultConfigError
from ..formats import NumberFormat
from ._codec import RANDOM, STUCK, XOR
from ._layout import lbi_to_site, to_torch_index
from ._models import (
    BitFlip, FaultModel, FullFlip, HwPeriodic, LSBFlip, MSBFlip, PlaneBitFlip, RandomValue, RegionBitFlip, StuckAt,
)
from ._sampling import bernoulli_array, bernoulli_positions, ceil_count, distinct_array, nested_bernoulli_array


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

    @staticmethod
    def join(draws: list["FaultDraw"], offsets: list[int]) -> "FaultDraw":
        """Draws of one operation over consecutive ranges of one index space, each shifted by its
        range's start: the draw of the whole space (sorted where each draw is and the ranges
        ascend). CPU numpy draws stay numpy."""
        if len(draws) == 1 and offsets[0] == 0:
            return draws[0]
        if all(isinstance(d, ArrayDraw) for d in draws):
            starts = np.asarray(offsets, dtype=np.int64)
            index = np.concatenate([d.arrays[0] for d in draws])
            index += np.repeat(starts, [len(d.arrays[0]) for d in draws])
            elements = np.concatenate([d.pairs[0] for d in draws])
            elements += np.repeat(starts, [len(d.pairs[0]) for d in draws])
            return ArrayDraw(index, np.concatenate([d.arrays[1] for d in draws]), elements,
                             np.concatenate([d.pairs[1] for d in draws]))
        return FaultDraw.cat([d.offset(off) if off else d for d, off in zip(draws, offsets)])


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
        self.arrays, self.pairs, self._tensors = (index, mask), (elements, bits), None

    def _build(self):
        return torch.from_numpy(self.arrays[0]), torch.from_numpy(self.arrays[1]), _pairs(*self.pairs)

    def __len__(self) -> int:
        return len(self.arrays[0])


@functools.lru_cache(maxsize=512)
def resolve_bits(bits: tuple | None, fmt: NumberFormat) -> torch.Tensor:
    """Bit positions (int64, sorted, unique) allowed by a fault's ``bits`` field (read only)."""
    if bits is None:
        return torch.arange(fmt.bits, dtype=torch.int64)
    out = []
    for b in bits:
        if isinstance(b, str) and b not in ("msb", "lsb"):  # a named bit region of the format
            region = fmt.region_bits(b)
            if not region:
                raise QFaultConfigError("bits", b, "a bit region with at least one bit in " + fmt.name,
                                        hint="regions: " + ", ".join(f"{k}={len(v)} bits"
                                                                     for k, v in fmt.bit_regions().items()))
            out.extend(region)
            continue
        pos = fmt.bits - 1 if b == "msb" else 0 if b == "lsb" else b
        if pos < 0:
            pos += fmt.bits
        if not 0 <= pos < fmt.bits:
            raise QFaultConfigError("bits", b, f"positions 0..{fmt.bits - 1} (or -1..-{fmt.bits}) for {fmt.name}")
        out.append(pos)
    return torch.tensor(sorted(set(out)), dtype=torch.int64)


def group_bit_sites(elements: np.ndarray, bits: np.ndarray, values: np.ndarray | None = None):
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
    if p is not None and getattr(fault, "exact", False):
        flat = distinct_array(population, int(population * p), gen)  # exactly floor(n * p) bits
    elif p is not None:
        nested = getattr(fault, "nested", False)
        flat = (nested_bernoulli_array if nested else bernoulli_array)(population, p, gen)
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




# -- samplers, registered per fault type -----------------------------------------------------

Sampler = Callable[[FaultModel, tuple, NumberFormat, torch.Generator], FaultDraw]
#: fault model type -> ``fn(fault, shape, fmt, generator) -> FaultDraw``
SAMPLERS: dict[type, Sampler] = {}
#: fault model type -> ``fn(fault, shape, fmt, generator) -> FaultDraw | None``: a vectorized
#: draw of independent faults per image (dim 0), or None where the generic per-image loop applies
PER_IMAGE_SAMPLERS: dict[type, Callable] = {}


def register_sampler(fault_type: type, *, per_image: Callable | None = None):
    """Decorator registering the sampler of ``fault_type`` (and optionally its per-image one)."""

    def wrap(fn: Sampler) -> Sampler:
        SAMPLERS[fault_type] = fn
        if per_image is not None:
            PER_IMAGE_SAMPLERS[fault_type] = per_image
        return fn

    return wrap


def _lookup(table: dict, fault: FaultModel):
    for cls in type(fault).__mro__:
        if cls in table:
            return table[cls]
    return None



def _bit_flip_sites(fault: BitFlip, numel: int, fmt: NumberFormat) -> tuple[np.ndarray, np.ndarray]:
    sites = torch.tensor(fault.sites, dtype=torch.int64).view(-1, 2)
    bad = (sites[:, 0] >= numel) | (sites[:, 1] >= fmt.bits)
    if bool(bad.any()):
        raise QFaultConfigError("sites", tuple(sites[bad][0].tolist()), f"element < {numel} and bit < {fmt.bits}")
    sites = torch.unique(sites, dim=0).numpy()
    return sites[:, 0].copy(), sites[:, 1].copy()


def _stuck_explicit(fault: StuckAt, shape: tuple, numel: int, fmt: NumberFormat) -> FaultDraw:
    stuck_mask = torch.as_tensor(fault.stuck_mask).reshape(-1).to("cpu", torch.int64)
    if stuck_mask.numel() != numel:
        raise QFaultConfigError("stuck_mask", tuple(torch.as_tensor(fault.stuck_mask).shape),
                                f"a tensor with {numel} elements (the target's shape {shape})")
    stuck_value = torch.as_tensor(fault.stuck_value).reshape(-1).to("cpu", torch.int64)
    index = torch.nonzero(stuck_mask & fmt.bit_mask).view(-1)
    mask = stuck_mask[index] & fmt.bit_mask
    return FaultDraw(index, STUCK, mask, stuck_value[index] & mask)


def _element_draw(kind: type, index: torch.Tensor, fmt: NumberFormat, gen: torch.Generator) -> FaultDraw:
    k = index.numel()
    if kind is RandomValue:
        low, high = fmt.code_min, fmt.code_max
        operand = torch.randint(low, high + 1, (k,), generator=gen, dtype=torch.int64)
        return FaultDraw(index, RANDOM, torch.zeros(k, dtype=torch.int64), operand)
    pattern = {LSBFlip: 1, MSBFlip: 1 << (fmt.bits - 1), FullFlip: fmt.bit_mask}[kind]
    return FaultDraw(index, XOR, torch.full((k,), pattern, dtype=torch.int64))


#: a flip per image in a batch of at most this many images is drawn as a :class:`ScalarDraw`
SCALAR_FAULTS = 4


def _bit_flip_per_image(fault: BitFlip, shape: tuple, fmt: NumberFormat, gen: torch.Generator) -> FaultDraw | None:
    """``BitFlip(count=c)`` in each image: one draw of ``batch x c`` integers, rows with a
    repeated site redrawn whole (uniform over distinct tuples). None for other BitFlips or
    where ``c`` is too large a share of an image for rejection."""
    if fault.count is None or fault.bits is not None:
        return None
    batch, per_image = shape[0], math.prod(shape[1:])
    population = per_image * fmt.bits
    if fault.count == 1:
        picks = torch.randint(population, (batch,), generator=gen, dtype=torch.int64)
        if batch <= SCALAR_FAULTS:  # a few Python ints cost less than any array operation
            elements, bits = [], []
            for image, pick in enumerate(picks.tolist()):  # at most SCALAR_FAULTS images
                element, bit = divmod(pick, fmt.bits)
                elements.append(image * per_image + element)
                bits.append(bit)
            return ScalarDraw(elements, bits)
        elements, bits = np.divmod(picks.numpy(), fmt.bits)
        if batch > 1:
            elements += np.arange(0, batch * per_image, per_image, dtype=np.int64)
        return ArrayDraw(elements, np.left_shift(1, bits), elements, bits)
    if fault.count * fault.count * 4 > population:
        return None
    picks = torch.randint(population, (batch, fault.count), generator=gen)
    if fault.count > 1:
        while True:
            picks = picks.sort(dim=1).values
            bad = (picks[:, 1:] == picks[:, :-1]).any(dim=1)
            if not bool(bad.any()):
                break
            picks[bad] = torch.randint(population, (int(bad.sum()), fault.count), generator=gen)
    elements = (picks // fmt.bits + torch.arange(batch).unsqueeze(1) * per_image).reshape(-1).numpy()
    bits = (picks % fmt.bits).reshape(-1).numpy()
    index, mask, _ = group_bit_sites(elements, bits)
    return ArrayDraw(index, mask, elements, bits)


@register_sampler(BitFlip, per_image=_bit_flip_per_image)
def _sample_bit_flip(fault: BitFlip, shape: tuple, fmt: NumberFormat, gen: torch.Generator) -> FaultDraw:
    numel = math.prod(shape)
    if fault.sites is not None:
        elements, bits = _bit_flip_sites(fault, numel, fmt)
    else:
        elements, bits = _bit_level(numel, fmt, fault, gen=gen, p=fault.ber, count=fault.count)
    index, mask, _ = group_bit_sites(elements, bits)
    return ArrayDraw(index, mask, elements, bits)


def _layout_pairs(elements: np.ndarray, bits: np.ndarray, shape: tuple, layout: str) -> FaultDraw:
    """(element, bit) pairs with elements in ``layout`` order as a draw of the PyTorch tensor."""
    elements = to_torch_index(elements, shape, layout)
    order = np.lexsort((bits, elements))
    elements, bits = elements[order], bits[order]
    index, mask, _ = group_bit_sites(elements, bits)
    return ArrayDraw(index, mask, elements, bits)


@register_sampler(PlaneBitFlip)
def _sample_planes(fault: PlaneBitFlip, shape: tuple, fmt: NumberFormat, gen: torch.Generator) -> FaultDraw:
    numel = math.prod(shape)
    count = fault.faults_in(numel, fmt.bits)
    if count > numel * fmt.bits:
        raise QFaultConfigError("count", count, f"at most {numel * fmt.bits} (the bits of {numel} elements of "
                                f"{fmt.bits} bits)")
    faults = np.arange(count, dtype=np.int64)
    bits, elements = np.divmod(faults, max(numel, 1))
    return _layout_pairs(elements, bits, shape, fault.layout)


@register_sampler(RegionBitFlip)
def _sample_regions(fault: RegionBitFlip, shape: tuple, fmt: NumberFormat, gen: torch.Generator) -> FaultDraw:
    numel = math.prod(shape)
    population = numel * fmt.bits
    if numel == 0:  # an empty tensor (an empty batch) has nothing to fault
        return _layout_pairs(np.empty(0, np.int64), np.empty(0, np.int64), shape, fault.layout)
    chosen = []
    for i, (start, end, ber) in enumerate(fault.regions):
        if end >= population:
            raise QFaultConfigError(f"regions[{i}].end_lbi", end, f"at most {population - 1}: LBIs 0..{population - 1} "
                                    f"number the {fmt.bits} bits of each of the {numel} elements")
        length = end - start + 1
        hits = int(length * ber)
        picked = np.arange(length, dtype=np.int64) if hits == length else distinct_array(length, hits, gen)
        chosen.append(picked + start)
    lbis = np.unique(np.concatenate(chosen))
    elements, bits = lbi_to_site(lbis, fmt.bits)
    return _layout_pairs(elements, bits, shape, fault.layout)


@register_sampler(StuckAt)
def _sample_stuck_at(fault: StuckAt, shape: tuple, fmt: NumberFormat, gen: torch.Generator) -> FaultDraw:
    numel = math.prod(shape)
    if fault.rate is None:
        return _stuck_explicit(fault, shape, numel, fmt)
    elements, bits = _bit_level(numel, fmt, fault, gen=gen, p=fault.rate / 100.0, count=None)
    ones = (torch.rand(elements.size, generator=gen, dtype=torch.float64) < fault.p_one).long().numpy()
    index, mask, value = group_bit_sites(elements, bits, ones)
    return FaultDraw(torch.from_numpy(index), STUCK, torch.from_numpy(mask), torch.from_numpy(value),
                     _pairs(elements, bits))


def _sample_element(fault, shape: tuple, fmt: NumberFormat, gen: torch.Generator) -> FaultDraw:
    index = bernoulli_positions(math.prod(shape), fault.probability / 100.0, gen)
    return _element_draw(type(fault), index, fmt, gen)


for _kind in (RandomValue, LSBFlip, MSBFlip, FullFlip):
    register_sampler(_kind)(_sample_element)

_STRATEGIES = {"random_value": RandomValue, "lsb_flip": LSBFlip, "msb_flip": MSBFlip, "full_flip": FullFlip}


@register_sampler(HwPeriodic)
def _sample_hw_periodic(fault: HwPeriodic, shape: tuple, fmt: NumberFormat, gen: torch.Generator) -> FaultDraw:
    index = hw_periodic_index(shape, fault, gen)
    return _element_draw(_STRATEGIES[fault.strategy], index, fmt, gen)


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


def draw_faults(fault: FaultModel, shape: torch.Size | tuple[int, ...], fmt: NumberFormat,
                generator: torch.Generator) -> FaultDraw:
    """Sample the faults of ``fault`` for a tensor of ``shape`` in ``fmt`` (on the CPU)."""
    sampler = _lookup(SAMPLERS, fault)
    if sampler is None:
        raise QFaultConfigError("fault", type(fault).__name__, "a fault model with a registered sampler")
    return sampler(fault, tuple(shape), fmt, generator)


def draw_per_image(fault: FaultModel, shape: tuple[int, ...], fmt: NumberFormat,
                   generator: torch.Generator) -> FaultDraw:
    """Independent draws of ``fault`` for each image of a batch (dim 0 of ``shape``)."""
    shape = tuple(shape)
    fast = _lookup(PER_IMAGE_SAMPLERS, fault)
    draw = fast(fault, shape, fmt, generator) if fast is not None else None
    if draw is not None:
        return draw
    batch, per_image = shape[0], math.prod(shape[1:])
    return FaultDraw.cat([draw_faults(fault, shape[1:], fmt, generator).offset(b * per_image) for b in range(batch)])

