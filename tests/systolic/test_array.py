"""The fast systolic path against the register-machine reference (tests/systolic/_reference.py)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qfault import QFaultConfigError
from qfault.systolic import (
    ArrayConfig,
    ArrayFault,
    SystolicArray,
    SystolicCastingError,
    dataflow_matrix,
    list_dataflows,
)
from qfault.systolic import _array as array_module

from ._reference import RefFault, pe_set, reference_matmul, reference_reach, reference_tiled_matmul

DATAFLOWS = list_dataflows()
_BITS = {np.float16: torch.int16, np.float32: torch.int32, np.float64: torch.int64}


def _ref_fault(f: ArrayFault) -> RefFault:
    return RefFault(f.line, f.x, f.y, f.bit, f.polarity, f.t_start, f.t_stop, f.msb)


def _bits(values) -> torch.Tensor:
    """Integers as they are, floats as their bit patterns (NaN payloads and -0 compared too)."""
    t = torch.as_tensor(np.ascontiguousarray(values))
    return t.view(_BITS[t.numpy().dtype.type]) if t.dtype.is_floating_point else t


def _random_operands(rng, shape_a, shape_b, in_dtype, integer_valued: bool):
    if np.dtype(in_dtype).kind == "i":
        info = np.iinfo(in_dtype)
        low, high = max(info.min, -2000), min(info.max, 2000)
        return (rng.integers(low, high + 1, shape_a).astype(in_dtype),
                rng.integers(low, high + 1, shape_b).astype(in_dtype))
    if integer_valued:
        return (rng.integers(-8, 9, shape_a).astype(in_dtype), rng.integers(-8, 9, shape_b).astype(in_dtype))
    return (rng.standard_normal(shape_a).astype(in_dtype), rng.standard_normal(shape_b).astype(in_dtype))


def _random_fault(rng, array: SystolicArray, line: str | None = None, polarity: int | None = None) -> ArrayFault:
    pes = array.pes()
    x, y = pes[rng.integers(len(pes))]
    line = line or "abc"[rng.integers(3)]
    bit = int(rng.integers(array.widths[line]))
    polarity = int(rng.integers(3)) if polarity is None else polarity
    if rng.random() < 0.5:
        t_start, t_stop = 0, None
    else:
        t_start = int(rng.integers(0, 12))
        t_stop = t_start + int(rng.integers(0, 6))
    return ArrayFault(line, int(x), int(y), bit, polarity, t_start, t_stop, "first" if rng.random() < 0.7 else "last")


def _reached_outputs(array: SystolicArray, faults, shape) -> set[tuple[int, int]]:
    m, k, n = shape
    N = array.config.bounds
    T = array.matrix
    return {(i, j) for f in faults for i, j, _ in reference_reach(N, T, _ref_fault(f), (m, n, k))}


def _check_against_reference(array: SystolicArray, a: np.ndarray, b: np.ndarray, faults, *, exact_everywhere: bool):
    """Outputs a fault reaches (by the reference's closed form) are bit-exact to the register
    machine. The others are the clean product: bit-exact for integers; for floats the clean
    ``torch.matmul`` (whose summation order is its own), value-equal to the reference when the
    operands make every order exact (``exact_everywhere``; the sign of a zero sum may differ)."""
    got = array.matmul(a, b)
    ref = reference_matmul(a, b, N=array.config.bounds, T=array.matrix, faults=[_ref_fault(f) for f in faults],
                           in_dtype=np.dtype(array.config.in_dtype))
    assert got.dtype == getattr(torch, array.config.mac_dtype)
    if not got.dtype.is_floating_point:
        assert torch.equal(got, torch.from_numpy(ref)), (got, ref)
        return
    reached = _reached_outputs(array, faults, (a.shape[0], a.shape[1], b.shape[1]))
    _compare_floats(got, ref, torch.from_numpy(a) @ torch.from_numpy(b), reached, exact_everywhere)


def _compare_floats(got: torch.Tensor, ref: np.ndarray, clean: torch.Tensor, reached: set, exact_everywhere: bool):
    for i in range(got.shape[0]):
        for j in range(got.shape[1]):
            if (i, j) in reached:
                assert _bits(got[i, j].numpy()) == _bits(ref[i, j]), (i, j, got[i, j], ref[i, j])
            else:
                assert _bits(got[i, j].numpy()) == _bits(clean[i, j].numpy()), (i, j)
                if exact_everywhere:
                    assert got[i, j].item() == ref[i, j], (i, j, got[i, j], ref[i, j])


@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize("in_dtype", [np.int8, np.int16, np.float32])
def test_single_faults_equal_the_reference(dataflow, in_dtype):
    rng = np.random.default_rng(zlib.crc32(f"{dataflow}{np.dtype(in_dtype).name}".encode()))
    array = SystolicArray(ArrayConfig(5, 4, 6, dataflow, np.dtype(in_dtype).name))
    for case in range(12):
        m, k, n = int(rng.integers(1, 6)), int(rng.integers(1, 7)), int(rng.integers(1, 5))
        a, b = _random_operands(rng, (m, k), (k, n), in_dtype, integer_valued=case % 2 == 0)
        fault = _random_fault(rng, array, line="abc"[case % 3])
        array.clear_faults()
        array.add_fault(fault)
        _check_against_reference(array, a, b, [fault], exact_everywhere=np.dtype(in_dtype).kind == "i" or case % 2 == 0)


@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_several_faults_with_their_own_polarities(dataflow):
    """Mixed stuck-at-0 / stuck-at-1 / flips on several lines and PEs at once (the reference
    tool gives all of them the last fault's polarity)."""
    rng = np.random.default_rng(7 + DATAFLOWS.index(dataflow))
    for in_dtype in (np.int8, np.float32):
        array = SystolicArray(ArrayConfig(4, 5, 5, dataflow, np.dtype(in_dtype).name))
        for case in range(8):
            a, b = _random_operands(rng, (4, 5), (5, 5), in_dtype, integer_valued=True)
            array.clear_faults()
            faults = [_random_fault(rng, array) for _ in range(int(rng.integers(2, 5)))]
            if case % 2:  # the same register bit, both polarities, on neighbouring PEs
                pes = array.pes()
                x, y = pes[rng.integers(len(pes))]
                faults += [ArrayFault("a", x, y, 3, 0), ArrayFault("a", x, y, 3, 1)]
            for f in faults:
                array.add_fault(f)
            _check_against_reference(array, a, b, faults, exact_everywhere=True)


@pytest.mark.parametrize("chunk", [1, 30])
def test_the_k_ordered_loop_in_chunks_of_steps_equals_the_reference(monkeypatch, chunk):
    """The k-ordered loop makes its products a chunk of steps at a time: chunks of one step,
    and chunks that do not divide the depth, give the register machine's outputs (all lines)."""
    monkeypatch.setattr(array_module, "_PRODUCT_CHUNK", chunk)
    rng = np.random.default_rng(11 + chunk)
    for in_dtype in (np.int8, np.float32):
        array = SystolicArray(ArrayConfig(4, 5, 7, "output_stationary", np.dtype(in_dtype).name))
        for case in range(6):
            a, b = _random_operands(rng, (4, 7), (7, 5), in_dtype, integer_valued=case % 2 == 0)
            array.clear_faults()
            faults = [_random_fault(rng, array, line="abc"[(case + i) % 3]) for i in range(2)]
            for f in faults:
                array.add_fault(f)
            _check_against_reference(array, a, b, faults, exact_everywhere=in_dtype == np.int8 or case % 2 == 0)


def test_wide_accumulators_and_overflow_wrap():
    rng = np.random.default_rng(3)
    for in_dtype, mac in (("int8", "int16"), ("int16", "int32"), ("int32", "int64"), ("int16", "int64")):
        array = SystolicArray(ArrayConfig(4, 4, 6, "output_stationary", in_dtype, mac))
        info = np.iinfo(in_dtype)
        a = rng.integers(info.min, info.max, (4, 6), endpoint=True).astype(in_dtype)
        b = rng.integers(info.min, info.max, (6, 4), endpoint=True).astype(in_dtype)
        for fault in ([], [ArrayFault("c", 2, 2, 0, 2)], [ArrayFault("a", 1, 1, 0, 1), ArrayFault("b", 1, 3, 1, 0)]):
            array.clear_faults()
            for f in fault:
                array.add_fault(f)
            _check_against_reference(array, a, b, fault, exact_everywhere=True)


@pytest.mark.parametrize("in_dtype", ["float64", "float16"])
def test_other_float_widths(in_dtype):
    rng = np.random.default_rng(11)
    array = SystolicArray(ArrayConfig(4, 4, 5, "col_stationary", in_dtype))
    for case in range(9):
        a, b = _random_operands(rng, (4, 5), (5, 3), np.dtype(in_dtype), integer_valued=True)
        fault = _random_fault(rng, array, line="abc"[case % 3])
        array.clear_faults()
        array.add_fault(fault)
        _check_against_reference(array, a, b, [fault], exact_everywhere=True)


@pytest.mark.parametrize("dataflow", ["output_stationary", "row_stationary", "no_local_reuse"])
@pytest.mark.parametrize("in_dtype", ["int8", "float32"])
def test_tiling_equals_the_reference(dataflow, in_dtype):
    rng = np.random.default_rng(5)
    array = SystolicArray(ArrayConfig(3, 2, 4, dataflow, in_dtype, tiling=True))
    for case in range(6):
        m, k, n = int(rng.integers(1, 8)), int(rng.integers(1, 11)), int(rng.integers(1, 6))
        a, b = _random_operands(rng, (m, k), (k, n), np.dtype(in_dtype), integer_valued=True)
        faults = [_random_fault(rng, array) for _ in range(1 + case % 2)]
        array.clear_faults()
        for f in faults:
            array.add_fault(f)
        got = array.matmul(a, b)
        ref = reference_tiled_matmul(a, b, N=array.config.bounds, T=array.matrix,
                                     faults=[_ref_fault(f) for f in faults], in_dtype=np.dtype(in_dtype))
        if in_dtype == "int8":
            assert torch.equal(got, torch.from_numpy(ref))
            continue
        # tile-local reach, repeated in every tile
        n1, n2, n3 = array.config.bounds
        local = _reached_outputs(array, faults, (min(m, n1), min(k, n3), min(n, n2)))
        reached = {(i, j) for i in range(m) for j in range(n) if (i % n1, j % n2) in local}
        _compare_floats(got, ref, torch.from_numpy(a) @ torch.from_numpy(b), reached, exact_everywhere=True)


def test_tiled_random_floats_reached_outputs_sum_tiles_in_order():
    """Random floats: every output a fault reaches is bit-exact to the reference (k tiles summed
    in order, each from a zero accumulator); the others are the clean matmul."""
    rng = np.random.default_rng(9)
    array = SystolicArray(ArrayConfig(2, 2, 3, "output_stationary", "float32", tiling=True))
    a, b = _random_operands(rng, (5, 8), (8, 3), np.float32, integer_valued=False)
    fault = ArrayFault("b", 1, 2, 9, 1)
    array.add_fault(fault)
    got = array.matmul(a, b)
    ref = reference_tiled_matmul(a, b, N=array.config.bounds, T=array.matrix, faults=[_ref_fault(fault)])
    local = {(i, j) for i, j, _ in reference_reach(array.config.bounds, array.matrix, _ref_fault(fault), (2, 2, 3))}
    reached = {(i, j) for i in range(5) for j in range(3) if (i % 2, j % 2) in local}
    clean = torch.from_numpy(a) @ torch.from_numpy(b)
    assert reached
    for i in range(5):
        for j in range(3):
            expected = ref[i, j] if (i, j) in reached else clean[i, j].numpy()
            assert _bits(got[i, j].numpy()) == _bits(np.asarray(expected))


@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_reached_iterations_and_pes_equal_the_reference(dataflow):
    rng = np.random.default_rng(DATAFLOWS.index(dataflow))
    array = SystolicArray(ArrayConfig(4, 5, 3, dataflow))
    assert array.pes() == pe_set(4, 5, 3, dataflow_matrix(dataflow))
    for _ in range(20):
        fault = _random_fault(rng, array)
        shape = (int(rng.integers(1, 5)), int(rng.integers(1, 4)), int(rng.integers(1, 6)))  # (m, k, n)
        got = {tuple(v) for v in array.reached_iterations(fault, shape).tolist()}
        m, k, n = shape
        assert got == reference_reach(array.config.bounds, array.matrix, _ref_fault(fault), (m, n, k))


def test_seed_example_and_clear():
    array = SystolicArray(ArrayConfig(10, 10, 10, "output_stationary", "float32"))
    a = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]) * 0.5
    b = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]) * 0.5
    golden = torch.from_numpy(a @ b).float()
    handle = array.add_fault(ArrayFault("c", x=1, y=1, bit=5, polarity=1))
    faulty = array.matmul(a, b)
    assert faulty[0, 0].item() == 710.75 and golden[0, 0].item() == 9.5
    changed = faulty != golden
    assert changed.sum() == 1 and changed[0, 0]
    handle.remove()
    assert torch.equal(array.matmul(a, b), golden)
    handle.remove()  # idempotent
    assert array.faults == ()


def test_faults_reach_the_last_cycles():
    """The reference tool never injects in the last two cycles; here the last iteration
    (n1, n2, n3), at cycle n1 + n2 + n3, is hit like any other."""
    array = SystolicArray(ArrayConfig(3, 3, 3, "output_stationary", "int8"))
    array.add_fault(ArrayFault("c", 3, 3, 31, 1, t_start=9, t_stop=9, msb="last"))  # sign bit of c
    a = np.ones((3, 3), dtype=np.int8)
    out = array.matmul(a, a)
    assert out[2, 2].item() == 3 - 2**31 and (out != 3).sum() == 1


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_property_random_integer_arrays(data):
    dataflow = data.draw(st.sampled_from(DATAFLOWS))
    bounds = [data.draw(st.integers(1, 4)) for _ in range(3)]
    array = SystolicArray(ArrayConfig(*bounds, dataflow, "int8"))
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    m, n, k = (int(rng.integers(1, b + 1)) for b in bounds)
    a, b = _random_operands(rng, (m, k), (k, n), np.int8, integer_valued=True)
    faults = [_random_fault(rng, array) for _ in range(data.draw(st.integers(1, 3)))]
    for f in faults:
        array.add_fault(f)
    _check_against_reference(array, a, b, faults, exact_everywhere=True)


def test_batched_operands_broadcast():
    rng = np.random.default_rng(2)
    array = SystolicArray(ArrayConfig(4, 4, 4, "output_stationary", "int8"))
    array.add_fault(ArrayFault("a", 2, 1, 1, 2))
    a = torch.from_numpy(rng.integers(-9, 9, (3, 4, 4)).astype(np.int8))
    b = torch.from_numpy(rng.integers(-9, 9, (4, 4)).astype(np.int8))
    got = array.matmul(a, b)
    for index in range(3):
        assert torch.equal(got[index], array.matmul(a[index], b))


def test_gradient_is_straight_through():
    array = SystolicArray(ArrayConfig(4, 4, 4, "output_stationary"))
    array.add_fault(ArrayFault("a", 1, 1, 1, 1))  # exponent bit: large values in row 0
    a = torch.randn(4, 4, requires_grad=True)
    b = torch.randn(4, 4, requires_grad=True)
    (array.matmul(a, b) * torch.arange(16.).view(4, 4)).sum().backward()
    ga, gb = a.grad.clone(), b.grad.clone()
    a.grad = b.grad = None
    ((a @ b) * torch.arange(16.).view(4, 4)).sum().backward()
    assert torch.equal(ga, a.grad) and torch.equal(gb, b.grad)


# ------------------------------------------------------------------------------ errors


def test_products_larger_than_the_array_need_tiling():
    array = SystolicArray(ArrayConfig(3, 3, 3))
    with pytest.raises(QFaultConfigError, match=r"4 rows of A.*at most n1=3.*tiling"):
        array.matmul(np.ones((4, 3), np.float32), np.ones((3, 3), np.float32))
    with pytest.raises(QFaultConfigError, match=r"columns of A / rows of B.*at most n3=3"):
        array.matmul(np.ones((3, 5), np.float32), np.ones((5, 3), np.float32))


def test_bad_faults_are_refused_and_leave_the_array_as_it_was():
    array = SystolicArray(ArrayConfig(3, 3, 3, "output_stationary", "int8"))
    kept = array.add_fault(ArrayFault("a", 1, 1, 0))
    with pytest.raises(QFaultConfigError, match=r"\(x, y\)=\(0, 1\).*x in \[1, 3\], y in \[1, 3\]"):
        array.add_fault(ArrayFault("a", 0, 1, 0))
    with pytest.raises(QFaultConfigError, match=r"bit=8.*0\.\.7.*int8"):
        array.add_fault(ArrayFault("b", 1, 1, 8))
    array.add_fault(ArrayFault("c", 1, 1, 31))  # c has the 32-bit mac width
    with pytest.raises(QFaultConfigError, match=r"bit=32.*0\.\.31.*int32"):
        array.add_fault(ArrayFault("c", 1, 1, 32))
    assert len(array.faults) == 2 and array.faults[0] is kept.fault
    with pytest.raises(QFaultConfigError, match=r"line='d'.*'a', 'b', 'c'"):
        ArrayFault("d", 1, 1, 0)
    with pytest.raises(QFaultConfigError, match=r"polarity=3"):
        ArrayFault("a", 1, 1, 0, polarity=3)
    with pytest.raises(QFaultConfigError, match=r"t_stop=2.*>= t_start \(5\)"):
        ArrayFault("a", 1, 1, 0, t_start=5, t_stop=2)
    assert ArrayFault("a", 1, 1, 0, polarity="bit_flip").polarity == 2


def test_bad_array_configs():
    with pytest.raises(QFaultConfigError, match=r"dataflow=.*singular"):
        ArrayConfig(2, 2, 2, [[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    with pytest.raises(QFaultConfigError, match=r"dataflow=.diagonal.*output_stationary.*unknown dataflow"):
        ArrayConfig(2, 2, 2, "diagonal")
    with pytest.raises(QFaultConfigError, match=r"in_dtype='complex64'.*int8"):
        ArrayConfig(2, 2, 2, in_dtype="complex64")
    with pytest.raises(QFaultConfigError, match=r"in_dtype='int64'.*256-bit"):
        ArrayConfig(2, 2, 2, in_dtype="int64")
    with pytest.raises(QFaultConfigError, match=r"mac_dtype='int8'.*int16, int32, int64"):
        ArrayConfig(2, 2, 2, in_dtype="int16", mac_dtype="int8")
    with pytest.raises(QFaultConfigError, match=r"mac_dtype='float64'.*float32"):
        ArrayConfig(2, 2, 2, in_dtype="float32", mac_dtype="float64")
    with pytest.raises(QFaultConfigError, match=r"n2=0.*positive integer"):
        ArrayConfig(2, 0, 2)
    user = ArrayConfig(2, 2, 2, [[1, 0, 0], [0, 1, 0], [1, 1, 1]])
    assert SystolicArray(user).pes() == SystolicArray(ArrayConfig(2, 2, 2)).pes()


def test_casting_errors_name_the_dtype_and_the_value():
    array = SystolicArray(ArrayConfig(4, 4, 4, "output_stationary", "int8"))
    a = np.array([[1, 2], [3, 4]]) * 0.5
    with pytest.raises(SystolicCastingError, match=r"A=0\.5.*int8.*float64 to int8 changes 2 of 4"):
        array.matmul(a, np.ones((2, 2)))
    with pytest.raises(SystolicCastingError, match=r"B=300"):
        array.matmul(np.ones((2, 2)), np.array([[300, 1], [1, 1]]))
    with pytest.raises(SystolicCastingError, match=r"A=nan"):
        array.matmul(np.array([[np.nan, 1.0]]), np.ones((2, 1)))
    assert torch.equal(array.matmul(np.ones((2, 2)) * 2, np.ones((2, 2))), torch.full((2, 2), 4, dtype=torch.int32))
    floats = SystolicArray(ArrayConfig(4, 4, 4, "output_stationary", "float32"))
    with pytest.raises(SystolicCastingError, match=r"float32"):
        floats.matmul(np.array([[0.1]]), np.ones((1, 1)))  # 0.1 (float64) is not a float32
    assert torch.isnan(floats.matmul(np.array([[np.nan]]), np.ones((1, 1)))).all()
