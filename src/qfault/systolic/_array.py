"""The systolic array: its configuration, its register faults and the exact fast matmul.

The clean product comes from one matmul; only the outputs a fault can reach are recomputed,
vectorized over them, in the array's own arithmetic: operands corrupted where a fault on line a
or b reaches, partial sums accumulated in increasing k (one rounding per multiply and per add
for floats, wrap-around in the mac width for integers) and corrupted after the MAC where a fault
on line c reaches. What reaches where comes from the closed-form geometry of
:mod:`._dataflow` (docs/systolic.md states the semantics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._errors import QFaultConfigError, check_choice
from .._handle import RemovableHandle
from ._dataflow import LINES, Geometry, dataflow_matrix

_INT_DTYPES = {"int8": torch.int8, "int16": torch.int16, "int32": torch.int32, "int64": torch.int64}
_FLOAT_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                 "float64": torch.float64}
#: input dtypes an array accepts, and the default accumulator of each
IN_DTYPES = {"int8": "int32", "int16": "int64", "int32": "int64", "float16": "float16",
             "bfloat16": "bfloat16", "float32": "float32", "float64": "float64"}
_BIT_VIEW = {16: torch.int16, 32: torch.int32, 64: torch.int64}
# products per chunk of the k-ordered loop (a buffer of ~4 MB of float32: it stays in cache)
_PRODUCT_CHUNK = 1 << 20
#: polarity names accepted besides the reference tool's 0, 1, 2
POLARITIES = {"stuck_at_0": 0, "stuck_at_1": 1, "bit_flip": 2}


def dtype_name(value: Any, field_name: str = "in_dtype") -> str:
    """The canonical name (``"float32"``) of a dtype given as a name, torch dtype or numpy dtype."""
    if isinstance(value, torch.dtype):
        name = str(value).removeprefix("torch.")
    elif isinstance(value, str):
        name = value.removeprefix("torch.").removeprefix("np.").removeprefix("numpy.")
    else:
        try:
            name = np.dtype(value).name
        except TypeError:
            name = repr(value)
    if name not in _INT_DTYPES and name not in _FLOAT_DTYPES:
        raise QFaultConfigError(field_name, value, "one of " + ", ".join(IN_DTYPES))
    return name


def _torch_dtype(name: str) -> torch.dtype:
    return _INT_DTYPES.get(name) or _FLOAT_DTYPES[name]


def _width(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size() * 8


@dataclass(frozen=True)
class ArrayConfig:
    """A systolic array computing C = A @ B.

    Args:
        n1: rows of A and C the array holds (iteration bound of i).
        n2: columns of B and C (bound of j).
        n3: reduction length, columns of A and rows of B (bound of k).
        dataflow: a registered name (``list_dataflows()``) or a 3x3 integer matrix T.
        in_dtype: operand dtype of lines a and b: int8, int16, int32, float16, bfloat16,
            float32, float64.
        mac_dtype: accumulator dtype of line c and of the result; default int8 -> int32,
            int16 -> int64, int32 -> int64, floats -> the input dtype.
        tiling: run products larger than the array tile by tile (else they are refused).

    Example:
        >>> ArrayConfig(29, 29, 161, "output_stationary").mac_dtype
        'float32'
    """

    n1: int
    n2: int
    n3: int
    dataflow: Any = "output_stationary"
    in_dtype: str = "float32"
    mac_dtype: str | None = None
    tiling: bool = False

    def __post_init__(self) -> None:
        for name in ("n1", "n2", "n3"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise QFaultConfigError(name, value, "a positive integer")
            object.__setattr__(self, name, int(value))
        if isinstance(self.dataflow, str):
            dataflow_matrix(self.dataflow)
        else:
            object.__setattr__(self, "dataflow",
                               tuple(tuple(int(v) for v in row) for row in dataflow_matrix(self.dataflow).tolist()))
        in_name = dtype_name(self.in_dtype)
        if in_name == "int64":
            raise QFaultConfigError("in_dtype", self.in_dtype, "one of " + ", ".join(IN_DTYPES),
                                    hint="int64 operands would need a 256-bit accumulator")
        object.__setattr__(self, "in_dtype", in_name)
        mac = IN_DTYPES[in_name] if self.mac_dtype is None else dtype_name(self.mac_dtype, "mac_dtype")
        if in_name in _FLOAT_DTYPES and mac != in_name:
            raise QFaultConfigError("mac_dtype", self.mac_dtype, f"{in_name} (floats accumulate in the input dtype)")
        if in_name in _INT_DTYPES and (mac not in _INT_DTYPES or _width(_torch_dtype(mac)) < _width(_torch_dtype(in_name))):
            wider = [n for n in _INT_DTYPES if _width(_INT_DTYPES[n]) >= _width(_INT_DTYPES[in_name])]
            raise QFaultConfigError("mac_dtype", self.mac_dtype, "one of " + ", ".join(wider))
        object.__setattr__(self, "mac_dtype", mac)
        if not isinstance(self.tiling, bool):
            raise QFaultConfigError("tiling", self.tiling, "True or False")

    @property
    def bounds(self) -> tuple[int, int, int]:
        return (self.n1, self.n2, self.n3)

    def to_dict(self) -> dict:
        """Plain fields (YAML/JSON form)."""
        dataflow = self.dataflow if isinstance(self.dataflow, str) else [list(r) for r in self.dataflow]
        return {"n1": self.n1, "n2": self.n2, "n3": self.n3, "dataflow": dataflow, "in_dtype": self.in_dtype,
                "mac_dtype": self.mac_dtype, "tiling": self.tiling}


@dataclass(frozen=True)
class ArrayFault:
    """A fault on one register of one PE.

    Args:
        line: ``"a"`` (operand from A, reused along j), ``"b"`` (from B, along i) or ``"c"``
            (the partial sum, along k).
        x, y: the PE, in the coordinates :meth:`SystolicArray.pes` lists (1-based, may be
            negative).
        bit: the bit of the register: lines a and b have the input width, c the mac width.
        polarity: 0 stuck-at-0, 1 stuck-at-1, 2 bit flip (or ``"stuck_at_0"``, ``"stuck_at_1"``,
            ``"bit_flip"``).
        t_start, t_stop: the cycles the fault is active, both inclusive; ``t_stop=None`` means
            forever. Iteration (i, j, k) runs at cycle ``T[2] @ (i, j, k)`` (1-based).
        msb: ``"first"``: bit 0 is the most significant (sign) bit; ``"last"``: bit 0 is the LSB.
        channel: for convolution layers, the output channel the fault acts on (-1: all);
            matmuls and linear layers ignore it.
    """

    line: str
    x: int
    y: int
    bit: int
    polarity: Any = 1
    t_start: int = 0
    t_stop: int | None = None
    msb: str = "first"
    channel: int = -1

    def __post_init__(self) -> None:
        check_choice("line", self.line, tuple(LINES))
        for name in ("x", "y", "bit", "t_start", "channel"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise QFaultConfigError(name, value, "an integer")
            object.__setattr__(self, name, int(value))
        polarity = POLARITIES.get(self.polarity, self.polarity) if isinstance(self.polarity, str) else self.polarity
        if isinstance(polarity, bool) or polarity not in (0, 1, 2):
            raise QFaultConfigError("polarity", self.polarity,
                                    "0 (stuck-at-0), 1 (stuck-at-1), 2 (bit flip) or " + ", ".join(POLARITIES))
        object.__setattr__(self, "polarity", int(polarity))
        if self.bit < 0:
            raise QFaultConfigError("bit", self.bit, "a bit index >= 0")
        if self.t_start < 0:
            raise QFaultConfigError("t_start", self.t_start, "a cycle >= 0")
        if self.t_stop is not None:
            if isinstance(self.t_stop, bool) or not isinstance(self.t_stop, (int, np.integer)) or self.t_stop < self.t_start:
                raise QFaultConfigError("t_stop", self.t_stop, f"None (forever) or a cycle >= t_start ({self.t_start})")
            object.__setattr__(self, "t_stop", int(self.t_stop))
        check_choice("msb", self.msb, ("first", "last"))
        if self.channel < -1:
            raise QFaultConfigError("channel", self.channel, "-1 (every channel) or a channel index >= 0")

    def masks(self, width: int) -> tuple[int, int]:
        """``(keep, xor)`` on a ``width``-bit code: the fault maps ``v`` to ``(v & keep) ^ xor``."""
        position = width - 1 - self.bit if self.msb == "first" else self.bit
        bit = 1 << position
        everything = (1 << width) - 1
        if self.polarity == 2:
            return everything, bit
        return everything & ~bit, bit if self.polarity == 1 else 0


class SystolicCastingError(QFaultConfigError):
    """An operand does not fit the array's input dtype exactly."""


class ArrayFaultHandle(RemovableHandle):
    """Returned by :meth:`SystolicArray.add_fault`: ``remove()`` takes that fault off again."""

    def __init__(self, array: "SystolicArray", fault: ArrayFault, fault_id: int) -> None:
        super().__init__()
        self.fault = fault
        self.id = fault_id
        self._undo.append(lambda: array.remove_fault(fault_id))

    def __repr__(self) -> str:
        return f"ArrayFaultHandle({self.fault}, {'removed' if self.removed else 'active'})"


@dataclass
class MatmulPlan:
    """What the faults reach in one product shape: the outputs to recompute and their masks.

    ``rows``/``cols`` (Q,) are the output positions; ``keep``/``xor`` hold per line a (Q, K')
    mask pair on that line's code (K' = tiles along k x the tile depth), identity where no fault
    reaches or past the reduction length.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    depth: int                  # tile depth along k (the array's n3, or K when it fits)
    k_tiles: int
    masks: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    # tile-local k where some line-c mask is not the identity -> the ops it takes on the code:
    # "and" (keep only), "xor" (xor only), "or" (x & ~m ^ m = x | m: stuck-at-1) or "and_xor"
    c_steps: dict[int, str] = field(default_factory=dict)
    # per line, the distinct (keep, xor) pairs other than the identity among its masks (signed
    # codes of the line width): what a fault can make of any operand on that line
    variants: dict[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    #: what the layers derive from the plan alone (index tensors of a lowering), kept with it
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def empty(self) -> bool:
        return self.rows.numel() == 0

    def restrict(self, positions: torch.Tensor, lines: tuple[str, ...] = ("a", "b")) -> "MatmulPlan":
        """The plan of the same outputs over a subset of the reduction: output q keeps the
        reduction positions ``positions[q]`` (Q, n) only (one k tile; no line-c masks, whose
        ops depend on every step). Masks of ``lines`` come along; other lines are dropped."""
        if self.k_tiles != 1 or "c" in self.masks:
            raise ValueError("only single-tile plans without line-c masks can be restricted")
        masks = {line: (keep.gather(1, positions), xor.gather(1, positions))
                 for line, (keep, xor) in self.masks.items() if line in lines}
        return MatmulPlan(self.rows, self.cols, positions.shape[1], 1, masks)

    def to(self, device: torch.device) -> "MatmulPlan":
        if self.rows.device == device:
            return self
        masks = {line: (keep.to(device), xor.to(device)) for line, (keep, xor) in self.masks.items()}
        return MatmulPlan(self.rows.to(device), self.cols.to(device), self.depth, self.k_tiles, masks, self.c_steps,
                          self.variants)


class SystolicArray:
    """A systolic array and the faults on its PE registers.

    Args:
        config: an :class:`ArrayConfig`, or its fields as keywords.

    Example:
        >>> array = SystolicArray(ArrayConfig(10, 10, 10, "output_stationary"))
        >>> a = torch.tensor([[1., 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]) * 0.5
        >>> b = torch.tensor([[1., 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]) * 0.5
        >>> handle = array.add_fault(ArrayFault("c", x=1, y=1, bit=5, polarity=1))
        >>> array.matmul(a, b)[0, 0].item(), (a @ b)[0, 0].item()
        (710.75, 9.5)
    """

    def __init__(self, config: ArrayConfig | None = None, **fields: Any) -> None:
        if config is None:
            config = ArrayConfig(**fields)
        elif fields:
            raise TypeError("give an ArrayConfig or its fields, not both")
        if not isinstance(config, ArrayConfig):
            raise QFaultConfigError("config", type(config).__name__, "an ArrayConfig")
        self.config = config
        self.geometry = Geometry(config.bounds, dataflow_matrix(config.dataflow))
        self.in_dtype = _torch_dtype(config.in_dtype)
        self.mac_dtype = _torch_dtype(config.mac_dtype)
        self.widths = {"a": _width(self.in_dtype), "b": _width(self.in_dtype), "c": _width(self.mac_dtype)}
        self._faults: dict[int, ArrayFault] = {}
        self._next_id = 0
        self._plans: dict[tuple, MatmulPlan] = {}
        self._stack: tuple[tuple[ArrayFault, ...], ...] | None = None

    # ----------------------------------------------------------------- geometry and faults
    @property
    def matrix(self) -> np.ndarray:
        """T, the space-time projection matrix (3x3)."""
        return self.geometry.matrix.copy()

    def pes(self) -> list[tuple[int, int]]:
        """Every PE (x, y), in the order a loop over i, j, k first meets it."""
        return [(int(x), int(y)) for x, y in self.geometry.pes]

    @property
    def faults(self) -> tuple[ArrayFault, ...]:
        """The active faults, in the order added."""
        return tuple(self._faults.values())

    def check_fault(self, fault: ArrayFault) -> None:
        """Raise :class:`QFaultConfigError` unless ``fault`` fits this array (PE, bit)."""
        if not isinstance(fault, ArrayFault):
            raise QFaultConfigError("fault", type(fault).__name__, "an ArrayFault")
        if not self.geometry.has_pe(fault.x, fault.y):
            pes = self.geometry.pes
            raise QFaultConfigError(
                "(x, y)", (fault.x, fault.y),
                f"a PE of the array: x in [{pes[:, 0].min()}, {pes[:, 0].max()}], "
                f"y in [{pes[:, 1].min()}, {pes[:, 1].max()}] and listed by pes() ({len(pes)} PEs)")
        width = self.widths[fault.line]
        if fault.bit >= width:
            kind = "input" if fault.line in "ab" else "mac"
            raise QFaultConfigError("bit", fault.bit, f"0..{width - 1} (line {fault.line} has the {width}-bit "
                                                      f"{kind} dtype {self.config.in_dtype if kind == 'input' else self.config.mac_dtype})")

    def add_fault(self, fault: ArrayFault) -> ArrayFaultHandle:
        """Put ``fault`` on the array (checked first: a refused fault leaves the array as it was)."""
        self.check_fault(fault)
        fault_id = self._next_id
        self._next_id += 1
        self._faults[fault_id] = fault
        self._plans.clear()
        return ArrayFaultHandle(self, fault, fault_id)

    def remove_fault(self, fault_id: int) -> None:
        """Take the fault with id ``fault_id`` off (nothing happens when it is already gone)."""
        if self._faults.pop(fault_id, None) is not None:
            self._plans.clear()

    def clear_faults(self) -> None:
        """Take every fault off."""
        self._faults.clear()
        self._plans.clear()

    def stack_faults(self, fault_sets) -> RemovableHandle:
        """Run several fault sets in one forward of the systolic layers: with ``K`` sets, a
        layer's batch is split into ``K`` equal blocks and block ``k`` runs with the array's
        faults plus ``fault_sets[k]``, as if it ran alone (each block is its own product).
        Every fault is checked first. ``remove()`` on the returned handle ends the stack.

        Example:
            >>> array = SystolicArray(ArrayConfig(4, 4, 8))
            >>> with array.stack_faults([[ArrayFault("a", 1, 1, 1)], []]):
            ...     array.fault_blocks()[1]
            ()
        """
        sets = tuple(tuple(fault_set) for fault_set in fault_sets)
        if not sets:
            raise QFaultConfigError("fault_sets", list(fault_sets), "at least one fault set")
        for fault_set in sets:
            for fault in fault_set:
                self.check_fault(fault)
        self._stack = sets
        self._plans.clear()
        handle = RemovableHandle()

        def end() -> None:
            if self._stack is sets:
                self._stack = None
                self._plans.clear()

        handle._undo.append(end)
        return handle

    def fault_blocks(self) -> list[tuple[ArrayFault, ...]] | None:
        """The fault set of each block of a stacked forward (None: not stacked)."""
        if self._stack is None:
            return None
        return [self.faults + extra for extra in self._stack]

    def reached_iterations(self, fault: ArrayFault, shape: tuple[int, int, int]) -> torch.Tensor:
        """The iterations (n, 3), 0-based (i, j, k), where ``fault`` acts in an
        (m, k) @ (k, n) product that fits the array (``shape`` = (m, k, n))."""
        self.check_fault(fault)
        m, k, n = shape
        iterations, _ = self.geometry.reach(fault.line, fault.x, fault.y, (fault.t_start, fault.t_stop), (m, n, k))
        return torch.from_numpy(iterations - 1)

    # ----------------------------------------------------------------------------- plans
    def plan(self, shape: tuple[int, int, int], faults: tuple[ArrayFault, ...] | None = None,
             tiling: bool | None = None) -> MatmulPlan:
        """The outputs ``faults`` (default: all active) reach in an (m, k) @ (k, n) product and
        the masks to recompute them (cached until the faults change)."""
        faults = self.faults if faults is None else tuple(faults)
        tiling = self.config.tiling if tiling is None else tiling
        key = (tuple(shape), faults, tiling)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._build_plan(tuple(int(s) for s in shape), faults, tiling)
        return plan

    def _box(self, shape: tuple[int, int, int], tiling: bool) -> tuple[int, int, int]:
        m, k, n = shape
        if not tiling:
            for name, size, bound, what in (("n1", m, self.config.n1, "rows of A"),
                                            ("n2", n, self.config.n2, "columns of B"),
                                            ("n3", k, self.config.n3, "columns of A / rows of B")):
                if size > bound:
                    raise QFaultConfigError(f"matrix shape ({m}, {k}) @ ({k}, {n})", f"{size} {what}",
                                            f"at most {name}={bound}", hint="turn tiling on for larger products")
            return (m, n, k)
        return (min(m, self.config.n1), min(n, self.config.n2), min(k, self.config.n3))

    def _build_plan(self, shape: tuple[int, int, int], faults: tuple[ArrayFault, ...], tiling: bool) -> MatmulPlan:
        m, k, n = shape
        box = self._box(shape, tiling)
        depth = box[2]
        entries = []  # per fault: line, iterations (0-based), hops
        for index, fault in enumerate(faults):
            iterations, hops = self.geometry.reach(fault.line, fault.x, fault.y, (fault.t_start, fault.t_stop), box)
            if len(iterations):
                entries.append((index, fault, iterations - 1, hops))
        empty = torch.zeros(0, dtype=torch.long)
        if not entries:
            return MatmulPlan(empty, empty, depth, 1)
        span = box[1]  # outputs as flat keys i * span + j: a 1-D unique instead of a row-wise one
        keys = np.unique(np.concatenate([it[:, 0] * span + it[:, 1] for _, _, it, _ in entries]))
        local = np.stack(np.divmod(keys, span), axis=1)                     # (R, 2): i, j, sorted
        masks_local = {}
        for line in LINES:
            line_entries = [e for e in entries if e[1].line == line]
            if line_entries:
                masks_local[line] = _compose(line_entries, keys, span, depth, self.widths[line])
        # every tile repeats the tile-local positions; drop those past the matrix edge
        tiles_i = -(-m // box[0])
        tiles_j = -(-n // box[1])
        k_tiles = -(-k // depth)
        ti, tj, r = np.meshgrid(np.arange(tiles_i), np.arange(tiles_j), np.arange(len(local)), indexing="ij")
        rows = ti.ravel() * box[0] + local[r.ravel(), 0]
        cols = tj.ravel() * box[1] + local[r.ravel(), 1]
        valid = (rows < m) & (cols < n)
        rows, cols, r = rows[valid], cols[valid], r.ravel()[valid]
        past_end = (np.arange(k_tiles)[:, None] * depth + np.arange(depth)[None, :]) >= k  # (k_tiles, depth)
        masks = {}
        c_steps: dict[int, str] = {}
        variants = {line: _variants(keep, xor) for line, (keep, xor) in masks_local.items()}
        for line, (keep, xor) in masks_local.items():
            keep_q = np.repeat(keep[r][:, None, :], k_tiles, axis=1)
            xor_q = np.repeat(xor[r][:, None, :], k_tiles, axis=1)
            keep_q[:, past_end] = -1
            xor_q[:, past_end] = 0
            dtype = self.mac_dtype if line == "c" else self.in_dtype
            masks[line] = (_as_code_tensor(keep_q, dtype), _as_code_tensor(xor_q, dtype))
            if line == "c":
                c_steps = _step_ops(keep, xor)
        return MatmulPlan(torch.from_numpy(rows.astype(np.int64)), torch.from_numpy(cols.astype(np.int64)),
                          depth, k_tiles, masks, c_steps, variants)

    # ---------------------------------------------------------------------------- matmul
    def cast(self, value: Any, field_name: str = "A") -> torch.Tensor:
        """``value`` as a tensor of the input dtype; refuses values that do not fit exactly."""
        tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
        if tensor.dtype == self.in_dtype:
            return tensor
        converted = tensor.to(self.in_dtype)
        if tensor.dtype.is_floating_point:
            back = converted.to(tensor.dtype)
            same = back == tensor
            if self.in_dtype.is_floating_point:
                same |= torch.isnan(tensor) & torch.isnan(back)
        elif self.in_dtype.is_floating_point:  # integers into a float dtype
            same = converted.to(torch.float64).to(torch.int64) == tensor.to(torch.int64)
        else:
            same = converted.to(torch.int64) == tensor.to(torch.int64)
        if not bool(same.all()):
            bad = tensor[~same].flatten()[0].item()
            raise SystolicCastingError(field_name, bad, f"values that {self.config.in_dtype} holds exactly",
                                       hint=f"casting {str(tensor.dtype).removeprefix('torch.')} to {self.config.in_dtype} "
                                            f"changes {int((~same).sum())} of {same.numel()} values")
        return converted

    def matmul(self, a: Any, b: Any, *, tiling: bool | None = None) -> torch.Tensor:
        """C = A @ B on the array, with its faults.

        Args:
            a: (..., m, k) operand (activations); tensors or arrays of values the input dtype
                holds exactly.
            b: (..., k, n) operand (weights); batch dimensions broadcast.
            tiling: override the config's ``tiling``.

        Returns:
            (..., m, n) in the mac dtype. Outputs no fault reaches are the clean product (for
            floats: as ``torch.matmul`` sums); reached ones are recomputed exactly in the
            array's order. Float results carry the clean product's gradient (straight through).

        Raises:
            QFaultConfigError: a product larger than the array with tiling off, mismatched
                shapes; :class:`SystolicCastingError` for operands the input dtype cannot hold.
        """
        a = self.cast(a, "A")
        b = self.cast(b, "B")
        if a.dim() < 2 or b.dim() < 2 or a.shape[-1] != b.shape[-2]:
            raise QFaultConfigError("matrix shapes", (tuple(a.shape), tuple(b.shape)), "(..., m, k) and (..., k, n)")
        m, k = a.shape[-2:]
        n = b.shape[-1]
        plan = self.plan((m, k, n), tiling=tiling)
        clean = self.clean_matmul(a, b)
        if plan.empty:
            return clean
        plan = plan.to(a.device)
        rows = a.index_select(-2, plan.rows)                     # (..., Q, k)
        cols = b.index_select(-1, plan.cols).transpose(-1, -2)   # (..., Q, k)
        values = self.recompute(rows, cols, plan)
        return replace_outputs(clean, (Ellipsis, plan.rows, plan.cols), values)

    def mask_operands(self, steps: torch.Tensor, plan: MatmulPlan, line: str) -> torch.Tensor:
        """Step-major operands ``steps`` (K', Q, ...) of line ``a`` or ``b`` (see
        :meth:`recompute_steps`) with the plan's masks of that line applied."""
        if line not in plan.masks:
            return steps
        keep, xor = (m.t().reshape(*m.shape[::-1], *((1,) * (steps.dim() - 2))) for m in plan.masks[line])
        return _apply_masks(steps, keep, xor, self.widths[line])

    def spoiled_operands(self, values: torch.Tensor, plan: MatmulPlan, line: str
                         ) -> list[tuple[tuple[int, int] | None, torch.Tensor]]:
        """The float operands ``values`` of ``line`` (any shape) that are infinite or NaN as they
        are (mask None) or under a mask pair the plan holds on that line: ``(mask, where)`` for
        each one that spoils any (empty: no masked operand made from ``values`` is infinite or
        NaN). A pass or two over ``values`` per mask pair that may set the exponent all ones."""
        plain = _non_finite(values)
        out = [] if plain is None else [(None, plain)]
        for mask in plan.variants.get(line, ()):
            effect = self._exponent_effect(values.dtype, line, mask)
            if effect == "as is" and plain is not None:  # the exponent as it was: those spoilt unmasked
                out.append((mask, plain))
            elif effect == "may spoil" and (where := _non_finite(self._masked(values, line, mask))) is not None:
                out.append((mask, where))
        return out

    def _masked(self, values: torch.Tensor, line: str, mask: tuple[int, int]) -> torch.Tensor:
        """Float operands under a (keep, xor) mask pair."""
        keep, xor = mask
        bits = values.view(_BIT_VIEW[self.widths[line]])
        return ((bits & keep) ^ xor).view(values.dtype)

    def _exponent_effect(self, dtype: torch.dtype, line: str, mask: tuple[int, int]) -> str:
        """What a (keep, xor) mask pair does to the exponent of a float operand: leaves it ``"as
        is"``, clears a bit of it it does not set again (``"never"`` all ones: no operand becomes
        infinite or NaN), or ``"may spoil"``."""
        keep, xor = mask
        exponent = _exponent_bits(dtype, self.widths[line])
        if keep & exponent == exponent and xor & exponent == 0:
            return "as is"
        if exponent & ~keep & ~xor:
            return "never"
        return "may spoil"

    def clean_matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """A @ B in the array's arithmetic with no faults (integers wrap in the mac width)."""
        if self.in_dtype.is_floating_point:
            return torch.matmul(a, b)
        return _int_matmul(a, b, self.widths["c"]).to(self.mac_dtype)

    def recompute(self, a_rows: torch.Tensor, b_cols: torch.Tensor, plan: MatmulPlan) -> torch.Tensor:
        """The faulty value of each planned output from its operands (no gradient: the layers
        and :meth:`matmul` pass it straight through to the clean product).

        Args:
            a_rows: (..., Q, k) the A row of each output, in the input dtype.
            b_cols: (..., Q, k) the B column of each output (batch dims broadcast with a_rows).
            plan: from :meth:`plan` for this product, on the operands' device.

        Returns:
            (..., Q) in the mac dtype.
        """
        dims = max(a_rows.dim(), b_cols.dim())

        def step_major(x: torch.Tensor) -> torch.Tensor:  # (..., Q, k) -> (k, Q, ...)
            x = x.reshape(*((1,) * (dims - x.dim())), *x.shape)
            return x.permute(dims - 1, dims - 2, *range(dims - 2))

        return self.recompute_steps(step_major(a_rows), step_major(b_cols), plan).movedim(0, -1)

    @torch.no_grad()
    def recompute_steps(self, a_steps: torch.Tensor, b_steps: torch.Tensor, plan: MatmulPlan) -> torch.Tensor:
        """:meth:`recompute` of step-major operands (no copy of them when they come so).

        Args:
            a_steps: (k, Q, ...) the A operand of reduction step k of each output (``k`` at most
                ``plan.k_tiles * plan.depth``: tile t's step s is ``t * depth + s``).
            b_steps: (k, Q, ...) the B operands (the trailing batch dims broadcast with a_steps').
            plan: from :meth:`plan` for this product, on the operands' device.

        Returns:
            (Q, ...) in the mac dtype.
        """
        depth, k_tiles = plan.depth, plan.k_tiles
        padded = depth * k_tiles
        dims = max(a_steps.dim(), b_steps.dim())

        def padded_steps(x: torch.Tensor) -> torch.Tensor:  # the same number of dims, zero steps past k
            x = x.reshape(*x.shape[:2], *((1,) * (dims - x.dim())), *x.shape[2:])
            if x.shape[0] != padded:
                x = torch.cat([x, x.new_zeros(padded - x.shape[0], *x.shape[1:])])
            return x

        a_steps = self.mask_operands(padded_steps(a_steps), plan, "a")
        b_steps = self.mask_operands(padded_steps(b_steps), plan, "b")
        floating = self.in_dtype.is_floating_point
        c_masks = plan.masks.get("c")
        width = self.widths["c"]
        if not floating and c_masks is None:  # integers wrap: any summation order is exact
            products = _wrap(a_steps.to(torch.int64) * b_steps.to(torch.int64), width)
            return _wrap(products.sum(0), width).to(self.mac_dtype)
        # the k-ordered loop over (depth, Q, tiles, ...) operands: every step adds one contiguous
        # (Q, tiles, ...) slab of products, vectorized over the outputs, tiles and batch

        def tile_steps(x: torch.Tensor) -> torch.Tensor:
            x = x.unflatten(0, (k_tiles, depth)).movedim(0, 2) if k_tiles > 1 else x.unsqueeze(2)
            return x.contiguous() if floating else x.to(torch.int64, memory_format=torch.contiguous_format)

        a_steps, b_steps = tile_steps(a_steps), tile_steps(b_steps)
        if c_masks is not None:  # (Q, tiles*depth) -> (depth, Q, tiles, 1, ...)
            keep, xor = (m.unflatten(-1, (k_tiles, depth)).movedim(-1, 0).reshape(
                depth, -1, k_tiles, *((1,) * (dims - 2))) for m in c_masks)
        slab = torch.broadcast_shapes(a_steps.shape[1:], b_steps.shape[1:])
        partial = torch.zeros(slab, dtype=self.mac_dtype if floating else torch.int64, device=a_steps.device)
        # every step updates ``partial`` in place: its bits (IEEE) or its wrapped int64 code
        bits = partial.view(_BIT_VIEW[width]) if floating else partial
        c_steps = plan.c_steps
        # the products of a chunk of steps at a time, into one buffer that stays in cache
        chunk = max(1, min(depth, _PRODUCT_CHUNK // max(1, partial.numel())))
        products = torch.empty((chunk, *slab), dtype=partial.dtype, device=partial.device)
        for start in range(0, depth, chunk):
            stop = min(depth, start + chunk)
            steps = products[:stop - start]
            torch.mul(a_steps[start:stop], b_steps[start:stop], out=steps)
            if not floating:
                _wrap_(steps, width)
            for kk, step in enumerate(steps.unbind(0), start):
                partial += step
                if not floating:
                    _wrap_(partial, width)
                op = c_steps.get(kk)
                if op is not None:
                    if op == "and":
                        bits.bitwise_and_(keep[kk])
                    elif op == "or":
                        bits.bitwise_or_(xor[kk])
                    elif op == "xor":
                        bits.bitwise_xor_(xor[kk])
                    else:
                        bits.bitwise_and_(keep[kk]).bitwise_xor_(xor[kk])
                    if not floating:
                        _wrap_(partial, width)
        if floating:
            total = torch.zeros((partial.shape[0], *partial.shape[2:]), dtype=self.mac_dtype, device=partial.device)
            for tile in range(k_tiles):
                total += partial[:, tile]
            return total
        return _wrap(partial.sum(1), width).to(self.mac_dtype)

    def __eq__(self, other: object) -> bool:
        """Arrays are equal when they have the same configuration and the same faults, in order."""
        if not isinstance(other, SystolicArray):
            return NotImplemented
        return self.config == other.config and self.faults == other.faults

    __hash__ = None  # mutable (faults come and go)

    def __repr__(self) -> str:
        c = self.config
        return (f"SystolicArray({c.n1}x{c.n2}x{c.n3}, {c.dataflow if isinstance(c.dataflow, str) else 'custom T'}, "
                f"{c.in_dtype}->{c.mac_dtype}, {len(self._faults)} faults)")


def _compose(entries: list, keys: np.ndarray, span: int, depth: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per (output, k) mask pair of one line: the ops of every fault reaching it, the most
    upstream (largest hop count) first, ties in the order the faults were added."""
    r_all, k_all, order_hop, order_fault, keeps, xors = [], [], [], [], [], []
    for index, fault, iterations, hops in entries:
        keep, xor = fault.masks(width)
        r_all.append(np.searchsorted(keys, iterations[:, 0] * span + iterations[:, 1]))
        k_all.append(iterations[:, 2])
        order_hop.append(-hops)
        order_fault.append(np.full(len(hops), index))
        keeps.append(np.full(len(hops), _signed(keep, width), dtype=np.int64))
        xors.append(np.full(len(hops), _signed(xor, width), dtype=np.int64))
    r_all, k_all, order_hop, order_fault, keeps, xors = (np.concatenate(v) for v in
                                                         (r_all, k_all, order_hop, order_fault, keeps, xors))
    order = np.lexsort((order_fault, order_hop, k_all, r_all))
    r_all, k_all, keeps, xors = r_all[order], k_all[order], keeps[order], xors[order]
    # rank of each entry among those acting on the same (output, k)
    cell = r_all * depth + k_all
    starts = np.r_[True, cell[1:] != cell[:-1]]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(cell)), 0))
    rank = np.arange(len(cell)) - group_start
    keep_out = np.full((len(keys), depth), -1, dtype=np.int64)
    xor_out = np.zeros((len(keys), depth), dtype=np.int64)
    for level in range(int(rank.max()) + 1):
        sel = rank == level
        rr, kk = r_all[sel], k_all[sel]
        xor_out[rr, kk] = (xor_out[rr, kk] & keeps[sel]) ^ xors[sel]
        keep_out[rr, kk] &= keeps[sel]
    return keep_out, xor_out


def _step_ops(keep: np.ndarray, xor: np.ndarray) -> dict[int, str]:
    """Per reduction step (column of the (R, depth) line-c masks) that is not the identity
    everywhere, the fewest in-place ops that apply ``(code & keep) ^ xor`` (see
    :attr:`MatmulPlan.c_steps`)."""
    steps = np.flatnonzero(((keep != -1) | (xor != 0)).any(axis=0))
    k, x = keep[:, steps], xor[:, steps]
    kinds = np.where((k == -1).all(axis=0), "xor", np.where((x == 0).all(axis=0), "and", np.where(
        (x == ~k).all(axis=0), "or", "and_xor")))
    return dict(zip(steps.tolist(), kinds.tolist()))


def _variants(keep: np.ndarray, xor: np.ndarray) -> tuple[tuple[int, int], ...]:
    """The distinct (keep, xor) pairs of one line's masks, the identity (-1, 0) left out."""
    masked = (keep != -1) | (xor != 0)
    keep, xor = keep[masked], xor[masked]
    if not keep.size:
        return ()
    # a few distinct pairs among many entries: sort the first entry's pair out, then the rest
    pairs = {(int(keep[0]), int(xor[0]))}
    rest = (keep != keep[0]) | (xor != xor[0])
    if rest.any():
        pairs.update(map(tuple, np.unique(np.stack([keep[rest], xor[rest]], axis=1), axis=0).tolist()))
    return tuple(sorted(pairs))


def _non_finite(values: torch.Tensor) -> torch.Tensor | None:
    """Where float ``values`` are infinite or NaN, or None if none is: one sum decides the usual
    case (a finite sum has only finite terms; only an overflowing one needs the full check)."""
    if bool(values.sum().isfinite()):
        return None
    where = ~values.isfinite()
    return where if bool(where.any()) else None


def _exponent_bits(dtype: torch.dtype, width: int) -> int:
    """The exponent field of a float dtype as a signed ``width``-bit code (all ones: inf or NaN)."""
    mantissa = round(-math.log2(torch.finfo(dtype).eps))  # stored mantissa bits
    return _signed(((1 << (width - 1)) - 1) & ~((1 << mantissa) - 1), width)


def _signed(value: int, width: int) -> int:
    """A ``width``-bit code as the signed integer with the same bits."""
    value &= (1 << width) - 1
    return value - (1 << width) if value >> (width - 1) else value


def _as_code_tensor(values: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Masks (signed codes of the line width, held in int64) as tensors of the code carrier:
    the dtype itself for integers (applied on int64 carriers), the same-width int for floats."""
    tensor = torch.from_numpy(np.ascontiguousarray(values.reshape(values.shape[0], -1)))
    if dtype.is_floating_point:
        return tensor.to(_BIT_VIEW[_width(dtype)])
    return tensor


def _wrap(values: torch.Tensor, width: int) -> torch.Tensor:
    """int64 values reduced to ``width``-bit two's complement (sign-extended back to int64)."""
    if width >= 64:
        return values
    out = values.clone()
    _wrap_(out, width)
    return out


def _wrap_(values: torch.Tensor, width: int) -> None:
    """:func:`_wrap` in place."""
    if width < 64:
        half = 1 << (width - 1)
        values.add_(half).bitwise_and_((1 << width) - 1).sub_(half)


def _apply_masks(values: torch.Tensor, keep: torch.Tensor, xor: torch.Tensor, width: int) -> torch.Tensor:
    """``(code & keep) ^ xor`` on each value's ``width``-bit code (IEEE bits for floats)."""
    if values.dtype.is_floating_point:
        bits = values.view(_BIT_VIEW[width])
        return ((bits & keep) ^ xor).view(values.dtype)
    carrier = values.to(torch.int64)
    out = _wrap((carrier & keep) ^ xor, width)
    return out if values.dtype == torch.int64 else out.to(values.dtype)


def _int_matmul(a: torch.Tensor, b: torch.Tensor, width: int) -> torch.Tensor:
    """Exact integer A @ B reduced to ``width`` bits, on any device: float64 matmuls of 16-bit
    limbs are exact (every partial sum stays below 2**53), combined in int64."""
    a = a.to(torch.int64)
    b = b.to(torch.int64)
    k = a.shape[-1]
    small = max(int(a.abs().max()) if a.numel() else 0, int(b.abs().max()) if b.numel() else 0) < (1 << 15)
    if small and k < (1 << 22):
        return _wrap(torch.matmul(a.double(), b.double()).to(torch.int64), width)
    if k >= (1 << 20):
        raise QFaultConfigError("reduction length", k, f"< {1 << 20} for 32-bit integer operands")
    a_lo, a_hi = a & 0xFFFF, a >> 16
    b_lo, b_hi = b & 0xFFFF, b >> 16

    def mm(x, y):
        return torch.matmul(x.double(), y.double()).to(torch.int64)

    total = (mm(a_hi, b_hi) << 32) + ((mm(a_hi, b_lo) + mm(a_lo, b_hi)) << 16) + mm(a_lo, b_lo)
    return _wrap(total, width)


class _ReplaceOutputs(torch.autograd.Function):
    """Outputs overwritten by faulty values; the gradient passes as through the clean output."""

    @staticmethod
    def forward(ctx, clean, values, index):
        out = clean.clone()
        out[index] = values.to(out.dtype)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def replace_outputs(clean: torch.Tensor, index: tuple, values: torch.Tensor) -> torch.Tensor:
    """``clean`` with ``clean[index] = values``, the gradient straight through to ``clean``."""
    if clean.requires_grad:
        return _ReplaceOutputs.apply(clean, values, index)
    out = clean.clone()
    out[index] = values.to(out.dtype)
    return out
