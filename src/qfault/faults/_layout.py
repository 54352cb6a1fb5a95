"""Element orders of a weight tensor: PyTorch's own, and the Keras kernel layout FKeras numbers.

PyTorch stores a Linear weight as ``(out, in)`` and a convolution's as ``(out, in, *kernel)``;
Keras stores the same kernels as ``(in, out)`` and ``(*kernel, in, out)``. A position in the
row-major flattening of the Keras kernel is a ``"keras"`` index; of the PyTorch tensor, a
``"torch"`` index. Tensors of other ranks (biases, activations) have one order.
"""

from __future__ import annotations

import numpy as np

from .._errors import check_choice

LAYOUTS = ("torch", "keras")


def keras_permutation(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The dims of a PyTorch weight of ``shape`` in Keras kernel order: ``(1, 0)`` for 2-D,
    ``(2, ..., n-1, 1, 0)`` for convolutions; the identity for 1-D and 0-D tensors."""
    if len(shape) < 2:
        return tuple(range(len(shape)))
    return tuple(range(2, len(shape))) + (1, 0)


def _keras_shape(shape: tuple[int, ...], layout: str) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """``(permutation, Keras shape)`` where ``layout`` reorders a tensor of ``shape``, else None."""
    check_choice("layout", layout, LAYOUTS)
    perm = keras_permutation(shape)
    if layout == "torch" or perm == tuple(range(len(shape))):
        return None
    return perm, tuple(shape[d] for d in perm)


def to_torch_index(index: np.ndarray, shape: tuple[int, ...], layout: str) -> np.ndarray:
    """Flat ``layout`` indices of a PyTorch tensor of ``shape`` as flat PyTorch indices (int64)."""
    index = np.asarray(index, dtype=np.int64)
    order = _keras_shape(shape, layout)
    if order is None or index.size == 0:
        return index
    perm, keras_shape = order
    keras_coords = np.unravel_index(index, keras_shape)
    torch_coords = [keras_coords[perm.index(dim)] for dim in range(len(shape))]
    return np.ravel_multi_index(torch_coords, shape).astype(np.int64)


def from_torch_index(index: np.ndarray, shape: tuple[int, ...], layout: str) -> np.ndarray:
    """Flat PyTorch indices of a tensor of ``shape`` as flat ``layout`` indices (int64)."""
    index = np.asarray(index, dtype=np.int64)
    order = _keras_shape(shape, layout)
    if order is None or index.size == 0:
        return index
    perm, keras_shape = order
    torch_coords = np.unravel_index(index, shape)
    return np.ravel_multi_index([torch_coords[d] for d in perm], keras_shape).astype(np.int64)


def lbi_to_site(lbi: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Layer bit indices as ``(element, bit)``: LBI ``l`` is bit ``bits - 1 - l % bits`` (0 = LSB)
    of element ``l // bits``, so LBI 0 is the sign (most significant) bit of element 0."""
    lbi = np.asarray(lbi, dtype=np.int64)
    element, offset = np.divmod(lbi, bits)
    return element, bits - 1 - offset


def site_to_lbi(element: np.ndarray, bit: np.ndarray, bits: int) -> np.ndarray:
    """The inverse of :func:`lbi_to_site`."""
    return np.asarray(element, dtype=np.int64) * bits + (bits - 1 - np.asarray(bit, dtype=np.int64))
