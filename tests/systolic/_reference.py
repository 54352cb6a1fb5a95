"""Slow, independent reference of the systolic-array fault semantics (issue 14, seed 003).

This module is test-only. It simulates the array as a register machine, one executed iteration at a
time in increasing cycle order, with Python loops and numpy scalars, exactly as the section
"Semantics as a register machine" of the project's systolic spec describes. It never imports
``qfault``: the fast implementation is compared against it.

Conventions:
    * An iteration ``nu = (i, j, k)`` is 1-based inside the simulator; it runs on PE ``P @ nu`` at
      cycle ``pi @ nu`` (``P`` = rows 0-1 of ``T``, ``pi`` = row 2).
    * Sets of iterations returned to callers (``reference_reach``, the trace) are 0-based
      ``(i - 1, j - 1, k - 1)``, i.e. indices into ``A[i, k]``, ``B[k, j]``, ``C[i, j]``.
    * Integer values are Python ints wrapped to the register width (two's complement); float values
      are numpy scalars of the register dtype, so every multiply and every add rounds once.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "DATAFLOW_MATRICES",
    "RefFault",
    "lift",
    "lower_activation",
    "lower_kernel",
    "pe_set",
    "reference_conv2d",
    "reference_linear",
    "reference_matmul",
    "reference_matmul_trace",
    "reference_reach",
    "reference_tiled_matmul",
]

DATAFLOW_MATRICES: dict[str, np.ndarray] = {
    "output_stationary": np.array([[1, 0, 0], [0, 1, 0], [1, 1, 1]]),
    "output_stationary_eq": np.array([[-1, 0, 0], [0, -1, 0], [1, 1, 1]]),
    "row_stationary": np.array([[1, 0, 0], [0, 0, -1], [1, 1, 1]]),
    "row_stationary_eq": np.array([[-1, 0, 0], [0, 0, 1], [1, 1, 1]]),
    "col_stationary": np.array([[0, 0, 1], [0, -1, 0], [1, 1, 1]]),
    "col_stationary_eq": np.array([[0, 0, -1], [0, 1, 0], [1, 1, 1]]),
    "no_local_reuse": np.array([[-1, 1, 0], [0, -1, 1], [1, 1, 1]]),
    "no_local_reuse_eq": np.array([[0, 1, -1], [-1, 1, 0], [1, 1, 1]]),
}

RefFault = namedtuple("RefFault", "line x y bit polarity t_start t_stop msb", defaults=(0, None, "first"))
RefFault.__doc__ = """A fault on one register of one PE.

line: "a", "b" or "c"; (x, y): the PE (1-based, may be negative); bit: counted from the MSB when
msb == "first" (bit 0 = sign bit), from the LSB when msb == "last"; polarity: 0 stuck-at-0,
1 stuck-at-1, 2 bit flip; [t_start, t_stop]: active cycles, both inclusive, t_stop None = forever.
"""

# Unit iteration step of each line: b flows along i, a along j, the partial sum c along k.
_STEP = {"b": (1, 0, 0), "a": (0, 1, 0), "c": (0, 0, 1)}
_DEFAULT_MAC = {np.dtype(np.int8): np.dtype(np.int32), np.dtype(np.int16): np.dtype(np.int64),
                np.dtype(np.int32): np.dtype(np.int64)}


# --------------------------------------------------------------------------- helpers


def _as_T(T: str | np.ndarray) -> np.ndarray:
    """The 3x3 integer projection matrix for a name or a matrix; checks it is invertible."""
    if isinstance(T, str):
        if T not in DATAFLOW_MATRICES:
            raise ValueError(f"unknown dataflow {T!r}; choose from {sorted(DATAFLOW_MATRICES)}")
        T = DATAFLOW_MATRICES[T]
    T = np.asarray(T)
    if T.shape != (3, 3) or not np.array_equal(T, np.round(T)):
        raise ValueError(f"T must be a 3x3 integer matrix, got {T!r}")
    T = T.astype(np.int64)
    if round(np.linalg.det(T)) == 0:
        raise ValueError(f"T must be invertible, got {T.tolist()}")
    return T


def _dot(row: Sequence[int], nu: Sequence[int]) -> int:
    return int(sum(int(r) * int(n) for r, n in zip(row, nu)))


def _pe(T: np.ndarray, nu: Sequence[int]) -> tuple[int, int]:
    return (_dot(T[0], nu), _dot(T[1], nu))


def _flow(T: np.ndarray, line: str) -> tuple[int, int]:
    """d_L = P @ e_L; (0, 0) means the line is stationary."""
    return _pe(T, _STEP[line])


def _as_N(N: Sequence[int]) -> tuple[int, int, int]:
    N = tuple(int(n) for n in N)
    if len(N) != 3 or min(N) < 1:
        raise ValueError(f"N must be three positive ints (N1, N2, N3), got {N!r}")
    return N


def _mac_dtype(in_dtype: np.dtype, mac_dtype) -> np.dtype:
    if in_dtype.kind == "f":
        mac = in_dtype if mac_dtype is None else np.dtype(mac_dtype)
        if mac != in_dtype:
            raise ValueError(f"float inputs accumulate in their own dtype; mac_dtype {mac} != {in_dtype}")
        return mac
    if in_dtype.kind != "i":
        raise ValueError(f"in_dtype must be a signed int or float dtype, got {in_dtype}")
    if mac_dtype is None:
        if in_dtype not in _DEFAULT_MAC:
            raise ValueError(f"no default mac dtype for {in_dtype}; pass mac_dtype")
        return _DEFAULT_MAC[in_dtype]
    mac = np.dtype(mac_dtype)
    if mac.kind != "i":
        raise ValueError(f"integer inputs need a signed integer mac_dtype, got {mac}")
    return mac


def _width(dtype: np.dtype) -> int:
    return dtype.itemsize * 8


def _wrap(value: int, width: int) -> int:
    """Two's-complement wrap of a Python int to `width` bits."""
    half = 1 << (width - 1)
    return ((int(value) + half) % (1 << width)) - half


def _to_input(M, in_dtype: np.dtype, name: str) -> np.ndarray:
    """M as a 2-D array of in_dtype; refuses a cast that changes a value."""
    M_in = np.asarray(M)
    if M_in.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {M_in.dtype}")
    out = M_in.astype(in_dtype)
    both_float = M_in.dtype.kind == "f" and out.dtype.kind == "f"
    if not np.array_equal(out, M_in, equal_nan=both_float):
        raise ValueError(f"{name} does not convert exactly to {in_dtype}")
    return out


def _apply_op(value, dtype: np.dtype, fault: RefFault):
    """The fault's bit op applied to one register value of `dtype`.

    Ints: the value is a Python int, the op acts on its two's-complement code. Floats: the value is
    a numpy scalar, the op acts on its IEEE bit pattern.
    """
    w = _width(dtype)
    pos = w - 1 - fault.bit if fault.msb == "first" else fault.bit
    mask = 1 << pos
    if dtype.kind == "f":
        code = int(np.array(value, dtype=dtype).view(np.dtype(f"u{dtype.itemsize}")))
    else:
        code = int(value) % (1 << w)
    if fault.polarity == 0:
        code &= ~mask
    elif fault.polarity == 1:
        code |= mask
    else:
        code ^= mask
    if dtype.kind == "f":
        return np.array(code, dtype=np.dtype(f"u{dtype.itemsize}")).view(dtype)[()]
    return _wrap(code, w)


def _active(fault: RefFault, t: int) -> bool:
    return fault.t_start <= t and (fault.t_stop is None or t <= fault.t_stop)


def _check_fault(fault: RefFault, pes: set, in_dtype: np.dtype, mac_dtype: np.dtype) -> None:
    if fault.line not in _STEP:
        raise ValueError(f"fault line must be 'a', 'b' or 'c', got {fault.line!r}")
    if fault.polarity not in (0, 1, 2):
        raise ValueError(f"fault polarity must be 0, 1 or 2, got {fault.polarity!r}")
    if fault.msb not in ("first", "last"):
        raise ValueError(f"fault msb must be 'first' or 'last', got {fault.msb!r}")
    w = _width(mac_dtype if fault.line == "c" else in_dtype)
    if not 0 <= fault.bit < w:
        raise ValueError(f"fault bit must be in 0..{w - 1} for line {fault.line}, got {fault.bit}")
    if fault.t_stop is not None and fault.t_stop < fault.t_start:
        raise ValueError(f"fault window [{fault.t_start}, {fault.t_stop}] is empty")
    if (fault.x, fault.y) not in pes:
        raise ValueError(f"PE {(fault.x, fault.y)} is not in the array's PE set")


def pe_set(N1: int, N2: int, N3: int, T: str | np.ndarray) -> list[tuple[int, int]]:
    """The array's PEs, in the order the original tool's ``space_projection()`` lists them.

    Args:
        N1, N2, N3: Iteration bounds of the array.
        T: Projection matrix (3x3) or a name in ``DATAFLOW_MATRICES``.

    Returns:
        Distinct ``P @ nu`` for nu over 1..N1 x 1..N2 x 1..N3 (i outer, k inner), first occurrence order.
    """
    T = _as_T(T)
    seen: set[tuple[int, int]] = set()
    out: list[tuple[int, int]] = []
    for i in range(1, N1 + 1):
        for j in range(1, N2 + 1):
            for k in range(1, N3 + 1):
                s = _pe(T, (i, j, k))
                if s not in seen:
                    seen.add(s)
                    out.append(s)
    return out


# --------------------------------------------------------------------------- register machine


def reference_matmul_trace(A, B, *, N: Sequence[int], T: str | np.ndarray, faults: Iterable[RefFault] = (),
                           in_dtype=np.float32, mac_dtype=None) -> tuple[np.ndarray, list[set]]:
    """Register-machine simulation of ``C = A @ B`` on the array, with the iterations each fault touched.

    Args:
        A: (n1, n3) activations, exactly representable in ``in_dtype``.
        B: (n3, n2) weights, exactly representable in ``in_dtype``.
        N: Array bounds (N1, N2, N3); n1 <= N1, n2 <= N2, n3 <= N3.
        T: Projection matrix or a name in ``DATAFLOW_MATRICES``.
        faults: ``RefFault`` records, applied in this order when several act on one register.
        in_dtype: Width/kind of lines a and b.
        mac_dtype: Width/kind of line c and of the result (default: int8 -> int32, int16/int32 -> int64,
            floats -> in_dtype).

    Returns:
        ``(C, touched)``: C (n1, n2) in the mac dtype, and for each fault the set of 0-based iterations
        (i, j, k) whose register on the fault's line holds a value the fault acted on (its own op at
        this iteration, a corrupted value forwarded to it, or - moving c - its op re-applied).

    Raises:
        ValueError: shapes do not fit the array, a bad fault, a fault PE outside the array, a
            non-causal T (an upstream register that would run at the same or a later cycle).
    """
    in_dtype = np.dtype(in_dtype)
    mac = _mac_dtype(in_dtype, mac_dtype)
    T = _as_T(T)
    N = _as_N(N)
    A = _to_input(A, in_dtype, "A")
    B = _to_input(B, in_dtype, "B")
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[0]:
        raise ValueError(f"A (n1, n3) and B (n3, n2) needed, got {A.shape} and {B.shape}")
    n1, n3 = A.shape
    n2 = B.shape[1]
    if min(n1, n2, n3) < 1:
        raise ValueError(f"empty matmul {A.shape} @ {B.shape}")
    if n1 > N[0] or n2 > N[1] or n3 > N[2]:
        raise ValueError(f"matrix (n1, n2, n3) = {(n1, n2, n3)} does not fit the array N = {N}")
    faults = [RefFault(*f) for f in faults]
    if faults:
        pes = set(pe_set(*N, T))
        for f in faults:
            _check_fault(f, pes, in_dtype, mac)

    moving = {line: _flow(T, line) != (0, 0) for line in _STEP}
    for line in ("a", "b", "c"):
        # c always carries along k; a and b are forwarded only when moving.
        if (moving[line] or line == "c") and _dot(T[2], _STEP[line]) < 1:
            raise ValueError(f"T is not causal for line {line}: pi @ e_{line} = {_dot(T[2], _STEP[line])}")

    w_mac = _width(mac)
    is_float = in_dtype.kind == "f"

    def clean(line: str, nu: tuple[int, int, int]):
        i, j, k = nu
        v = A[i - 1, k - 1] if line == "a" else B[k - 1, j - 1]
        return v if is_float else int(v)

    # Faults by (PE, line), in the order added.
    located: dict[tuple[tuple[int, int], str], list[int]] = {}
    for idx, f in enumerate(faults):
        located.setdefault(((f.x, f.y), f.line), []).append(idx)

    iterations = [(i, j, k) for i in range(1, n1 + 1) for j in range(1, n2 + 1) for k in range(1, n3 + 1)]
    iterations.sort(key=lambda nu: (_dot(T[2], nu), nu))

    out: dict[str, dict] = {"a": {}, "b": {}, "c": {}}        # register outputs per iteration
    touched: dict[str, dict] = {"a": {}, "b": {}, "c": {}}    # fault indices whose effect each output holds
    carried: dict = {}                                      # moving c: faults fired upstream, in fire order
    done: set = set()

    def upstream(line: str, nu):
        e = _STEP[line]
        prev = (nu[0] - e[0], nu[1] - e[1], nu[2] - e[2])
        if min(prev) < 1:
            return None
        assert prev in done, "upstream iteration not yet simulated"
        return prev

    for nu in iterations:
        t = _dot(T[2], nu)
        s = _pe(T, nu)
        operands = {}
        for line in ("a", "b"):
            prev = upstream(line, nu) if moving[line] else None
            if prev is not None:
                value, hits = out[line][prev], set(touched[line][prev])
            else:
                value, hits = clean(line, nu), set()
            for idx in located.get((s, line), ()):
                if _active(faults[idx], t):
                    value = _apply_op(value, in_dtype, faults[idx])
                    hits.add(idx)
            out[line][nu], touched[line][nu] = value, hits
            operands[line] = value

        prev = upstream("c", nu)
        c_in = out["c"][prev] if prev is not None else (mac.type(0) if is_float else 0)
        a, b = operands["a"], operands["b"]
        if is_float:
            with np.errstate(all="ignore"):
                c = c_in + a * b  # numpy scalars of the input dtype: one rounding each
        else:
            c = _wrap(c_in + _wrap(_wrap(a, w_mac) * _wrap(b, w_mac), w_mac), w_mac)
        fired: list[int] = []
        if moving["c"] and prev is not None:
            for idx in carried[prev]:
                c = _apply_op(c, mac, faults[idx])
            fired = list(carried[prev])
        hits = set(fired)
        for idx in located.get((s, "c"), ()):
            if _active(faults[idx], t):
                c = _apply_op(c, mac, faults[idx])
                fired.append(idx)
                hits.add(idx)
        if moving["c"]:
            carried[nu] = fired
        out["c"][nu], touched["c"][nu] = c, hits
        done.add(nu)

    C = np.zeros((n1, n2), dtype=mac)
    for i in range(1, n1 + 1):
        for j in range(1, n2 + 1):
            C[i - 1, j - 1] = out["c"][(i, j, n3)]
    sets = [set() for _ in faults]
    for idx, f in enumerate(faults):
        for nu, hits in touched[f.line].items():
            if idx in hits:
                sets[idx].add((nu[0] - 1, nu[1] - 1, nu[2] - 1))
    return C, sets


def reference_matmul(A, B, *, N: Sequence[int], T: str | np.ndarray, faults: Iterable[RefFault] = (),
                     in_dtype=np.float32, mac_dtype=None) -> np.ndarray:
    """``C = A @ B`` (n1, n2) on the array, in the mac dtype; see ``reference_matmul_trace``."""
    return reference_matmul_trace(A, B, N=N, T=T, faults=faults, in_dtype=in_dtype, mac_dtype=mac_dtype)[0]


def reference_reach(N: Sequence[int], T: str | np.ndarray, fault: RefFault,
                    n_shape: Sequence[int]) -> set[tuple[int, int, int]]:
    """Iterations a fault reaches, by the spec's closed form (0-based (i, j, k)).

    nu is reached iff some h >= 0 (h = 0 only for a stationary line) gives nu' = nu - h * e_L inside
    the matrix box 1..n1 x 1..n2 x 1..n3 with P @ nu' = (x, y) and pi @ nu' in [t_start, t_stop].
    """
    T = _as_T(T)
    N = _as_N(N)
    fault = RefFault(*fault)
    if fault.line not in _STEP:
        raise ValueError(f"fault line must be 'a', 'b' or 'c', got {fault.line!r}")
    if (fault.x, fault.y) not in set(pe_set(*N, T)):
        raise ValueError(f"PE {(fault.x, fault.y)} is not in the array's PE set")
    n1, n2, n3 = (int(n) for n in n_shape)
    e = _STEP[fault.line]
    h_max = max(n1, n2, n3) if _flow(T, fault.line) != (0, 0) else 0
    reached = set()
    for i in range(1, n1 + 1):
        for j in range(1, n2 + 1):
            for k in range(1, n3 + 1):
                for h in range(h_max + 1):
                    src = (i - h * e[0], j - h * e[1], k - h * e[2])
                    if min(src) < 1:
                        break
                    if _pe(T, src) == (fault.x, fault.y) and _active(fault, _dot(T[2], src)):
                        reached.add((i - 1, j - 1, k - 1))
                        break
    return reached


def reference_tiled_matmul(A, B, *, N: Sequence[int], T: str | np.ndarray, faults: Iterable[RefFault] = (),
                           in_dtype=np.float32, mac_dtype=None) -> np.ndarray:
    """``A @ B`` for matrices larger than the array: j-tiles outer, i-tiles, k-tiles inner.

    Each tile (at most N1 x N3 by N3 x N2) runs through ``reference_matmul`` from a zero accumulator
    with the same faults (tile-local positions and cycles); tile results are added into a zero
    (n1, n2) result of the mac dtype in that order (wrap-around for ints, rounding for floats).
    """
    in_dtype = np.dtype(in_dtype)
    mac = _mac_dtype(in_dtype, mac_dtype)
    N1, N2, N3 = _as_N(N)
    A = _to_input(A, in_dtype, "A")
    B = _to_input(B, in_dtype, "B")
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[0]:
        raise ValueError(f"A (n1, n3) and B (n3, n2) needed, got {A.shape} and {B.shape}")
    faults = list(faults)
    n1, n3 = A.shape
    n2 = B.shape[1]
    res = np.zeros((n1, n2), dtype=mac)
    for j0 in range(0, n2, N2):
        for i0 in range(0, n1, N1):
            for k0 in range(0, n3, N3):
                tile = reference_matmul(A[i0:i0 + N1, k0:k0 + N3], B[k0:k0 + N3, j0:j0 + N2], N=(N1, N2, N3),
                                        T=T, faults=faults, in_dtype=in_dtype, mac_dtype=mac)
                with np.errstate(all="ignore"):
                    res[i0:i0 + N1, j0:j0 + N2] = res[i0:i0 + N1, j0:j0 + N2] + tile
    return res


# --------------------------------------------------------------------------- layers


def lower_activation(X, kh: int, kw: int, stride: Sequence[int] = (1, 1)) -> np.ndarray:
    """Im2col lowering of one channel X (H, W) to L_A (oh, kh * W).

    Row r holds X[r*sh : r*sh + kh, :] flattened column-major (index q = col * kh + row_in_window).
    """
    X = np.asarray(X)
    H, W = X.shape
    sh, _ = stride
    if not (1 <= kh <= H and 1 <= kw <= W):
        raise ValueError(f"kernel {(kh, kw)} does not fit input {(H, W)}")
    oh = (H - kh) // sh + 1
    L = np.zeros((oh, kh * W), dtype=X.dtype)
    for r in range(oh):
        for col in range(W):
            for u in range(kh):
                L[r, col * kh + u] = X[r * sh + u, col]
    return L


def lower_kernel(K, W_in: int, stride: Sequence[int] = (1, 1)) -> np.ndarray:
    """Lowering of one kernel K (kh, kw) to L_K (kh * W_in, ow).

    Column c holds K flattened column-major (length kh * kw) at rows c*sw*kh ... c*sw*kh + kh*kw - 1.
    """
    K = np.asarray(K)
    kh, kw = K.shape
    _, sw = stride
    if kw > W_in:
        raise ValueError(f"kernel width {kw} exceeds input width {W_in}")
    ow = (W_in - kw) // sw + 1
    L = np.zeros((kh * W_in, ow), dtype=K.dtype)
    for c in range(ow):
        for v in range(kw):
            for u in range(kh):
                L[c * sw * kh + v * kh + u, c] = K[u, v]
    return L


def lift(C_low, oh: int, ow: int) -> np.ndarray:
    """The lowered product (oh, ow) as the output map (oh, ow)."""
    C_low = np.asarray(C_low)
    if C_low.size != oh * ow:
        raise ValueError(f"lowered output {C_low.shape} does not hold {(oh, ow)}")
    return C_low.reshape(oh, ow)


def _array_matmul(A, B, *, N, T, faults, tiling, in_dtype, mac_dtype):
    fn = reference_tiled_matmul if tiling else reference_matmul
    return fn(A, B, N=N, T=T, faults=faults, in_dtype=in_dtype, mac_dtype=mac_dtype)


def _clean_matmul(A, B, *, T, in_dtype, mac_dtype):
    """Sequential-k product without faults: the register machine on an array as large as the product."""
    n1, n3 = np.shape(A)
    n2 = np.shape(B)[1]
    return reference_matmul(A, B, N=(n1, n2, n3), T=T, in_dtype=in_dtype, mac_dtype=mac_dtype)


def reference_conv2d(x, weight, bias, *, N: Sequence[int], T: str | np.ndarray, faults: Iterable[RefFault] = (),
                     channel: int = -1, stride: Sequence[int] = (1, 1), padding: Sequence[int] = (0, 0),
                     tiling: bool = False, in_dtype=np.float32, mac_dtype=None) -> np.ndarray:
    """Conv2d (cross-correlation, groups 1) on the array, one input channel and one kernel at a time.

    Args:
        x: (B, Cin, H, W) input.
        weight: (Cout, Cin, kh, kw) kernels.
        bias: (Cout,) or None.
        channel: Output channel the faults act on; -1 = all. Other channels use a clean sequential
            matmul.
        stride: (sh, sw). padding: (ph, pw) zeros on both sides of H and W.

    Returns:
        (B, Cout, oh, ow) in the mac dtype: out[b, co] = bias[co], then for ci in order
        out[b, co] += lift(matmul(L_A(xpad[b, ci]), L_K(weight[co, ci]))).
    """
    in_dtype = np.dtype(in_dtype)
    mac = _mac_dtype(in_dtype, mac_dtype)
    x = np.asarray(x)
    weight = np.asarray(weight)
    faults = list(faults)
    Bsz, Cin, H, W = x.shape
    Cout, Cin_w, kh, kw = weight.shape
    if Cin_w != Cin:
        raise ValueError(f"weight has {Cin_w} input channels, x has {Cin}")
    if not (channel == -1 or 0 <= channel < Cout):
        raise ValueError(f"channel must be -1 or in 0..{Cout - 1}, got {channel}")
    ph, pw = padding
    sh, sw = stride
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    Hp, Wp = H + 2 * ph, W + 2 * pw
    oh, ow = (Hp - kh) // sh + 1, (Wp - kw) // sw + 1
    out = np.zeros((Bsz, Cout, oh, ow), dtype=mac)
    if bias is not None:
        b_arr = np.asarray(bias)
        if not np.array_equal(b_arr.astype(mac), b_arr):
            raise ValueError(f"bias does not convert exactly to {mac}")
        out += b_arr.astype(mac)[None, :, None, None]
    for b in range(Bsz):
        for co in range(Cout):
            for ci in range(Cin):
                LA = lower_activation(xp[b, ci], kh, kw, stride)
                LK = lower_kernel(weight[co, ci], Wp, stride)
                if channel in (-1, co):
                    C = _array_matmul(LA, LK, N=N, T=T, faults=faults, tiling=tiling, in_dtype=in_dtype,
                                      mac_dtype=mac)
                else:
                    C = _clean_matmul(LA, LK, T=T, in_dtype=in_dtype, mac_dtype=mac)
                with np.errstate(all="ignore"):
                    out[b, co] = out[b, co] + lift(C, oh, ow)
    return out


def reference_linear(x, weight, bias, *, N: Sequence[int], T: str | np.ndarray, faults: Iterable[RefFault] = (),
                     tiling: bool = False, in_dtype=np.float32, mac_dtype=None) -> np.ndarray:
    """Linear layer on the array: A = x (B, in), B = weight.T (in, out); returns (B, out) + bias."""
    in_dtype = np.dtype(in_dtype)
    mac = _mac_dtype(in_dtype, mac_dtype)
    x = np.asarray(x)
    weight = np.asarray(weight)
    C = _array_matmul(x, weight.T, N=N, T=T, faults=list(faults), tiling=tiling, in_dtype=in_dtype, mac_dtype=mac)
    if bias is not None:
        b_arr = np.asarray(bias)
        if not np.array_equal(b_arr.astype(mac), b_arr):
            raise ValueError(f"bias does not convert exactly to {mac}")
        with np.errstate(all="ignore"):
            C = C + b_arr.astype(mac)[None, :]
    return C
