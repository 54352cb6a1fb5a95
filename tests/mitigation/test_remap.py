"""``qfault.mitigation.remap`` against brute-force references that enumerate every code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qfault._errors import QFaultConfigError
from qfault.mitigation import cvm_codes, draw_stuck_map, remap


# --------------------------------------------------------------------------------------------
# Brute-force references (numpy): enumerate all 2**bits patterns for every weight
# --------------------------------------------------------------------------------------------
def ref_cvm(target: np.ndarray, mask: np.ndarray, value: np.ndarray, bits: int) -> np.ndarray:
    """argmin over consistent codes c of (|c - target|, unsigned pattern of c); target unclamped."""
    target, mask, value = (np.asarray(a, dtype=np.int64).reshape(-1) for a in (target, mask, value))
    patterns = np.arange(1 << bits, dtype=np.int64)
    codes = np.where(patterns >= 1 << (bits - 1), patterns - (1 << bits), patterns)
    ok = (patterns[None, :] & mask[:, None]) == (value[:, None] & mask[:, None])
    dist = np.abs(codes[None, :] - target[:, None])
    # lexicographic key: distance first, then the unsigned pattern; inconsistent codes excluded
    key = np.where(ok, dist * (1 << bits) + patterns[None, :], np.iinfo(np.int64).max)
    return codes[np.argmin(key, axis=1)]


def ref_groups(shape, tile):
    rows, cols = shape
    for r in range(rows):
        for c0 in range(0, cols, tile):
            yield r, slice(c0, min(c0 + tile, cols))


def ref_sign_flip(w, mask, value, bits, tile):
    out = np.empty_like(w)
    for r, cols in ref_groups(w.shape, tile):
        ww, mm, vv = w[r, cols], mask[r, cols], value[r, cols]
        plus = ref_cvm(ww, mm, vv, bits)
        minus = -ref_cvm(-ww, mm, vv, bits)  # brute force over the true target -w (may be 2**(b-1))
        e_plus, e_minus = np.abs(plus - ww).sum(), np.abs(minus - ww).sum()
        out[r, cols] = minus if e_minus < e_plus else plus
    return out


def ref_bit_flip(w, mask, value, bits, tile):
    out = np.empty_like(w)
    for r, cols in ref_groups(w.shape, tile):
        ww, mm, vv = w[r, cols], mask[r, cols], value[r, cols]
        best_err, best_read = None, None
        for m in range(1 << bits):  # seed: the first m in 0..2**b-1 with the least error
            read = ref_cvm(ww, mm, vv ^ m, bits)
            err = np.abs(read - ww).sum()
            if best_err is None or err < best_err:
                best_err, best_read = err, read
        out[r, cols] = best_read
    return out


def random_layer(rng, shape, bits, p_stuck):
    half = 1 << (bits - 1)
    w = rng.integers(-half, half, size=shape)
    # any number of stuck bits: per-element rate drawn too, so some weights have none or all
    rate = rng.choice([0.0, p_stuck, 1.0], size=shape, p=[0.2, 0.6, 0.2])[..., None]
    bit_hits = rng.random(shape + (bits,)) < rate
    mask = (bit_hits * (1 << np.arange(bits))).sum(-1)
    value = rng.integers(0, 1 << bits, size=shape)  # bits outside the mask must not matter
    return w, mask, value


def run(w, mask, value, bits, method, tile=64):
    return remap(torch.from_numpy(w), torch.from_numpy(mask), torch.from_numpy(value),
                 bits=bits, method=method, tile=tile)


# --------------------------------------------------------------------------------------------
# Exhaustive and random comparisons
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_cvm_exhaustive_small_widths(bits):
    # every (code, mask, value) triple: value only under the mask
    n = 1 << bits
    w, m, v = np.meshgrid(np.arange(-(n // 2), n // 2), np.arange(n), np.arange(n), indexing="ij")
    w, m, v = (a.reshape(1, -1).astype(np.int64) for a in (w, m, v))
    got = run(w, m, v, bits, "cvm")
    assert got.dtype == torch.int32
    assert torch.equal(got, torch.from_numpy(ref_cvm(w, m, v, bits).reshape(w.shape)).int())


@pytest.mark.parametrize("bits", [5, 8])
def test_cvm_exhaustive_code_mask_pairs(bits):
    # every code against every mask, with one random value per pair
    rng = np.random.default_rng(bits)
    n = 1 << bits
    w, m = np.meshgrid(np.arange(-(n // 2), n // 2), np.arange(n), indexing="ij")
    w, m = w.reshape(1, -1).astype(np.int64), m.reshape(1, -1).astype(np.int64)
    v = rng.integers(0, n, size=w.shape)
    got = run(w, m, v, bits, "cvm")
    assert torch.equal(got, torch.from_numpy(ref_cvm(w, m, v, bits).reshape(w.shape)).int())


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("tile", [1, 5, 64])
def test_all_methods_match_brute_force(bits, tile):
    rng = np.random.default_rng(100 * bits + tile)
    shape = (3, 13) if bits >= 7 else (4, 23)
    w, mask, value = random_layer(rng, shape, bits, p_stuck=0.3)
    if bits <= 6:
        w[0, :3] = -(1 << (bits - 1))  # the code whose negation is out of range
    expect = {
        "cvm": ref_cvm(w, mask, value, bits).reshape(shape),
        "sign_flip": ref_sign_flip(w, mask, value, bits, tile),
        "bit_flip": ref_bit_flip(w, mask, value, bits, tile),
    }
    for method, ref in expect.items():
        got = run(w, mask, value, bits, method, tile)
        assert torch.equal(got, torch.from_numpy(ref).int()), method


def test_sign_flip_reads_plus_half_range():
    # w = 127, LSB stuck at 0: CVM(-127) = -128 by the tie rule; reading +128 costs 1 like 126
    w = torch.tensor([[127, 127]])
    mask = torch.tensor([[1, 1]])
    value = torch.tensor([[0, 0]])
    assert remap(w, mask, value, method="sign_flip").tolist() == [[126, 126]]  # tie: no flip
    # make "-" strictly better: 2 with the sign bit stuck at 1 is only storable as -2
    w = torch.tensor([[127, 2]])
    mask = torch.tensor([[1, 128]])
    value = torch.tensor([[0, 128]])  # E+ = 1 + 3 (2 -> -1), E- = 1 (127 -> +128) + 0
    got = remap(w, mask, value, method="sign_flip")
    assert got.tolist() == [[128, 2]] and got.dtype == torch.int32
    assert got.tolist() == ref_sign_flip(w.numpy(), mask.numpy(), value.numpy(), 8, 64).tolist()


def test_sign_flip_most_negative_code_clamped_target():
    # w = -128 with no faults: "-" would read -127 (error 1) -> never chosen
    w = torch.full((2, 70), -128)
    zero = torch.zeros_like(w)
    assert torch.equal(remap(w, zero, zero, method="sign_flip"), w.int())


def test_cvm_16_bits_against_brute_force():
    rng = np.random.default_rng(16)
    bits, n = 16, 60
    w = rng.integers(-(1 << 15), 1 << 15, size=(1, n))
    w[0, :4] = [-(1 << 15), (1 << 15) - 1, 0, -1]
    nbits = rng.integers(0, 17, size=n)  # 0..16 stuck bits per weight
    mask = np.array([sum(1 << int(b) for b in rng.choice(16, k, replace=False)) for k in nbits])[None]
    value = rng.integers(0, 1 << 16, size=(1, n))
    got = run(w, mask, value, bits, "cvm")
    assert torch.equal(got, torch.from_numpy(ref_cvm(w, mask, value, bits).reshape(1, n)).int())
    # the negated targets too (one above the range for w = -2**15)
    got = remap(torch.from_numpy(-w).clamp(max=(1 << 15) - 1), torch.from_numpy(mask), torch.from_numpy(value),
                bits=16)
    ref = ref_cvm(np.minimum(-w, (1 << 15) - 1), mask, value, bits).reshape(1, n)
    assert torch.equal(got, torch.from_numpy(ref).int())


def test_cvm_helper_out_of_range_target_is_exact():
    from qfault.mitigation import cvm_codes
    rng = np.random.default_rng(3)
    for bits in (4, 8, 12):
        mask = rng.integers(0, 1 << bits, size=200)
        value = rng.integers(0, 1 << bits, size=200) & mask
        target = np.full(200, 1 << (bits - 1))  # -(-2**(b-1)): one above the range
        got = cvm_codes(torch.from_numpy(target), torch.from_numpy(mask), torch.from_numpy(value), bits)
        assert torch.equal(got, torch.from_numpy(ref_cvm(target, mask, value, bits)).int())


def ref_bit_flip_all_masks(w, mask, value, bits, tile):
    """Brute force over all 2**bits masks per group, errors from the (16-bit exact) cvm_codes."""
    w, mask, value = (torch.as_tensor(a, dtype=torch.int64) for a in (w, mask, value))
    out = torch.empty_like(w, dtype=torch.int32)
    m = torch.arange(1 << bits)
    for r, cols in ref_groups(tuple(w.shape), tile):
        ww, mm, vv = w[r, cols, None], mask[r, cols, None], value[r, cols, None]
        read = cvm_codes(ww.expand(-1, m.numel()), mm, ((vv ^ m) & mm), bits)  # [elements, masks]
        err = (read - ww).abs().sum(0)
        best = int(torch.nonzero(err == err.min())[0])  # the first (smallest) mask
        out[r, cols] = read[:, best]
    return out


@pytest.mark.parametrize("bits", [10, 11, 12])
def test_bit_flip_wide_codes_match_brute_force(bits):
    rng = np.random.default_rng(bits)
    w, mask, value = random_layer(rng, (2, 6), bits, p_stuck=0.2)
    got = run(w, mask, value, bits, "bit_flip", tile=3)
    assert torch.equal(got, torch.from_numpy(ref_bit_flip(w, mask, value, bits, 3)).int())


@pytest.mark.parametrize("p_stuck", [0.05, 0.3, 0.6, 1.0])
@pytest.mark.parametrize("tile", [1, 4, 200])
def test_bit_flip_16_bits_match_brute_force_over_all_masks(p_stuck, tile):
    # tile 200 > in_features: one group per row; dense maps link every bit into one component
    rng = np.random.default_rng(int(p_stuck * 100) + tile)
    w, mask, value = random_layer(rng, (2, 9), 16, p_stuck=p_stuck)
    got = run(w, mask, value, 16, "bit_flip", tile=tile)
    assert torch.equal(got, ref_bit_flip_all_masks(w, mask, value, 16, tile))


def test_bit_flip_16_bits_numpy_brute_force_tiny_layer():
    # fully independent of cvm_codes: numpy CVM over all 65536 codes, for every mask of the group
    bits, rng = 16, np.random.default_rng(160)
    w = rng.integers(-(1 << 15), 1 << 15, size=(1, 3))
    mask = np.array([[0b1000000000000011, 0b0000000100000010, 0b0110000000000000]])
    value = rng.integers(0, 1 << 16, size=(1, 3))
    # an element's error depends only on the inversion of its own stuck bits: tabulate those
    errors = []
    for e in range(3):
        own = [s for s in range(1 << bits) if s & ~int(mask[0, e]) == 0]
        reads = ref_cvm(np.full(len(own), w[0, e]), np.full(len(own), mask[0, e]), value[0, e] ^ np.array(own), bits)
        errors.append(dict(zip(own, np.abs(reads - w[0, e]))))
    m = np.arange(1 << bits)
    total = sum(np.vectorize(errors[e].__getitem__)(m & int(mask[0, e])) for e in range(3))
    best = int(np.argmin(total))  # numpy's argmin: the first minimum
    expect = ref_cvm(w[0], mask[0], value[0] ^ best, bits)
    assert run(w, mask, value, bits, "bit_flip", tile=3).tolist() == [expect.tolist()]


def test_bit_flip_16_bits_component_shapes():
    bits, rng = 16, np.random.default_rng(161)
    half = 1 << 15
    shape = (6, 16)
    w = rng.integers(-half, half, size=shape)
    value = rng.integers(0, 1 << 16, size=shape)
    mask = np.zeros(shape, dtype=np.int64)
    mask[0] = 1 << rng.integers(0, 16, size=16)  # only single-bit faults: separable per bit
    mask[1] = [(3 << (2 * (i % 8))) for i in range(16)]  # eight 2-bit components
    mask[2] = [(1 << i) | (1 << ((i + 1) % 16)) for i in range(16)]  # a ring: all bits connected
    mask[3] = 0xFFFF  # every bit stuck in every element
    mask[4, ::3] = rng.integers(1, 1 << 16, size=6)  # many stuck bits, sparse elements
    w[5] = 0  # ties: all-zero codes, stuck bits that can be undone by the smallest mask
    mask[5] = 1 << rng.integers(0, 16, size=16)
    value[5] = 0xFFFF
    for tile in (1, 5, 16):
        got = run(w, mask, value, bits, "bit_flip", tile=tile)
        assert torch.equal(got, ref_bit_flip_all_masks(w, mask, value, bits, tile)), tile
    assert run(w, mask, value, bits, "bit_flip", tile=16)[5].abs().sum() == 0  # inverted back


def test_bit_flip_ties_take_the_smallest_mask():
    # w = 0 with one bit stuck at 1: inverting that bit reads 0 exactly; every other mask bit
    # is free (no element has it stuck) and must stay 0: the read equals the smallest choice
    w = torch.zeros(1, 4, dtype=torch.int64)
    mask = torch.tensor([[0b100, 0, 0b100, 0]])
    value = torch.tensor([[0b100, 0, 0b100, 0]])
    for bits in (8, 16):
        assert remap(w, mask, value, bits=bits, method="bit_flip").tolist() == [[0, 0, 0, 0]]
    # two stuck elements pulling in opposite directions with equal error: mask 0 wins the tie
    w = torch.tensor([[1, 0]])
    mask = torch.tensor([[1, 1]])
    value = torch.tensor([[0, 1]])  # m=0 reads (0, 1): error 2; m=1 reads (1, 0): error 0
    assert remap(w, mask, value, bits=12, method="bit_flip").tolist() == [[1, 0]]
    w = torch.tensor([[1, 1]])  # m=0 reads (0, 1), m=1 reads (1, 0): error 1 each -> m = 0
    assert remap(w, mask, value, bits=12, method="bit_flip").tolist() == [[0, 1]]


def test_bit_flip_bits_range():
    w = torch.zeros(2, 3, dtype=torch.int32)
    for bits in (1, 17):
        with pytest.raises(QFaultConfigError, match="bits") as info:
            remap(w, w, w, bits=bits, method="bit_flip")
        assert info.value.field == "bits"


def test_bit_flip_chunked_matches_unchunked():
    # force many small chunks of elements and components; the result must not depend on them
    rng = np.random.default_rng(7)
    for bits, p_stuck in ((8, 0.1), (16, 0.3)):
        w, mask, value = random_layer(rng, (4, 40), bits, p_stuck=p_stuck)
        args = [torch.from_numpy(a) for a in (w, mask, value)]
        whole = remap(*args, bits=bits, method="bit_flip", tile=16)
        chunked = remap(*args, bits=bits, method="bit_flip", tile=16, max_entries=1 << 6)
        assert torch.equal(chunked, whole)


def test_seed_aliases_and_empty():
    w = torch.tensor([[1, -2, 3]])
    m = torch.tensor([[1, 1, 0]])
    v = torch.tensor([[0, 1, 0]])
    for alias, name in (("none", "cvm"), ("flip", "sign_flip"), ("flip-bitwise", "bit_flip")):
        assert torch.equal(remap(w, m, v, method=alias), remap(w, m, v, method=name))
    e = torch.zeros((0, 5), dtype=torch.int8)
    for method in ("cvm", "sign_flip", "bit_flip"):
        out = remap(e, e, e, method=method)
        assert out.shape == (0, 5) and out.dtype == torch.int32


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def test_validation_names_the_field():
    w = torch.zeros(2, 3, dtype=torch.int32)
    cases = [
        ({"method": "nope"}, "method"),
        ({"bits": 1}, "bits"),
        ({"bits": 17}, "bits"),
        ({"bits": 8.0}, "bits"),
        ({"tile": 0}, "tile"),
        ({"tile": 2.5}, "tile"),
    ]
    for kwargs, field in cases:
        with pytest.raises(QFaultConfigError, match=field) as info:
            remap(w, w, w, **kwargs)
        assert info.value.field == field
    with pytest.raises(QFaultConfigError, match="'cvm'"):
        remap(w, w, w, method="nope")
    for args, field in [
        ((w, torch.zeros(3, 2, dtype=torch.int32), w), "stuck_mask"),
        ((w, w, torch.zeros(2, 4, dtype=torch.int32)), "stuck_value"),
        ((w.float(), w, w), "codes"),
        ((w, w.bool(), w), "stuck_mask"),
        ((torch.full((2, 3), 128), w, w), "codes"),
        ((torch.full((2, 3), -129), w, w), "codes"),
        ((w, torch.full((2, 3), 256), w), "stuck_mask"),
    ]:
        with pytest.raises(QFaultConfigError) as info:
            remap(*args)
        assert info.value.field == field
    with pytest.raises(QFaultConfigError) as info:
        remap(torch.zeros(2, 3, 4, dtype=torch.int32), torch.zeros(2, 3, 4, dtype=torch.int32),
              torch.zeros(2, 3, 4, dtype=torch.int32), method="sign_flip")
    assert info.value.field == "codes"
    # 3-D is fine for cvm; signed-view masks (int8 -128 = bit 7) accepted
    m8 = torch.tensor([[-128]], dtype=torch.int8)
    assert remap(torch.tensor([[5]]), m8, torch.tensor([[0]])).tolist() == [[5]]
    assert remap(torch.tensor([[5]]), m8, torch.tensor([[128]])).tolist() == [[-1]]


# --------------------------------------------------------------------------------------------
# Properties (hypothesis)
# --------------------------------------------------------------------------------------------
@st.composite
def layers(draw, max_bits=8):
    bits = draw(st.integers(2, max_bits))
    rows = draw(st.integers(1, 3))
    cols = draw(st.integers(1, 12))
    tile = draw(st.integers(1, 8))
    half = 1 << (bits - 1)
    n = rows * cols
    w = draw(st.lists(st.integers(-half, half - 1), min_size=n, max_size=n))
    mask = draw(st.lists(st.integers(0, 2 * half - 1), min_size=n, max_size=n))
    value = draw(st.lists(st.integers(0, 2 * half - 1), min_size=n, max_size=n))
    t = lambda a: torch.tensor(a, dtype=torch.int64).view(rows, cols)
    return t(w), t(mask), t(value), bits, tile


def group_errors(read, w, tile):
    err = (read.long() - w.long()).abs()
    rows, cols = w.shape
    pad = (-cols) % tile
    err = torch.nn.functional.pad(err, (0, pad))
    return err.view(rows, -1, tile).sum(-1)


PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(layers(max_bits=16))
def test_cvm_consistent_and_minimal(layer):
    w, mask, value, bits, _ = layer
    read = remap(w, mask, value, bits=bits)
    full = (1 << bits) - 1
    assert bool(((read.long() & mask) == (value & mask)).all())  # honours every stuck bit
    assert read.min() >= -(1 << (bits - 1)) and read.max() < 1 << (bits - 1)
    err = (read.long() - w).abs()
    # brute-force minimality on a sample of candidate distances (full check for small widths)
    if bits <= 10:
        ref = ref_cvm(w.numpy(), mask.numpy(), value.numpy(), bits).reshape(w.shape)
        assert torch.equal(err, (torch.from_numpy(ref) - w).abs())
    else:
        for c_delta in range(-3, 4):  # no consistent code within |read - w| - 1 at these offsets
            cand = w + c_delta
            ok = (cand >= -(1 << (bits - 1))) & (cand < 1 << (bits - 1))
            consistent = ok & (((cand & full) & mask) == (value & mask))
            assert bool((~consistent | (c_delta.__abs__() >= err)).all())


@PROPS
@given(layers(max_bits=16))
def test_flips_never_worse_than_cvm_per_group(layer):
    w, mask, value, bits, tile = layer
    e_cvm = group_errors(remap(w, mask, value, bits=bits), w, tile)
    e_sign = group_errors(remap(w, mask, value, bits=bits, method="sign_flip", tile=tile), w, tile)
    e_bit = group_errors(remap(w, mask, value, bits=bits, method="bit_flip", tile=tile), w, tile)
    assert bool((e_sign <= e_cvm).all())
    assert bool((e_bit <= e_cvm).all())


@PROPS
@given(layers(max_bits=16), st.sampled_from(["cvm", "sign_flip", "bit_flip"]))
def test_no_stuck_bits_reads_back_exactly(layer, method):
    w, _, value, bits, tile = layer
    read = remap(w, torch.zeros_like(w), value, bits=bits, method=method, tile=tile)
    assert torch.equal(read, w.int())


@PROPS
@given(layers(max_bits=16))
def test_all_bits_stuck_reads_the_stuck_code(layer):
    w, _, value, bits, _ = layer
    full = (1 << bits) - 1
    read = remap(w, torch.full_like(w, full), value, bits=bits)
    half = 1 << (bits - 1)
    expect = ((value & full) ^ half) - half
    assert torch.equal(read, expect.int())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers(max_bits=16))
def test_bit_flip_matches_brute_force_over_all_masks(layer):
    w, mask, value, bits, tile = layer
    got = remap(w, mask, value, bits=bits, method="bit_flip", tile=tile)
    assert torch.equal(got, ref_bit_flip_all_masks(w, mask & ((1 << bits) - 1), value, bits, tile))


# --------------------------------------------------------------------------------------------
# Fault map
# --------------------------------------------------------------------------------------------
def test_draw_stuck_map_statistics_and_reproducibility():
    mask, value = draw_stuck_map((300, 200), 5.0, bits=8, generator=123)
    assert mask.shape == (300, 200) and mask.dtype == torch.int32
    assert bool(((value & ~mask) == 0).all())
    assert int(mask.min()) >= 0 and int(mask.max()) < 256
    bits_set = torch.stack([(mask >> b) & 1 for b in range(8)]).float()
    ones = torch.stack([(value >> b) & 1 for b in range(8)]).float()
    n = bits_set.numel()
    rate = float(bits_set.mean())
    assert abs(rate - 0.05) < 5 * (0.05 * 0.95 / n) ** 0.5
    frac_one = float(ones.sum() / bits_set.sum())
    assert abs(frac_one - 0.5) < 5 * (0.25 / float(bits_set.sum())) ** 0.5
    frac_hit = float((mask != 0).float().mean())
    assert abs(frac_hit - (1 - 0.95 ** 8)) < 0.01  # seed: 33.7 % of weights at 5 %
    again = draw_stuck_map((300, 200), 5.0, bits=8, generator=123)
    assert torch.equal(again[0], mask) and torch.equal(again[1], value)
    gen = torch.Generator().manual_seed(0)
    m16, _ = draw_stuck_map((10, 10), 100.0, bits=16, generator=gen)
    assert bool((m16 == 0xFFFF).all())
    m0, v0 = draw_stuck_map((10, 10), 0.0)
    assert not bool(m0.any()) and not bool(v0.any())
    with pytest.raises(QFaultConfigError, match="rate"):
        draw_stuck_map((2, 2), 101.0)
    with pytest.raises(QFaultConfigError, match="bits"):
        draw_stuck_map((2, 2), 1.0, bits=17)


def test_end_to_end_seed_setting():
    # seed 000: 8-bit narrow-range weights, faults at 5 %, 64-row blocks
    gen = torch.Generator().manual_seed(5)
    w = torch.randint(-127, 128, (48, 200), generator=gen)
    mask, value = draw_stuck_map(w.shape, 5.0, generator=gen)
    errs = {m: int((remap(w, mask, value, method=m) - w).abs().sum()) for m in ("cvm", "sign_flip", "bit_flip")}
    stored_raw = ((w & 255) & ~mask) | value  # naive write: stuck bits just override
    raw = ((stored_raw ^ 128) - 128)
    assert errs["bit_flip"] <= errs["cvm"] and errs["sign_flip"] <= errs["cvm"]
    assert errs["cvm"] <= int((raw - w).abs().sum())
