"""Format capabilities (``needs_qparams``, ``encodes_non_finite``, bit regions) and ``encode`` of
NaN/inf, checked over every registered format against brute-force decodings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qfault._errors import QFaultConfigError
from qfault.formats import FORMATS, FixedPoint, FloatFormat, IntFormat, NumberFormat

HYP = settings(max_examples=80, deadline=None)

# A few parameter sets per registered format, on top of its defaults. A format registered later
# is still checked with its defaults.
EXTRA = {
    "int": [IntFormat(b, s, r, rng) for b in range(1, 17) for s in (True, False)
            for r, rng in (("half_even", "full"), ("half_up", "narrow")) if not (s and b == 1 and rng == "narrow")],
    "fixed": list(dict.fromkeys(FixedPoint(b, i, kn, sym) for kn in (True, False) for b in range(2 if kn else 1, 33)
                                for i in (-40, -3, -1, 0, 1, 3, b - 1, b, b + 5) for sym in (False, True))),
    "float": [FloatFormat(kind) for kind in ("float32", "float16", "bfloat16")],
}


def registered_formats(name: str) -> list[NumberFormat]:
    cls = FORMATS.get(name)
    return [cls()] + EXTRA.get(name, [])


def test_every_registered_format_is_covered_by_the_contract_tests():
    # the contract tests parametrize over the registry; this makes sure they found something
    assert {"int", "fixed", "float"} <= set(FORMATS.list())


# --------------------------------------------------------------------------------------------
# Contract: bit regions
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FORMATS.list())
def test_bit_regions_partition_the_bits(name):
    for fmt in registered_formats(name):
        regions = fmt.bit_regions()
        assert regions and all(isinstance(k, str) for k in regions), fmt
        seen: list[int] = []
        for region, positions in regions.items():
            assert isinstance(positions, tuple), (fmt, region)
            assert list(positions) == sorted(set(positions)), (fmt, region)
            assert all(type(p) is int and 0 <= p < fmt.bits for p in positions), (fmt, region)
            assert fmt.region_bits(region) == positions
            seen += positions
        assert sorted(seen) == list(range(fmt.bits)), fmt  # disjoint and covering


@pytest.mark.parametrize("name", FORMATS.list())
def test_unknown_region_lists_the_regions_of_the_format(name):
    for fmt in registered_formats(name)[:3]:
        for bad in ("nope", "", 3, None):
            with pytest.raises(QFaultConfigError) as info:
                fmt.region_bits(bad)
            err = info.value
            assert err.field == "bits" and err.value == bad
            assert err.allowed == "one of " + ", ".join(fmt.bit_regions())
            assert repr(bad) in str(err)


@pytest.mark.parametrize("name", FORMATS.list())
def test_capabilities_are_class_level_booleans(name):
    cls = FORMATS.get(name)
    assert type(cls.needs_qparams) is bool and type(cls.encodes_non_finite) is bool
    for fmt in registered_formats(name):
        assert fmt.needs_qparams is cls.needs_qparams and fmt.encodes_non_finite is cls.encodes_non_finite


def test_capability_values():
    assert IntFormat.needs_qparams and not FixedPoint.needs_qparams and not FloatFormat.needs_qparams
    assert FloatFormat.encodes_non_finite and not IntFormat.encodes_non_finite
    assert not FixedPoint.encodes_non_finite


# --------------------------------------------------------------------------------------------
# Contract: needs_qparams and encodes_non_finite describe what encode/decode do
# --------------------------------------------------------------------------------------------
X = torch.tensor([0.0, 0.3, -0.7, 1.0, -1.5, 2.25, 5.0, -6.0, 100.0])


@pytest.mark.parametrize("name", FORMATS.list())
def test_needs_qparams_means_encode_uses_them(name):
    for fmt in [f for f in registered_formats(name) if f.bits >= 4][:12]:  # wide enough to tell
        plain = fmt.encode(X)
        other = fmt.encode(X, scale=0.25, zero_point=1)
        if fmt.needs_qparams:
            assert not torch.equal(plain, other), fmt
            assert torch.equal(fmt.decode(other, scale=0.25, zero_point=1),
                               (other.double() - 1).mul(0.25).float()), fmt
        else:
            assert torch.equal(plain, other), fmt
            assert torch.equal(fmt.decode(plain, scale=0.25, zero_point=1), fmt.decode(plain)), fmt


@pytest.mark.parametrize("name", FORMATS.list())
def test_encodes_non_finite_means_nan_and_inf_have_codes(name):
    special = torch.tensor([math.nan, math.inf, -math.inf])
    for fmt in registered_formats(name):
        codes = fmt.encode(special)
        if fmt.encodes_non_finite:
            back = fmt.decode(codes, dtype=torch.float32)
            assert torch.isnan(back[0]) and back[1] == math.inf and back[2] == -math.inf, fmt
        else:
            assert codes.tolist() == [int(fmt.encode(torch.zeros(1))[0]), fmt.code_max, fmt.code_min], fmt


# --------------------------------------------------------------------------------------------
# Region meaning, from decoded values (independent of how the regions are computed)
# --------------------------------------------------------------------------------------------
def one_bit(fmt: NumberFormat, p: int) -> torch.Tensor:
    return fmt.from_bits(torch.tensor([1 << p], dtype=torch.int64))


@pytest.mark.parametrize("keep_negative", [True, False])
def test_fixed_regions_follow_bit_weights(keep_negative):
    for fmt in EXTRA["fixed"]:
        if fmt.keep_negative != keep_negative:
            continue
        e = fmt.bits - fmt.integer - int(fmt.keep_negative)
        regions = fmt.bit_regions()
        assert ("sign" in regions) == fmt.keep_negative
        singles = fmt.from_bits(torch.tensor([1 << p for p in range(fmt.bits)], dtype=torch.int64))
        for p, value in enumerate(fmt.decode(singles, dtype=torch.float64).tolist()):
            sign = fmt.keep_negative and p == fmt.bits - 1
            assert value == (-(2.0 ** (p - e)) if sign else 2.0 ** (p - e)), (fmt, p)
            if value < 0:
                assert regions["sign"] == (p,), fmt
            elif value < 1:
                assert p in regions["fraction"], (fmt, p)
            else:
                assert p in regions["integer"], (fmt, p)
        assert len(regions["fraction"]) == min(max(e, 0), fmt.bits - int(fmt.keep_negative)), fmt


def test_fixed_regions_examples():
    # the seed's 5-bit format: 1 sign bit, 1 integer bit, 3 fraction bits
    assert FixedPoint(5, 1, True).bit_regions() == {"sign": (4,), "integer": (3,), "fraction": (0, 1, 2)}
    assert FixedPoint(4, 1, False).bit_regions() == {"integer": (3,), "fraction": (0, 1, 2)}
    assert FixedPoint(4, 6, True).bit_regions() == {"sign": (3,), "integer": (0, 1, 2), "fraction": ()}
    assert FixedPoint(4, -2, True).bit_regions() == {"sign": (3,), "integer": (), "fraction": (0, 1, 2)}
    assert FixedPoint(8, 0, True).region_bits("integer") == ()


@pytest.mark.parametrize("fmt", [IntFormat(b, s) for b in range(1, 17) for s in (True, False)], ids=repr)
def test_int_regions_match_the_fixed_point_without_fraction(fmt: IntFormat):
    regions = fmt.bit_regions()
    # same codes as FixedPoint(b, b - signed, signed): the same regions
    twin = FixedPoint(fmt.bits, fmt.bits - int(fmt.signed), fmt.signed) if fmt.bits > 1 or not fmt.signed else None
    if twin is not None:
        assert {k: v for k, v in twin.bit_regions().items() if v} == regions
    for p in range(fmt.bits):
        code = int(one_bit(fmt, p)[0])
        if code < 0:
            assert regions["sign"] == (p,)
        else:
            assert code == 1 << p and p in regions["integer"]
    assert ("sign" in regions) == fmt.signed


@pytest.mark.parametrize("kind, exponent, mantissa", [("float32", 8, 23), ("float16", 5, 10), ("bfloat16", 8, 7)])
def test_float_regions_follow_ieee_layout(kind, exponent, mantissa):
    fmt = FloatFormat(kind)
    regions = fmt.bit_regions()
    assert list(regions) == ["sign", "exponent", "mantissa"]
    assert regions["sign"] == (fmt.bits - 1,)
    assert len(regions["exponent"]) == exponent and len(regions["mantissa"]) == mantissa
    tiny = torch.finfo(fmt.dtype).tiny  # smallest normal number
    for p in range(fmt.bits):
        value = float(fmt.decode(one_bit(fmt, p), dtype=torch.float64)[0])
        if p in regions["mantissa"]:
            assert 0 < value < tiny  # a subnormal
        elif p in regions["exponent"]:
            assert value >= tiny  # a normal number (the lowest exponent bit alone is `tiny`)
        else:
            assert value == 0.0 and math.copysign(1.0, value) == -1.0  # -0.0
    all_exp = sum(1 << p for p in regions["exponent"])
    assert float(fmt.decode(torch.tensor([all_exp]))[0]) == math.inf


# --------------------------------------------------------------------------------------------
# encode of NaN and ±inf: always a code in [code_min, code_max]
# --------------------------------------------------------------------------------------------
def ref_int_code(fmt: IntFormat, x: float, scale: float, zero_point: int) -> int:
    """Reference for one float32 value: NaN (also 0/0) like 0.0, ±inf saturated."""
    with np.errstate(all="ignore"):  # 0/0, x/0 and inf/inf are part of the point
        q = float(np.float32(x) / np.float32(scale))
    if math.isnan(q):
        c = zero_point
    elif math.isinf(q):
        c = fmt.code_max if q > 0 else fmt.code_min
    else:
        c = (round(q) if fmt.rounding == "half_even" else math.floor(q + 0.5)) + zero_point
    return min(max(c, fmt.code_min), fmt.code_max)


def ref_fixed_code(fmt: FixedPoint, x: float) -> int:
    if math.isnan(x):
        return 0
    if math.isinf(x):
        return fmt.code_max if x > 0 else fmt.code_min
    dtype = np.float64 if fmt.bits > 24 else np.float32
    with np.errstate(all="ignore"):
        q = float(dtype(x) * dtype(2.0 ** (fmt.bits - fmt.integer - int(fmt.keep_negative))))
    if math.isinf(q):
        return fmt.code_max if q > 0 else fmt.code_min
    return min(max(round(q), fmt.code_min), fmt.code_max)


floats32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
special32 = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 3.4e38, -3.4e38, 1e-45])
values32 = st.lists(st.one_of(floats32, special32), min_size=1, max_size=40)


@st.composite
def int_formats(draw):
    bits, signed = draw(st.integers(1, 16)), draw(st.booleans())
    narrow = signed and bits > 1 and draw(st.booleans())
    return IntFormat(bits, signed, draw(st.sampled_from(["half_even", "half_up"])), "narrow" if narrow else "full")


@HYP
@given(int_formats(), values32,
       st.one_of(st.floats(width=32, min_value=0.0, max_value=2.0**100), st.sampled_from([0.0, math.inf, 0.5])),
       st.integers(-4, 20))
def test_int_encode_is_in_range_for_every_input(fmt, xs, scale, zero_point):
    if not fmt.signed:
        zero_point = abs(zero_point)
    x = torch.tensor(xs, dtype=torch.float32)
    got = fmt.encode(x, scale=scale, zero_point=zero_point)
    assert got.dtype == torch.int32
    assert int(got.min()) >= fmt.code_min and int(got.max()) <= fmt.code_max
    assert got.tolist() == [ref_int_code(fmt, v, scale, zero_point) for v in x.tolist()]


@HYP
@given(int_formats(), values32, st.data())
def test_int_encode_per_channel_non_finite(fmt, xs, data):
    x = torch.tensor(xs, dtype=torch.float32).reshape(-1, 1).repeat(1, 3)
    scale = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 0.5, 1e-3, math.inf, math.nan]),
                                            min_size=3, max_size=3)))
    zero = torch.tensor([0, 1, 2], dtype=torch.int32) if not fmt.signed else torch.tensor([0, -1, 1], dtype=torch.int32)
    got = fmt.encode(x, scale=scale, zero_point=zero, axis=1)
    assert int(got.min()) >= fmt.code_min and int(got.max()) <= fmt.code_max


@HYP
@given(st.integers(1, 32), st.booleans(), st.integers(-10, 40), st.booleans(), values32)
def test_fixed_encode_is_in_range_for_every_input(bits, keep_negative, integer, symmetric, xs):
    fmt = FixedPoint(max(bits, 2) if keep_negative else bits, integer, keep_negative, symmetric)
    x = torch.tensor(xs, dtype=torch.float32)
    got = fmt.encode(x)
    assert got.dtype == fmt.code_dtype
    assert int(got.min()) >= fmt.code_min and int(got.max()) <= fmt.code_max
    assert got.tolist() == [ref_fixed_code(fmt, v) for v in x.tolist()]


@pytest.mark.parametrize("fmt", [IntFormat(8), IntFormat(4, False), IntFormat(8, range="narrow"),
                                 IntFormat(3, rounding="half_up"), FixedPoint(8, 3), FixedPoint(6, 2, False),
                                 FixedPoint(32, 10), FixedPoint(30, 3, symmetric=True)], ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_nan_encodes_like_zero_and_inf_saturates(fmt, dtype):
    x = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -math.nan], dtype=dtype)
    got = fmt.encode(x).tolist()
    zero = int(fmt.encode(torch.zeros(1, dtype=dtype))[0])
    assert got == [zero, fmt.code_max, fmt.code_min, zero, zero]
    if fmt.needs_qparams:  # the code of 0.0 is the zero point; 0/0 from a zero scale is NaN
        zp = 2 if fmt.code_max > 2 else 1
        assert fmt.encode(x, scale=1.0, zero_point=zp).tolist() == [zp, fmt.code_max, fmt.code_min, zp, zp]
        assert fmt.encode(torch.tensor([0.0, 1.0, -1.0]), scale=0.0).tolist() == [0, fmt.code_max, fmt.code_min]


def test_float_formats_keep_nan_and_inf_bits():
    fmt = FloatFormat("float32")
    x = torch.tensor([math.nan, math.inf, -math.inf])
    assert fmt.encode(x).tolist() == [0x7FC00000, 0x7F800000, 0xFF800000]
