"""FKeras' fault patterns on fixed-point codes, against independent brute-force references:
bit-plane-major deterministic faults, faulty layer bit regions (LBIs), exact-count random flips,
Keras kernel layout, and the XOR on QKeras ``quantized_bits`` codes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qfault import QFaultConfigError, corrupt
from qfault.faults import (
    BitFlip, PlaneBitFlip, RegionBitFlip, draw_faults, from_torch_index, lbi_to_site, make_generator, site_to_lbi,
    to_torch_index,
)
from qfault.formats import FixedPoint

SHAPES = [(6,), (3, 5), (4, 2, 3, 3), (2, 3, 4)]


def _keras_order(shape):
    """Brute force: the PyTorch flat index of every element, listed in Keras kernel order."""
    index = torch.arange(math.prod(shape)).reshape(shape)
    if len(shape) >= 2:
        index = index.permute(*range(2, len(shape)), 1, 0)
    return index.reshape(-1).tolist()


def _masks(draw, numel):
    masks = [0] * numel
    for element, bit in draw.bit_sites.tolist():
        masks[element] |= 1 << bit
    return masks


@pytest.mark.parametrize("shape", SHAPES)
def test_keras_layout_is_the_kernel_permutation(shape):
    order = _keras_order(shape)
    keras = np.arange(len(order))
    assert to_torch_index(keras, shape, "keras").tolist() == order
    assert from_torch_index(np.array(order), shape, "keras").tolist() == keras.tolist()
    assert to_torch_index(keras, shape, "torch").tolist() == keras.tolist()
    with pytest.raises(QFaultConfigError, match="layout='tf'"):
        to_torch_index(keras, shape, "tf")


@given(bits=st.integers(1, 16), lbi=st.integers(0, 10**6))
def test_lbi_mapping_is_fkeras_little_endian(bits, lbi):
    element, bit = lbi_to_site(np.array([lbi]), bits)
    assert (int(element[0]), int(bit[0])) == (lbi // bits, bits - 1 - lbi % bits)  # LBI 0: the sign bit
    assert int(site_to_lbi(element, bit, bits)[0]) == lbi


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ber", [0.0, 0.1, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("layout", ["torch", "keras"])
def test_plane_faults_follow_fkeras_deterministic_mask(shape, ber, layout):
    bits = 5
    numel = math.prod(shape)
    order = _keras_order(shape) if layout == "keras" else list(range(numel))
    expected = [0] * numel  # FKeras' loop: fault f adds 2**(f // N) to element f % N
    for f in range(int(numel * bits * ber)):
        expected[order[f % numel]] += 2 ** (f // numel)
    draw = draw_faults(PlaneBitFlip(ber=ber, layout=layout), shape, FixedPoint(bits, 1), make_generator(0))
    assert _masks(draw, numel) == expected
    with pytest.raises(QFaultConfigError, match=r"count=.* at most"):
        draw_faults(PlaneBitFlip(count=numel * bits + 1), shape, FixedPoint(bits, 1), make_generator(0))


@settings(max_examples=40, deadline=None)
@given(shape=st.sampled_from(SHAPES), bits=st.integers(2, 8), seed=st.integers(0, 2**20),
       layout=st.sampled_from(["torch", "keras"]), data=st.data())
def test_regions_flip_int_length_times_ber_bits_inside_each_region(shape, bits, seed, layout, data):
    numel = math.prod(shape)
    population = numel * bits
    regions = []
    for _ in range(data.draw(st.integers(1, 3))):
        start = data.draw(st.integers(0, population - 1))
        end = data.draw(st.integers(start, population - 1))
        regions.append((start, end, data.draw(st.sampled_from([0.0, 0.3, 0.5, 1.0]))))
    fault = RegionBitFlip(regions=tuple(regions), layout=layout)
    draw = draw_faults(fault, shape, FixedPoint(bits, 0), make_generator(seed))
    order = _keras_order(shape) if layout == "keras" else list(range(numel))
    position = {torch_index: k for k, torch_index in enumerate(order)}
    lbis = {k * bits + bits - 1 - bit for k, bit in ((position[e], b) for e, b in draw.bit_sites.tolist())}
    assert len(lbis) == len(draw.bit_sites)  # each bit once
    for start, end, ber in regions:
        inside = {lbi for lbi in lbis if start <= lbi <= end}
        assert len(inside) >= int((end - start + 1) * ber)
        if ber == 1.0:
            assert inside == set(range(start, end + 1))
    assert all(any(s <= lbi <= e for s, e, b in regions if int((e - s + 1) * b)) for lbi in lbis)
    again = draw_faults(fault, shape, FixedPoint(bits, 0), make_generator(seed))
    assert torch.equal(again.bit_sites, draw.bit_sites)


def test_region_errors_name_the_field():
    for regions, message in [
        (((5, 4, 1.0),), r"regions\[0\].end_lbi=4 is invalid: allowed at least start_lbi \(5\)"),
        (((0, 1, 1.5),), r"regions\[0\].ber=1.5"),
        (((-1, 1, 1.0),), r"regions\[0\].start_lbi=-1"),
        ((), r"regions=\(\) is invalid: allowed a non-empty list"),
        (((0, 1, 1.0, 4),), r"regions\[0\]="),
    ]:
        with pytest.raises(QFaultConfigError, match=message):
            RegionBitFlip(regions=regions)
    with pytest.raises(QFaultConfigError, match=r"regions\[1\].end_lbi=40 is invalid: allowed at most 39: LBIs "
                                                r"0..39 number the 8 bits of each of the 5 elements"):
        corrupt(torch.zeros(5), FixedPoint(8, 3), RegionBitFlip(regions=((0, 0, 1.0), (1, 40, 1.0))), seed=0)


@pytest.mark.parametrize("n, ber", [(40, 0.1), (7, 0.5), (100, 0.013)])
def test_exact_random_flips_are_floor_n_bits_ber_distinct_uniform_bits(n, ber):
    bits = 6
    fault = BitFlip(ber=ber, exact=True)
    counts = np.zeros(n * bits)
    for seed in range(400):
        draw = draw_faults(fault, (n,), FixedPoint(bits, 2), make_generator(seed))
        sites = draw.bit_sites.numpy()
        assert len(sites) == int(n * bits * ber) == len({tuple(s) for s in sites.tolist()})
        counts[sites[:, 0] * bits + sites[:, 1]] += 1
    expected = 400 * int(n * bits * ber) / (n * bits)
    assert abs(counts.mean() - expected) < 1e-9 and counts.max() < expected + 6 * math.sqrt(expected) + 1
    assert not fault.groupable and fault.expected_faults(n, bits) == int(n * bits * ber)
    with pytest.raises(QFaultConfigError, match="exact"):
        BitFlip(count=3, exact=True)


def _qkeras_codes(x, bits, integer, keep_negative):
    """QKeras quantized_bits codes, one Python value at a time (round half to even, saturate)."""
    frac = bits - integer - keep_negative
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if keep_negative else (0, 2**bits - 1)
    return [min(max(round(float(v) * 2**frac), low), high) for v in x.tolist()]


@pytest.mark.parametrize("bits, integer, keep_negative", [(8, 3, True), (5, 1, True), (6, 2, False), (4, 0, True)])
def test_values_are_the_xor_of_the_quantized_code(bits, integer, keep_negative):
    fmt = FixedPoint(bits, integer, keep_negative)
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(3, 4, generator=gen) * 2
    quantized = fmt.decode(fmt.encode(x))
    fault = RegionBitFlip(regions=((0, 3 * 4 * bits - 1, 0.3),))
    out, record = corrupt(quantized, fmt, fault, seed=5)
    codes = _qkeras_codes(quantized.reshape(-1), bits, integer, int(keep_negative))
    masks = _masks(record, x.numel())
    frac = bits - integer - int(keep_negative)
    expected = []
    for code, mask in zip(codes, masks):
        pattern = (code & (2**bits - 1)) ^ mask
        if keep_negative and pattern >= 2 ** (bits - 1):
            pattern -= 2**bits  # two's complement: the sign bit is reachable and weighs -2**(bits-1)
        expected.append(pattern * 2.0**-frac)
    assert out.reshape(-1).tolist() == expected
    # LBI 0 is the sign bit: flipping it makes a positive value negative
    if keep_negative:
        positive = torch.full((1,), 0.5)
        flipped, _ = corrupt(fmt.decode(fmt.encode(positive)), fmt, RegionBitFlip(regions=((0, 0, 1.0),)), seed=0)
        assert float(flipped) < 0
