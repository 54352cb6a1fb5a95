"""Integer formats: two's complement and unsigned codes, 1 to 16 bits, with scale and zero point.

``value = (code - zero_point) * scale``; ``code = clamp(round(x / scale) + zero_point)``. Scale
and zero point are per tensor (a number or one-element tensor) or per channel (a 1-D tensor
with ``axis``). This covers Brevitas integer quantizers, LSQ (seed 004) and the range-based
quantizer of seed 000 (``rounding="half_up"``, ``range="narrow"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._errors import QFaultConfigError, check_choice
from ._base import NumberFormat, broadcast_param

ROUNDINGS = ("half_even", "half_up", "half_away")
RANGES = ("full", "narrow")


def round_codes(x: torch.Tensor, rounding: str) -> torch.Tensor:
    """Round to integers: ``half_even`` (torch.round), ``half_up`` (floor(x + 0.5)) or
    ``half_away`` (ties away from zero: sign(x) * floor(|x| + 0.5), as QKeras' auto-scaled
    quantizers round)."""
    if rounding == "half_away":
        return x.abs().add_(0.5).floor_().copysign_(x)
    if rounding == "half_up":
        return torch.floor(x + 0.5)
    return torch.round(x)


@dataclass(frozen=True)
class IntFormat(NumberFormat):
    """A ``bits``-bit integer code, two's complement when ``signed``.

    Args:
        bits: code width, 1 to 16.
        signed: two's complement codes if True, else unsigned ``0 .. 2**bits - 1``.
        rounding: ``"half_even"`` (torch.round), ``"half_up"`` (floor(x + 0.5)) or
            ``"half_away"`` (ties away from zero).
        range: ``"full"`` clamps to ``[-2**(b-1), 2**(b-1) - 1]``; ``"narrow"`` to
            ``[-(2**(b-1) - 1), 2**(b-1) - 1]`` (signed only; unsigned ignores it).

    Bit regions: ``"sign"`` (bit ``bits - 1``, signed formats only) and ``"integer"`` (every other
    bit of the code), the names :class:`FixedPoint` gives the same bits when it has no fraction.

    Example:
        >>> import torch
        >>> from qfault.formats import IntFormat
        >>> fmt = IntFormat(8)
        >>> fmt.encode(torch.tensor([0.5, -1.0]), scale=0.25).tolist()
        [2, -4]
        >>> fmt.bit_regions()
        {'sign': (7,), 'integer': (0, 1, 2, 3, 4, 5, 6)}
    """

    bits: int = 8
    signed: bool = True
    rounding: str = "half_even"
    range: str = "full"

    type_name = "int"
    needs_qparams = True

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 16:
            raise QFaultConfigError("bits", self.bits, "an integer in [1, 16] for an int format")
        if not isinstance(self.signed, bool):
            raise QFaultConfigError("signed", self.signed, "True or False")
        check_choice("rounding", self.rounding, ROUNDINGS)
        check_choice("range", self.range, RANGES)
        if self.signed and self.range == "narrow" and self.bits < 2:
            raise QFaultConfigError("bits", self.bits, ">= 2 for a narrow-range signed format")

    @property
    def name(self) -> str:
        return f"{'int' if self.signed else 'uint'}{self.bits}"

    @property
    def code_dtype(self) -> torch.dtype:
        return torch.int32

    @property
    def code_min(self) -> int:
        if not self.signed:
            return 0
        low = -(1 << (self.bits - 1))
        return low + 1 if self.range == "narrow" else low

    @property
    def code_max(self) -> int:
        return (1 << self.bits) - 1 if not self.signed else (1 << (self.bits - 1)) - 1

    def to_bits(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.to(torch.int32) & self.bit_mask

    def from_bits(self, patterns: torch.Tensor) -> torch.Tensor:
        patterns = patterns.to(torch.int32) & self.bit_mask
        if not self.signed:
            return patterns
        sign = 1 << (self.bits - 1)
        return (patterns ^ sign) - sign

    def bit_regions(self) -> dict[str, tuple[int, ...]]:
        """``{"sign": (bits - 1,), "integer": (0, .., bits - 2)}``; unsigned: ``{"integer": all}``."""
        if not self.signed:
            return {"integer": tuple(range(self.bits))}
        return {"sign": (self.bits - 1,), "integer": tuple(range(self.bits - 1))}

    def encode(self, x: torch.Tensor, scale=1.0, zero_point=0, axis: int | None = None) -> torch.Tensor:
        """Quantize floats to codes: ``clamp(round(x / scale) + zero_point, code_min, code_max)``.

        Every code is in ``[code_min, code_max]``: ±inf saturate and NaN (also ``0 / 0`` from a
        zero scale) encodes as 0.0 does, to the clamped zero point (zero points are integers).
        """
        return self.float_codes(x, scale, zero_point, axis).to(torch.int32)

    def float_codes(self, x: torch.Tensor, scale=1.0, zero_point=0, axis: int | None = None,
                    keep_nan: bool = False) -> torch.Tensor:
        """:meth:`encode`'s codes as a floating tensor of ``x``'s dtype (exact integers below
        2**24 in float32), without the cast to int; ``keep_nan``: NaN inputs may stay NaN."""
        q = x / broadcast_param(scale, x, axis) if scale is not None else x.clone()
        # in place on the fresh quotient; NaN -> 0 (the cast of NaN to int is undefined), ±inf
        # become ±max-float, the same clamp result
        if self.rounding == "half_away":
            q = q.abs().add_(0.5).floor_().copysign_(q)
        else:
            q = q.add_(0.5).floor_() if self.rounding == "half_up" else q.round_()
        if not keep_nan:
            q = q.nan_to_num_(nan=0.0)
        if zero_point is not None and not (isinstance(zero_point, int) and zero_point == 0):
            q = q.add_(broadcast_param(zero_point, x, axis))
        return q.clamp_(self.code_min, self.code_max)

    def decode(self, codes: torch.Tensor, scale=1.0, zero_point=0, axis: int | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dequantize codes: ``(codes - zero_point) * scale``."""
        values = codes.to(dtype)
        if zero_point is not None and not (isinstance(zero_point, int) and zero_point == 0):
            values = values - broadcast_param(zero_point, codes, axis)
        return values if scale is None else values * broadcast_param(scale, codes, axis)


def calibrate(fmt: IntFormat, x: torch.Tensor, axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point covering ``x`` (per tensor, or per channel along ``axis``).

    Signed formats are symmetric (``scale = max|x| / code_max``, zero point 0); unsigned ones
    are affine over ``[min(x, 0), max(x, 0)]``. A zero range gets scale 1.

    Returns:
        ``(scale, zero_point)`` as float32 / int32 tensors, shape ``[]`` or ``[C]``.
    """
    with torch.no_grad():
        x = x.detach().float()
        if x.numel() == 0:  # an empty tensor gets scale 1
            shape = () if axis is None else (x.shape[axis],)
            return torch.ones(shape), torch.zeros(shape, dtype=torch.int32)
        if axis is not None:
            x = x.movedim(axis, 0).reshape(x.shape[axis], -1)
        low, high = torch.aminmax(x) if axis is None else torch.aminmax(x, dim=1)
        if not bool(torch.isfinite(low).all() & torch.isfinite(high).all()):
            # non-finite values cannot set a scale
            x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
            low, high = torch.aminmax(x) if axis is None else torch.aminmax(x, dim=1)
        if fmt.signed:
            scale = torch.maximum(high.abs(), low.abs()) / fmt.code_max
            zero_point = torch.zeros_like(scale, dtype=torch.int32)
        else:
            low, high = torch.clamp(low, max=0), torch.clamp(high, min=0)
            scale = (high - low) / fmt.code_max
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            zero_point = torch.clamp(torch.round(-low / scale), 0, fmt.code_max).to(torch.int32)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, zero_point
