"""Fault models applied through ``corrupt`` checked against brute-force references."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy import stats

from qfault._errors import QFaultConfigError
from qfault.faults import (
    BitFlip, PlaneBitFlip, RegionBitFlip, FullFlip, HwPeriodic, LSBFlip, MSBFlip, RandomValue, StuckAt, apply_draw, corrupt,
    draw_faults, get_fault, list_faults, make_generator,
)
from qfault.faults import ScalarDraw, hw_periodic_mask, hw_periodic_pattern
from qfault.formats import FixedPoint, FloatFormat, IntFormat
from test_sampling import chi2_pvalue  # one chi-square helper for the fault tests

ALPHA = 1e-4


# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------
def ref_pattern(code: int, bits: int) -> int:
    return int(code) % (1 << bits)


def ref_code(pattern: int, bits: int, signed: bool) -> int:
    pattern = int(pattern) & ((1 << bits) - 1)
    if signed and pattern >= 1 << (bits - 1):
        return pattern - (1 << bits)
    return pattern


def popcount(v: int) -> int:
    return bin(int(v)).count("1")


def raw_bits(t: torch.Tensor) -> np.ndarray:
    """Bit-exact view for NaN-aware comparisons."""
    if t.dtype == torch.float32:
        return t.view(torch.int32).numpy().copy()
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.view(torch.int16).numpy().copy()
    if t.dtype == torch.float64:
        return t.view(torch.int64).numpy().copy()
    return t.numpy().astype(np.int64)


def binom_gof(counts: np.ndarray, n: int, p: float) -> float:
    lo, hi = int(stats.binom.ppf(1e-7, n, p)), int(stats.binom.ppf(1 - 1e-7, n, p))
    support = np.arange(lo, hi + 1)
    observed = np.array([(counts == k).sum() for k in support])
    expected = stats.binom.pmf(support, n, p) * counts.size
    assert observed.sum() == counts.size, "draws outside the plausible binomial support"
    return chi2_pvalue(observed, expected)


# --------------------------------------------------------------------------------------------
# Every registered fault: a default-constructible instance
# --------------------------------------------------------------------------------------------
INSTANCES = {
    "bit_flip": BitFlip(ber=0.05),
    "stuck_at": StuckAt(rate=5.0),
    "random_value": RandomValue(probability=20.0),
    "lsb_flip": LSBFlip(probability=20.0),
    "msb_flip": MSBFlip(probability=20.0),
    "full_flip": FullFlip(probability=20.0),
    "hw_periodic": HwPeriodic(probability=25.0, frequency_value=16),
    "bit_flip_planes": PlaneBitFlip(ber=0.3, layout="keras"),
    "bit_flip_regions": RegionBitFlip(regions=((0, 40, 0.5), (100, 120, 1.0), (110, 300, 0.1)), layout="keras"),
}


def test_instances_cover_registry():
    assert set(INSTANCES) == set(list_faults())
    for name, inst in INSTANCES.items():
        assert inst.type_name == name
        assert type(get_fault(name, **{k: v for k, v in inst.to_dict().items()
                                       if k not in ("type", "version")})) is type(inst)


SHAPE = (2, 8, 3, 3)
SCALE = 0.05


def _input(kind: str):
    """(tensor, format, corrupt kwargs, reference codes (flat, int64), decode(new codes) -> floats)."""
    gen = torch.Generator().manual_seed(1234)
    if kind == "int8_codes":
        x = torch.randint(-128, 128, SHAPE, generator=gen, dtype=torch.int8)
        return x, IntFormat(8), {}, x.reshape(-1).numpy().astype(np.int64), None
    if kind == "int4_codes_int32":
        x = torch.randint(-8, 8, SHAPE, generator=gen, dtype=torch.int32)
        return x, IntFormat(4), {}, x.reshape(-1).numpy().astype(np.int64), None
    if kind == "uint5_codes_int64":
        x = torch.randint(0, 32, SHAPE, generator=gen, dtype=torch.int64)
        return x, IntFormat(5, signed=False), {}, x.reshape(-1).numpy().astype(np.int64), None
    if kind == "fixed_codes":
        fmt = FixedPoint(6, 2, True, symmetric=True)
        x = torch.randint(-31, 32, SHAPE, generator=gen, dtype=torch.int32)
        return x, fmt, {}, x.reshape(-1).numpy().astype(np.int64), None
    if kind == "float_int8":
        x = torch.randn(SHAPE, generator=gen) * 2
        xs = x.reshape(-1).numpy()
        codes = np.array([min(max(int(round(float(v / np.float32(SCALE)))), -128), 127) for v in xs])
        dec = lambda new: np.float32(new.astype(np.float32)) * np.float32(SCALE)  # noqa: E731
        return x, IntFormat(8), {"scale": SCALE}, codes, dec
    if kind == "float_int8_per_channel":
        x = torch.randn(SHAPE, generator=gen) * 2
        s = np.float32([0.05, 0.1, 0.02, 0.03, 0.07, 0.01, 0.2, 0.04])
        zp = np.array([0, 3, -2, 1, 0, -5, 2, 7])
        xs = x.numpy()
        codes = np.zeros(SHAPE, dtype=np.int64)
        for idx in np.ndindex(*SHAPE):
            c = idx[1]
            codes[idx] = min(max(int(round(float(xs[idx] / s[c]))) + zp[c], -128), 127)
        chan = np.indices(SHAPE)[1].reshape(-1)
        kwargs = {"scale": torch.from_numpy(s), "zero_point": torch.from_numpy(zp).int(), "axis": 1}

        def dec(new, index):
            ch = chan[index]
            return (new.astype(np.float32) - zp[ch].astype(np.float32)) * s[ch]

        return x, IntFormat(8), kwargs, codes.reshape(-1), dec
    if kind == "float32_ieee":
        x = torch.randn(SHAPE, generator=gen)
        codes = x.reshape(-1).numpy().view(np.uint32).astype(np.int64)
        return x, FloatFormat("float32"), {}, codes, None
    if kind == "float16_ieee":
        x = torch.randn(SHAPE, generator=gen).half()
        codes = x.reshape(-1).numpy().view(np.uint16).astype(np.int64)
        return x, FloatFormat("float16"), {}, codes, None
    if kind == "bf16_of_float32":
        x = torch.randn(SHAPE, generator=gen)
        u = x.reshape(-1).numpy().view(np.uint32).astype(np.int64)
        codes = (u + 0x7FFF + ((u >> 16) & 1)) >> 16  # round to nearest even (no NaNs in randn)
        return x, FloatFormat("bfloat16"), {}, codes, None
    raise AssertionError(kind)


INPUT_KINDS = ["int8_codes", "int4_codes_int32", "uint5_codes_int64", "fixed_codes", "float_int8",
               "float_int8_per_channel", "float32_ieee", "float16_ieee", "bf16_of_float32"]


def _fmt_signed(fmt) -> bool:
    if isinstance(fmt, IntFormat):
        return fmt.signed
    if isinstance(fmt, FixedPoint):
        return fmt.keep_negative
    return False


def _decode_ieee(fmt: FloatFormat, new: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Bits of the faulty value written back into a tensor of ``dtype``."""
    if fmt.kind == "float32":
        vals = new.astype(np.uint32).view(np.float32)
    elif fmt.kind == "float16":
        vals = new.astype(np.uint16).view(np.float16)
    else:
        vals = (new.astype(np.uint32) << 16).view(np.float32)
    return raw_bits(torch.from_numpy(np.ascontiguousarray(vals)).to(dtype))


@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("name", sorted(INSTANCES))
def test_fault_contract(name, kind):
    fault = INSTANCES[name]
    x, fmt, kwargs, ref_codes, dec = _input(kind)
    x_before = x.clone()
    b = fmt.bits
    signed = _fmt_signed(fmt)

    out, rec = corrupt(x, fmt, fault, seed=0, **kwargs)
    out2, rec2 = corrupt(x, fmt, fault, seed=0, **kwargs)
    assert torch.equal(x, x_before), "corrupt must not modify its input"
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    # determinism
    assert np.array_equal(raw_bits(out), raw_bits(out2))
    assert torch.equal(rec.index, rec2.index) and torch.equal(rec.new, rec2.new)
    # a different seed gives different faults (the same ones, for a deterministic pattern)
    others = [corrupt(x, fmt, fault, seed=s, **kwargs)[1] for s in (1, 2, 3)]
    differs = [not torch.equal(r.index, rec.index) or not torch.equal(r.new, rec.new) for r in others]
    assert any(differs) if fault.seeded else not any(differs)

    index = rec.index.numpy()
    assert len(index) > 0
    assert len(np.unique(index)) == len(index)
    assert index.min() >= 0 and index.max() < x.numel()
    # old codes are the input's codes at the index
    old = rec.old.numpy().astype(np.int64)
    new = rec.new.numpy().astype(np.int64)
    assert np.array_equal(old, ref_codes[index])
    # new codes are valid codes of the format
    assert all(ref_code(ref_pattern(c, b), b, signed) == c for c in new.tolist())

    # the output differs from the input only at record.index
    diff = np.nonzero(raw_bits(out).reshape(-1) != raw_bits(x).reshape(-1))[0]
    assert set(diff.tolist()) <= set(index.tolist())
    flat_out = raw_bits(out).reshape(-1)
    flat_x = raw_bits(x).reshape(-1)
    changed = new != old
    if not x.is_floating_point():
        assert np.array_equal(flat_out[index], new)
    else:
        # unchanged codes keep the exact input value; changed ones hold the faulty value
        assert np.array_equal(flat_out[index[~changed]], flat_x[index[~changed]])
        if isinstance(fmt, FloatFormat):
            expected = _decode_ieee(fmt, new[changed], x.dtype)
        elif kind == "float_int8_per_channel":
            expected = raw_bits(torch.from_numpy(dec(new[changed], index[changed])))
        else:
            expected = raw_bits(torch.from_numpy(dec(new[changed])))
        assert np.array_equal(flat_out[index[changed]], expected)

    # what changed agrees with the fault model
    delta = [ref_pattern(o, b) ^ ref_pattern(n, b) for o, n in zip(old, new)]
    if name in ("lsb_flip", "msb_flip", "full_flip"):
        want = {"lsb_flip": 1, "msb_flip": 1 << (b - 1), "full_flip": (1 << b) - 1}[name]
        assert all(d == want for d in delta)
    if name in ("bit_flip", "bit_flip_planes", "bit_flip_regions"):
        sites = rec.bit_sites.numpy()
        per = {}
        for e, bit in sites.tolist():
            per[e] = per.get(e, 0) | (1 << bit)
        assert sorted(per) == sorted(index.tolist())
        assert [per[i] for i in index.tolist()] == delta
    if name == "stuck_at":
        sites = rec.bit_sites.numpy()
        per = {}
        for e, bit in sites.tolist():
            per[e] = per.get(e, 0) | (1 << bit)
        assert sorted(per) == sorted(index.tolist())
        assert all(d & ~per[i] == 0 for d, i in zip(delta, index.tolist()))
    if name in ("random_value", "hw_periodic"):
        assert all(fmt.code_min <= c <= fmt.code_max for c in new.tolist())


# --------------------------------------------------------------------------------------------
# BitFlip
# --------------------------------------------------------------------------------------------
def test_bitflip_sites_exact():
    x = torch.tensor([[0, 1, -1, 127, -128], [5, -6, 64, 0, 33], [-77, 2, 3, 4, 100]], dtype=torch.int8)
    sites = ((0, 0), (0, 7), (4, 3), (14, 6), (9, 0), (9, 1), (9, 2), (9, 3), (9, 4), (9, 5), (9, 6), (9, 7))
    out, rec = corrupt(x, "int8", BitFlip(sites=sites), seed=3)
    flat = x.reshape(-1).tolist()
    expected = list(flat)
    for e, bit in sites:
        expected[e] = ref_code(ref_pattern(expected[e], 8) ^ (1 << bit), 8, True)
    assert out.reshape(-1).tolist() == expected
    assert rec.index.tolist() == sorted({e for e, _ in sites})
    assert rec.old.tolist() == [flat[i] for i in rec.index.tolist()]
    assert sorted(map(tuple, rec.bit_sites.tolist())) == sorted(sites)
    # the doc example
    faulty, _ = corrupt(torch.zeros(4, dtype=torch.int8), "int8", "bit_flip", sites=((2, 7),), seed=0)
    assert faulty.tolist() == [0, 0, -128, 0]
    # sites need no seed and ignore it
    assert torch.equal(corrupt(x, "int8", BitFlip(sites=sites), seed=99)[0], out)


def test_bitflip_sites_float32_exact():
    x = torch.tensor([1.0, -2.5, 0.0, 3.0e-3])
    sites = ((0, 31), (1, 0), (2, 23), (3, 30), (3, 5))
    out, _ = corrupt(x, "float32", BitFlip(sites=sites), seed=0)
    u = x.numpy().view(np.uint32).copy()
    for e, bit in sites:
        u[e] ^= np.uint32(1 << bit)
    assert np.array_equal(out.numpy().view(np.uint32), u)
    assert out[0].item() == -1.0


@pytest.mark.parametrize("fmt, dtype", [("int8", torch.int8), ("uint4", torch.int16),
                                        ("float16", torch.float16), ("float32", torch.float32)])
@pytest.mark.parametrize("k", [1, 7, 40])
def test_bitflip_count_exact(fmt, dtype, k):
    gen = torch.Generator().manual_seed(k)
    if dtype.is_floating_point:
        x = torch.randn(30, generator=gen).to(dtype)
    elif fmt == "uint4":
        x = torch.randint(0, 16, (30,), generator=gen, dtype=dtype)
    else:
        x = torch.randint(-128, 128, (30,), generator=gen, dtype=dtype)
    bits = 4 if fmt == "uint4" else 8 if fmt == "int8" else 16 if fmt == "float16" else 32
    for seed in range(5):
        out, rec = corrupt(x, fmt, BitFlip(count=k), seed=seed)
        old = [ref_pattern(o, bits) for o in rec.old.tolist()]
        new = [ref_pattern(n, bits) for n in rec.new.tolist()]
        assert sum(popcount(o ^ n) for o, n in zip(old, new)) == k
        assert len({tuple(s) for s in rec.bit_sites.tolist()}) == k == rec.bit_sites.shape[0]
        # elements outside the index are untouched, inside they differ
        d = np.nonzero(raw_bits(out) != raw_bits(x))[0]
        assert sorted(d.tolist()) == rec.index.tolist()


def test_bitflip_count_all_bits_is_full_flip():
    x = torch.arange(-8, 8, dtype=torch.int8)
    out, _ = corrupt(x, "int4", BitFlip(count=16 * 4), seed=0)
    assert out.tolist() == [-v - 1 for v in range(-8, 8)]


@pytest.mark.parametrize("bits, allowed", [(("msb",), {7}), (("lsb",), {0}), ((0, -1), {0, 7}),
                                           ((-2, 3), {6, 3}), ("msb", {7})])
def test_bitflip_bits_restriction(bits, allowed):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-128, 128, (200,), generator=gen, dtype=torch.int8)
    seen = set()
    for seed in range(3):
        _, rec = corrupt(x, "int8", BitFlip(ber=0.5, bits=bits), seed=seed)
        for o, n in zip(rec.old.tolist(), rec.new.tolist()):
            d = ref_pattern(o, 8) ^ ref_pattern(n, 8)
            assert d != 0
            pos = {i for i in range(8) if d >> i & 1}
            assert pos <= allowed
            seen |= pos
        assert set(rec.bit_sites[:, 1].tolist()) <= allowed
    assert seen == allowed


def test_bitflip_msb_only_float32_sign():
    x = torch.randn(100, generator=torch.Generator().manual_seed(0))
    out, rec = corrupt(x, "float32", BitFlip(ber=0.5, bits=("msb",)), seed=1)
    idx = rec.index
    assert len(idx) > 0
    assert torch.equal(out[idx], -x[idx])
    rest = torch.ones(100, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(out[rest], x[rest])


def test_bitflip_ber_count_distribution():
    x = torch.randint(-128, 128, (64,), generator=torch.Generator().manual_seed(0), dtype=torch.int8)
    ber = 0.02
    counts = []
    for seed in range(400):
        _, rec = corrupt(x, "int8", BitFlip(ber=ber), seed=seed)
        counts.append(sum(popcount(ref_pattern(o, 8) ^ ref_pattern(n, 8))
                          for o, n in zip(rec.old.tolist(), rec.new.tolist())))
    counts = np.array(counts)
    assert binom_gof(counts, 64 * 8, ber) > ALPHA
    assert abs(counts.mean() - 64 * 8 * ber) < 5 * math.sqrt(64 * 8 * ber * (1 - ber) / counts.size)


def test_bitflip_ber_positions_uniform_over_bits():
    x = torch.zeros(32, dtype=torch.int8)
    hits = np.zeros((32, 8))
    for seed in range(150):
        _, rec = corrupt(x, "int8", BitFlip(ber=0.05), seed=seed)
        for e, bit in rec.bit_sites.tolist():
            hits[e, bit] += 1
    assert chi2_pvalue(hits.reshape(-1), np.full(hits.size, hits.sum() / hits.size)) > ALPHA


def test_bitflip_ber_extremes():
    x = torch.randint(-8, 8, (50,), generator=torch.Generator().manual_seed(0), dtype=torch.int8)
    out, rec = corrupt(x, "int4", BitFlip(ber=0.0), seed=0)
    assert torch.equal(out, x) and rec.index.numel() == 0
    out, rec = corrupt(x, "int4", BitFlip(ber=1.0), seed=0)
    assert out.tolist() == [-v - 1 for v in x.tolist()]


# --------------------------------------------------------------------------------------------
# StuckAt
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, low, high", [(IntFormat(8), -128, 127), (IntFormat(6, False), 0, 63),
                                            (FixedPoint(5, 1, True), -16, 15)])
def test_stuck_at_explicit_masks(fmt, low, high):
    gen = torch.Generator().manual_seed(5)
    shape = (4, 6)
    x = torch.randint(low, high + 1, shape, generator=gen, dtype=torch.int32)
    mask = torch.randint(0, 1 << fmt.bits, shape, generator=gen, dtype=torch.int64)
    mask[0, :3] = 0  # some elements without stuck bits
    value = torch.randint(0, 1 << fmt.bits, shape, generator=gen, dtype=torch.int64)
    out, rec = corrupt(x, fmt, StuckAt(stuck_mask=mask, stuck_value=value))
    signed = _fmt_signed(fmt)
    expected = []
    for o, m, v in zip(x.reshape(-1).tolist(), mask.reshape(-1).tolist(), value.reshape(-1).tolist()):
        p = ref_pattern(o, fmt.bits)
        expected.append(ref_code((p & ~m) | (v & m), fmt.bits, signed))
    assert out.reshape(-1).tolist() == expected
    assert rec.index.tolist() == [i for i, m in enumerate(mask.reshape(-1).tolist()) if m]
    assert rec.old.tolist() == [x.reshape(-1)[i].item() for i in rec.index.tolist()]


def test_stuck_at_explicit_float16():
    x = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float16)
    mask = torch.tensor([0x8000, 0, 0x0001, 0x7C00])
    value = torch.tensor([0x8000, 0xFFFF, 0x0001, 0x7C00])
    out, _ = corrupt(x, "float16", StuckAt(stuck_mask=mask, stuck_value=value))
    u = x.numpy().view(np.uint16).astype(np.int64)
    m, v = mask.numpy(), value.numpy()
    ref = ((u & ~m) | (v & m)).astype(np.uint16)
    assert np.array_equal(out.numpy().view(np.uint16), ref)


def test_stuck_at_rate_statistics():
    n = 4000
    x = torch.randint(-128, 128, (n,), generator=torch.Generator().manual_seed(0), dtype=torch.int8)
    rate, p_one = 10.0, 0.3
    out, rec = corrupt(x, "int8", StuckAt(rate=rate, p_one=p_one), seed=11)
    sites = rec.bit_sites.tolist()
    total = n * 8
    p = rate / 100
    assert len({tuple(s) for s in sites}) == len(sites)
    assert abs(len(sites) - total * p) < 5 * math.sqrt(total * p * (1 - p))
    out_flat = out.tolist()
    x_flat = x.tolist()
    ones = 0
    stuck_per = {}
    for e, bit in sites:
        ones += ref_pattern(out_flat[e], 8) >> bit & 1
        stuck_per[e] = stuck_per.get(e, 0) | (1 << bit)
    assert abs(ones - len(sites) * p_one) < 5 * math.sqrt(len(sites) * p_one * (1 - p_one))
    # bits that are not stuck keep their value
    for e in range(n):
        d = ref_pattern(x_flat[e], 8) ^ ref_pattern(out_flat[e], 8)
        assert d & ~stuck_per.get(e, 0) == 0


@pytest.mark.parametrize("p_one, expected", [(0.0, 0), (1.0, 1)])
def test_stuck_at_p_one_extremes(p_one, expected):
    x = torch.randint(-128, 128, (300,), generator=torch.Generator().manual_seed(1), dtype=torch.int8)
    out, rec = corrupt(x, "int8", StuckAt(rate=20.0, p_one=p_one), seed=0)
    assert rec.bit_sites.shape[0] > 0
    for e, bit in rec.bit_sites.tolist():
        assert ref_pattern(out[e].item(), 8) >> bit & 1 == expected


def test_stuck_at_bits_restriction():
    x = torch.randint(-128, 128, (300,), generator=torch.Generator().manual_seed(1), dtype=torch.int8)
    _, rec = corrupt(x, "int8", StuckAt(rate=30.0, bits=("msb", 0)), seed=0)
    assert set(rec.bit_sites[:, 1].tolist()) == {0, 7}


# --------------------------------------------------------------------------------------------
# RandomValue
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fill", [0, 127, -128, "random"])
def test_random_value_uniform_and_independent_of_input(fill):
    n = 256 * 60
    if fill == "random":
        x = torch.randint(-128, 128, (n,), generator=torch.Generator().manual_seed(3), dtype=torch.int8)
    else:
        x = torch.full((n,), fill, dtype=torch.int8)
    out, rec = corrupt(x, "int8", RandomValue(probability=100.0), seed=17)
    assert rec.index.tolist() == list(range(n))
    hist = np.bincount(out.numpy().astype(np.int64) + 128, minlength=256)
    assert chi2_pvalue(hist, np.full(256, n / 256)) > ALPHA


def test_random_value_independent_of_input_contingency():
    groups = [-128, -1, 0, 100]
    x = torch.tensor(groups * 3000, dtype=torch.int8)
    out, _ = corrupt(x, "int8", RandomValue(probability=100.0), seed=5)
    table = np.zeros((len(groups), 16))
    for xi, yi in zip(x.tolist(), out.tolist()):
        table[groups.index(xi), (yi + 128) // 16] += 1
    assert stats.chi2_contingency(table)[1] > ALPHA


@pytest.mark.parametrize("fmt, low, high", [
    (IntFormat(8), -128, 127), (IntFormat(8, range="narrow"), -128, 127), (IntFormat(4, False), 0, 15),
    (FixedPoint(6, 2, True, symmetric=True), -31, 31), (FloatFormat("float16"), 0, 0xFFFF),
    (IntFormat(1), -1, 0),
])
def test_random_value_formula(fmt, low, high):
    x = torch.randint(low, high + 1, (3, 50), generator=torch.Generator().manual_seed(2), dtype=torch.int32)
    draw = draw_faults(RandomValue(probability=60.0), x.shape, fmt, make_generator("rv", fmt.bits))
    r = draw.value.tolist()
    assert len(r) == len(draw.index) > 0
    assert all(fmt.code_min <= v <= fmt.code_max for v in r)
    out, rec = apply_draw(x, fmt, draw)
    lo, size = fmt.code_min, fmt.code_max - fmt.code_min + 1
    flat = x.reshape(-1).tolist()
    expected = list(flat)
    for i, rv in zip(draw.index.tolist(), r):
        expected[i] = ((flat[i] + rv - lo) % size) + lo
    assert out.reshape(-1).tolist() == expected
    assert all(fmt.code_min <= v <= fmt.code_max for v in rec.new.tolist())


def test_random_value_narrow_range_uniform():
    n = 15 * 400
    x = torch.full((n,), -8, dtype=torch.int8)  # the extra two's-complement code is accepted
    out, _ = corrupt(x, IntFormat(4, range="narrow"), RandomValue(probability=100.0), seed=1)
    vals = out.numpy().astype(np.int64)
    assert vals.min() >= -7 and vals.max() <= 7
    assert chi2_pvalue(np.bincount(vals + 7, minlength=15), np.full(15, n / 15)) > ALPHA


# --------------------------------------------------------------------------------------------
# Element flips
# --------------------------------------------------------------------------------------------
def test_element_flips_int4_exact():
    x = torch.arange(-8, 8, dtype=torch.int8)
    lsb, _ = corrupt(x, "int4", LSBFlip(probability=100.0), seed=0)
    msb, _ = corrupt(x, "int4", MSBFlip(probability=100.0), seed=0)
    full, _ = corrupt(x, "int4", FullFlip(probability=100.0), seed=0)
    vals = x.tolist()
    assert lsb.tolist() == [ref_code(ref_pattern(v, 4) ^ 1, 4, True) for v in vals]
    assert msb.tolist() == [ref_code(ref_pattern(v, 4) ^ 8, 4, True) for v in vals]
    assert full.tolist() == [ref_code(ref_pattern(v, 4) ^ 15, 4, True) for v in vals]
    assert msb[x.tolist().index(3)].item() == -5
    assert msb[x.tolist().index(-3)].item() == 5
    assert full.tolist() == [-v - 1 for v in vals]
    assert lsb.tolist() == [v ^ 1 for v in vals]


@pytest.mark.parametrize("fmt, values", [
    ("uint4", range(16)), ("int8", range(-128, 128)), ("uint8", range(256)), ("int2", range(-2, 2)),
    (FixedPoint(5, 1, True), range(-16, 16)),
])
def test_element_flips_exact_all_codes(fmt, values):
    from qfault.formats import get_format

    f = get_format(fmt)
    signed = _fmt_signed(f)
    x = torch.tensor(list(values), dtype=torch.int32)
    for cls, m in ((LSBFlip, 1), (MSBFlip, 1 << (f.bits - 1)), (FullFlip, (1 << f.bits) - 1)):
        out, rec = corrupt(x, f, cls(probability=100.0), seed=0)
        assert out.tolist() == [ref_code(ref_pattern(v, f.bits) ^ m, f.bits, signed) for v in values]


def test_msb_flip_float16_negates():
    x = torch.randn(64, generator=torch.Generator().manual_seed(0)).half()
    out, _ = corrupt(x, "float16", MSBFlip(probability=100.0), seed=0)
    assert torch.equal(out, -x)
    out, _ = corrupt(x, "float16", FullFlip(probability=100.0), seed=0)
    assert np.array_equal(out.numpy().view(np.uint16), ~x.numpy().view(np.uint16))


@pytest.mark.parametrize("cls", [LSBFlip, RandomValue])
def test_element_probability_count_distribution(cls):
    x = torch.zeros(200, dtype=torch.int8)
    counts = np.array([len(corrupt(x, "int8", cls(probability=10.0), seed=s)[1].index) for s in range(300)])
    assert binom_gof(counts, 200, 0.1) > ALPHA


def test_element_probability_extremes():
    x = torch.arange(-8, 8, dtype=torch.int8)
    out, rec = corrupt(x, "int4", MSBFlip(probability=0.0), seed=0)
    assert torch.equal(out, x) and rec.index.numel() == 0


# --------------------------------------------------------------------------------------------
# HwPeriodic
# --------------------------------------------------------------------------------------------
def ref_hw_mask(shape, pattern):
    """Loop reference of the layout rules."""
    pat = [bool(v) for v in pattern]
    f = len(pat)
    out = np.zeros(shape, dtype=bool)
    if len(shape) == 4:
        b_, c_, h_, w_ = shape
        for b in range(b_):
            for c in range(c_):
                for h in range(h_):
                    for w in range(w_):
                        if c_ > f:
                            hit = pat[c % f]
                        elif h_ == 1 and w_ == 1:
                            hit = pat[c]
                        else:
                            t = (b * h_ + h) * w_ + w
                            hit = pat[(t % (f // c_)) * c_ + c]
                        out[b, c, h, w] = hit
    elif len(shape) == 2:
        for b in range(shape[0]):
            for w in range(shape[1]):
                out[b, w] = pat[w % f]
    else:
        flat = out.reshape(-1)
        for i in range(flat.size):
            flat[i] = pat[i % f]
    return out


@pytest.mark.parametrize("shape, f", [
    ((2, 3, 4, 5), 12), ((2, 3, 4, 5), 3), ((2, 7, 3, 3), 16), ((3, 4, 2, 1), 9), ((2, 3, 1, 1), 8),
    ((4, 5, 1, 1), 5), ((2, 5, 2, 2), 3), ((1, 10, 3, 2), 4), ((2, 1, 3, 3), 1), ((2, 3, 4, 5), 64),
    ((3, 10), 4), ((2, 3), 8), ((5, 7), 7), ((10,), 4), ((2, 3, 5), 7), ((2, 2, 2, 2, 3), 5), ((3, 2), 1),
])
def test_hw_periodic_mask_layout(shape, f):
    gen = np.random.default_rng(sum(shape) * 100 + f)
    for _ in range(3):
        pattern = torch.from_numpy(gen.random(f) < 0.4)
        got = hw_periodic_mask(shape, pattern)
        assert tuple(got.shape) == shape and got.dtype == torch.bool
        assert np.array_equal(got.numpy(), ref_hw_mask(shape, pattern.tolist()))


@pytest.mark.parametrize("f, p", [(1024, 5.0), (10, 10.0), (1000, 0.1), (3, 100.0), (7, 0.0), (100, 33.3),
                                  (16, 25.0), (1, 50.0), (1000, 0.3), (10, 70.0), (64, 1.0),
                                  (1000, 16.1), (1000, 32.7), (10000, 0.07)])
def test_hw_periodic_pattern_count(f, p):
    expected = min(f, math.ceil(Fraction(f) * Fraction(str(p)) / 100))
    patterns = []
    for seed in range(4):
        pat = hw_periodic_pattern(HwPeriodic(probability=p, frequency_value=f), make_generator("hw", seed))
        assert pat.dtype == torch.bool and pat.numel() == f
        assert int(pat.sum()) == expected
        patterns.append(pat)
    if 0 < expected < f:
        assert any(not torch.equal(patterns[0], q) for q in patterns[1:])


def test_hw_periodic_pattern_slots_uniform():
    f, hits = 12, np.zeros(12)
    for seed in range(600):
        hits += hw_periodic_pattern(HwPeriodic(probability=25.0, frequency_value=f),
                                    make_generator("slots", seed)).numpy()
    assert chi2_pvalue(hits, np.full(f, hits.sum() / f)) > ALPHA


@pytest.mark.parametrize("strategy, delta", [("lsb_flip", 1), ("msb_flip", 128), ("full_flip", 255),
                                             ("random_value", None), ("random", None)])
def test_hw_periodic_corrupt_layout_and_strategy(strategy, delta):
    shape, f, p = (2, 4, 3, 3), 16, 25.0
    x = torch.randint(-128, 128, shape, generator=torch.Generator().manual_seed(0), dtype=torch.int8)
    out, rec = corrupt(x, "int8", HwPeriodic(probability=p, frequency_value=f, strategy=strategy), seed=4)
    hit = np.zeros(x.numel(), dtype=bool)
    hit[rec.index.numpy()] = True
    hit = hit.reshape(shape)
    # reconstruct the pattern from the hits and check it is consistent with the layout rule
    b_, c_, h_, w_ = shape
    slot = {}
    for b, c, h, w in np.ndindex(*shape):
        t = (b * h_ + h) * w_ + w
        s = (t % (f // c_)) * c_ + c
        assert slot.setdefault(s, hit[b, c, h, w]) == hit[b, c, h, w]
    assert sum(slot.values()) == math.ceil(f * p / 100)
    assert np.array_equal(hit, ref_hw_mask(shape, [slot.get(i, False) for i in range(f)]))
    old, new = rec.old.tolist(), rec.new.tolist()
    if delta is not None:
        assert all(ref_pattern(o, 8) ^ ref_pattern(n, 8) == delta for o, n in zip(old, new))
    assert out.reshape(-1)[rec.index].tolist() == new


def test_hw_periodic_extremes():
    x = torch.randint(-128, 128, (2, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.int8)
    out, rec = corrupt(x, "int8", HwPeriodic(probability=0.0, frequency_value=8), seed=0)
    assert rec.index.numel() == 0 and torch.equal(out, x)
    _, rec = corrupt(x, "int8", HwPeriodic(probability=100.0, frequency_value=7, strategy="lsb_flip"), seed=0)
    assert rec.index.tolist() == list(range(x.numel()))


# --------------------------------------------------------------------------------------------
# Float tensors: calibration path
# --------------------------------------------------------------------------------------------
def test_float_calibrated_signed_and_unsigned():
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(8))
    xs = x.numpy()
    # signed: symmetric scale max|x| / 127
    out, rec = corrupt(x, "int8", LSBFlip(probability=100.0), seed=0)
    s = np.float32(np.abs(xs).max()) / np.float32(127)
    codes = np.clip(np.round(xs / s), -128, 127).astype(np.int64).reshape(-1)
    assert np.array_equal(rec.old.numpy(), codes)
    assert np.array_equal(out.numpy().reshape(-1), (codes ^ 1).astype(np.float32) * s)
    # unsigned: affine over [min(x, 0), max(x, 0)]
    out, rec = corrupt(x, "uint8", LSBFlip(probability=100.0), seed=0)
    lo, hi = np.float32(min(xs.min(), 0)), np.float32(max(xs.max(), 0))
    s = np.float32(hi - lo) / np.float32(255)
    zp = int(min(max(round(float(-lo / s)), 0), 255))
    codes = np.clip(np.round(xs / s) + zp, 0, 255).astype(np.int64).reshape(-1)
    assert np.array_equal(rec.old.numpy(), codes)
    expected = ((codes ^ 1) - zp).astype(np.float32) * s
    assert np.array_equal(out.numpy().reshape(-1), expected)


def test_float_per_channel_negative_axis_matches():
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))
    s = torch.tensor([0.1, 0.02, 0.05])
    zp = torch.tensor([1, 0, -3], dtype=torch.int32)
    a = corrupt(x, "int8", LSBFlip(probability=50.0), seed=3, scale=s, zero_point=zp, axis=1)
    b = corrupt(x, "int8", LSBFlip(probability=50.0), seed=3, scale=s, zero_point=zp, axis=-2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1].old, b[1].old)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_float_calibrated_per_channel(axis):
    x = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(9))
    out, rec = corrupt(x, "int8", LSBFlip(probability=100.0), seed=0, axis=axis)
    xs = x.numpy()
    ax = axis % 3
    amax = np.abs(xs).max(axis=tuple(d for d in range(3) if d != ax))
    scale = amax.astype(np.float32) / np.float32(127)
    shape = [1, 1, 1]
    shape[ax] = -1
    s_full = np.broadcast_to(scale.reshape(shape), xs.shape)
    codes = np.clip(np.round(xs / s_full), -128, 127).astype(np.int64)
    assert np.array_equal(rec.old.numpy(), codes.reshape(-1))
    assert np.array_equal(out.numpy(), (codes ^ 1).astype(np.float32) * s_full)


@pytest.mark.parametrize("scale_shape, zp_shape", [((1, 3, 1, 1), (3, 1, 1)), ((2, 1, 1, 5), (5,)),
                                                   ((2, 3, 4, 5), (1, 1, 4, 1)), ((4, 1), None)])
def test_float_broadcast_scale_tensors(scale_shape, zp_shape):
    shape = (2, 3, 4, 5)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(shape, generator=gen)
    scale = torch.rand(scale_shape, generator=gen) * 0.1 + 0.01
    zp = None if zp_shape is None else torch.randint(-5, 6, zp_shape, generator=gen, dtype=torch.int32)
    out, rec = corrupt(x, "int8", LSBFlip(probability=50.0), seed=2, scale=scale, zero_point=zp)
    s_full = np.broadcast_to(scale.numpy(), shape).reshape(-1)
    z_full = np.zeros(x.numel(), dtype=np.int64) if zp is None else np.broadcast_to(zp.numpy(), shape).reshape(-1)
    xs = x.numpy().reshape(-1)
    idx = rec.index.numpy()
    assert len(idx) > 0
    ref_old = np.array([min(max(int(round(float(xs[i] / s_full[i]))) + int(z_full[i]), -128), 127) for i in idx])
    assert np.array_equal(rec.old.numpy(), ref_old)
    new = rec.new.numpy()
    assert np.array_equal(new, ref_old ^ 1)
    expected = (new.astype(np.float32) - z_full[idx].astype(np.float32)) * s_full[idx]
    assert np.array_equal(out.numpy().reshape(-1)[idx], expected)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
def _msg(excinfo) -> str:
    return str(excinfo.value)


@pytest.mark.parametrize("cls", [RandomValue, LSBFlip, MSBFlip, FullFlip, HwPeriodic])
@pytest.mark.parametrize("value", [150, -1, float("nan")])
def test_probability_out_of_range(cls, value):
    with pytest.raises(QFaultConfigError) as info:
        cls(probability=value)
    assert "probability" in _msg(info) and "[0.0, 100.0]" in _msg(info)
    assert info.value.field == "probability"


def test_probability_error_through_corrupt():
    with pytest.raises(QFaultConfigError) as info:
        corrupt(torch.zeros(4, dtype=torch.int8), "int8", "lsb_flip", probability=150, seed=0)
    assert "probability" in _msg(info) and "[0.0, 100.0]" in _msg(info) and "150" in _msg(info)


def test_ber_out_of_range():
    with pytest.raises(QFaultConfigError) as info:
        BitFlip(ber=2)
    assert "ber" in _msg(info) and "[0.0, 1.0]" in _msg(info) and "2" in _msg(info)
    with pytest.raises(QFaultConfigError, match="ber"):
        BitFlip(ber=-0.1)


@pytest.mark.parametrize("kwargs", [{}, {"ber": 0.1, "count": 1}, {"count": 1, "sites": ((0, 0),)}])
def test_bitflip_needs_exactly_one(kwargs):
    with pytest.raises(QFaultConfigError) as info:
        BitFlip(**kwargs)
    for word in ("ber", "count", "sites"):
        assert word in _msg(info)


def test_unknown_fault_lists_names():
    with pytest.raises(QFaultConfigError) as info:
        get_fault("cosmic_ray")
    assert "cosmic_ray" in _msg(info)
    for name in list_faults():
        assert name in _msg(info)
    with pytest.raises(QFaultConfigError) as info:
        corrupt(torch.zeros(3, dtype=torch.int8), "int8", "cosmic_ray", seed=0)
    assert all(name in _msg(info) for name in list_faults())


@pytest.mark.parametrize("bits", [(9,), (8,), (-9,), ("msb", 12)])
def test_bits_outside_format(bits):
    with pytest.raises(QFaultConfigError) as info:
        corrupt(torch.zeros(4, dtype=torch.int8), "int8", BitFlip(ber=0.1, bits=bits), seed=0)
    assert info.value.field == "bits" and "bits" in _msg(info)


def test_bits_bad_values():
    with pytest.raises(QFaultConfigError, match="bits"):
        BitFlip(ber=0.1, bits=("middle",))
    with pytest.raises(QFaultConfigError, match="bits"):
        BitFlip(ber=0.1, bits=())
    with pytest.raises(QFaultConfigError, match="bits"):
        StuckAt(rate=1.0, bits=(True,))


@pytest.mark.parametrize("values", [[9], [-9], [8], [0, 1, 100]])
def test_codes_outside_format(values):
    with pytest.raises(QFaultConfigError) as info:
        corrupt(torch.tensor(values, dtype=torch.int8), "int4", LSBFlip(probability=50.0), seed=0)
    assert info.value.field == "codes" and "codes" in _msg(info)
    assert "int4" in _msg(info)


def test_codes_at_format_edges_accepted():
    out, _ = corrupt(torch.tensor([-8, 7], dtype=torch.int8), "int4", LSBFlip(probability=100.0), seed=0)
    assert out.tolist() == [-7, 6]
    out, _ = corrupt(torch.tensor([0, 15], dtype=torch.int8), "uint4", LSBFlip(probability=100.0), seed=0)
    assert out.tolist() == [1, 14]
    with pytest.raises(QFaultConfigError, match="codes"):
        corrupt(torch.tensor([-1], dtype=torch.int8), "uint4", LSBFlip(probability=100.0), seed=0)


def test_other_parameter_errors():
    x = torch.zeros(10, dtype=torch.int8)
    with pytest.raises(QFaultConfigError, match="count"):
        corrupt(x, "int8", BitFlip(count=81), seed=0)
    with pytest.raises(QFaultConfigError, match="count"):
        BitFlip(count=-1)
    with pytest.raises(QFaultConfigError, match="sites"):
        corrupt(x, "int8", BitFlip(sites=((10, 0),)), seed=0)
    with pytest.raises(QFaultConfigError, match="sites"):
        corrupt(x, "int8", BitFlip(sites=((0, 8),)), seed=0)
    with pytest.raises(QFaultConfigError, match="sites"):
        BitFlip(sites=((-1, 0),))
    with pytest.raises(QFaultConfigError, match="stuck_at"):
        StuckAt()
    with pytest.raises(QFaultConfigError, match="stuck_value"):
        StuckAt(stuck_mask=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(QFaultConfigError, match="rate"):
        StuckAt(rate=101.0)
    with pytest.raises(QFaultConfigError, match="p_one"):
        StuckAt(rate=1.0, p_one=2.0)
    with pytest.raises(QFaultConfigError, match="stuck_mask"):
        corrupt(x, "int8", StuckAt(stuck_mask=torch.ones(3, dtype=torch.int64),
                                   stuck_value=torch.ones(3, dtype=torch.int64)))
    with pytest.raises(QFaultConfigError, match="strategy"):
        HwPeriodic(strategy="bogus")
    with pytest.raises(QFaultConfigError, match="frequency_value"):
        HwPeriodic(frequency_value=0)


# --------------------------------------------------------------------------------------------
# Config round trip and name resolution
# --------------------------------------------------------------------------------------------
ROUND_TRIP = [
    BitFlip(ber=1e-3), BitFlip(count=3), BitFlip(sites=((1, 2), (3, 4))), BitFlip(ber=0.5, bits=("msb", 0)),
    BitFlip(count=1, bits=(-1,)), StuckAt(rate=1.5), StuckAt(rate=2.0, p_one=0.25, bits=("lsb",)),
    RandomValue(), RandomValue(probability=3.0), LSBFlip(probability=0.5), MSBFlip(), FullFlip(100.0),
    HwPeriodic(), HwPeriodic(probability=12.5, frequency_value=64, strategy="msb_flip"),
    HwPeriodic(strategy="random"),
]


@pytest.mark.parametrize("fault", ROUND_TRIP, ids=repr)
def test_fault_config_round_trip(fault):
    d = fault.to_dict()
    assert d["type"] == fault.type_name and d["version"] == 1
    back = get_fault(d)
    assert back == fault and type(back) is type(fault)
    assert back.to_dict() == d


def test_fault_aliases_and_normalisation():
    assert get_fault("seu", ber=0.1) == BitFlip(ber=0.1)
    assert get_fault("BitFlip", count=2) == BitFlip(count=2)
    assert type(get_fault("random", probability=3)) is RandomValue
    assert type(get_fault("saf", rate=1.0)) is StuckAt
    assert get_fault("hw_mask") == HwPeriodic()
    assert HwPeriodic(strategy="random").strategy == "random_value"
    assert BitFlip(sites=[[1, 2]]).sites == ((1, 2),)
    assert BitFlip(ber=0.1, bits="msb").bits == ("msb",)
    inst = LSBFlip()
    assert get_fault(inst) is inst


# --------------------------------------------------------------------------------------------
# Empty tensors (known failures are marked; see the reasons)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(INSTANCES))
@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 3, 2, 2)])
def test_empty_int_codes(name, shape):
    x = torch.zeros(shape, dtype=torch.int8)
    out, rec = corrupt(x, "int8", INSTANCES[name], seed=0)
    assert out.shape == x.shape and rec.index.numel() == 0


@pytest.mark.parametrize("name", sorted(INSTANCES))
def test_empty_float_with_scale_or_ieee(name):
    x = torch.zeros(0, 4)
    for fmt, kw in (("int8", {"scale": 0.1}), ("float16", {}), ("float32", {})):
        out, rec = corrupt(x, fmt, INSTANCES[name], seed=0, **kw)
        assert out.shape == x.shape and rec.index.numel() == 0


def test_empty_float_calibrated():
    x = torch.zeros(0, 4)
    out, rec = corrupt(x, "int8", LSBFlip(probability=50.0), seed=0)
    assert out.shape == x.shape and rec.index.numel() == 0


def test_hw_periodic_zero_channels():
    mask = hw_periodic_mask((2, 0, 3, 3), torch.ones(4, dtype=torch.bool))
    assert tuple(mask.shape) == (2, 0, 3, 3)


def test_non_finite_values_are_left_unchanged():
    x = torch.tensor([float("nan"), 1.0, -1.0, 0.5, float("inf")])
    out, rec = corrupt(x, "int8", LSBFlip(probability=100.0), seed=0, scale=0.1)
    assert torch.isnan(out[0]) and out[4] == float("inf")
    assert torch.allclose(out[1:4], torch.tensor([1.1, -0.9, 0.4]))
    assert rec.new[0] == rec.old[0] and rec.new[4] == rec.old[4]


def test_calibration_ignores_non_finite_values():
    x = torch.tensor([float("inf"), 1.0, -2.0, 0.5])
    out, _ = corrupt(x, "int8", MSBFlip(probability=100.0), seed=0)
    assert torch.isfinite(out[1:]).all()


def test_sites_and_bits_together_are_refused():
    with pytest.raises(QFaultConfigError, match="bits"):
        BitFlip(sites=((0, 0),), bits=("msb",))


@pytest.mark.parametrize("fmt, code", [(IntFormat(4, range="narrow"), -8),
                                       (FixedPoint(6, 2, True, symmetric=True), -32)])
def test_every_bit_pattern_is_accepted_as_a_code(fmt, code):
    out, rec = corrupt(torch.tensor([code], dtype=torch.int32), fmt, BitFlip(sites=((0, 0),)), seed=0)
    assert int(out[0]) == code + 1


def test_ieee_formats_flip_non_finite_values_like_any_other():
    x = torch.tensor([float("inf"), float("nan"), 1.0])
    out, rec = corrupt(x, "float32", BitFlip(sites=((0, 0), (1, 31))), seed=0)
    assert torch.isnan(out[0])  # inf with a mantissa bit set is a NaN
    assert int(rec.new[1]) == int(rec.old[1]) ^ (1 << 31)  # the NaN's sign bit flipped
    assert out[2] == 1.0


def test_scalar_draw_fields_equal_a_tensor_draw():
    draw = ScalarDraw([3, 17, 40], [0, 7, 2])
    assert len(draw) == 3 and draw.to("cpu") is draw and draw.op == "xor" and draw.value is None
    assert draw.index.tolist() == [3, 17, 40] and draw.index.dtype == torch.int64
    assert draw.mask.tolist() == [1, 128, 4]
    assert draw.bit_sites.tolist() == [[3, 0], [17, 7], [40, 2]]
    moved = draw.offset(100)
    assert moved.index.tolist() == [103, 117, 140] and moved.bit_sites[:, 0].tolist() == [103, 117, 140]


@pytest.mark.parametrize("fmt, region", [(FixedPoint(8, 3), "fraction"), (FixedPoint(8, 3), "integer"),
                                         (FixedPoint(8, 3), "sign"), (FloatFormat("float16"), "exponent"),
                                         (FloatFormat("bfloat16"), "mantissa"), (IntFormat(6), "sign")])
def test_bit_flips_restricted_to_a_named_region_hit_only_its_bits(fmt, region):
    codes = fmt.encode(torch.linspace(-2, 2, 400))
    _, record = corrupt(codes, fmt, BitFlip(ber=0.2, bits=(region,)), seed=3)
    hit_bits = set(record.bit_sites[:, 1].tolist())
    assert hit_bits and hit_bits <= set(fmt.region_bits(region))
    assert hit_bits == set(fmt.region_bits(region))  # 400 elements at 20 %: every bit of the region is hit


def test_bit_region_names_are_checked_against_the_format():
    with pytest.raises(QFaultConfigError, match="one of sign, integer, fraction"):
        corrupt(torch.zeros(4, dtype=torch.int32), FixedPoint(8, 3), BitFlip(ber=0.1, bits=("exponent",)), seed=0)
    with pytest.raises(QFaultConfigError, match="at least one bit"):  # integer > width: no fraction bits
        corrupt(torch.zeros(4, dtype=torch.int32), FixedPoint(4, 6, keep_negative=False),
                BitFlip(ber=0.1, bits=("fraction",)), seed=0)
    with pytest.raises(QFaultConfigError, match="bits"):
        BitFlip(ber=0.1, bits=("",))
