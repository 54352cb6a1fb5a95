"""flauers' public API (systolic-array simulation, seed 003) as a thin layer over qfault's core.

Scripts written for flauers run with their imports changed::

    from qfault.compat import flauers      # was: import flauers
    import qfault.compat.flauers.torch     # was: import flauers.torch

    hw = flauers.SystolicArray(10, 10, 10, flauers.projection_matrices.output_stationary,
                               in_dtype=np.float32)
    hw.add_fault(flauers.fault_models.StuckAt(x=1, y=1, line="c", bit=5, polarity=1))
    hw.matmul(A, B)

Every product runs on :class:`qfault.systolic.SystolicArray` (exact to the semantics of
docs/systolic.md); this layer only translates arguments, faults, dtypes and errors. Where it
deliberately differs from flauers' code (listed in docs/differences.md): ``physical_mapping``
holds every PE under its true 1-based coordinates with the true cycle of each iteration;
permanent faults have ``t_stop = inf``; a fault is translated when it is added;
``convolve_with_array`` and ``clear_single_fault`` run; and in ``flauers.torch`` linear layers
always tile.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import torch as _torch  # the name ``torch`` is this package's submodule once it is imported

from ..._errors import QFaultConfigError
from ...systolic import ArrayConfig, SystolicCastingError
from ...systolic import SystolicArray as _CoreArray
from . import exceptions, fault_models, lowerings, projection_matrices, utils
from .exceptions import CastingError, DimensionError, InjectionError, WrongDtypeError

__all__ = ["SystolicArray", "matmul", "convolve", "convolve_with_array", "ProjectionMatrices",
           "exceptions", "fault_models", "lowerings", "projection_matrices", "utils"]

ProjectionMatrices = projection_matrices


def _numpy_dtype(name: str) -> Any:
    try:
        return np.dtype(name)
    except TypeError:  # bfloat16: no numpy dtype
        return getattr(_torch, name)


def _dataflow_name(T: Any) -> Any:
    """flauers' name of ``T`` when it is one of its eight matrices (for readable reprs), else
    ``T`` as nested lists."""
    if isinstance(T, str):
        return T
    matrix = np.asarray(T)
    for name in projection_matrices.__all__:
        if matrix.shape == (3, 3) and np.array_equal(matrix, getattr(projection_matrices, name)):
            return name
    return matrix.tolist()


class SystolicArray:
    """flauers' ``SystolicArray``: an N1 x N2 x N3 array with projection matrix ``T``.

    Args:
        n1: rows of A and C the array holds.
        n2: columns of B and C.
        n3: reduction length (columns of A, rows of B).
        T: the 3x3 space-time projection matrix (``flauers.projection_matrices``) or a dataflow
            name of qfault's registry.
        in_dtype: operand dtype (int8, int16, int32, float16, float32, float64).
        mac_dtype: accumulator dtype; default int8 -> int32, int16 -> int64, int32 -> int64,
            floats -> the input dtype.
        use_gpu: run numpy operands on the CUDA device (tensors run where they are).
        use_legacy, gpu_griddim, gpu_blockdim: flauers' performance switches, accepted and
            unused.
        approximate_matmul, approximate_multiplier, approximate_adder: must be None (exact
            arithmetic only).

    Attributes:
        N1, N2, N3, T, in_dtype, mac_dtype (numpy dtypes), use_gpu: as given.
        fault_list: ``{id: fault}`` of the faults on the array.
        physical_mapping: ``{(x, y): [((i, j, k), cycle), ...]}`` for every PE, 1-based.
        core: the :class:`qfault.systolic.SystolicArray` doing the work.

    Raises:
        WrongDtypeError: an input or accumulator dtype the array cannot use.
        QFaultConfigError: bad sizes or matrix, approximate operators, ``use_gpu`` without CUDA.

    Example:
        >>> import numpy as np
        >>> hw = SystolicArray(10, 10, 10, projection_matrices.output_stationary, in_dtype=np.float32)
        >>> a = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]) * 0.5
        >>> b = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]) * 0.5
        >>> fault_id = hw.add_fault(fault_models.StuckAt(x=1, y=1, line="c", bit=5, polarity=1))
        >>> float(hw.matmul(a, b)[0, 0]), float((a @ b)[0, 0])
        (710.75, 9.5)
    """

    def __init__(self, n1: int, n2: int, n3: int, T: Any, in_dtype: Any = np.dtype(np.int8),
                 mac_dtype: Any = None, use_gpu: bool = False, use_legacy: bool = True,
                 approximate_matmul: Any = None, approximate_multiplier: Any = None,
                 approximate_adder: Any = None, gpu_griddim: int = 64, gpu_blockdim: int = 128) -> None:
        for name, value in (("approximate_matmul", approximate_matmul),
                            ("approximate_multiplier", approximate_multiplier),
                            ("approximate_adder", approximate_adder)):
            if value is not None:
                raise QFaultConfigError(name, value, "None (the array computes exact arithmetic only)")
        if use_gpu and not _torch.cuda.is_available():
            raise QFaultConfigError("use_gpu", use_gpu, "False on a machine without CUDA")
        dataflow = _dataflow_name(T)
        try:
            config = ArrayConfig(n1, n2, n3, dataflow, in_dtype, mac_dtype)
        except QFaultConfigError as error:
            if error.field in ("in_dtype", "mac_dtype"):
                raise WrongDtypeError(error.field, error.value, error.allowed, error.hint) from None
            raise
        self.core = _CoreArray(config)
        self.N1, self.N2, self.N3 = config.n1, config.n2, config.n3
        self.T = self.core.matrix if isinstance(T, str) else T
        self.in_dtype = _numpy_dtype(config.in_dtype)
        self.mac_dtype = _numpy_dtype(config.mac_dtype)
        self.use_gpu = bool(use_gpu)
        self.use_legacy = use_legacy
        self.fault_list: dict[int, fault_models.Fault] = {}
        self._translated: dict[int, Any] = {}   # id -> the ArrayFault on the core array
        matrix = self.core.matrix
        self.computation_time = 1 + self.N1 + self.N2 + self.N3 - int(matrix[2].sum())

    # ------------------------------------------------------------------ geometry
    def space_projection(self) -> list[tuple[int, int]]:
        """Every PE (x, y), in the order a loop over i, j, k (1-based) first meets it."""
        return self.core.pes()

    @cached_property
    def physical_PEs(self) -> list[tuple[int, int]]:  # noqa: N802 - flauers' name
        """The PEs, as :meth:`space_projection`."""
        return self.space_projection()

    @cached_property
    def physical_mapping(self) -> dict[tuple[int, int], list[tuple[tuple[int, int, int], int]]]:
        """``{(x, y): [((i, j, k), cycle), ...]}``: what each PE runs, iterations 1-based in
        i, j, k order, ``(x, y, cycle) = T @ (i, j, k)``; keys in :meth:`space_projection` order."""
        matrix = self.core.matrix
        grids = np.meshgrid(np.arange(1, self.N1 + 1), np.arange(1, self.N2 + 1), np.arange(1, self.N3 + 1),
                            indexing="ij")
        nus = np.stack([g.ravel() for g in grids], axis=1)                  # (M, 3), i-j-k order
        space = nus @ matrix[:2].T
        cycles = (nus @ matrix[2]).tolist()
        pes, group = np.unique(space, axis=0, return_inverse=True)
        order = np.argsort(group.ravel(), kind="stable")
        bounds = np.searchsorted(group.ravel()[order], np.arange(len(pes) + 1))
        nu_tuples = list(map(tuple, nus.tolist()))
        by_pe = {}
        for p, (x, y) in enumerate(pes.tolist()):
            members = order[bounds[p]:bounds[p + 1]].tolist()
            by_pe[(x, y)] = [(nu_tuples[m], cycles[m]) for m in members]
        return {pe: by_pe[pe] for pe in self.space_projection()}

    # -------------------------------------------------------------------- faults
    def get_fault_list(self) -> dict[int, fault_models.Fault]:
        """``fault_list``."""
        return self.fault_list

    def add_fault(self, fault: fault_models.Fault, perform_injection_prep: bool = True) -> int:
        """Put ``fault`` (a :class:`~.fault_models.Fault`) on the array; returns its id.

        The fault is translated as its attributes are now (later changes to it are not seen).

        Raises:
            InjectionError: a PE outside the array, a bit past the register's width.
        """
        return self._add(fault, -1, reuse=False)

    def _add(self, fault: fault_models.Fault, channel: int, reuse: bool) -> int:
        if not isinstance(fault, fault_models.Fault):
            raise InjectionError("fault", type(fault).__name__, "a flauers.fault_models.Fault")
        translated = fault.to_array_fault(channel)
        if reuse:  # a layer adding a fault another layer already put on this shared array
            for fault_id, existing in self._translated.items():
                if existing == translated:
                    return fault_id
        try:
            handle = self.core.add_fault(translated)
        except QFaultConfigError as error:
            raise InjectionError(error.field, error.value, error.allowed, error.hint) from None
        self.fault_list[handle.id] = fault
        self._translated[handle.id] = translated
        return handle.id

    def clear_all_faults(self) -> None:
        """Take every fault off the array."""
        self.core.clear_faults()
        self.fault_list.clear()
        self._translated.clear()

    def clear_single_fault(self, id: int) -> None:  # noqa: A002 - flauers' name
        """Take the fault ``id`` (from :meth:`add_fault`) off the array.

        Raises:
            InjectionError: an id that is not on the array.
        """
        if id not in self.fault_list:
            raise InjectionError("id", id, f"an id of fault_list ({sorted(self.fault_list)})")
        self.core.remove_fault(id)
        del self.fault_list[id]
        del self._translated[id]

    @property
    def should_inject(self) -> bool:
        """Whether any fault is on the array."""
        return bool(self.fault_list)

    # -------------------------------------------------------------------- matmul
    def matmul(self, A: Any, B: Any, tiling: bool = False) -> Any:
        """C = A @ B on the array, with its faults.

        Args:
            A: (m, k) activations; numpy array or torch tensor of values ``in_dtype`` holds
                exactly (batch dimensions in front broadcast, an extension).
            B: (k, n) weights.
            tiling: run products larger than the array tile by tile.

        Returns:
            (m, n) in ``mac_dtype``: a numpy array, or a torch tensor if A or B is one.

        Raises:
            CastingError: values the input dtype does not hold exactly.
            DimensionError: shapes that do not multiply; without tiling, m > N1, n > N2 or k > N3.
        """
        as_tensor = isinstance(A, _torch.Tensor) or isinstance(B, _torch.Tensor)
        a = A if isinstance(A, _torch.Tensor) else np.asarray(A)
        b = B if isinstance(B, _torch.Tensor) else np.asarray(B)
        if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2]:
            raise DimensionError("matrix shapes", (tuple(a.shape), tuple(b.shape)),
                                 "(m, k) and (k, n): A's columns must equal B's rows")
        if not tiling:
            m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
            for name, size, bound in (("N1", m, self.N1), ("N2", n, self.N2), ("N3", k, self.N3)):
                if size > bound:
                    raise DimensionError(name, bound, f"at least {size} for this ({m}, {k}) @ ({k}, {n}) product",
                                         hint="pass tiling=True to run it tile by tile")
        if self.use_gpu and not as_tensor:
            a = _torch.as_tensor(a, device="cuda")
            b = _torch.as_tensor(b, device="cuda")
        try:
            out = self.core.matmul(a, b, tiling=bool(tiling))
        except SystolicCastingError as error:
            raise CastingError(error.field, error.value, error.allowed, error.hint) from None
        return out if as_tensor else out.cpu().numpy()

    def __repr__(self) -> str:
        return (f"flauers.SystolicArray({self.N1}, {self.N2}, {self.N3}, in_dtype={self.in_dtype}, "
                f"mac_dtype={self.mac_dtype}, {len(self.fault_list)} faults)")


def matmul(A: Any, B: Any, N1: int = -1, N2: int = -1, N3: int = -1,
           projection_matrix: Any = projection_matrices.output_stationary, tiling: bool = False,
           use_gpu: bool = False, **kwargs: Any) -> Any:
    """A @ B on a fresh fault-free array sized to the operands (-1: A's rows, B's columns, B's
    rows); ``kwargs`` go to :class:`SystolicArray` (default ``in_dtype`` int8).

    Raises:
        CastingError: values the input dtype (int8 by default) does not hold exactly.

    Example:
        >>> import numpy as np
        >>> matmul(np.array([[1, 2], [3, 4]]), np.array([[5], [6]])).tolist()
        [[17], [39]]
    """
    a = A if isinstance(A, _torch.Tensor) else np.asarray(A)
    b = B if isinstance(B, _torch.Tensor) else np.asarray(B)
    N1 = a.shape[-2] if N1 == -1 else N1
    N2 = b.shape[-1] if N2 == -1 else N2
    N3 = b.shape[-2] if N3 == -1 else N3
    hw = SystolicArray(N1, N2, N3, projection_matrix, use_gpu=use_gpu, **kwargs)
    return hw.matmul(a, b, tiling=tiling)


def convolve_with_array(A: Any, B: Any, array: SystolicArray, lowering: type = lowerings.S_Im2Col,
                        tiling: bool = False) -> Any:
    """The valid 2-D cross-correlation of input ``A`` (H, W) with kernel ``B`` (kh, kw),
    lowered by ``lowering`` and multiplied on ``array`` (with its faults).

    Example:
        >>> import numpy as np
        >>> hw = SystolicArray(4, 4, 8, projection_matrices.output_stationary)
        >>> convolve_with_array(np.arange(1, 10).reshape(3, 3), np.ones((2, 2)), hw).tolist()
        [[12, 16], [24, 28]]
    """
    transformed = lowering(A.shape, B.shape)
    product = array.matmul(transformed.lower_activation(A), transformed.lower_kernel(B), tiling=tiling)
    return transformed.lift(product)


def convolve(A: Any, B: Any, lowering: type = lowerings.S_Im2Col, N1: int = -1, N2: int = -1, N3: int = -1,
             projection_matrix: Any = projection_matrices.output_stationary, tiling: bool = False,
             **kwargs: Any) -> Any:
    """:func:`convolve_with_array` on a fresh fault-free array one larger than the lowered
    product in each bound (as flauers sizes it); ``kwargs`` go to :class:`SystolicArray`.

    Example:
        >>> import numpy as np
        >>> convolve(np.arange(1, 10).reshape(3, 3), np.ones((2, 2), dtype=np.int64)).tolist()
        [[12, 16], [24, 28]]
    """
    transformed = lowering(A.shape, B.shape)
    rows, depth = transformed.lowered_activation_shape
    columns = transformed.lowered_kernel_shape[1]
    N1 = rows + 1 if N1 == -1 else N1
    N2 = columns + 1 if N2 == -1 else N2
    N3 = depth + 1 if N3 == -1 else N3
    hw = SystolicArray(N1, N2, N3, projection_matrix, **kwargs)
    return convolve_with_array(A, B, hw, lowering, tiling)
