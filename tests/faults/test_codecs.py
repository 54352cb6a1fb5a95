"""Every registered codec computes exactly the faulted values of an independent reference.

The reference follows the float32 steps of the codec definition in exact rational arithmetic:
``q = fl32(value / scale)``, rounded (half to even, or ``floor(fl32(q + 0.5))``), plus the zero
point, clamped to the code range; the XOR of the code's bit pattern; ``fl32((new - zero) * scale)``
for a changed code, the value itself otherwise. ``fl32`` rounds an exact rational to float32
(through its correctly rounded double, which is exact for one operation on float32 operands).
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qfault.faults import CODECS, fast_codec_for
from qfault.formats import FixedPoint, FloatFormat, IntFormat

F32_MAX = float(np.finfo(np.float32).max)


def fl32(x: Fraction | float) -> float:
    value = float(x) if isinstance(x, Fraction) else x
    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


def reference(fmt: IntFormat, values, masks, scales, zeros):
    """``(old, new, faulty)`` lists for XOR faults (``scales``/``zeros``: one per value or None)."""
    olds, news, faulty = [], [], []
    for i, (value, mask) in enumerate(zip(values, masks)):
        scale = None if scales is None else scales[i]
        zero = 0 if zeros is None else zeros[i]
        q = value if scale is None else fl32(Fraction(value) / Fraction(fl32(scale)))
        if math.isinf(q):
            old = fmt.code_max if q > 0 else fmt.code_min
        else:
            if fmt.rounding == "half_away":  # ties away from zero, |q| + 1/2 in float32 (as QKeras)
                rounded = int(math.copysign(math.floor(fl32(abs(Fraction(q)) + Fraction(1, 2))), q))
            elif fmt.rounding == "half_up":
                rounded = math.floor(fl32(Fraction(q) + Fraction(1, 2)))
            else:
                rounded = round(Fraction(q))
            old = min(max(rounded + zero, fmt.code_min), fmt.code_max)
        pattern = (old % (1 << fmt.bits)) ^ mask
        new = pattern - (1 << fmt.bits) if fmt.signed and pattern >= 1 << (fmt.bits - 1) else pattern
        result = float(new - zero) if scale is None else fl32(Fraction(new - zero) * Fraction(fl32(scale)))
        olds.append(old)
        news.append(new)
        faulty.append(fl32(result) if new != old else value)
    return olds, news, faulty


@st.composite
def cases(draw):
    bits = draw(st.integers(1, 16))
    signed = draw(st.booleans())
    fmt = IntFormat(bits, signed=signed, rounding=draw(st.sampled_from(["half_even", "half_up", "half_away"])),
                    range=draw(st.sampled_from(["full", "narrow"])) if signed and bits > 1 else "full")
    k = draw(st.integers(1, 48))
    scale = draw(st.sampled_from([None, 2.0**-20, 1e-3, 0.1, 0.25, 3.3, 16.0, 1e-40])
                 | st.floats(0.0001220703125, 16.0, width=32))
    codes = draw(st.lists(st.integers(-(1 << 16), 1 << 16), min_size=k, max_size=k))
    fractions = draw(st.lists(st.sampled_from([0.0, 0.5, -0.5, 0.49999997, 0.25]) | st.floats(-1, 1, width=32),
                              min_size=k, max_size=k))
    step = 1.0 if scale is None else scale
    values = [fl32((c + f) * step) for c, f in zip(codes, fractions)]
    edges = draw(st.lists(st.sampled_from([F32_MAX, -F32_MAX, 1e-45, -1e-45, -0.0, 3.0e38]), max_size=3))
    values = [v if math.isfinite(v) else 0.0 for v in values + edges]
    k = len(values)
    masks = draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=k, max_size=k))
    per_element = scale is not None and draw(st.booleans())
    if per_element:  # one scale per value, as per-channel weights have
        scales = [fl32(scale * f) for f in draw(st.lists(st.sampled_from([1.0, 0.5, 2.0, 0.7]), min_size=k, max_size=k))]
    else:
        scales = None if scale is None else [fl32(scale)] * k
    zeros = None
    if not signed and draw(st.booleans()):
        zeros = draw(st.lists(st.integers(0, 5), min_size=k, max_size=k)) if per_element else [draw(st.integers(0, 5))] * k
    return fmt, values, masks, scales, zeros, per_element


def as_args(scales, zeros, per_element):
    """Tensor-side scale/zero point: a tensor per element, or one number."""
    if per_element:
        scale = torch.tensor(scales, dtype=torch.float32)
        zero = None if zeros is None else torch.tensor(zeros, dtype=torch.int32)
        return scale, zero
    return (None if scales is None else scales[0]), (None if zeros is None else zeros[0])


@pytest.mark.filterwarnings("ignore:overflow encountered")  # a quotient beyond float32 clamps
@pytest.mark.parametrize("name", CODECS.list())
@settings(max_examples=250, deadline=None)
@given(case=cases())
def test_codec_xor_equals_the_reference(name, case):
    codec = CODECS.get(name)
    fmt, values, masks, scales, zeros, per_element = case
    if not codec.supports(fmt, "xor") or (per_element and not codec.per_element_params):
        return
    scale, zero = as_args(scales, zeros, per_element)
    args = codec.wrap(torch.tensor(values, dtype=torch.float32), torch.tensor(masks, dtype=torch.int64), scale, zero)
    old, new, faulty = codec.unwrap(codec.code(fmt, args[0], "xor", args[1], None, args[2], args[3]))
    ref_old, ref_new, ref_faulty = reference(fmt, values, masks, scales, zeros)
    assert old.tolist() == ref_old and new.tolist() == ref_new
    assert torch.equal(faulty.to(torch.float32), torch.tensor(ref_faulty, dtype=torch.float32))


def random_reference(fmt: IntFormat, values, operands, scales, zeros):
    """``(old, new, faulty)`` lists for random-value faults: the old code (as :func:`reference`
    computes it) plus the operand, wrapped into ``[code_min, code_max]``."""
    olds = reference(fmt, values, [0] * len(values), scales, zeros)[0]
    news, faulty = [], []
    size = fmt.code_max - fmt.code_min + 1
    for i, (value, old, operand) in enumerate(zip(values, olds, operands)):
        new = (old - fmt.code_min + operand) % size + fmt.code_min
        scale = None if scales is None else scales[i]
        zero = 0 if zeros is None else zeros[i]
        result = float(new - zero) if scale is None else fl32(Fraction(new - zero) * Fraction(fl32(scale)))
        news.append(new)
        faulty.append(fl32(result) if new != old else value)
    return olds, news, faulty


@pytest.mark.filterwarnings("ignore:overflow encountered")  # a quotient beyond float32 clamps
@pytest.mark.parametrize("name", CODECS.list())
@settings(max_examples=150, deadline=None)
@given(case=cases(), data=st.data())
def test_codec_random_equals_the_reference(name, case, data):
    """Random-value faults (seed 001's modular addition of a random code) in every codec that
    serves them."""
    codec = CODECS.get(name)
    fmt, values, _, scales, zeros, per_element = case
    if not codec.supports(fmt, "random") or (per_element and not codec.per_element_params):
        return
    operands = data.draw(st.lists(st.integers(fmt.code_min, fmt.code_max), min_size=len(values),
                                  max_size=len(values)))
    scale, zero = as_args(scales, zeros, per_element)
    args = codec.wrap(torch.tensor(values, dtype=torch.float32), torch.zeros(len(values), dtype=torch.int64), scale,
                      zero)
    operand = torch.tensor(operands, dtype=torch.int64)
    result = codec.code(fmt, args[0], "random", args[1], operand if name == "torch" else operand.numpy(), args[2],
                        args[3])
    old, new, faulty = codec.unwrap(result)
    ref_old, ref_new, ref_faulty = random_reference(fmt, values, operands, scales, zeros)
    assert old.tolist() == ref_old and new.tolist() == ref_new
    assert torch.equal(faulty.to(torch.float32), torch.tensor(ref_faulty, dtype=torch.float32))


@pytest.mark.parametrize("name", CODECS.list())
@pytest.mark.parametrize("rounding", ["half_even", "half_up", "half_away"])
def test_codec_at_exact_halves(name, rounding):
    codec, fmt = CODECS.get(name), IntFormat(8, rounding=rounding)
    for start in range(-300, 300, 64):
        values = [fl32(v / 2 * 0.25) for v in range(start, start + 64)]  # k/2 codes exactly
        masks = [v % 256 for v in range(64)]
        args = codec.wrap(torch.tensor(values), torch.tensor(masks), 0.25, None)
        got = codec.unwrap(codec.code(fmt, args[0], "xor", args[1], None, args[2], args[3]))
        ref = reference(fmt, values, masks, [0.25] * 64, None)
        assert got[0].tolist() == ref[0] and got[1].tolist() == ref[1]
        assert torch.equal(got[2].float(), torch.tensor(ref[2]))


@pytest.mark.parametrize("name", CODECS.list())
@pytest.mark.parametrize("kind, pack", [("float32", "f"), ("float16", "e")])
@settings(max_examples=150, deadline=None)
@given(values=st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=40),
       data=st.data())
def test_codec_ieee_xor_equals_the_reference(name, kind, pack, values, data):
    """XOR faults in raw IEEE bits: the value rounded to the format (``struct`` packs to nearest
    even), its bit pattern XOR the mask, read back."""
    codec, fmt = CODECS.get(name), FloatFormat(kind)
    if not codec.supports(fmt, "xor"):
        return
    width = 32 if kind == "float32" else 16
    masks = data.draw(st.lists(st.integers(0, (1 << width) - 1), min_size=len(values), max_size=len(values)))
    unsigned = "I" if width == 32 else "H"
    ref_old, ref_new, ref_faulty = [], [], []
    for value, mask in zip(values, masks):
        try:
            old = struct.unpack(unsigned, struct.pack(pack, value))[0]
        except OverflowError:  # beyond float16: rounds to infinity
            old = struct.unpack(unsigned, struct.pack(pack, math.copysign(math.inf, value)))[0]
        new = old ^ mask
        ref_old.append(old)
        ref_new.append(new)
        ref_faulty.append(struct.unpack(pack, struct.pack(unsigned, new))[0] if new != old else value)
    args = codec.wrap(torch.tensor(values, dtype=torch.float32), torch.tensor(masks, dtype=torch.int64), None, None)
    old, new, faulty = codec.unwrap(codec.code(fmt, args[0], "xor", args[1], None, None, None))
    assert old.tolist() == ref_old and new.tolist() == ref_new
    expected = torch.tensor(ref_faulty, dtype=torch.float32)
    assert torch.equal(faulty.isnan(), expected.isnan())
    assert torch.equal(faulty.nan_to_num(), expected.nan_to_num())


@pytest.mark.parametrize("name", CODECS.list())
def test_codec_declares_what_it_supports(name):
    """The fast codecs serve XOR faults in int formats (numpy also raw float32/float16 bits and
    random values in int formats); the torch codec serves everything."""
    codec = CODECS.get(name)
    assert codec.supports(IntFormat(8), "xor")
    others = [(FixedPoint(8, 3), "xor"), (FloatFormat("bfloat16"), "xor"), (IntFormat(8), "stuck"),
              (FloatFormat("float32"), "stuck"), (FloatFormat("float32"), "random"), (FixedPoint(8, 3), "random")]
    if name == "torch":
        assert all(codec.supports(fmt, op) for fmt, op in others + [(FloatFormat("float32"), "xor")])
    else:
        assert not any(codec.supports(fmt, op) for fmt, op in others)
        assert codec.supports(FloatFormat("float16"), "xor") == (name == "numpy")
        assert codec.supports(IntFormat(8), "random") == (name == "numpy")


@pytest.mark.parametrize("name", CODECS.list())
@pytest.mark.parametrize("fmt", [IntFormat(8), IntFormat(8, signed=False), IntFormat(4, rounding="half_up"),
                                 IntFormat(6, rounding="half_away"),
                                 IntFormat(12), IntFormat(16), IntFormat(2, range="narrow")])
@pytest.mark.parametrize("size", [1, 1000, 5000, 70_001])
def test_codec_square_norm_is_exact(name, fmt, size):
    """``sum(code**2)`` of a whole tensor (the statistics' clean norm) equals the exact integer sum."""
    codec = CODECS.get(name)
    gen = torch.Generator().manual_seed(size)
    x = torch.randn(size, generator=gen) * 40
    x[::7] = float("nan")  # NaN encodes as 0.0 does
    scale = 0.37
    zero = 3 if not fmt.signed else None
    codes = fmt.encode(x, scale, zero if zero is not None else 0)
    expected = sum(int(c) ** 2 for c in codes.tolist())
    args = codec.wrap(x, torch.zeros(size, dtype=torch.int64), scale, zero)
    assert codec.square_norm(fmt, np.asarray(args[0], dtype=np.float32) if name != "torch" else x,
                             args[2], args[3]) == expected


@pytest.mark.parametrize("fmt", [IntFormat(2, signed=False), IntFormat(8), IntFormat(12),
                                 IntFormat(6, rounding="half_away")])
@pytest.mark.parametrize("scale", [0.37, torch.tensor([0.37])])
def test_torch_square_norm_in_chunks_is_exact(monkeypatch, fmt, scale):
    """A large CPU tensor's norm runs in chunks (one dot product each where a chunk fits an exact
    float32 block, blocked sums otherwise): the same exact integer, NaN included."""
    codec = CODECS.get("torch")
    monkeypatch.setattr(type(codec), "NORM_CHUNK", 1000)
    x = torch.randn(23_457, generator=torch.Generator().manual_seed(fmt.bits)) * 40
    x[::11] = float("nan")
    zero = None if fmt.signed else 1
    codes = fmt.encode(x, scale, 0 if zero is None else zero)
    assert codec.square_norm(fmt, x, scale, zero) == sum(int(c) ** 2 for c in codes.tolist())


def test_sites_pick_the_numpy_codec_only_where_it_serves_the_fault():
    assert fast_codec_for(IntFormat(8), "xor") is CODECS.get("numpy")
    assert fast_codec_for(None, "xor") is CODECS.get("numpy")  # a quantized tensor's own int format
    assert fast_codec_for(FloatFormat("float16"), "xor") is CODECS.get("numpy")
    assert fast_codec_for(FloatFormat("bfloat16"), "xor") is None
    assert fast_codec_for(FixedPoint(8, 3), "xor") is None
    assert fast_codec_for(IntFormat(8), "stuck") is None and fast_codec_for(FixedPoint(8, 3), "random") is None
    assert fast_codec_for(IntFormat(8), "random") is CODECS.get("numpy")
    assert fast_codec_for(None, "random") is CODECS.get("numpy")
