"""Applying drawn faults to a tensor's codes or values; the ``corrupt`` verb."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._errors import QFaultConfigError
from ..formats import NumberFormat, calibrate, gather_param, get_format
from ._codec import apply_to_codes, fault_values
from ._draw import FaultDraw, draw_faults
from ._models import FaultModel, get_fault
from ._sampling import make_generator


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
    if fmt.needs_qparams:
        if scale is None:
            scale, zero_point = calibrate(fmt, x, axis)
        scale, zero_point = _param_at(scale, x, axis, index), _param_at(zero_point, x, axis, index)
    else:
        scale = zero_point = None
    old, new, faulty = fault_values(fmt, values, draw, scale, zero_point)
    out = flat.clone()
    out[index] = faulty
    return out.view_as(x), FaultRecord(index, old, new, draw.bit_sites)


def _param_at(param, x: torch.Tensor, axis: int | None, index: torch.Tensor):
    """The per-element value of a scale/zero point at flat ``index`` of ``x``."""
    if isinstance(param, torch.Tensor):
        param = param.to(x.device)
    return gather_param(param, tuple(x.shape), index, axis)
