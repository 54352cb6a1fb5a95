"""Fault models: frozen, validated descriptions of what happens to the bits of a value.

Units: ``ber`` is a fraction in [0, 1] (per bit); ``probability`` and ``rate`` are percentages in
[0, 100] (per element for the element models of seed 001, per bit for stuck-at as in seed 000).
The models hold data and declare capabilities; their samplers are registered per type in
``_draw.py`` and the arithmetic of faulted values lives in ``_codec.py``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar

from .._config import from_dict, to_dict
from .._errors import QFaultConfigError, check_choice, check_range
from .._registry import Registry
from ._layout import LAYOUTS

FAULTS: Registry = Registry("fault")

BIT_ALIASES = ("msb", "lsb")


@functools.lru_cache(maxsize=1)
def region_names() -> tuple[str, ...]:
    """Bit region names some registered format has (``sign``, ``integer``, ``fraction``, ...)."""
    from ..formats import FORMATS

    names: list[str] = []
    for name in FORMATS.list():
        names.extend(r for r in FORMATS.get(name)().bit_regions() if r not in names)
    return tuple(names)


def _check_bits(value: Any) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, (int, str)):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not value:
        raise QFaultConfigError("bits", value, "None or a non-empty list of bit positions, 'msb', 'lsb' or "
                                "bit region names")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, str)) or (
                isinstance(item, str) and item not in BIT_ALIASES + region_names()):
            raise QFaultConfigError("bits", item, "a bit position (0 = LSB, -1 = MSB), 'msb', 'lsb' or a bit "
                                    "region (" + ", ".join(region_names()) + ")")
    return tuple(value)


class FaultModel:
    """Base class of the registered fault models.

    Besides their data, fault models declare what the injection runtime may assume of them:
    ``permanent_by_default``, :attr:`groupable` and :meth:`expected_faults`.
    """

    type_name: ClassVar[str] = ""
    #: Stuck-at faults are permanent by default; the others are transient.
    permanent_by_default: ClassVar[bool] = False
    #: what happens to a hit element's code: ``"xor"`` (invert mask bits), ``"stuck"`` (force
    #: mask bits to values) or ``"random"`` (modular add over the code range)
    op: ClassVar[str] = "xor"

    @property
    def seeded(self) -> bool:
        """Whether the faults drawn depend on the seed (False for deterministic patterns)."""
        return True

    @property
    def groupable(self) -> bool:
        """Whether one draw over several tensors joined end to end has the distribution of
        independent draws per tensor (true of per-bit and per-element Bernoulli faults), so the
        tensors of one spec may be drawn and faulted together."""
        return False

    def expected_faults(self, numel: int, bits: int) -> float:
        """Expected number of hit bits (bit-level models) or elements in ``numel`` values of
        ``bits`` bits each."""
        raise NotImplementedError  # pragma: no cover - every registered model defines it

    def to_dict(self) -> dict:
        return to_dict(self)


def register_fault(name: str, aliases: tuple[str, ...] = ()):
    """Class decorator registering a fault model under ``name`` (usable from YAML)."""

    def wrap(cls):
        cls.type_name = name
        FAULTS.register(name, cls, aliases=aliases)
        return cls

    return wrap


@register_fault("bit_flip", aliases=("bitflip", "ber", "seu"))
@dataclass(frozen=True)
class BitFlip(FaultModel):
    """Invert bits. Exactly one of ``ber``, ``count`` or ``sites``.

    Args:
        ber: probability that each bit flips, a fraction in [0, 1].
        count: exact number of distinct bits to flip (per image when injected per image).
        sites: explicit ``(flat element index, bit)`` pairs.
        bits: restrict to these bit positions (0 = LSB, negative from the MSB, ``"msb"``,
            ``"lsb"``, or bit region names of the format such as ``"sign"``, ``"integer"``,
            ``"fraction"``, ``"exponent"``, ``"mantissa"``); ``None`` means every bit.
        nested: with ``ber``, draw so that for one seed the bits flipped at a lower BER are a
            subset of those flipped at a higher one (same per-bit Bernoulli distribution, a
            different stream; see docs/faults.md). Sweeps over BER then differ only by the
            added faults.
        exact: with ``ber``, flip exactly ``floor(n * ber)`` distinct bits of the ``n`` a tensor
            has (FKeras' random mask) instead of each bit independently.
    """

    ber: float | None = None
    count: int | None = None
    sites: tuple[tuple[int, int], ...] | None = None
    bits: tuple[int | str, ...] | None = None
    nested: bool = False
    exact: bool = False

    def __post_init__(self) -> None:
        given = [n for n in ("ber", "count", "sites") if getattr(self, n) is not None]
        if len(given) != 1:
            raise QFaultConfigError(
                "bit_flip", given or None, "exactly one of ber, count or sites",
                hint="e.g. BitFlip(ber=1e-3) or BitFlip(count=1)",
            )
        if self.ber is not None:
            check_range("ber", self.ber, 0.0, 1.0)
        for flag in ("nested", "exact"):
            if not isinstance(getattr(self, flag), bool):
                raise QFaultConfigError(flag, getattr(self, flag), "True or False")
            if getattr(self, flag) and self.ber is None:
                raise QFaultConfigError(flag, True, "False unless ber is given")
        if self.nested and self.exact:
            raise QFaultConfigError("exact", True, "False with nested=True (an exact count per BER cannot nest)")
        if self.count is not None:
            check_range("count", self.count, 0, 2**62, integer=True)
        if self.sites is not None and self.bits is not None:
            raise QFaultConfigError("bits", self.bits, "None when sites are given (each site names its bit)")
        if self.sites is not None:
            sites = tuple(tuple(s) for s in self.sites)
            for site in sites:
                if len(site) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in site):
                    raise QFaultConfigError("sites", site, "pairs of non-negative (element index, bit)")
            object.__setattr__(self, "sites", sites)
        object.__setattr__(self, "bits", _check_bits(self.bits))

    @property
    def groupable(self) -> bool:
        return self.ber is not None and not self.exact  # an exact count is per tensor

    def to_dict(self) -> dict:
        out = super().to_dict()
        for flag in ("nested", "exact"):  # newer fields: absent at their default, so older dicts stay as they were
            if not out[flag]:
                del out[flag]
        return out

    def expected_faults(self, numel: int, bits: int) -> float:
        if self.exact:
            return float(int(numel * bits * self.ber))
        if self.ber is not None:
            return numel * bits * self.ber
        return float(self.count if self.count is not None else len(self.sites))


def _check_layout(layout: str) -> None:
    check_choice("layout", layout, LAYOUTS)


@register_fault("bit_flip_planes", aliases=("bit_flip_deterministic", "planes"))
@dataclass(frozen=True)
class PlaneBitFlip(FaultModel):
    """FKeras' deterministic faults: the first ``k`` bits in bit-plane-major order. Fault ``f``
    flips bit ``f // n`` (0 = LSB) of element ``f % n``: bit 0 of every element first, then bit 1,
    and so on. ``k = int(n * bits * ber)`` or ``count``.

    Args:
        ber: share of the tensor's bits, a fraction in [0, 1].
        count: number of bits instead.
        layout: element order the faults follow: ``"torch"`` (the tensor's own) or ``"keras"``
            (Keras kernel layout: Linear ``(in, out)``, Conv ``(*kernel, in, out)``).
    """

    ber: float | None = None
    count: int | None = None
    layout: str = "torch"

    def __post_init__(self) -> None:
        if (self.ber is None) == (self.count is None):
            raise QFaultConfigError("bit_flip_planes", None, "exactly one of ber or count")
        if self.ber is not None:
            check_range("ber", self.ber, 0.0, 1.0)
        if self.count is not None:
            check_range("count", self.count, 0, 2**62, integer=True)
        _check_layout(self.layout)

    @property
    def seeded(self) -> bool:
        return False

    def faults_in(self, numel: int, bits: int) -> int:
        """``k`` for a tensor of ``numel`` values of ``bits`` bits."""
        return self.count if self.count is not None else int(numel * bits * self.ber)

    def expected_faults(self, numel: int, bits: int) -> float:
        return float(min(self.faults_in(numel, bits), numel * bits))


def _check_region(i: int, region) -> tuple[int, int, float]:
    if isinstance(region, dict):
        region = (region.get("start_lbi"), region.get("end_lbi"), region.get("ber", 1.0))
    if not isinstance(region, (tuple, list)) or len(region) not in (2, 3):
        raise QFaultConfigError(f"regions[{i}]", region, "(start_lbi, end_lbi, ber) or {start_lbi, end_lbi, ber}")
    start, end, ber = (tuple(region) + (1.0,))[:3]
    check_range(f"regions[{i}].start_lbi", start, 0, 2**62, integer=True)
    check_range(f"regions[{i}].end_lbi", end, 0, 2**62, integer=True)
    if end < start:
        raise QFaultConfigError(f"regions[{i}].end_lbi", end, f"at least start_lbi ({start}): a region is "
                                "[start_lbi, end_lbi], both included")
    check_range(f"regions[{i}].ber", ber, 0.0, 1.0)
    return int(start), int(end), float(ber)


@register_fault("bit_flip_regions", aliases=("regions", "lbi_regions"))
@dataclass(frozen=True)
class RegionBitFlip(FaultModel):
    """Faulty layer bit regions (FKeras ``FaultyLayerBitRegion``): in each region of layer bit
    indices ``[start_lbi, end_lbi]`` (both included), ``int(length * ber)`` distinct LBIs
    flip, drawn uniformly (``ber = 1``: every bit of the region). LBI ``l`` is bit
    ``bits - 1 - l % bits`` of element ``l // bits`` (LBI 0: the sign bit of element 0).
    Overlapping regions flip a bit once.

    Args:
        regions: ``(start_lbi, end_lbi, ber)`` triples (or dicts with those keys).
        layout: element order of the LBIs: ``"torch"`` or ``"keras"`` (see :class:`PlaneBitFlip`).
    """

    regions: tuple = ()
    layout: str = "torch"

    def __post_init__(self) -> None:
        if not isinstance(self.regions, (tuple, list)) or not self.regions:
            raise QFaultConfigError("regions", self.regions, "a non-empty list of (start_lbi, end_lbi, ber)")
        object.__setattr__(self, "regions", tuple(_check_region(i, r) for i, r in enumerate(self.regions)))
        _check_layout(self.layout)

    @property
    def seeded(self) -> bool:
        return any(0 < int((end - start + 1) * ber) < end - start + 1 for start, end, ber in self.regions)

    def expected_faults(self, numel: int, bits: int) -> float:
        return float(sum(int((end - start + 1) * ber) for start, end, ber in self.regions))


@register_fault("stuck_at", aliases=("stuckat", "saf"))
@dataclass(frozen=True)
class StuckAt(FaultModel):
    """Bits stuck at 0 or 1 (permanent until reset). Either ``rate`` or explicit masks.

    Args:
        rate: percentage in [0, 100]: each bit is stuck with probability ``rate / 100``.
        p_one: probability that a stuck bit is stuck at 1 (seed 000 uses 0.5).
        stuck_mask: explicit integer tensor of bit patterns, one per element (shape of the
            target): set bits are stuck.
        stuck_value: integer tensor of the same shape: the values the stuck bits hold.
        bits: restrict random stuck bits to these positions (as in :class:`BitFlip`).
    """

    rate: float | None = None
    p_one: float = 0.5
    stuck_mask: Any = None
    stuck_value: Any = None
    bits: tuple[int | str, ...] | None = None

    permanent_by_default: ClassVar[bool] = True
    op: ClassVar[str] = "stuck"

    def __post_init__(self) -> None:
        explicit = self.stuck_mask is not None or self.stuck_value is not None
        if (self.rate is None) == (not explicit):
            raise QFaultConfigError(
                "stuck_at", self.rate, "either rate (percent) or stuck_mask and stuck_value"
            )
        if explicit and (self.stuck_mask is None or self.stuck_value is None):
            raise QFaultConfigError("stuck_value" if self.stuck_value is None else "stuck_mask",
                                    None, "an integer tensor (both masks are needed)")
        if self.rate is not None:
            check_range("rate", self.rate, 0.0, 100.0)
        check_range("p_one", self.p_one, 0.0, 1.0)
        object.__setattr__(self, "bits", _check_bits(self.bits))

    def __hash__(self) -> int:  # tensors are not hashable
        return id(self)

    @property
    def groupable(self) -> bool:
        return self.rate is not None

    def expected_faults(self, numel: int, bits: int) -> float:
        if self.rate is not None:
            return numel * bits * self.rate / 100.0
        return float(numel)  # explicit masks: at most every element


@dataclass(frozen=True)
class _ElementFault(FaultModel):
    """An element is hit with ``probability`` percent; how it changes depends on the model."""

    probability: float = 5.0

    def __post_init__(self) -> None:
        check_range("probability", self.probability, 0.0, 100.0)

    @property
    def groupable(self) -> bool:
        return True

    def expected_faults(self, numel: int, bits: int) -> float:
        return numel * self.probability / 100.0


@register_fault("random_value", aliases=("random",))
@dataclass(frozen=True)
class RandomValue(_ElementFault):
    """Seed 001 ``random``: ``y = ((x + r - min) mod R) + min`` with ``r`` uniform on the code range.

    The result is uniform over ``[code_min, code_max]`` and independent of ``x``.
    """

    op: ClassVar[str] = "random"


@register_fault("lsb_flip")
@dataclass(frozen=True)
class LSBFlip(_ElementFault):
    """Flip bit 0 of each hit element."""


@register_fault("msb_flip")
@dataclass(frozen=True)
class MSBFlip(_ElementFault):
    """Flip the top bit (the sign bit of a two's-complement code) of each hit element."""


@register_fault("full_flip")
@dataclass(frozen=True)
class FullFlip(_ElementFault):
    """Flip every bit of each hit element (bitwise NOT within the format's width)."""


HW_STRATEGIES = ("random_value", "lsb_flip", "msb_flip", "full_flip")


@register_fault("hw_periodic", aliases=("hw_mask",))
@dataclass(frozen=True)
class HwPeriodic(FaultModel):
    """Seed 001 ``hw_mask``: a periodic pattern over ``frequency_value`` parallel MAC units.

    A pattern of ``frequency_value`` slots with ``ceil(frequency_value * probability / 100)`` hit
    slots (shuffled) is laid over the activation so the same positions repeat with that period
    (layout rules in ``docs/faults.md``). Hit elements change as ``strategy`` says.
    """

    probability: float = 5.0
    frequency_value: int = 1024
    strategy: str = "random_value"

    def __post_init__(self) -> None:
        check_range("probability", self.probability, 0.0, 100.0)
        check_range("frequency_value", self.frequency_value, 1, 2**31, integer=True)
        strategy = "random_value" if self.strategy == "random" else self.strategy
        check_choice("strategy", strategy, HW_STRATEGIES)
        object.__setattr__(self, "strategy", strategy)

    def expected_faults(self, numel: int, bits: int) -> float:
        return numel * self.probability / 100.0

    @property
    def op(self) -> str:  # type: ignore[override]
        return "random" if self.strategy == "random_value" else "xor"


def get_fault(spec: "str | dict | FaultModel", **kwargs) -> FaultModel:
    """Resolve a fault model from a name plus keyword arguments, a dict, or an object.

    Example:
        >>> get_fault("bit_flip", ber=1e-3)
        BitFlip(ber=0.001, count=None, sites=None, bits=None, nested=False, exact=False)
    """
    if isinstance(spec, FaultModel):
        return spec
    if isinstance(spec, dict):
        return from_dict(FAULTS, spec)
    return FAULTS.get(spec)(**kwargs)


def list_faults(pattern: str = "*") -> list[str]:
    """Registered fault model names."""
    return FAULTS.list(pattern)
