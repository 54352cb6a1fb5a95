"""Single-channel im2col lowering of a valid 2-D cross-correlation to one matrix product.

As the reference tool's ``S_Im2Col`` (generalised to rectangular inputs and strides): for an
input X (H, W), a kernel K (kh, kw) and stride (sh, sw), the lowered activation (oh, kh * W) has
row r = X[r*sh : r*sh + kh, :] flattened column-major, and the lowered kernel (kh * W, ow) has
column c = K flattened column-major at rows c*sw*kh ... c*sw*kh + kh*kw - 1 (zeros elsewhere), so
(lowered activation @ lowered kernel)[r, c] = sum_uv K[u, v] X[r*sh + u, c*sw + v].
"""

from __future__ import annotations

import torch

from .._errors import QFaultConfigError


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise QFaultConfigError(name, value, "a positive integer or two of them")
    return pair


def output_size(input_size: tuple[int, int], kernel_size, stride=1) -> tuple[int, int]:
    """(oh, ow) of a valid cross-correlation."""
    (h, w), (kh, kw), (sh, sw) = input_size, _pair(kernel_size, "kernel_size"), _pair(stride, "stride")
    if kh > h or kw > w:
        raise QFaultConfigError("kernel_size", (kh, kw), f"at most the input size {(h, w)}")
    return (h - kh) // sh + 1, (w - kw) // sw + 1


def lower_activation(x: torch.Tensor, kernel_size, stride=1) -> torch.Tensor:
    """(..., H, W) -> (..., oh, kh * W): row r is X[r*sh : r*sh+kh, :] flattened column-major."""
    (kh, _), (sh, _) = _pair(kernel_size, "kernel_size"), _pair(stride, "stride")
    output_size(tuple(x.shape[-2:]), kernel_size, stride)
    return x.unfold(-2, kh, sh).flatten(-2)


def kernel_columns(kernel: torch.Tensor, columns: torch.Tensor, input_width: int, stride=1) -> torch.Tensor:
    """Columns ``columns`` (Q,) of the lowered kernel, as rows: (..., kh, kw) -> (..., Q, kh * W)."""
    kh, kw = kernel.shape[-2:]
    (_, sw) = _pair(stride, "stride")
    flat = kernel.transpose(-1, -2).reshape(*kernel.shape[:-2], kh * kw)           # column-major
    positions = columns[:, None] * (sw * kh) + torch.arange(kh * kw, device=kernel.device)[None, :]
    lead = flat.shape[:-1]
    out = torch.zeros(*lead, columns.numel(), kh * input_width, dtype=kernel.dtype, device=kernel.device)
    values = flat.unsqueeze(-2).expand(*lead, columns.numel(), kh * kw)
    return out.scatter_(-1, positions.expand(*lead, -1, -1), values)


def lower_kernel(kernel: torch.Tensor, input_width: int, stride=1) -> torch.Tensor:
    """(..., kh, kw) -> the banded (..., kh * W, ow) lowered kernel for inputs of width W."""
    kh, kw = kernel.shape[-2:]
    (_, sw) = _pair(stride, "stride")
    if kw > input_width:
        raise QFaultConfigError("kernel_size", (kh, kw), f"at most the input width {input_width}")
    ow = (input_width - kw) // sw + 1
    columns = torch.arange(ow, device=kernel.device)
    return kernel_columns(kernel, columns, input_width, stride).transpose(-1, -2)

