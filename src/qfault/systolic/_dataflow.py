"""Dataflows (space-time projection matrices) and the geometry of a systolic array.

An array computing C = A @ B runs iteration nu = (i, j, k) (1-based: i over the rows of A and C,
j over the columns of B and C, k over the reduction) on PE (x, y) = P @ nu at cycle t = pi @ nu,
where P (rows 0-1) and pi (row 2) form an invertible integer 3x3 matrix T. Register b moves along
P @ (1, 0, 0), a along P @ (0, 1, 0), c along P @ (0, 0, 1); a zero direction is stationary.

The geometry here is closed-form: the iterations a PE runs form a lattice line
nu0 + m * u (u spans the kernel of P), so a PE's iterations, the PE set and what a fault reaches
are computed without enumerating the N1 x N2 x N3 iteration space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property

import numpy as np

from .._errors import QFaultConfigError
from .._registry import Registry

#: the register lines and the unit iteration step each one's value is reused along
LINES: dict[str, tuple[int, int, int]] = {"a": (0, 1, 0), "b": (1, 0, 0), "c": (0, 0, 1)}


@dataclass(frozen=True)
class Dataflow:
    """A named space-time projection matrix.

    Attributes:
        name: the registered name.
        matrix: T as three rows of three integers.
        description: what is stationary, in words.
    """

    name: str
    matrix: tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]
    description: str = ""


DATAFLOWS: Registry[Dataflow] = Registry("dataflow")


def register_dataflow(name: str, matrix, description: str = "", *, aliases: tuple[str, ...] = ()) -> Dataflow:
    """Register a projection matrix under ``name`` (checked as :func:`dataflow_matrix` does)."""
    checked = dataflow_matrix(matrix, field=f"dataflow {name!r}")
    entry = Dataflow(name, tuple(tuple(int(v) for v in row) for row in checked.tolist()), description)
    DATAFLOWS.register(name, entry, aliases=aliases)
    return entry


def get_dataflow(name: str) -> Dataflow:
    """The registered dataflow ``name`` (an unknown name lists the valid ones)."""
    return DATAFLOWS.get(name)


def list_dataflows(pattern: str = "*") -> list[str]:
    """Sorted names of the registered dataflows matching a shell-style ``pattern``."""
    return DATAFLOWS.list(pattern)


def dataflow_matrix(value, *, field: str = "dataflow") -> np.ndarray:
    """T as a 3x3 int64 array, from a registered name or three rows of three integers.

    Raises:
        QFaultConfigError: an unknown name, a value that is not 3x3 integers, or a singular T.
    """
    if isinstance(value, str):
        return np.array(DATAFLOWS.get(value).matrix, dtype=np.int64)
    try:
        matrix = np.array(value, dtype=object)
    except (TypeError, ValueError):
        matrix = None
    allowed = f"a dataflow name ({', '.join(DATAFLOWS.list())}) or a 3x3 integer matrix"
    if matrix is None or matrix.shape != (3, 3) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in matrix.flat):
        raise QFaultConfigError(field, value, allowed)
    matrix = matrix.astype(np.int64)
    if _det3(matrix) == 0:
        raise QFaultConfigError(field, matrix.tolist(), "an invertible matrix", hint="T is singular (det 0)")
    return matrix


def _det3(m: np.ndarray) -> int:
    m = [[int(v) for v in row] for row in m]
    return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))


register_dataflow("output_stationary", [[1, 0, 0], [0, 1, 0], [1, 1, 1]],
                  "c stationary: PE (i, j); a moves along y, b along x", aliases=("os",))
register_dataflow("output_stationary_eq", [[-1, 0, 0], [0, -1, 0], [1, 1, 1]],
                  "output stationary, mirrored: PE (-i, -j)", aliases=("os_eq",))
register_dataflow("row_stationary", [[1, 0, 0], [0, 0, -1], [1, 1, 1]],
                  "a (input) stationary: PE (i, -k); b moves along x, c along -y",
                  aliases=("input_stationary", "is"))
register_dataflow("row_stationary_eq", [[-1, 0, 0], [0, 0, 1], [1, 1, 1]],
                  "input stationary, mirrored: PE (-i, k)", aliases=("input_stationary_eq", "is_eq"))
register_dataflow("col_stationary", [[0, 0, 1], [0, -1, 0], [1, 1, 1]],
                  "b (weight) stationary: PE (k, -j); a moves along -y, c along x",
                  aliases=("weight_stationary", "ws"))
register_dataflow("col_stationary_eq", [[0, 0, -1], [0, 1, 0], [1, 1, 1]],
                  "weight stationary, mirrored: PE (-k, j)", aliases=("weight_stationary_eq", "ws_eq"))
register_dataflow("no_local_reuse", [[-1, 1, 0], [0, -1, 1], [1, 1, 1]],
                  "nothing stationary (hexagonal, det 3): PE (j - i, k - j)", aliases=("nlr",))
register_dataflow("no_local_reuse_eq", [[0, 1, -1], [-1, 1, 0], [1, 1, 1]],
                  "nothing stationary, mirrored (det 3): PE (j - k, j - i)", aliases=("nlr_eq",))


def _ceil_div(a: np.ndarray, b: int) -> np.ndarray:
    return -((-a) // b)


class Geometry:
    """Where and when an array of bounds ``(n1, n2, n3)`` with matrix ``T`` runs each iteration.

    Args:
        bounds: (N1, N2, N3), the array's iteration bounds.
        matrix: T (3x3 integers, invertible).
    """

    def __init__(self, bounds: tuple[int, int, int], matrix: np.ndarray):
        self.bounds = tuple(int(b) for b in bounds)
        self.matrix = np.asarray(matrix, dtype=np.int64)
        self.space = self.matrix[:2]
        self.time = self.matrix[2]
        self.det = _det3(self.matrix)
        adj = _adjugate(self.matrix)
        self._adj = np.array(adj, dtype=np.int64)
        inverse = [[Fraction(adj[r][c], self.det) for c in range(3)] for r in range(3)]
        # the PE's iterations: nu(t) = T^-1 (x, y, t) is integral every `period` cycles, and
        # successive ones differ by `step` (a kernel vector of P)
        column = [inverse[r][2] for r in range(3)]
        denominator = math.lcm(*(f.denominator for f in column))
        self.period = denominator
        self.step = np.array([int(f * denominator) for f in column], dtype=np.int64)
        if (self.time @ self.step) != self.period:  # T @ T^-1 = I makes this hold; keep it explicit
            raise AssertionError("inconsistent projection matrix")

    def flow(self, line: str) -> np.ndarray:
        """The PE step (dx, dy) a value on ``line`` takes per reuse; (0, 0) means stationary."""
        return self.space @ np.array(LINES[line], dtype=np.int64)

    def stationary(self, line: str) -> bool:
        """Whether ``line``'s register keeps its value in one PE."""
        return not self.flow(line).any()

    def hop_cycles(self, line: str) -> int:
        """Cycles between two successive uses of one value on ``line``."""
        return int(self.time @ np.array(LINES[line], dtype=np.int64))

    def _anchor(self, pe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For PEs ``pe`` (n, 2): one integral iteration of each (n, 3) and its cycle (n,)."""
        pe = np.asarray(pe, dtype=np.int64).reshape(-1, 2)
        anchors = np.zeros((len(pe), 3), dtype=np.int64)
        cycles = np.zeros(len(pe), dtype=np.int64)
        found = np.zeros(len(pe), dtype=bool)
        # T^-1 (x, y, t) = adj(T) (x, y, t) / det is integral for t = t0 (mod period), 0 <= t0 < period
        sign = 1 if self.det > 0 else -1
        for t0 in range(self.period):
            values = sign * (pe[:, :1] * self._adj[:, 0] + pe[:, 1:] * self._adj[:, 1] + t0 * self._adj[:, 2])
            ok = np.all(values % abs(self.det) == 0, axis=1) & ~found
            anchors[ok] = values[ok] // abs(self.det)
            cycles[ok] = t0
            found |= ok
        return anchors, cycles

    def _m_range(self, anchors: np.ndarray, box: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """The m range with ``anchor + m * step`` inside 1..box per coordinate; empty when lo > hi."""
        lo = np.full(len(anchors), -(1 << 40), dtype=np.int64)
        hi = np.full(len(anchors), 1 << 40, dtype=np.int64)
        for c in range(3):
            s = int(self.step[c])
            a = anchors[:, c]
            if s > 0:
                lo = np.maximum(lo, _ceil_div(1 - a, s))
                hi = np.minimum(hi, (box[c] - a) // s)
            elif s < 0:
                lo = np.maximum(lo, _ceil_div(a - box[c], -s))
                hi = np.minimum(hi, (a - 1) // (-s))
            else:
                bad = (a < 1) | (a > box[c])
                hi = np.where(bad, lo - 1, hi)
        return lo, hi

    @cached_property
    def pes(self) -> np.ndarray:
        """Every PE (n, 2) in the order a nested i, j, k loop over the bounds first meets it."""
        corners = np.array([[i, j, k] for i in (1, self.bounds[0]) for j in (1, self.bounds[1])
                            for k in (1, self.bounds[2])], dtype=np.int64)
        projected = corners @ self.space.T
        xs = np.arange(projected[:, 0].min(), projected[:, 0].max() + 1)
        ys = np.arange(projected[:, 1].min(), projected[:, 1].max() + 1)
        grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1).reshape(-1, 2)
        anchors, _ = self._anchor(grid)
        lo, hi = self._m_range(anchors, self.bounds)
        keep = lo <= hi
        grid, anchors, lo, hi = grid[keep], anchors[keep], lo[keep], hi[keep]
        # the lexicographically first iteration on each PE's lattice line is at one end of it
        first_nonzero = self.step[np.flatnonzero(self.step)[0]]
        m_first = lo if first_nonzero > 0 else hi
        first = anchors + m_first[:, None] * self.step
        order = np.lexsort((first[:, 2], first[:, 1], first[:, 0]))
        return grid[order]

    @cached_property
    def _pe_lookup(self) -> set[tuple[int, int]]:
        return {(int(x), int(y)) for x, y in self.pes}

    def has_pe(self, x: int, y: int) -> bool:
        """Whether (x, y) is a PE of the array."""
        return (int(x), int(y)) in self._pe_lookup

    def pe_iterations(self, x: int, y: int, box: tuple[int, int, int], window: tuple[int, int | None]
                      ) -> np.ndarray:
        """The iterations (n, 3), 1-based, PE (x, y) runs inside ``box`` at cycles in ``window``."""
        anchors, cycles = self._anchor(np.array([[x, y]]))
        lo, hi = self._m_range(anchors, box)
        lo, hi = int(lo[0]), int(hi[0])
        t0 = int(cycles[0])
        start, stop = window
        # cycle of m: t0 + m * period (period > 0)
        lo = max(lo, -((-(start - t0)) // self.period))
        if stop is not None:
            hi = min(hi, (stop - t0) // self.period)
        if lo > hi:
            return np.zeros((0, 3), dtype=np.int64)
        m = np.arange(lo, hi + 1, dtype=np.int64)
        return anchors[0] + m[:, None] * self.step

    def cycles(self, iterations: np.ndarray) -> np.ndarray:
        """Cycle of each iteration (n, 3), 1-based."""
        return iterations @ self.time

    def reach(self, line: str, x: int, y: int, window: tuple[int, int | None], box: tuple[int, int, int]
              ) -> tuple[np.ndarray, np.ndarray]:
        """What a fault on ``line`` of PE (x, y) active during ``window`` reaches inside ``box``.

        Returns:
            ``(iterations, hops)``: the reached iterations (n, 3), 1-based, and how many reuses
            downstream of the faulty PE each one is (0: run on the faulty PE itself).
        """
        own = self.pe_iterations(x, y, box, window)
        if self.stationary(line) or len(own) == 0:
            return own, np.zeros(len(own), dtype=np.int64)
        axis = int(np.flatnonzero(LINES[line])[0])
        remaining = box[axis] - own[:, axis]  # further uses of each value inside the box
        hops_max = int(remaining.max())
        hops = np.arange(hops_max + 1, dtype=np.int64)
        valid = hops[None, :] <= remaining[:, None]
        reached = np.repeat(own[:, None, :], hops_max + 1, axis=1)
        reached[:, :, axis] += hops[None, :]
        hop_grid = np.broadcast_to(hops[None, :], valid.shape)
        return reached[valid], hop_grid[valid]


def _adjugate(m: np.ndarray) -> list[list[int]]:
    m = [[int(v) for v in row] for row in m]
    cof = [[0] * 3 for _ in range(3)]
    for r in range(3):
        for c in range(3):
            rows = [i for i in range(3) if i != r]
            cols = [j for j in range(3) if j != c]
            minor = m[rows[0]][cols[0]] * m[rows[1]][cols[1]] - m[rows[0]][cols[1]] * m[rows[1]][cols[0]]
            cof[r][c] = (-1) ** (r + c) * minor
    return [[cof[c][r] for c in range(3)] for r in range(3)]
