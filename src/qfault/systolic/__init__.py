"""Systolic-array fault simulation (seed 003): register faults in the PEs of a matmul array.
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
from ._layers import SystolicConv2d, SystolicLayers, SystolicLinear, compatible_layers, systolic_layers
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
