"""Fixed-point format reproducing QKeras ``quantized_bits(bits, integer, keep_negative)`` (seed 002).

``bits`` counts the sign bit; the number of fraction bits is ``E = bits - integer - keep_negative``;
a value is ``code * 2**-E`` with ``code`` a ``bits``-bit two's-complement integer when
``keep_negative`` (else unsigned). Quantization rounds half to even and saturates, as QKeras
does with ``alpha=1``. Differences from QKeras: we return the ideal quantized value (QKeras'
float32 straight-through expression turns far out-of-range inputs into 0.0 and inf into NaN),
and ``bits=1`` with ``keep_negative`` (QKeras' special ``sign(x)`` quantizer) is not a fixed-point
format and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .._errors import QFaultConfigError
from ._base import NumberFormat

if TYPE_CHECKING:  # pragma: no cover
    from ._int import IntFormat


@dataclass(frozen=True)
class FixedPoint(NumberFormat):
    """QKeras-compatible fixed point.

    Args:
        bits: total width including the sign bit, 1 to 32 (2 to 32 with ``keep_negative``).
        integer: integer bits (excluding the sign bit); may exceed ``bits`` or be negative.
        keep_negative: signed two's-complement codes if True.
        symmetric: drop the most negative code (QKeras ``symmetric=1``).

    Bit regions: ``"sign"`` (bit ``bits - 1``, ``keep_negative`` only), ``"integer"`` and
    ``"fraction"``. Bit ``p`` of the magnitude weighs ``2**(p - E)``: it is a fraction bit when that
    weight is below 1 (``p < E``), an integer bit otherwise. With ``integer < 0`` every bit is a
    fraction bit; with ``integer`` above the width every bit is an integer bit; the other region is
    then empty.

    Example:
        >>> from qfault.formats import FixedPoint
        >>> FixedPoint(5, 1, True).values()[:3].tolist()
        [0.0, 0.125, 0.25]
        >>> FixedPoint(5, 1, True).bit_regions()
        {'sign': (4,), 'integer': (3,), 'fraction': (0, 1, 2)}
    """

    bits: int = 8
    integer: int = 0
    keep_negative: bool = True
    symmetric: bool = False

    type_name = "fixed"

    def __post_init__(self) -> None:
        low = 2 if self.keep_negative else 1
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not low <= self.bits <= 32:
            hint = "bits=1 with keep_negative is QKeras' sign quantizer" if self.bits == 1 else None
            raise QFaultConfigError("bits", self.bits, f"an integer in [{low}, 32]", hint)
        if isinstance(self.integer, bool) or not isinstance(self.integer, int):
            raise QFaultConfigError("integer", self.integer, "an integer")
        for field in ("keep_negative", "symmetric"):
            value = getattr(self, field)
            if value not in (True, False, 0, 1):
                raise QFaultConfigError(field, value, "True/False or 1/0")
        object.__setattr__(self, "keep_negative", bool(self.keep_negative))
        object.__setattr__(self, "symmetric", bool(self.symmetric))

    @property
    def name(self) -> str:
        return f"fixed{self.bits}_{self.integer}{'' if self.keep_negative else 'u'}"

    @property
    def fraction_bits(self) -> int:
        """``E = bits - integer - keep_negative``."""
        return self.bits - self.integer - int(self.keep_negative)

    @property
    def lsb(self) -> float:
        """Value of one code step, ``2**-E``."""
        return 2.0 ** (-self.fraction_bits)

    @property
    def code_dtype(self) -> torch.dtype:
        return torch.int64 if self.bits > 31 else torch.int32

    @property
    def code_min(self) -> int:
        if not self.keep_negative:
            return 0
        return -(1 << (self.bits - 1)) + (1 if self.symmetric else 0)

    @property
    def code_max(self) -> int:
        return (1 << (self.bits - int(self.keep_negative))) - 1

    def to_bits(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.to(self.pattern_dtype) & self.bit_mask

    def from_bits(self, patterns: torch.Tensor) -> torch.Tensor:
        patterns = patterns.to(self.pattern_dtype) & self.bit_mask
        if not self.keep_negative:
            return patterns.to(self.code_dtype)
        sign = 1 << (self.bits - 1)
        return ((patterns ^ sign) - sign).to(self.code_dtype)

    def bit_regions(self) -> dict[str, tuple[int, ...]]:
        """``sign`` (if ``keep_negative``), ``integer`` and ``fraction`` bit positions (0 = LSB)."""
        width = self.bits - int(self.keep_negative)  # bits below the sign
        split = min(max(self.fraction_bits, 0), width)
        regions = {"sign": (self.bits - 1,)} if self.keep_negative else {}
        regions["integer"] = tuple(range(split, width))
        regions["fraction"] = tuple(range(split))
        return regions

    def encode(self, x: torch.Tensor, scale=None, zero_point=None, axis=None) -> torch.Tensor:
        """``clip(round_half_even(x * 2**E), code_min, code_max)`` (scale/zero point unused).

        ±inf saturate to ``code_max``/``code_min``; NaN encodes as 0.0 does, to code 0.
        """
        dtype = torch.float64 if self.bits > 24 else torch.float32
        q = torch.round(x.to(dtype) * (2.0 ** self.fraction_bits))
        q = q.nan_to_num_(nan=0.0)  # the cast of NaN to int is undefined
        return torch.clamp(q, self.code_min, self.code_max).to(self.code_dtype)

    def decode(self, codes: torch.Tensor, scale=None, zero_point=None, axis=None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``codes * 2**-E``."""
        return (codes.to(torch.float64) * self.lsb).to(dtype)

    def values(self) -> torch.Tensor:
        """Every representable value in code (bit-pattern) order, like QKeras ``range()``."""
        return self.decode(self.all_codes())


#: QKeras' ``K.epsilon()``
_QKERAS_EPSILON = 1e-7


def qkeras_alpha_scale(x: torch.Tensor, bits: int, alpha: str, integer: int = 0,
                       axis: int | None = 0) -> "tuple[IntFormat, torch.Tensor]":
    """QKeras ``quantized_bits(bits, integer, symmetric=1, alpha="auto" | "auto_po2")``: the
    per-channel scale and the code format it quantizes with.

    Codes are ``z = sign(x) * min(floor(|x| / s + 0.5), 2**(bits-1) - 1)`` (ties away from zero,
    the narrow signed range), values ``z * s``, one ``s`` per index of ``axis`` (PyTorch's output
    channel, dim 0; Keras' last axis). As QKeras, on ``x' = x / 2**integer``: ``"auto"``:
    ``s' = 2 * max|x'| / levels`` with ``levels = 2 * (2**(bits-1) - 1)``; ``"auto_po2"``: that
    rounded to a power of two, then five least-squares refinements ``s' = po2(mean(x' z) /
    (mean(z z) + 1e-7))``; ``s = s' * 2**integer``. All in float32. A channel of zeros gets
    ``s = 1`` (QKeras divides by zero there).

    Returns:
        ``(IntFormat(bits, rounding="half_away", range="narrow"), scale)``, scale float32 ``[C]``
        (or 0-d with ``axis=None``).
    """
    from .._errors import check_choice
    from ._int import IntFormat

    check_choice("alpha", alpha, ("auto", "auto_po2"))
    fmt = IntFormat(bits=bits, signed=True, rounding="half_away", range="narrow")
    x = x.detach().to(torch.float32) / (2.0 ** integer)
    rows = x.reshape(1, -1) if axis is None or x.dim() < 2 else x.movedim(axis, 0).reshape(x.shape[axis], -1)
    levels = 2 * fmt.code_max
    scale = rows.abs().amax(dim=1) * 2 / levels
    if alpha == "auto_po2":
        def po2(s: torch.Tensor) -> torch.Tensor:
            return torch.pow(2.0, torch.round(torch.log(s + _QKERAS_EPSILON) / float(torch.log(torch.tensor(2.0)))))

        scale = po2(scale)
        for _ in range(5):
            z = torch.copysign(torch.minimum(torch.floor(rows.abs() / scale[:, None] + 0.5),
                                             torch.tensor(levels / 2)), rows)
            qx, qq = (rows * z).mean(dim=1), (z * z).mean(dim=1)
            scale = po2(qx / (qq + _QKERAS_EPSILON))
    scale = torch.where(scale > 0, scale * (2.0 ** integer), torch.ones_like(scale))
    return fmt, (scale.reshape(()) if axis is None or x.dim() < 2 else scale)
