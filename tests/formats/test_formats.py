"""Number formats checked against brute-force references written in plain Python / numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qfault._errors import QFaultConfigError
from qfault.formats import FixedPoint, FloatFormat, IntFormat, get_format, list_formats

HYP = settings(max_examples=60, deadline=None)


# --------------------------------------------------------------------------------------------
# Independent references
# --------------------------------------------------------------------------------------------
def ref_pattern(code: int, bits: int) -> int:
    """Two's complement / unsigned bit pattern of an integer code."""
    return code % (1 << bits)


def ref_code(pattern: int, bits: int, signed: bool) -> int:
    """Integer code of a bit pattern."""
    pattern &= (1 << bits) - 1
    if signed and pattern >= 1 << (bits - 1):
        return pattern - (1 << bits)
    return pattern


def all_twos_codes(bits: int, signed: bool) -> list[int]:
    if signed:
        return list(range(-(1 << (bits - 1)), 1 << (bits - 1)))
    return list(range(1 << bits))


def round_half_even(q: float) -> int:
    return int(round(q))  # Python's round is exact banker's rounding on floats


def round_half_up(q: float) -> int:
    return math.floor(q + 0.5)


def int_configs():
    out = []
    for signed in (True, False):
        for bits in range(1, 13):
            for rounding in ("half_even", "half_up"):
                for rng in ("full", "narrow"):
                    if signed and rng == "narrow" and bits < 2:
                        continue
                    out.append(IntFormat(bits=bits, signed=signed, rounding=rounding, range=rng))
    return out


INT_CONFIGS = int_configs()


def fixed_configs():
    out = []
    for keep_negative in (True, False):
        for bits in range(2 if keep_negative else 1, 13):
            for integer in (0, 1, 3, -1, 14):
                for symmetric in (False, True):
                    out.append(FixedPoint(bits, integer, keep_negative, symmetric))
    return out


FIXED_CONFIGS = fixed_configs()


def fmt_id(fmt) -> str:
    return repr(fmt)


# --------------------------------------------------------------------------------------------
# Round trips over every code / pattern
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", INT_CONFIGS, ids=fmt_id)
def test_int_round_trip_every_code(fmt: IntFormat):
    b = fmt.bits
    codes = all_twos_codes(b, fmt.signed)
    patterns = fmt.to_bits(torch.tensor(codes, dtype=torch.int32)).tolist()
    assert patterns == [ref_pattern(c, b) for c in codes]
    back = fmt.from_bits(torch.tensor(patterns, dtype=torch.int32)).tolist()
    assert back == codes

    all_p = list(range(1 << b))
    from_p = fmt.from_bits(torch.tensor(all_p, dtype=torch.int32)).tolist()
    assert from_p == [ref_code(p, b, fmt.signed) for p in all_p]
    assert fmt.to_bits(torch.tensor(from_p, dtype=torch.int32)).tolist() == all_p
    assert fmt.all_codes().tolist() == from_p


@pytest.mark.parametrize("fmt", INT_CONFIGS, ids=fmt_id)
def test_int_code_range(fmt: IntFormat):
    b = fmt.bits
    if not fmt.signed:
        assert (fmt.code_min, fmt.code_max) == (0, 2**b - 1)
    elif fmt.range == "narrow":
        assert (fmt.code_min, fmt.code_max) == (-(2 ** (b - 1)) + 1, 2 ** (b - 1) - 1)
    else:
        assert (fmt.code_min, fmt.code_max) == (-(2 ** (b - 1)), 2 ** (b - 1) - 1)


@pytest.mark.parametrize("fmt", FIXED_CONFIGS, ids=fmt_id)
def test_fixed_round_trip_every_code(fmt: FixedPoint):
    b = fmt.bits
    signed = fmt.keep_negative
    codes = all_twos_codes(b, signed)
    patterns = fmt.to_bits(torch.tensor(codes, dtype=torch.int64)).tolist()
    assert patterns == [ref_pattern(c, b) for c in codes]
    assert fmt.from_bits(torch.tensor(patterns)).tolist() == codes
    all_p = list(range(1 << b))
    from_p = fmt.from_bits(torch.tensor(all_p)).tolist()
    assert from_p == [ref_code(p, b, signed) for p in all_p]
    assert fmt.to_bits(torch.tensor(from_p)).tolist() == all_p
    # decoded values: code * 2**-E, in pattern order
    e = b - fmt.integer - int(signed)
    assert fmt.values().double().tolist() == [float(np.float32(c * 2.0**-e)) for c in from_p]
    # code range
    if signed:
        low = -(2 ** (b - 1)) + (1 if fmt.symmetric else 0)
        assert (fmt.code_min, fmt.code_max) == (low, 2 ** (b - 1) - 1)
    else:
        assert (fmt.code_min, fmt.code_max) == (0, 2**b - 1)


@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
def test_float16_like_every_pattern(kind: str):
    fmt = FloatFormat(kind)
    assert fmt.bits == 16 and fmt.code_min == 0 and fmt.code_max == 0xFFFF
    pats = np.arange(1 << 16, dtype=np.int64)
    t = torch.from_numpy(pats)
    assert np.array_equal(fmt.to_bits(fmt.from_bits(t)).numpy(), pats)
    assert np.array_equal(fmt.from_bits(fmt.to_bits(t)).numpy(), pats)
    vals = fmt.decode(t)
    assert vals.dtype == fmt.dtype
    if kind == "float16":
        ref = pats.astype(np.uint16).view(np.float16)
        got = vals.view(torch.int16).numpy().view(np.uint16)
        assert np.array_equal(got, ref.view(np.uint16))
        # values (non-NaN) agree with numpy's float16 interpretation
        fin = ~np.isnan(ref)
        assert np.array_equal(vals.float().numpy()[fin], ref.astype(np.float32)[fin])
    else:
        # bfloat16 is the top half of a float32
        ref32 = (pats.astype(np.uint32) << 16).view(np.float32)
        got32 = vals.float().numpy()
        assert np.array_equal(got32.view(np.uint32), ref32.view(np.uint32))
    # encode(decode(p)) == p for every pattern, NaNs included (bit equality)
    assert np.array_equal(fmt.encode(vals).numpy(), pats)
    # encode of float32 values that are exactly representable recovers the pattern
    f32 = vals.float()
    finite = ~torch.isnan(f32)
    assert np.array_equal(fmt.encode(f32)[finite].numpy(), pats[finite.numpy()])


@HYP
@given(st.integers(13, 16), st.booleans(), st.data())
def test_int_wide_round_trip_property(bits, signed, data):
    fmt = IntFormat(bits=bits, signed=signed)
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    codes = data.draw(st.lists(st.integers(low, high), min_size=1, max_size=64))
    pats = data.draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=1, max_size=64))
    ct = torch.tensor(codes, dtype=torch.int32)
    assert fmt.to_bits(ct).tolist() == [ref_pattern(c, bits) for c in codes]
    assert fmt.from_bits(fmt.to_bits(ct)).tolist() == codes
    pt = torch.tensor(pats, dtype=torch.int32)
    assert fmt.from_bits(pt).tolist() == [ref_code(p, bits, signed) for p in pats]
    assert fmt.to_bits(fmt.from_bits(pt)).tolist() == pats
    k = data.draw(st.integers(0, bits - 1))
    flipped = fmt.xor(ct, 1 << k).tolist()
    assert flipped == [ref_code(ref_pattern(c, bits) ^ (1 << k), bits, signed) for c in codes]


@HYP
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=64), st.integers(0, 31))
def test_float32_patterns_property(pats, k):
    fmt = FloatFormat("float32")
    t = torch.tensor(pats, dtype=torch.int64)
    assert fmt.to_bits(fmt.from_bits(t)).tolist() == pats
    assert fmt.from_bits(fmt.to_bits(t)).tolist() == pats
    vals = fmt.decode(t)
    assert vals.dtype == torch.float32
    ref = np.array(pats, dtype=np.uint32).view(np.float32)
    assert vals.numpy().view(np.uint32).tolist() == ref.view(np.uint32).tolist()
    assert fmt.encode(vals).tolist() == pats  # NaN payloads preserved: bit equality
    assert fmt.xor(t, 1 << k).tolist() == [p ^ (1 << k) for p in pats]
    # decode to float64 agrees with numpy for non-NaN values
    v64 = fmt.decode(t, dtype=torch.float64).numpy()
    fin = ~np.isnan(ref)
    assert np.array_equal(v64[fin], ref.astype(np.float64)[fin])


@HYP
@given(st.integers(1, 32), st.booleans(), st.integers(-8, 40), st.data())
def test_fixed_wide_round_trip_property(bits, keep_negative, integer, data):
    if keep_negative and bits < 2:
        bits = 2
    fmt = FixedPoint(bits, integer, keep_negative)
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if keep_negative else (0, (1 << bits) - 1)
    codes = data.draw(st.lists(st.integers(low, high), min_size=1, max_size=32))
    pats = data.draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=1, max_size=32))
    ct = torch.tensor(codes, dtype=torch.int64)
    assert fmt.to_bits(ct).tolist() == [ref_pattern(c, bits) for c in codes]
    assert fmt.from_bits(fmt.to_bits(ct)).tolist() == codes
    pt = torch.tensor(pats, dtype=torch.int64)
    assert fmt.from_bits(pt).tolist() == [ref_code(p, bits, keep_negative) for p in pats]
    assert fmt.to_bits(fmt.from_bits(pt)).tolist() == pats
    k = data.draw(st.integers(0, bits - 1))
    assert fmt.xor(ct, 1 << k).tolist() == [ref_code(ref_pattern(c, bits) ^ (1 << k), bits, keep_negative)
                                            for c in codes]
    e = bits - integer - int(keep_negative)
    assert fmt.decode(ct, dtype=torch.float64).tolist() == [c * 2.0**-e for c in codes]  # exact


# --------------------------------------------------------------------------------------------
# Bit flips: flip of bit k of code v gives pattern(v) XOR 2**k
# --------------------------------------------------------------------------------------------
def _flip_formats():
    fmts = [IntFormat(b, s) for b in range(1, 13) for s in (True, False)]
    fmts += [IntFormat(8, True, range="narrow")]
    fmts += [FixedPoint(b, 1, True) for b in (2, 5, 12)] + [FixedPoint(b, 2, False) for b in (1, 6)]
    fmts += [FixedPoint(6, 2, True, symmetric=True)]
    fmts += [FloatFormat("float16"), FloatFormat("bfloat16")]
    return fmts


@pytest.mark.parametrize("fmt", _flip_formats(), ids=fmt_id)
def test_flip_every_code_every_bit(fmt):
    b = fmt.bits
    signed = getattr(fmt, "signed", getattr(fmt, "keep_negative", False))
    if isinstance(fmt, FloatFormat):
        signed = False
    codes = np.array([ref_code(p, b, signed) for p in range(1 << b)], dtype=np.int64)
    dtype = fmt.code_dtype
    ct = torch.from_numpy(codes).to(dtype)
    pats = np.arange(1 << b, dtype=np.int64)  # pattern of codes[i] is i
    for k in range(b):
        got = fmt.xor(ct, 1 << k)
        got_pat = fmt.to_bits(got).numpy().astype(np.int64)
        assert np.array_equal(got_pat, pats ^ (1 << k)), k
        ref = np.array([ref_code(int(p), b, signed) for p in pats ^ (1 << k)], dtype=np.int64)
        assert np.array_equal(got.numpy().astype(np.int64), ref), k
    # set_bits against the brute force (p & ~m) | (v & m)
    gen = np.random.default_rng(b)
    m = gen.integers(0, 1 << b, size=codes.size)
    v = gen.integers(0, 1 << b, size=codes.size)
    got = fmt.set_bits(ct, torch.from_numpy(m).to(fmt.pattern_dtype), torch.from_numpy(v).to(fmt.pattern_dtype))
    ref = [ref_code(int((p & ~mm) | (vv & mm)), b, signed) for p, mm, vv in zip(pats, m, v)]
    assert got.tolist() == ref


# --------------------------------------------------------------------------------------------
# Quantization (encode / decode) against a pure-Python reference
# --------------------------------------------------------------------------------------------
def ref_int_encode(fmt: IntFormat, x: np.ndarray, scale, zero_point, axis):
    """Element-wise reference; scale/zero_point are scalars or 1-D per-channel arrays."""
    x = x.astype(np.float32)
    out = np.zeros(x.shape, dtype=np.int64)
    rnd = round_half_even if fmt.rounding == "half_even" else round_half_up
    for idx in np.ndindex(*x.shape):
        s = scale if np.isscalar(scale) else scale[idx[axis]]
        z = zero_point if np.isscalar(zero_point) else zero_point[idx[axis]]
        q = float(np.float32(x[idx]) / np.float32(s))  # IEEE float32 division, as torch does
        c = rnd(q) + int(z)
        out[idx] = min(max(c, fmt.code_min), fmt.code_max)
    return out


@pytest.mark.parametrize("fmt", [
    IntFormat(8), IntFormat(8, rounding="half_up"), IntFormat(4, range="narrow"),
    IntFormat(4, rounding="half_up", range="narrow"), IntFormat(6, signed=False),
    IntFormat(3, signed=False, rounding="half_up"), IntFormat(2), IntFormat(12),
], ids=fmt_id)
@pytest.mark.parametrize("axis", [None, 0, 1, 2, -1])
def test_int_encode_matches_reference(fmt, axis):
    gen = np.random.default_rng(123 + fmt.bits)
    x = gen.normal(0.0, 3.0, size=(3, 4, 5)).astype(np.float32)
    halves = np.float32([0.5, -0.5, 1.5, -2.5, 2.5, -1.5, 3.5, 100.5, -100.5])
    if axis is None:
        scale, zp = 0.5, (2 if not fmt.signed else -1)
        x.reshape(-1)[::7] = halves * np.float32(scale)  # exact ties of x / scale
        got = fmt.encode(torch.from_numpy(x), scale=scale, zero_point=zp)
        ref = ref_int_encode(fmt, x, scale, zp, 0)
        got_t = fmt.encode(torch.from_numpy(x), scale=torch.tensor(scale), zero_point=torch.tensor(zp))
        assert np.array_equal(got_t.numpy(), ref)
    else:
        c = x.shape[axis]
        scale = np.array([0.25, 0.5, 1.0, 0.3, 0.125][:c], dtype=np.float32)
        zp = np.array([0, 1, -2, 3, 5][:c], dtype=np.int64)
        if not fmt.signed:
            zp = np.abs(zp)
        for j, idx in enumerate(list(np.ndindex(*x.shape))[::7]):  # ties (exact for 2**-k scales)
            x[idx] = halves[j] * scale[idx[axis]]
        got = fmt.encode(torch.from_numpy(x), scale=torch.from_numpy(scale),
                         zero_point=torch.from_numpy(zp).to(torch.int32), axis=axis)
        ref = ref_int_encode(fmt, x, scale, zp, axis)
    assert got.dtype == torch.int32
    assert np.array_equal(got.numpy(), ref)


def test_int_encode_ties_half_up_vs_half_even():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, -3.5])
    even = IntFormat(8).encode(x, scale=1.0).tolist()
    up = IntFormat(8, rounding="half_up").encode(x, scale=1.0).tolist()
    assert even == [0, 2, 2, 0, -2, -2, 4, -4]
    assert up == [1, 2, 3, 0, -1, -2, 4, -3]
    # ties produced by the scale: 0.75 / 0.5 = 1.5 ; 1.25 / 0.5 = 2.5
    x = torch.tensor([0.75, 1.25, -0.75, -1.25])
    assert IntFormat(8).encode(x, scale=0.5).tolist() == [2, 2, -2, -2]
    assert IntFormat(8, rounding="half_up").encode(x, scale=0.5).tolist() == [2, 3, -1, -2]


def test_int_encode_clamps_full_and_narrow():
    x = torch.tensor([-1000.0, -128.0, -127.4, 126.6, 1000.0])
    assert IntFormat(8).encode(x).tolist() == [-128, -128, -127, 127, 127]
    assert IntFormat(8, range="narrow").encode(x).tolist() == [-127, -127, -127, 127, 127]
    assert IntFormat(8, signed=False).encode(x).tolist() == [0, 0, 0, 127, 255]
    assert IntFormat(8, signed=False, range="narrow").encode(x).tolist() == [0, 0, 0, 127, 255]
    assert IntFormat(4, range="narrow").encode(x).tolist() == [-7, -7, -7, 7, 7]
    assert IntFormat(1).encode(torch.tensor([-5.0, 0.4, 5.0])).tolist() == [-1, 0, 0]
    # zero point shifts before the clamp
    assert IntFormat(4, signed=False).encode(torch.tensor([-3.0, 14.0]), zero_point=2).tolist() == [0, 15]


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_int_decode_matches_reference(axis):
    fmt = IntFormat(5)
    gen = np.random.default_rng(7)
    codes = gen.integers(-16, 16, size=(2, 3, 4))
    c = codes.shape[axis]
    scale = np.array([0.5, 0.25, 2.0, 0.1][:c], dtype=np.float32)
    zp = np.array([1, -1, 0, 3][:c])
    got = fmt.decode(torch.from_numpy(codes).int(), torch.from_numpy(scale),
                     torch.from_numpy(zp).int(), axis=axis).numpy()
    ref = np.zeros(codes.shape, dtype=np.float32)
    for idx in np.ndindex(*codes.shape):
        ch = idx[axis]
        ref[idx] = np.float32(codes[idx] - zp[ch]) * scale[ch]
    assert np.array_equal(got, ref)


def test_per_channel_length_mismatch_raises():
    with pytest.raises(ValueError, match="per-channel"):
        IntFormat(8).encode(torch.zeros(2, 3), scale=torch.ones(4), axis=1)


# --------------------------------------------------------------------------------------------
# Fixed point
# --------------------------------------------------------------------------------------------
def test_fixed_seed_table():
    table = [i * 0.125 for i in range(16)] + [-2 + i * 0.125 for i in range(16)]
    assert table[:3] == [0.0, 0.125, 0.25] and table[15] == 1.875 and table[16] == -2.0
    assert table[-1] == -0.125
    assert FixedPoint(5, 1, True).values().tolist() == table


def ref_fixed_encode(fmt: FixedPoint, x: float) -> int:
    e = fmt.bits - fmt.integer - int(fmt.keep_negative)
    q = float(np.float32(x) * np.float32(2.0**e))
    c = round_half_even(q)
    if fmt.keep_negative:
        low = -(2 ** (fmt.bits - 1)) + (1 if fmt.symmetric else 0)
        high = 2 ** (fmt.bits - 1) - 1
    else:
        low, high = 0, 2**fmt.bits - 1
    return min(max(c, low), high)


@pytest.mark.parametrize("fmt", [
    FixedPoint(5, 1, True), FixedPoint(8, 3, True), FixedPoint(8, 0, True, symmetric=True),
    FixedPoint(4, 2, False), FixedPoint(6, -2, True), FixedPoint(3, 5, True), FixedPoint(1, 0, False),
    FixedPoint(12, 4, False, symmetric=True),
], ids=fmt_id)
def test_fixed_encode_matches_reference(fmt):
    gen = np.random.default_rng(fmt.bits * 31 + fmt.integer)
    e = fmt.bits - fmt.integer - int(fmt.keep_negative)
    lsb = 2.0**-e
    span = (2**fmt.bits) * lsb
    x = gen.uniform(-span, span, size=300).astype(np.float32)
    ties = (np.arange(-20, 20) + 0.5) * lsb  # exact ties at half an LSB
    x = np.concatenate([x, ties.astype(np.float32), np.float32([1e6, -1e6, 0.0])])
    got = fmt.encode(torch.from_numpy(x))
    assert got.tolist() == [ref_fixed_encode(fmt, float(v)) for v in x]
    dec = fmt.decode(got).numpy()
    assert np.array_equal(dec, np.array([np.float32(c * lsb) for c in got.tolist()]))


def test_fixed_symmetric_and_unsigned_ranges():
    big = torch.tensor([-100.0, 100.0])
    assert FixedPoint(4, 0, True).encode(big).tolist() == [-8, 7]
    assert FixedPoint(4, 0, True, symmetric=True).encode(big).tolist() == [-7, 7]
    assert FixedPoint(4, 0, False).encode(big).tolist() == [0, 15]
    # keep_negative=False: E = bits - integer
    assert FixedPoint(4, 1, False).fraction_bits == 3
    assert FixedPoint(4, 1, False).values().tolist() == [i / 8 for i in range(16)]
    assert FixedPoint(4, 1, True).fraction_bits == 2


def test_fixed_invalid():
    with pytest.raises(QFaultConfigError, match="bits"):
        FixedPoint(1, 0, True)
    with pytest.raises(QFaultConfigError, match="bits"):
        FixedPoint(33, 0, True)
    with pytest.raises(QFaultConfigError, match="integer"):
        FixedPoint(8, 1.5, True)


# --------------------------------------------------------------------------------------------
# Name resolution, errors, config round trip
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, expected", [
    ("int8", IntFormat(8, True)),
    ("INT8", IntFormat(8, True)),
    ("uint4", IntFormat(4, False)),
    ("int1", IntFormat(1, True)),
    ("uint16", IntFormat(16, False)),
    ("fp16", FloatFormat("float16")),
    ("float16", FloatFormat("float16")),
    ("half", FloatFormat("float16")),
    ("bf16", FloatFormat("bfloat16")),
    ("bfloat16", FloatFormat("bfloat16")),
    ("fp32", FloatFormat("float32")),
    ("float32", FloatFormat("float32")),
    ("int", IntFormat()),
    ("fixed", FixedPoint()),
    ("quantized_bits", FixedPoint()),
    ("float", FloatFormat()),
    ({"type": "fixed", "bits": 8, "integer": 3}, FixedPoint(8, 3)),
    ({"type": "int", "bits": 4, "signed": False}, IntFormat(4, False)),
    ({"type": "float", "kind": "bfloat16"}, FloatFormat("bfloat16")),
    ({"type": "ieee", "version": 1, "kind": "float16"}, FloatFormat("float16")),
])
def test_get_format_names(spec, expected):
    got = get_format(spec)
    assert got == expected and type(got) is type(expected)


def test_get_format_kwargs_and_objects():
    assert get_format("int8", rounding="half_up", range="narrow") == IntFormat(8, True, "half_up", "narrow")
    assert get_format("fixed", bits=6, integer=2) == FixedPoint(6, 2)
    obj = FixedPoint(7, 2, False)
    assert get_format(obj) is obj
    assert get_format("int8").name == "int8" and get_format("uint3").name == "uint3"


def test_get_format_unknown_name_lists_allowed():
    with pytest.raises(QFaultConfigError) as info:
        get_format("int8x")
    msg = str(info.value)
    assert "int8x" in msg
    for name in ("int", "fixed", "float", "int<b>", "uint<b>", "float16", "bf16", "fp32"):
        assert name in msg
    assert set(list_formats()) >= {"int", "fixed", "float", "int<b>", "uint<b>", "float16", "bfloat16"}
    with pytest.raises(QFaultConfigError, match="format"):
        get_format(3.5)
    with pytest.raises(QFaultConfigError, match="format"):
        get_format({"bits": 8})


@pytest.mark.parametrize("bits", [0, 17, -1, 2.0, True])
def test_int_bits_out_of_range(bits):
    with pytest.raises(QFaultConfigError) as info:
        IntFormat(bits=bits)
    assert info.value.field == "bits"
    assert "bits" in str(info.value) and repr(bits) in str(info.value)
    assert "[1, 16]" in str(info.value)


def test_int_name_out_of_range_and_other_fields():
    with pytest.raises(QFaultConfigError, match="bits"):
        get_format("int17")
    with pytest.raises(QFaultConfigError, match="bits"):
        get_format("uint0")
    with pytest.raises(QFaultConfigError, match="rounding"):
        IntFormat(8, rounding="nearest")
    with pytest.raises(QFaultConfigError, match="range"):
        IntFormat(8, range="wide")
    with pytest.raises(QFaultConfigError, match="bits"):
        IntFormat(1, True, range="narrow")
    with pytest.raises(QFaultConfigError, match="kind"):
        FloatFormat("float8")
    with pytest.raises(QFaultConfigError, match="int.foo"):
        get_format({"type": "int", "bits": 8, "foo": 1})
    with pytest.raises(QFaultConfigError, match="version"):
        get_format({"type": "int", "version": 99})


ROUND_TRIP_FORMATS = [
    IntFormat(), IntFormat(4, False), IntFormat(3, True, "half_up", "narrow"), IntFormat(16),
    FixedPoint(), FixedPoint(5, 1, True), FixedPoint(12, -3, False, True), FixedPoint(32, 10),
    FloatFormat("float32"), FloatFormat("float16"), FloatFormat("bfloat16"),
]


@pytest.mark.parametrize("fmt", ROUND_TRIP_FORMATS, ids=fmt_id)
def test_config_round_trip(fmt):
    d = fmt.to_dict()
    assert d["type"] == fmt.type_name and d["version"] == 1
    back = get_format(d)
    assert back == fmt and type(back) is type(fmt)
    assert d == back.to_dict()
