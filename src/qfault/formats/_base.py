"""Common behaviour of number formats: codes <-> bit patterns <-> values."""

from __future__ import annotations

from typing import ClassVar

import torch

from .._config import to_dict
from .._errors import QFaultConfigError


def broadcast_param(
    param: torch.Tensor | float | int | None, x: torch.Tensor, axis: int | None
) -> torch.Tensor | float | int | None:
    """Reshape a per-channel parameter so it broadcasts against ``x`` along ``axis``.

    A scalar (Python number or 0-d/1-element tensor) is returned as is; a 1-D tensor of length
    ``x.shape[axis]`` is viewed as ``[1, .., C, .., 1]``; any other tensor must already broadcast.
    """
    if param is None or not isinstance(param, torch.Tensor):
        return param
    if axis is None or param.dim() != 1 or param.numel() == 1:
        return param
    axis = axis % x.dim()
    if param.numel() != x.shape[axis]:
        raise ValueError(
            f"per-channel parameter has {param.numel()} entries but axis {axis} of the tensor "
            f"has {x.shape[axis]}"
        )
    shape = [1] * x.dim()
    shape[axis] = -1
    return param.view(shape)


class NumberFormat:
    """Base class. Subclasses are frozen dataclasses with a ``bits`` field.

    Codes are integer tensors (the format's own integer view); bit patterns are the same
    codes as unsigned ``bits``-bit integers in ``[0, 2**bits)``. Flipping bit ``k`` of a code
    is ``from_bits(to_bits(code) ^ (1 << k))``.

    Capabilities (class attributes, so other packages ask the format instead of testing its
    type):

    * ``needs_qparams``: codes mean ``(code - zero_point) * scale``, so ``encode``/``decode``
      take a scale and zero point (int formats). False: the format fixes every value itself
      and ignores them (fixed point, IEEE).
    * ``encodes_non_finite``: NaN and ±inf have bit patterns of their own (IEEE). False: they
      have no code; ``encode`` maps NaN to the code of 0.0 and saturates ±inf.
    * :meth:`bit_regions` names groups of bit positions (``"sign"``, ``"exponent"``, ...).
    """

    type_name: str = ""
    bits: int
    needs_qparams: ClassVar[bool] = False
    encodes_non_finite: ClassVar[bool] = False

    # -- overridden by subclasses ------------------------------------------------------------
    @property
    def code_dtype(self) -> torch.dtype:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def code_min(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def code_max(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_bits(self, codes: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def from_bits(self, patterns: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def encode(self, x: torch.Tensor, scale=None, zero_point=None, axis=None) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def decode(self, codes: torch.Tensor, scale=None, zero_point=None, axis=None) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def float_codes(self, x: torch.Tensor, scale=None, zero_point=None, axis=None, keep_nan: bool = False
                    ) -> torch.Tensor:
        """:meth:`encode`'s codes as float32 (exact for codes below 2**24); formats override it
        to skip the integer tensor. ``keep_nan`` allows NaN inputs to stay NaN (one pass fewer
        for a caller that checks its result) instead of encoding as 0.0 does."""
        return self.encode(x, scale, zero_point, axis).to(torch.float32)

    def bit_regions(self) -> dict[str, tuple[int, ...]]:  # pragma: no cover - overridden
        """Named bit positions (0 = LSB), disjoint and together covering ``0 .. bits - 1``."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------
    def region_bits(self, name: str) -> tuple[int, ...]:
        """Bit positions (0 = LSB, ascending) of the region ``name`` of :meth:`bit_regions`.

        A region can be empty (a fixed-point format whose ``integer`` exceeds its width has no
        fraction bits).

        Raises:
            QFaultConfigError: ``name`` is not a region of this format (field ``bits``).

        Example:
            >>> from qfault.formats import FloatFormat
            >>> FloatFormat("bfloat16").region_bits("exponent")
            (7, 8, 9, 10, 11, 12, 13, 14)
        """
        regions = self.bit_regions()
        if not isinstance(name, str) or name not in regions:
            raise QFaultConfigError("bits", name, "one of " + ", ".join(regions),
                                    hint=f"bit regions of {self.name}")
        return regions[name]

    @property
    def storable_min(self) -> int:
        """Smallest code any bit pattern decodes to (below ``code_min`` for narrow ranges)."""
        return int(self.from_bits(torch.tensor(self.bit_mask >> 1) + 1)) if self.code_min < 0 else 0

    @property
    def storable_max(self) -> int:
        """Largest code any bit pattern decodes to."""
        return self.bit_mask >> 1 if self.code_min < 0 else self.bit_mask

    @property
    def bit_mask(self) -> int:
        """All ``bits`` bits set."""
        return (1 << self.bits) - 1

    def all_codes(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Every code of the format in bit-pattern order ``0 .. 2**bits - 1`` (bits <= 24)."""
        if self.bits > 24:
            raise ValueError(f"{self.bits}-bit format has too many codes to list")
        patterns = torch.arange(1 << self.bits, dtype=torch.int64, device=device)
        return self.from_bits(patterns.to(self.pattern_dtype))

    @property
    def pattern_dtype(self) -> torch.dtype:
        return torch.int64 if self.bits > 31 else torch.int32

    def xor(self, codes: torch.Tensor, mask: torch.Tensor | int) -> torch.Tensor:
        """Codes with the bits set in ``mask`` (a pattern, ``0 <= mask < 2**bits``) inverted."""
        return self.from_bits(self.to_bits(codes) ^ mask)

    def set_bits(
        self, codes: torch.Tensor, stuck_mask: torch.Tensor | int, stuck_value: torch.Tensor | int
    ) -> torch.Tensor:
        """Codes whose bits in ``stuck_mask`` are forced to the bits of ``stuck_value``."""
        patterns = self.to_bits(codes)
        return self.from_bits((patterns & ~stuck_mask) | (stuck_value & stuck_mask))

    def to_dict(self) -> dict:
        return to_dict(self)


def gather_param(param, shape: tuple[int, ...], index: torch.Tensor, axis: int | None = None):
    """Values of a broadcast parameter at flat positions ``index`` of a tensor of ``shape``.

    ``param`` is a number, a one-element tensor, a 1-D per-channel tensor along ``axis``, or a
    tensor that broadcasts to ``shape``. Costs O(len(index) * ndim); nothing of size ``shape``
    is materialized.
    """
    if param is None or not isinstance(param, torch.Tensor):
        return param
    if param.numel() == 1:
        return param.reshape(())
    ndim = len(shape)
    if axis is not None and param.dim() == 1 and axis % ndim == 0:  # per output channel
        inner = 1
        for size in shape[1:]:
            inner *= size
        return param[index // inner]
    if axis is not None and param.dim() == 1:
        view = [1] * ndim
        view[axis % ndim] = -1
        param = param.view(view)
    if param.dim() < ndim:
        param = param.reshape((1,) * (ndim - param.dim()) + tuple(param.shape))
    flat_param = param.reshape(-1)
    offset = torch.zeros_like(index)
    stride, param_stride = 1, 1
    for dim in range(ndim - 1, -1, -1):
        size = shape[dim]
        if param.shape[dim] > 1:
            offset += ((index // stride) % size) * param_stride
            param_stride *= param.shape[dim]
        stride *= size
    return flat_param[offset]
