"""Autograd across a fault: straight-through or zero gradient at the faulted positions."""

from __future__ import annotations

import torch

GRADIENT_MODES = ("ste", "zero_faulty")
_SMALL = 64  # at most this many positions on the CPU are written through a numpy view
_NUMPY_DTYPES = (torch.float32, torch.float64, torch.float16, torch.int8, torch.int16, torch.int32, torch.int64,
                 torch.uint8)


class _ReplaceAt(torch.autograd.Function):
    """``out = x`` with ``out.view(-1)[index] = values``; backward per ``gradient_mode``."""

    @staticmethod
    def forward(ctx, x, index, values, zero_faulty: bool):  # type: ignore[override]
        out = x.clone()
        out.view(-1)[index] = values.to(x.dtype)
        ctx.zero_faulty = zero_faulty
        if zero_faulty:
            ctx.save_for_backward(index)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        if not ctx.zero_faulty:
            return grad, None, None, None
        (index,) = ctx.saved_tensors
        grad = grad.clone()
        grad.reshape(-1)[index] = 0
        return grad, None, None, None


def replace_at(x: torch.Tensor, index: torch.Tensor, values: torch.Tensor, gradient: str = "ste") -> torch.Tensor:
    """A copy of ``x`` whose flat positions ``index`` hold ``values`` (no gradient to ``values``).

    ``gradient="ste"`` passes the incoming gradient through unchanged; ``"zero_faulty"`` zeroes
    it at ``index``.
    """
    if not x.is_contiguous():
        x = x.contiguous()
    if torch.is_grad_enabled() and x.requires_grad:
        return _ReplaceAt.apply(x, index, values.detach(), gradient == "zero_faulty")
    out = x.clone()
    if out.device.type == "cpu" and index.numel() <= _SMALL and out.dtype in _NUMPY_DTYPES:
        out.numpy().reshape(-1)[index.numpy()] = values.to(x.dtype).numpy()  # no tensor dispatch
    else:
        out.view(-1)[index] = values.to(x.dtype)
    return out
