"""IEEE-754 formats: the raw bits of float32, float16 and bfloat16 values.

Codes are the unsigned bit patterns (``int32`` holding 16-bit patterns, ``int64`` holding
32-bit ones); bit 0 is the mantissa LSB and bit ``bits - 1`` the sign.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._errors import check_choice
from ._base import NumberFormat

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_VIEW = {"float32": torch.int32, "float16": torch.int16, "bfloat16": torch.int16}
_EXPONENT_BITS = {"float32": 8, "float16": 5, "bfloat16": 8}


@dataclass(frozen=True)
class FloatFormat(NumberFormat):
    """Raw IEEE bits of ``kind`` (``"float32"``, ``"float16"`` or ``"bfloat16"``).

    Bit regions: ``"sign"`` (the top bit), ``"exponent"`` (8, 5 and 8 bits) and ``"mantissa"``
    (23, 10 and 7 bits, from bit 0).

    Example:
        >>> import torch
        >>> from qfault.formats import FloatFormat
        >>> FloatFormat("float32").encode(torch.tensor([1.0])).tolist()
        [1065353216]
        >>> {name: len(bits) for name, bits in FloatFormat("float16").bit_regions().items()}
        {'sign': 1, 'exponent': 5, 'mantissa': 10}
    """

    kind: str = "float32"

    type_name = "float"
    encodes_non_finite = True

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, tuple(_DTYPES))

    @property
    def name(self) -> str:
        return self.kind

    @property
    def bits(self) -> int:  # type: ignore[override]
        return 32 if self.kind == "float32" else 16

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.kind]

    @property
    def code_dtype(self) -> torch.dtype:
        return torch.int64 if self.bits == 32 else torch.int32

    @property
    def code_min(self) -> int:
        return 0

    @property
    def code_max(self) -> int:
        return self.bit_mask

    @property
    def pattern_dtype(self) -> torch.dtype:
        return self.code_dtype

    @property
    def exponent_bits(self) -> int:
        return _EXPONENT_BITS[self.kind]

    @property
    def mantissa_bits(self) -> int:
        """Stored fraction bits (the leading 1 of normal numbers is implicit)."""
        return self.bits - 1 - self.exponent_bits

    def bit_regions(self) -> dict[str, tuple[int, ...]]:
        """``sign``, ``exponent`` and ``mantissa`` bit positions (0 = mantissa LSB)."""
        m = self.mantissa_bits
        return {"sign": (self.bits - 1,), "exponent": tuple(range(m, self.bits - 1)),
                "mantissa": tuple(range(m))}

    def to_bits(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.to(self.code_dtype) & self.bit_mask

    def from_bits(self, patterns: torch.Tensor) -> torch.Tensor:
        return patterns.to(self.code_dtype) & self.bit_mask

    def encode(self, x: torch.Tensor, scale=None, zero_point=None, axis=None) -> torch.Tensor:
        """Round ``x`` to the format (round to nearest even) and return its bit patterns."""
        raw = x.detach().to(self.dtype).contiguous().view(_VIEW[self.kind])
        return raw.to(self.code_dtype) & self.bit_mask

    def decode(self, codes: torch.Tensor, scale=None, zero_point=None, axis=None,
               dtype: torch.dtype | None = None) -> torch.Tensor:
        """The float values whose bit patterns are ``codes`` (in ``dtype``, default the format's)."""
        half = 1 << (self.bits - 1)
        patterns = codes.to(torch.int64) & self.bit_mask
        signed = torch.where(patterns >= half, patterns - (1 << self.bits), patterns)
        values = signed.to(_VIEW[self.kind]).view(self.dtype)
        return values if dtype is None else values.to(dtype)
