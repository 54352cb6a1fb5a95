"""flauers' eight space-time projection matrices, as numpy arrays (rows 0-1: space, row 2: time).

Each comes from qfault's dataflow registry (``qfault.systolic.get_dataflow(name).matrix``), so
the two always agree.
"""

from __future__ import annotations

import numpy as np

from ...systolic import get_dataflow

__all__ = ["output_stationary", "output_stationary_eq", "row_stationary", "row_stationary_eq",
           "col_stationary", "col_stationary_eq", "no_local_reuse", "no_local_reuse_eq"]


def _matrix(name: str) -> np.ndarray:
    return np.array(get_dataflow(name).matrix, dtype=np.int64)


#: c stationary (PE (i, j))
output_stationary = _matrix("output_stationary")
output_stationary_eq = _matrix("output_stationary_eq")
#: a stationary (PE (i, -k))
row_stationary = _matrix("row_stationary")
row_stationary_eq = _matrix("row_stationary_eq")
#: b stationary (PE (k, -j))
col_stationary = _matrix("col_stationary")
col_stationary_eq = _matrix("col_stationary_eq")
#: nothing stationary (det 3: a PE runs an iteration every third cycle)
no_local_reuse = _matrix("no_local_reuse")
no_local_reuse_eq = _matrix("no_local_reuse_eq")
