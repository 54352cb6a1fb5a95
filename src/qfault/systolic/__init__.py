"""Systolic-array fault simulation (seed 003, flauers): faults in the PE registers of a
matrix-multiplication array, exact and vectorized.

- :class:`SystolicArray` (configured by :class:`ArrayConfig`) holds :class:`ArrayFault` s (stuck-at
  0/1 or bit flip on register a, b or c of a PE over a cycle window) and computes ``matmul``
  exactly in the array's arithmetic: one clean matmul plus a vectorized recomputation of the
  outputs a fault reaches (closed-form geometry, :mod:`._dataflow`).
- Dataflows are a registry (``list_dataflows()``): flauers' eight projection matrices by name,
  or any invertible 3x3 integer matrix.
- :class:`SystolicLayers` is the ``"systolic"`` layer swap of :func:`qfault.layers.swap_modules`:
  ``nn.Conv2d`` (single-channel im2col lowering) and ``nn.Linear`` on one shared array.
- :class:`SystolicFaults` is a campaign's ``systolic`` section; :class:`FaultSpace` numbers its
  single-fault population for statistical campaigns.

Semantics and measured speed: docs/systolic.md.
"""

from ._array import (
    IN_DTYPES,
    ArrayConfig,
    ArrayFault,
    ArrayFaultHandle,
    MatmulPlan,
    SystolicArray,
    SystolicCastingError,
)
from ._lowering import kernel_columns, lower_activation, lower_kernel, output_size
from ._layers import SystolicConv2d, SystolicLayers, SystolicLinear, compatible_layers, model_array, systolic_layers
from ._campaign import BATCH_MODES, SECTION_KEYS, FaultSpace, SystolicFaults, permuted_index
from ._dataflow import DATAFLOWS, Dataflow, dataflow_matrix, get_dataflow, list_dataflows, register_dataflow

__all__ = [
    "ArrayConfig",
    "ArrayFault",
    "ArrayFaultHandle",
    "SystolicArray",
    "SystolicCastingError",
    "MatmulPlan",
    "IN_DTYPES",
    "DATAFLOWS",
    "Dataflow",
    "dataflow_matrix",
    "get_dataflow",
    "list_dataflows",
    "register_dataflow",
    "SystolicLayers",
    "SystolicConv2d",
    "SystolicLinear",
    "compatible_layers",
    "systolic_layers",
    "model_array",
    "lower_activation",
    "lower_kernel",
    "kernel_columns",
    "output_size",
    "SystolicFaults",
    "FaultSpace",
    "permuted_index",
    "SECTION_KEYS",
    "BATCH_MODES",
]
