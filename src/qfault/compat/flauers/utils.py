"""flauers' ``utils``: the register-line enum and the space-time equation helpers.

``LineType`` lists the lines in flauers' order (b, a, c), so ``LineType.b.value == 1`` and a
fault's ``line.name`` is ``"a"``, ``"b"`` or ``"c"``.
"""

from __future__ import annotations

from enum import Enum

import numpy as np

__all__ = ["LineType", "input_indexes_mapping", "space_time_equation", "inverse_space_time_equation",
           "is_comprised"]

#: the register lines, in flauers' order (b: B operand, a: A operand, c: partial sum)
LineType = Enum("LineType", ["b", "a", "c"])

#: dimension index of each named axis, per lowering type (single, channeled, batched)
input_indexes_mapping = [
    {"HEIGHT": 0, "WIDTH": 1},
    {"CHANNEL": 0, "HEIGHT": 1, "WIDTH": 2},
    {"BATCH": 0, "CHANNEL": 1, "HEIGHT": 2, "WIDTH": 3},
]


def space_time_equation(nu: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``(x, y, cycle) = T @ nu`` for an iteration ``nu = (i, j, k)`` (1-based) and matrix ``T``."""
    return np.asarray(t) @ np.asarray(nu)


def inverse_space_time_equation(eps: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The iteration ``nu`` that runs at ``eps = (x, y, cycle)``: ``T^-1 @ eps`` (may be fractional)."""
    return np.linalg.solve(np.asarray(t, dtype=np.float64), np.asarray(eps, dtype=np.float64))


def is_comprised(nu, nu_start, nu_stop) -> bool:
    """Whether ``nu_start[c] <= nu[c] <= nu_stop[c]`` for every component ``c``."""
    return all(lo <= v <= hi for v, lo, hi in zip(nu, nu_start, nu_stop))
