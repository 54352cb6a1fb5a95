"""flauers' lowering/lifting (``LoLif``) of a 2-D convolution to one matrix product.

:class:`S_Im2Col` is flauers' single-channel image-to-columns strategy, computed by qfault's
lowering functions (:func:`qfault.systolic.lower_activation`, :func:`qfault.systolic.lower_kernel`):
for an input X (H, W) and kernel K (kh, kw), the lowered activation (oh, kh * W) holds the row
windows of X flattened column-major, the lowered kernel (kh * W, ow) the banded, column-major
flattened K, and ``lift`` reshapes their (oh, ow) product. The result is the valid
cross-correlation (what ``torch.nn.functional.conv2d`` computes). numpy arrays in, numpy out
(torch tensors in, torch out).
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import numpy as np
import torch

from ..._errors import QFaultConfigError
from ...systolic import lower_activation as _lower_activation
from ...systolic import lower_kernel as _lower_kernel
from ...systolic import output_size
from .exceptions import DimensionError

__all__ = ["LoLifType", "LoLif", "S_Im2Col", "ShapeError", "lowered_indices"]

#: axis of the lowered matrices: rows (height) and columns (width)
lowered_indices = {"HEIGHT": 0, "WIDTH": 1}


class LoLifType(Enum):
    """How many dimensions a lowering consumes: one image, channels, or batch and channels."""

    SINGLE = 0
    CHANNELED = 1
    PARALLEL = 2


class ShapeError(DimensionError):
    """An activation or kernel whose shape the lowering cannot take."""


def _as_tensor(value: Any) -> tuple[torch.Tensor, bool]:
    if isinstance(value, torch.Tensor):
        return value, True
    return torch.from_numpy(np.ascontiguousarray(np.asarray(value))), False


def _shape2(shape: Any, name: str) -> tuple[int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2:
        raise ShapeError(name, shape, "a 2-D shape (height, width): S_Im2Col lowers one image and one kernel")
    return shape


class LoLif:
    """Base of the lowering strategies: ``lower_activation``, ``lower_kernel`` and ``lift``."""

    type: LoLifType | None = None

    def lower_activation(self, activation):
        raise NotImplementedError

    def lower_kernel(self, kernel):
        raise NotImplementedError

    def lift(self, o):
        raise NotImplementedError


class S_Im2Col(LoLif):  # noqa: N801 - flauers' name
    """Single-channel im2col for activations of ``activation_shape`` and kernels of ``kernel_shape``.

    Args:
        activation_shape: (H, W) of the input (rectangular inputs are an extension: flauers
            takes square ones only).
        kernel_shape: (kh, kw), at most the input's size.
        stride_x, stride_y: horizontal and vertical stride (flauers stores and ignores them;
            here they are honoured).

    Attributes:
        lowered_activation_shape: (oh, kh * W).
        lowered_kernel_shape: (kh * W, ow).
        lifted_output_shape: (oh, ow).

    Raises:
        ShapeError: shapes that are not 2-D, a kernel larger than the input, a bad stride.

    Example:
        >>> import numpy as np
        >>> im2col = S_Im2Col((3, 3), (2, 2))
        >>> low = im2col.lower_activation(np.arange(1, 10).reshape(3, 3))
        >>> im2col.lift(low @ im2col.lower_kernel(np.ones((2, 2), dtype=np.int64))).tolist()
        [[12, 16], [24, 28]]
    """

    type = LoLifType.SINGLE

    def __init__(self, activation_shape, kernel_shape, stride_x: int = 1, stride_y: int = 1, **gpu_options: Any
                 ) -> None:
        unknown = set(gpu_options) - {"use_gpu", "lowered_gpu_dtype", "lifted_gpu_dtype", "gpu_griddim",
                                      "gpu_blockdim", "lolif_type"}
        if unknown:
            raise TypeError(f"S_Im2Col() got unexpected keyword arguments {sorted(unknown)}")
        self.activation_shape = _shape2(activation_shape, "activation_shape")
        self.kernel_shape = _shape2(kernel_shape, "kernel_shape")
        self.stride_x = stride_x
        self.stride_y = stride_y
        try:
            oh, ow = output_size(self.activation_shape, self.kernel_shape, (stride_y, stride_x))
        except QFaultConfigError as error:
            raise ShapeError(error.field, error.value, error.allowed, error.hint) from None
        height, width = self.activation_shape
        kh, _ = self.kernel_shape
        self.activation_size = height
        self.kernel_size = kh
        self.output_size = oh
        self.lowered_activation_shape = (oh, kh * width)
        self.lowered_kernel_shape = (kh * width, ow)
        self.lifted_output_shape = (oh, ow)

    def lower_activation(self, activation):
        """(H, W) -> (oh, kh * W): row r is the window X[r*sy : r*sy + kh, :] flattened column-major."""
        tensor, is_tensor = _as_tensor(activation)
        if tuple(tensor.shape) != self.activation_shape:
            raise ShapeError("activation.shape", tuple(tensor.shape), f"{self.activation_shape} (this lowering's)")
        out = _lower_activation(tensor, self.kernel_shape, (self.stride_y, self.stride_x))
        return out if is_tensor else out.numpy()

    def lower_kernel(self, kernel):
        """(kh, kw) -> the banded (kh * W, ow) lowered kernel."""
        tensor, is_tensor = _as_tensor(kernel)
        if tuple(tensor.shape) != self.kernel_shape:
            raise ShapeError("kernel.shape", tuple(tensor.shape), f"{self.kernel_shape} (this lowering's)")
        out = _lower_kernel(tensor, self.activation_shape[1], (self.stride_y, self.stride_x))
        return out if is_tensor else out.numpy()

    def lift(self, o):
        """(oh, ow) product -> the (oh, ow) convolution output (a reshape, row-major)."""
        if isinstance(o, torch.Tensor):
            return o.reshape(self.lifted_output_shape)
        return np.asarray(o).reshape(self.lifted_output_shape)
