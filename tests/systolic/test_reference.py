"""Tests of the slow systolic reference itself (tests/systolic/_reference.py): hand-checkable facts,
the tool's documented example, and the register machine against the spec's closed form."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ._reference import (
    DATAFLOW_MATRICES,
    RefFault,
    lift,
    lower_activation,
    lower_kernel,
    pe_set,
    reference_conv2d,
    reference_linear,
    reference_matmul,
    reference_matmul_trace,
    reference_reach,
    reference_tiled_matmul,
)

NAMES = sorted(DATAFLOW_MATRICES)
STEP = {"b": (1, 0, 0), "a": (0, 1, 0), "c": (0, 0, 1)}


def _ints(rng, shape, lo=-128, hi=127, dtype=np.int8):
    return rng.integers(lo, hi + 1, size=shape).astype(dtype)


def _exact(A, B):
    return A.astype(np.int64) @ B.astype(np.int64)


# ----------------------------------------------------------------------------- independent helpers


def _bit_op(value, dtype, bit, polarity, msb):
    """Bit op via numpy views (independent of the reference's own helper)."""
    dtype = np.dtype(dtype)
    w = dtype.itemsize * 8
    pos = w - 1 - bit if msb == "first" else bit
    u = np.dtype(f"u{dtype.itemsize}")
    code = np.array([value], dtype=dtype).view(u)
    mask = np.array([1 << pos], dtype=u)
    if polarity == 0:
        code = code & ~mask
    elif polarity == 1:
        code = code | mask
    else:
        code = code ^ mask
    return code.view(dtype)[0]


def _closed_form(A, B, T, faults, in_dtype, mac):
    """The spec's closed form, iteration by iteration, in any order (no register state)."""
    T = np.asarray(T)
    n1, n3 = A.shape
    n2 = B.shape[1]
    moving = {L: tuple(T[:2] @ np.array(e)) != (0, 0) for L, e in STEP.items()}

    def reaching(line, nu):
        hits = []
        for idx, f in enumerate(faults):
            if f.line != line:
                continue
            for h in range(max(n1, n2, n3) + 1 if moving[line] else 1):
                src = np.array(nu) - h * np.array(STEP[line])
                if src.min() < 1 or src[0] > n1 or src[1] > n2 or src[2] > n3:
                    break
                t = int(T[2] @ src)
                if tuple(T[:2] @ src) == (f.x, f.y) and f.t_start <= t and (f.t_stop is None or t <= f.t_stop):
                    hits.append((-h, idx))
        return [faults[idx] for _, idx in sorted(hits)]

    C = np.zeros((n1, n2), dtype=mac)
    for i in range(1, n1 + 1):
        for j in range(1, n2 + 1):
            c = np.zeros(1, dtype=mac)
            for k in range(1, n3 + 1):
                a, b = A[i - 1, k - 1], B[k - 1, j - 1]
                for f in reaching("a", (i, j, k)):
                    a = _bit_op(a, in_dtype, f.bit, f.polarity, f.msb)
                for f in reaching("b", (i, j, k)):
                    b = _bit_op(b, in_dtype, f.bit, f.polarity, f.msb)
                with np.errstate(all="ignore"):
                    c = c + np.array([a], dtype=mac) * np.array([b], dtype=mac)
                for f in reaching("c", (i, j, k)):
                    c = np.array([_bit_op(c[0], mac, f.bit, f.polarity, f.msb)], dtype=mac)
            C[i - 1, j - 1] = c[0]
    return C


def _random_fault(rng: random.Random, N, T, lines="abc", w_in=8, w_mac=32):
    pes = pe_set(*N, T)
    line = rng.choice(lines)
    x, y = rng.choice(pes)
    t_hi = int(np.asarray(DATAFLOW_MATRICES[T])[2].sum()) * max(N) + 1 if isinstance(T, str) else 20
    t_start = rng.choice([0, rng.randint(0, t_hi)])
    t_stop = rng.choice([None, t_start + rng.randint(0, 4)])
    bit = rng.randrange(w_mac if line == "c" else w_in)
    return RefFault(line, x, y, bit, rng.randrange(3), t_start, t_stop, rng.choice(["first", "last"]))


# ----------------------------------------------------------------------------- no faults


@pytest.mark.parametrize("name", NAMES)
def test_clean_int8_equals_exact_matmul(name):
    rng = np.random.default_rng(0)
    A, B = _ints(rng, (3, 4)), _ints(rng, (4, 2))
    C = reference_matmul(A, B, N=(4, 3, 5), T=name, in_dtype=np.int8)
    assert C.dtype == np.int32
    np.testing.assert_array_equal(C, _exact(A, B))


def test_clean_int8_wraps_in_a_narrow_mac():
    A = np.full((2, 3), 127, dtype=np.int8)
    B = np.array([[127, -128], [127, -128], [127, 1]], dtype=np.int8)
    exact = _exact(A, B)
    wrapped = ((exact + 2**15) % 2**16) - 2**15
    assert not np.array_equal(exact, wrapped)  # the sums do overflow int16
    C = reference_matmul(A, B, N=(2, 2, 3), T="no_local_reuse", in_dtype=np.int8, mac_dtype=np.int16)
    assert C.dtype == np.int16
    np.testing.assert_array_equal(C.astype(np.int64), wrapped)


def test_clean_int16_and_int32_default_macs():
    rng = np.random.default_rng(1)
    A16, B16 = _ints(rng, (2, 3), -2**15, 2**15 - 1, np.int16), _ints(rng, (3, 2), -2**15, 2**15 - 1, np.int16)
    C16 = reference_matmul(A16, B16, N=(2, 2, 3), T="row_stationary", in_dtype=np.int16)
    assert C16.dtype == np.int64
    np.testing.assert_array_equal(C16, _exact(A16, B16))
    A32 = np.array([[2**31 - 1, 2**31 - 1]], dtype=np.int32)
    B32 = np.array([[2**31 - 1], [2**31 - 1]], dtype=np.int32)
    exact = 2 * (2**31 - 1) ** 2
    C32 = reference_matmul(A32, B32, N=(1, 1, 2), T="output_stationary", in_dtype=np.int32)
    assert C32.dtype == np.int64 and int(C32[0, 0]) == ((exact + 2**63) % 2**64) - 2**63


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["output_stationary", "col_stationary_eq", "no_local_reuse_eq"])
def test_clean_float_is_the_sequential_k_sum(dtype, name):
    rng = np.random.default_rng(2)
    A = rng.standard_normal((3, 7)).astype(dtype)
    B = rng.standard_normal((7, 4)).astype(dtype)
    expected = np.zeros((3, 4), dtype=dtype)
    for i in range(3):
        for j in range(4):
            c = dtype(0)
            for k in range(7):
                c = dtype(c + dtype(A[i, k] * B[k, j]))
            expected[i, j] = c
    C = reference_matmul(A, B, N=(3, 4, 7), T=name, in_dtype=dtype)
    assert C.dtype == dtype
    np.testing.assert_array_equal(C, expected)
    # Not the float64 product rounded once: the one-rounding-per-op order is what is being checked.
    if dtype is np.float32:
        assert not np.array_equal(C, (A.astype(np.float64) @ B.astype(np.float64)).astype(np.float32))


# ----------------------------------------------------------------------------- documented example


def test_documented_example_stuck_at_on_c():
    A = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]) * 0.5
    B = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]) * 0.5
    golden = (A @ B).astype(np.float32)
    assert golden[0, 0] == 9.5
    C = reference_matmul(A, B, N=(10, 10, 10), T="output_stationary",
                         faults=[RefFault("c", 1, 1, 5, 1)], in_dtype=np.float32)
    assert C[0, 0] == 710.75
    changed = C != golden
    assert changed.sum() == 1 and changed[0, 0]


# ----------------------------------------------------------------------------- propagation facts


def _small_positive(rng, shape):
    return rng.integers(1, 11, size=shape).astype(np.int8)


def test_output_stationary_line_a_corrupts_its_row_right_of_the_pe():
    rng = np.random.default_rng(3)
    A, B = _small_positive(rng, (4, 3)), _small_positive(rng, (3, 5))
    x, y = 2, 3
    f = RefFault("a", x, y, 1, 1)  # msb first bit 1 = value 64
    C, (touched,) = reference_matmul_trace(A, B, N=(5, 5, 5), T="output_stationary", faults=[f], in_dtype=np.int8)
    A_mod = A.copy()
    A_mod[x - 1, :] |= 64
    expected = _exact(A, B)
    expected[x - 1, y - 1:] = _exact(A_mod, B)[x - 1, y - 1:]
    np.testing.assert_array_equal(C, expected)
    assert (C != _exact(A, B)).sum() == 5 - (y - 1)
    assert touched == {(x - 1, j, k) for j in range(y - 1, 5) for k in range(3)}


def test_output_stationary_line_b_corrupts_its_column_below_the_pe():
    rng = np.random.default_rng(4)
    A, B = _small_positive(rng, (4, 3)), _small_positive(rng, (3, 5))
    x, y = 2, 3
    f = RefFault("b", x, y, 1, 1)
    C, (touched,) = reference_matmul_trace(A, B, N=(5, 5, 5), T="output_stationary", faults=[f], in_dtype=np.int8)
    B_mod = B.copy()
    B_mod[:, y - 1] |= 64
    expected = _exact(A, B)
    expected[x - 1:, y - 1] = _exact(A, B_mod)[x - 1:, y - 1]
    np.testing.assert_array_equal(C, expected)
    assert (C != _exact(A, B)).sum() == 4 - (x - 1)
    assert touched == {(i, y - 1, k) for i in range(x - 1, 4) for k in range(3)}


def test_output_stationary_line_c_corrupts_only_its_output():
    rng = np.random.default_rng(5)
    A, B = _small_positive(rng, (4, 3)), _small_positive(rng, (3, 5))
    x, y = 3, 2
    f = RefFault("c", x, y, 0, 0, msb="last")  # clear the LSB after every MAC of the PE
    C = reference_matmul(A, B, N=(5, 5, 5), T="output_stationary", faults=[f], in_dtype=np.int8)
    c = 0
    for k in range(3):
        c = (c + int(A[x - 1, k]) * int(B[k, y - 1])) & ~1
    expected = _exact(A, B)
    expected[x - 1, y - 1] = c
    np.testing.assert_array_equal(C, expected)
    assert c != _exact(A, B)[x - 1, y - 1]


@pytest.mark.parametrize("name, line, pe", [
    ("row_stationary", "a", (2, -1)),       # PE (i, -k): A[1, 0]
    ("row_stationary_eq", "a", (-3, 2)),    # PE (-i, k): A[2, 1]
    ("col_stationary", "b", (2, -3)),       # PE (k, -j): B[1, 2]
    ("col_stationary_eq", "b", (-1, 2)),    # PE (-k, j): B[0, 1]
])
def test_stationary_operand_fault_stays_on_its_pe(name, line, pe):
    rng = np.random.default_rng(6)
    A, B = _small_positive(rng, (3, 3)), _small_positive(rng, (3, 4))
    T = DATAFLOW_MATRICES[name]
    f = RefFault(line, *pe, 1, 1)
    C, (touched,) = reference_matmul_trace(A, B, N=(4, 4, 4), T=name, faults=[f], in_dtype=np.int8)
    assert touched and all(tuple(T[:2] @ (np.array(nu) + 1)) == pe for nu in touched)
    A_mod, B_mod = A.copy(), B.copy()
    (i, j, k) = next(iter(touched))
    if line == "a":
        A_mod[i, k] |= 64
        assert touched == {(i, jj, k) for jj in range(4)}
    else:
        B_mod[k, j] |= 64
        assert touched == {(ii, j, k) for ii in range(3)}
    np.testing.assert_array_equal(C, _exact(A_mod, B_mod))
    assert not np.array_equal(C, _exact(A, B))


@pytest.mark.parametrize("line", ["a", "b", "c"])
@pytest.mark.parametrize("window", [(0, 2), (6, None), (100, 200)])
def test_window_outside_the_pe_cycles_changes_nothing(line, window):
    # output_stationary: PE (1, 1) runs (1, 1, k) at cycle 2 + k, i.e. cycles 3..5 for n3 = 3.
    rng = np.random.default_rng(7)
    A, B = _small_positive(rng, (3, 3)), _small_positive(rng, (3, 3))
    f = RefFault(line, 1, 1, 1, 1, *window)
    C, (touched,) = reference_matmul_trace(A, B, N=(4, 4, 4), T="output_stationary", faults=[f], in_dtype=np.int8)
    np.testing.assert_array_equal(C, _exact(A, B))
    assert touched == set()


def test_window_of_one_cycle():
    rng = np.random.default_rng(8)
    A, B = _small_positive(rng, (3, 3)), _small_positive(rng, (3, 4))
    T = "output_stationary"
    # Line a at PE (1, 1), cycle 3 only = iteration (1, 1, 1): A[0, 0] is corrupted and forwarded along j.
    C, (touched,) = reference_matmul_trace(A, B, N=(4, 4, 4), T=T, faults=[RefFault("a", 1, 1, 1, 1, 3, 3)],
                                           in_dtype=np.int8)
    expected = _exact(A, B)
    expected[0, :] += (int(A[0, 0] | 64) - int(A[0, 0])) * B[0, :].astype(np.int64)
    np.testing.assert_array_equal(C, expected)
    assert touched == {(0, j, 0) for j in range(4)}
    # Line c at PE (1, 1), cycle 4 only = iteration (1, 1, 2).
    C = reference_matmul(A, B, N=(4, 4, 4), T=T, faults=[RefFault("c", 1, 1, 0, 2, 4, 4, "last")], in_dtype=np.int8)
    c = int(A[0, 0]) * int(B[0, 0])
    c = (c + int(A[0, 1]) * int(B[1, 0])) ^ 1
    c += int(A[0, 2]) * int(B[2, 0])
    expected = _exact(A, B)
    expected[0, 0] = c
    np.testing.assert_array_equal(C, expected)


@pytest.mark.parametrize("value, flipped", [(5, -123), (-3, 125), (-128, 0), (0, -128)])
def test_int8_sign_bit_flip(value, flipped):
    one = np.array([[1]], dtype=np.int8)
    v = np.array([[value]], dtype=np.int8)
    for f in (RefFault("a", 1, 1, 0, 2), RefFault("a", 1, 1, 7, 2, msb="last")):
        C = reference_matmul(v, one, N=(1, 1, 1), T="output_stationary", faults=[f], in_dtype=np.int8)
        assert C[0, 0] == flipped
    f = RefFault("b", 1, 1, 0, 2)
    assert reference_matmul(one, v, N=(1, 1, 1), T="output_stationary", faults=[f], in_dtype=np.int8)[0, 0] == flipped
    # Line c is 32 bits wide: bit 0 is its sign bit.
    C = reference_matmul(v, one, N=(1, 1, 1), T="output_stationary", faults=[RefFault("c", 1, 1, 0, 2)],
                         in_dtype=np.int8)
    assert C.dtype == np.int32 and int(C[0, 0]) == ((value ^ -(2**31)) + 2**31) % 2**32 - 2**31


def test_float_sign_and_exponent_bits():
    one = np.array([[1.0]], dtype=np.float32)
    v = np.array([[1.5]], dtype=np.float32)
    f = RefFault("a", 1, 1, 0, 2)
    assert reference_matmul(v, one, N=(1, 1, 1), T="output_stationary", faults=[f])[0, 0] == -1.5
    # msb last bit 23 = lowest exponent bit of float32: 1.5 (exponent 127) -> 0.75 (126).
    f = RefFault("b", 1, 1, 23, 0, msb="last")
    assert reference_matmul(one, v, N=(1, 1, 1), T="output_stationary", faults=[f])[0, 0] == 0.75


def test_moving_c_reapplies_the_carried_fault():
    # no_local_reuse: d_c = P @ e_c = (0, 1) moves. A c fault fires once, then is re-applied at every
    # later iteration of the same output's chain (on the downstream PEs).
    T = "no_local_reuse"
    A = np.array([[1, 1, 1]], dtype=np.int8)
    B = np.array([[1], [1], [1]], dtype=np.int8)
    pe = tuple(int(v) for v in DATAFLOW_MATRICES[T][:2] @ np.array([1, 1, 1]))
    C, (touched,) = reference_matmul_trace(A, B, N=(1, 1, 3), T=T, faults=[RefFault("c", *pe, 0, 1, msb="last")],
                                           in_dtype=np.int8)
    # k=1: 1 | 1 = 1; k=2: 2 | 1 = 3; k=3: 4 | 1 = 5 (the op is re-applied downstream).
    assert int(C[0, 0]) == 5 and touched == {(0, 0, 0), (0, 0, 1), (0, 0, 2)}


def test_moving_c_reapplies_upstream_faults_first():
    # Two c faults on the LSB along one output's chain: set at k=1's PE, clear at k=2's PE. From k=2 on
    # the carried "set" is re-applied before the local "clear" (larger h first), so the result is even.
    T = "no_local_reuse"
    P = DATAFLOW_MATRICES[T][:2]
    A = np.array([[1, 1, 1]], dtype=np.int8)
    B = np.array([[1], [1], [1]], dtype=np.int8)
    pe1, pe2 = (tuple(int(v) for v in P @ np.array(nu)) for nu in ((1, 1, 1), (1, 1, 2)))
    set_lsb, clear_lsb = RefFault("c", *pe1, 0, 1, msb="last"), RefFault("c", *pe2, 0, 0, msb="last")
    for faults in ([set_lsb, clear_lsb], [clear_lsb, set_lsb]):  # the order added does not matter here
        C = reference_matmul(A, B, N=(1, 1, 3), T=T, faults=faults, in_dtype=np.int8)
        # k=1: 1 | 1 = 1; k=2: (1 + 1) | 1 & ~1 = 2; k=3: (2 + 1) | 1 & ~1 = 2.
        assert int(C[0, 0]) == 2


def test_several_faults_compose_in_order():
    one = np.array([[1]], dtype=np.int8)
    v = np.array([[0]], dtype=np.int8)
    set_then_clear = [RefFault("a", 1, 1, 7, 1, msb="last"), RefFault("a", 1, 1, 7, 0, msb="last")]
    for faults, expected in ((set_then_clear, 0), (set_then_clear[::-1], -128)):
        C = reference_matmul(v, one, N=(1, 1, 1), T="output_stationary", faults=faults, in_dtype=np.int8)
        assert C[0, 0] == expected


# ----------------------------------------------------------------------------- register machine vs closed form


def _random_case(rng: random.Random, lines="abc", w_in=8, w_mac=32):
    name = rng.choice(NAMES)
    N = tuple(rng.randint(1, 4) for _ in range(3))
    n = tuple(rng.randint(1, m) for m in N)
    faults = [_random_fault(rng, N, name, lines, w_in, w_mac) for _ in range(rng.randint(1, 3))]
    return name, N, n, faults


def test_reach_closed_form_equals_simulated_touched_set():
    rng = random.Random(9)
    nonempty = {"a": 0, "b": 0, "c": 0}
    for _ in range(250):
        name, N, (n1, n2, n3), faults = _random_case(rng)
        A = np.ones((n1, n3), dtype=np.int8)
        B = np.ones((n3, n2), dtype=np.int8)
        _, touched = reference_matmul_trace(A, B, N=N, T=name, faults=faults, in_dtype=np.int8)
        for f, got in zip(faults, touched):
            assert got == reference_reach(N, name, f, (n1, n2, n3)), (name, N, (n1, n2, n3), f)
            nonempty[f.line] += bool(got)
    assert min(nonempty.values()) >= 20


@pytest.mark.parametrize("in_dtype", [np.int8, np.float32])
def test_register_machine_values_equal_closed_form(in_dtype):
    rng = random.Random(10)
    nrng = np.random.default_rng(10)
    w_in = np.dtype(in_dtype).itemsize * 8
    changed = 0
    for _ in range(120):
        name, N, (n1, n2, n3), faults = _random_case(rng, w_in=w_in, w_mac=32)
        if in_dtype is np.int8:
            A, B = _ints(nrng, (n1, n3)), _ints(nrng, (n3, n2))
            mac = np.dtype(np.int32)
        else:
            A = nrng.standard_normal((n1, n3)).astype(np.float32)
            B = nrng.standard_normal((n3, n2)).astype(np.float32)
            mac = np.dtype(np.float32)
        C = reference_matmul(A, B, N=N, T=name, faults=faults, in_dtype=in_dtype)
        expected = _closed_form(A, B, DATAFLOW_MATRICES[name], faults, np.dtype(in_dtype), mac)
        np.testing.assert_array_equal(C, expected, err_msg=f"{name} {N} {faults}")
        clean = reference_matmul(A, B, N=N, T=name, in_dtype=in_dtype)
        changed += not np.array_equal(C, clean, equal_nan=True)
    assert changed >= 30


# ----------------------------------------------------------------------------- validation, PE set


def test_pe_set_order_and_errors():
    assert pe_set(2, 3, 4, "output_stationary") == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    assert pe_set(2, 2, 2, "row_stationary") == [(1, -1), (1, -2), (2, -1), (2, -2)]
    nlr = pe_set(2, 2, 2, "no_local_reuse")
    assert nlr[:3] == [(0, 0), (0, 1), (1, -1)] and len(nlr) == len(set(nlr)) == 7
    A = np.ones((2, 2), dtype=np.int8)
    with pytest.raises(ValueError, match="PE"):
        reference_matmul(A, A, N=(2, 2, 2), T="output_stationary", faults=[RefFault("a", 3, 1, 0, 1)], in_dtype=np.int8)
    with pytest.raises(ValueError, match="fit"):
        reference_matmul(np.ones((3, 2)), A, N=(2, 2, 2), T="output_stationary", in_dtype=np.int8)
    with pytest.raises(ValueError, match="bit"):
        reference_matmul(A, A, N=(2, 2, 2), T="output_stationary", faults=[RefFault("a", 1, 1, 8, 1)], in_dtype=np.int8)
    with pytest.raises(ValueError, match="convert exactly"):
        reference_matmul(A * 0.5, A, N=(2, 2, 2), T="output_stationary", in_dtype=np.int8)


# ----------------------------------------------------------------------------- tiling


def test_tiled_clean_int_and_float():
    rng = np.random.default_rng(11)
    A, B = _ints(rng, (5, 7)), _ints(rng, (7, 6))
    C = reference_tiled_matmul(A, B, N=(2, 4, 3), T="row_stationary", in_dtype=np.int8)
    np.testing.assert_array_equal(C, _exact(A, B))
    Af = rng.standard_normal((3, 7)).astype(np.float32)
    Bf = rng.standard_normal((7, 2)).astype(np.float32)
    C = reference_tiled_matmul(Af, Bf, N=(2, 2, 3), T="output_stationary", in_dtype=np.float32)
    expected = np.zeros((3, 2), dtype=np.float32)
    for k0 in range(0, 7, 3):
        part = reference_matmul(Af[:, k0:k0 + 3], Bf[k0:k0 + 3], N=(3, 2, 3), T="output_stationary")
        expected = expected + part
    np.testing.assert_array_equal(C, expected)


def test_tiled_fault_hits_every_tile_at_the_same_local_position():
    rng = np.random.default_rng(12)
    A, B = _small_positive(rng, (5, 3)), _small_positive(rng, (3, 6))
    f = RefFault("c", 1, 1, 1, 1)  # output_stationary c at PE (1, 1): local output (0, 0) of each tile
    C = reference_tiled_matmul(A, B, N=(2, 4, 3), T="output_stationary", faults=[f], in_dtype=np.int8)
    changed = {tuple(p) for p in np.argwhere(C != _exact(A, B))}
    assert changed == {(i0, j0) for i0 in (0, 2, 4) for j0 in (0, 4)}


# ----------------------------------------------------------------------------- lowering and layers


def _correlate(X, K, sh, sw):
    kh, kw = K.shape
    oh, ow = (X.shape[0] - kh) // sh + 1, (X.shape[1] - kw) // sw + 1
    out = np.zeros((oh, ow), dtype=np.int64)
    for r in range(oh):
        for c in range(ow):
            for u in range(kh):
                for v in range(kw):
                    out[r, c] += int(K[u, v]) * int(X[r * sh + u, c * sw + v])
    return out


def test_lowering_is_a_valid_cross_correlation():
    rng = np.random.default_rng(13)
    for _ in range(40):
        H, W = rng.integers(1, 9, size=2)
        kh, kw = rng.integers(1, H + 1), rng.integers(1, W + 1)
        sh, sw = rng.integers(1, 4, size=2)
        X = rng.integers(-9, 10, size=(H, W))
        K = rng.integers(-9, 10, size=(kh, kw))
        LA = lower_activation(X, kh, kw, (sh, sw))
        LK = lower_kernel(K, W, (sh, sw))
        expected = _correlate(X, K, sh, sw)
        assert LA.shape == (expected.shape[0], kh * W) and LK.shape == (kh * W, expected.shape[1])
        np.testing.assert_array_equal(lift(LA @ LK, *expected.shape), expected)


def test_lowered_layout():
    X = np.arange(12).reshape(3, 4)
    LA = lower_activation(X, 2, 2)
    np.testing.assert_array_equal(LA[0], [0, 4, 1, 5, 2, 6, 3, 7])  # window rows 0-1, column-major
    LK = lower_kernel(np.array([[1, 2], [3, 4]]), 4, (1, 2))
    np.testing.assert_array_equal(LK[:, 1], [0, 0, 0, 0, 1, 3, 2, 4])  # column c starts at c*sw*kh


@pytest.mark.parametrize("tiling, N", [(False, (4, 8, 27)), (True, (2, 3, 5))])
def test_conv2d_clean_equals_torch(tiling, N):
    rng = np.random.default_rng(14)
    x = rng.integers(-4, 5, size=(2, 2, 6, 5)).astype(np.float32)
    w = rng.integers(-4, 5, size=(3, 2, 3, 2)).astype(np.float32)
    bias = rng.integers(-4, 5, size=3).astype(np.float32)
    out = reference_conv2d(x, w, bias, N=N, T="output_stationary", stride=(2, 1), padding=(1, 2), tiling=tiling)
    expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(bias), stride=(2, 1), padding=(1, 2))
    assert out.shape == tuple(expected.shape) and out.dtype == np.float32
    np.testing.assert_array_equal(out, expected.numpy())


def test_conv2d_int8_and_channel_restricted_fault():
    rng = np.random.default_rng(15)
    x = rng.integers(-8, 9, size=(1, 2, 4, 4)).astype(np.int8)
    w = rng.integers(-8, 9, size=(3, 2, 2, 2)).astype(np.int8)
    bias = rng.integers(-50, 51, size=3).astype(np.int32)
    N = (3, 3, 8)
    ref = F.conv2d(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(w.astype(np.float64)),
                   torch.from_numpy(bias.astype(np.float64))).numpy()
    clean = reference_conv2d(x, w, bias, N=N, T="row_stationary", in_dtype=np.int8)
    assert clean.dtype == np.int32
    np.testing.assert_array_equal(clean, ref)
    f = RefFault("c", 1, -1, 1, 1)  # row_stationary PE (i, -k) = (1, -1)
    only1 = reference_conv2d(x, w, bias, N=N, T="row_stationary", faults=[f], channel=1, in_dtype=np.int8)
    every = reference_conv2d(x, w, bias, N=N, T="row_stationary", faults=[f], in_dtype=np.int8)
    for co in range(3):
        assert not np.array_equal(every[0, co], clean[0, co])
        assert np.array_equal(only1[0, co], every[0, co] if co == 1 else clean[0, co])


@pytest.mark.parametrize("tiling, N", [(False, (3, 4, 6)), (True, (2, 3, 4))])
def test_linear_clean_equals_torch(tiling, N):
    rng = np.random.default_rng(16)
    x = rng.integers(-5, 6, size=(3, 6)).astype(np.float32)
    w = rng.integers(-5, 6, size=(4, 6)).astype(np.float32)
    b = rng.integers(-5, 6, size=4).astype(np.float32)
    out = reference_linear(x, w, b, N=N, T="col_stationary", tiling=tiling)
    np.testing.assert_array_equal(out, F.linear(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)).numpy())
    # A = activations: an output-stationary a fault at PE (x, y) stays in batch row x - 1.
    f = RefFault("a", 2, 1, 1, 1)
    faulty = reference_linear(x, w, b, N=(3, 4, 6), T="output_stationary", faults=[f])
    rows = {int(r) for r in np.argwhere(faulty != out)[:, 0]}
    assert rows == {1}
