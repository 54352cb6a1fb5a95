"""FKeras' bit-flip API (``qfault.compat.fkeras``) on PyTorch tensors: the seed notebook's cells,
and what differs on purpose (keep_negative honoured, regions honour end and ber)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import qfault
from qfault import InjectSpec, QFaultConfigError
from qfault.compat.fkeras import (
    FaultyLayerBitRegion, gen_lbi_region_at_layer_level, gen_mask_tensor_deterministic,
    gen_mask_tensor_deterministic_v2, gen_mask_tensor_deterministic_v3, gen_mask_tensor_random, lb_index_to_wb_index,
    quantize_and_bitflip, quantize_and_bitflip_deterministic, quantize_and_bitflip_deterministic_v2,
    quantize_and_bitflip_deterministic_v3, quantized_bits, wb_index_to_lb_index,
)
from qfault.faults import RegionBitFlip

# the notebook's 2x2x3 weights and its 5-bit quantizer (1 integer bit, sign kept: steps of 1/8)
WEIGHTS = torch.tensor([[[0.375, 0.0, 0.125], [0.625, 0.75, 0.25]], [[1.0, 0.5, 0.375], [0.25, 0.25, 0.75]]])


def test_quantizer_table_is_qkeras_range():
    quantizer = quantized_bits(5, 1, keep_negative=1)
    codes = torch.arange(32)
    values = quantizer.format.decode(quantizer.format.from_bits(codes))
    assert values.tolist()[:3] == [0.0, 0.125, 0.25] and values.tolist()[16:18] == [-2.0, -1.875]
    assert quantizer(torch.tensor([0.31, 5.0, -9.0])).tolist() == [0.25, 1.875, -2.0]
    assert quantizer.get_config()["keep_negative"] == 1


def test_notebook_regions_cell():
    quantizer = quantized_bits(5, 1, keep_negative=1)
    regions = [FaultyLayerBitRegion(0, 0, 1.0), FaultyLayerBitRegion(1, 1, 1.0)]
    clean = quantize_and_bitflip_deterministic_v3(-WEIGHTS, quantizer, [], [])
    assert torch.equal(clean, -WEIGHTS)
    faulty = quantize_and_bitflip_deterministic_v3(-WEIGHTS, quantizer, regions, [])
    # LBIs 0 and 1: the sign bit and the next one of weight 0; -0.375 (11101) -> 00101 = 0.625
    assert faulty.reshape(-1).tolist() == [0.625] + (-WEIGHTS).reshape(-1).tolist()[1:]
    mask = gen_mask_tensor_deterministic_v3(-WEIGHTS, regions, 5, 1)
    assert mask.reshape(-1).tolist() == [-8] + [0] * 11


def test_notebook_deterministic_cells():
    assert gen_mask_tensor_deterministic(WEIGHTS, 30 / 60, 5).reshape(-1).tolist() == [7] * 6 + [3] * 6
    assert gen_mask_tensor_deterministic(WEIGHTS, 1 / 60, 5).reshape(-1).tolist() == [1] + [0] * 11
    v2 = gen_mask_tensor_deterministic_v2(WEIGHTS, 60 / 60, 5, 1)
    assert v2.reshape(-1).tolist() == [-1] * 12  # all five bits, the sign bit sign-extended
    # every bit flipped: bitwise NOT in 5-bit two's complement (the notebook's printed output is stale)
    out = quantize_and_bitflip_deterministic_v2(WEIGHTS, quantized_bits(5, 1, keep_negative=1), [], [60 / 60],
                                                i_keep_negative=1)
    assert out.reshape(-1).tolist()[:3] == [-0.5, -0.125, -0.25]
    assert torch.equal(out, quantize_and_bitflip_deterministic(WEIGHTS, quantized_bits(5, 1), [], [1.0]))


def test_keep_negative_is_honoured_and_the_sign_bit_is_reachable():
    """FKeras' quantize_and_bitflip drops keep_negative (E = bits - integer): its flips land on half
    LSBs and never on the sign bit. Here E = bits - integer - keep_negative."""
    quantizer = quantized_bits(8, 7, keep_negative=1)  # E = 0: integer codes
    out = quantize_and_bitflip(torch.zeros(4), quantizer, [], [1.0], seed=0)
    assert out.tolist() == [-1.0] * 4  # all 8 bits of 0: 0xFF = -1, not FKeras' 127.5
    sign_only = quantize_and_bitflip(torch.zeros(4), quantizer, [FaultyLayerBitRegion(0, 0, 1.0)], [], seed=0)
    assert sign_only.tolist() == [-128.0, 0.0, 0.0, 0.0]


def test_random_flips_are_an_exact_count_and_seeded():
    quantizer = quantized_bits(6, 2)
    x = torch.linspace(-3, 3, 50)
    mask = gen_mask_tensor_random(x, 0.1, 6, seed=3)
    assert sum(bin(int(m)).count("1") for m in mask.tolist()) == int(50 * 6 * 0.1)
    assert torch.equal(mask, gen_mask_tensor_random(x, 0.1, 6, seed=3))
    a = quantize_and_bitflip(x, quantizer, [], [0.1], seed=1)
    assert torch.equal(a, quantize_and_bitflip(x, quantizer, [], [0.1], seed=1))
    changed = (a != quantizer(x)).sum()
    assert 0 < changed <= 30


def test_regions_honour_end_and_ber():
    x = torch.zeros(10)
    region = gen_lbi_region_at_layer_level(x, 4, 0.5)
    assert (region[0].start_lbi, region[0].end_lbi, region[0].ber) == (0, 39, 0.5)
    mask = gen_mask_tensor_deterministic_v3(x, region, 4, 0, seed=2)
    assert sum(bin(int(m) & 15).count("1") for m in mask.tolist()) == 20
    partial = gen_mask_tensor_deterministic_v3(x, [FaultyLayerBitRegion(4, 11, 1.0)], 4, 0)
    assert partial.tolist() == [0, 15, 15] + [0] * 7  # LBIs 4..11: every bit of weights 1 and 2


def test_lbi_helpers_match_fkeras():
    assert lb_index_to_wb_index(0, 8) == (0, 7) and lb_index_to_wb_index(9, 8) == (1, 6)
    assert lb_index_to_wb_index(9, 8, little_endian=False) == (1, 1)
    for lbi in range(40):
        assert wb_index_to_lb_index(lb_index_to_wb_index(lbi, 5), 5) == lbi
        assert wb_index_to_lb_index(lb_index_to_wb_index(lbi, 5, False), 5, False) == lbi


def test_bad_input_is_a_clear_error():
    with pytest.raises(QFaultConfigError, match=r"integer=9 is invalid: allowed at most bits - keep_negative = 7"):
        quantized_bits(8, 9)
    with pytest.raises(QFaultConfigError, match=r"alpha='max' is invalid: allowed None, 1, 'auto' or 'auto_po2'"):
        quantized_bits(8, 3, alpha="max")
    with pytest.raises(QFaultConfigError, match=r"regions\[0\].end_lbi=0 is invalid: allowed at least start_lbi"):
        quantize_and_bitflip_deterministic_v3(WEIGHTS, quantized_bits(5, 1), [FaultyLayerBitRegion(1, 0, 1.0)], [])
    with pytest.raises(QFaultConfigError, match=r"regions\[0\].end_lbi=60 is invalid: allowed at most 59"):
        quantize_and_bitflip_deterministic_v3(WEIGHTS, quantized_bits(5, 1), [FaultyLayerBitRegion(0, 60, 1.0)], [])
    with pytest.raises(QFaultConfigError, match=r"ber=2.0"):
        quantize_and_bitflip(WEIGHTS, quantized_bits(5, 1), [], [2.0])


def test_keras_lbis_of_a_pytorch_linear_weight():
    """A fixed-point weight format on a plain nn.Linear: LBI l of its Keras kernel (in, out)."""
    torch.manual_seed(0)
    layer = nn.Linear(3, 2, bias=False)
    model = nn.Sequential(layer)
    fmt = quantized_bits(8, 2).format
    x = torch.randn(4, 3)
    with torch.no_grad():
        layer.weight.copy_(fmt.decode(fmt.encode(layer.weight)))
        clean_weight = layer.weight.clone()
    bits = 8
    seen = {}
    # LBI bits * 1 is the sign bit of Keras element 1 = (in 0, out 1) = torch weight[1, 0]
    spec = InjectSpec(fault=RegionBitFlip(regions=((bits, bits, 1.0),), layout="keras"), site="weight", format=fmt)
    with qfault.inject(model, spec) as handle:
        handle.add_listener(lambda name, draw, old, new: seen.update(sites=draw.bit_sites.tolist()))
        with torch.no_grad():
            out = model(x)
    assert seen["sites"] == [[1 * 3 + 0, 7]]
    expected = clean_weight.clone()
    code = int(fmt.encode(expected[1, 0]))  # E = 8 - 2 - 1 = 5 fraction bits
    pattern = (code & 0xFF) ^ 0x80
    expected[1, 0] = (pattern - 256 if pattern >= 128 else pattern) / 32
    assert torch.equal(out, nn.functional.linear(x, expected))
    assert torch.equal(layer.weight, clean_weight)


def test_whole_model_numbering_is_kernel_then_bias_per_layer_in_keras_order():
    from qfault.compat.fkeras import FModelAlt
    from qfault.injection import ModelBits

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    fmt = quantized_bits(6, 2).format
    numbering = ModelBits(model, format=fmt, include_bias=True)
    # brute force: walk the layers, kernel (Keras (in, out), row-major) then bias, 6 bits each MSB first
    expected = []
    for name, layer in (("0", model[0]), ("2", model[2])):
        out_features, in_features = layer.weight.shape
        for i in range(in_features):
            for o in range(out_features):
                expected += [(f"{name}.weight", o * in_features + i, 5 - k) for k in range(6)]
        for o in range(out_features):
            expected += [(f"{name}.bias", o, 5 - k) for k in range(6)]
    assert numbering.total == len(expected) == (6 + 2 + 4 + 2) * 6
    assert numbering.locate(range(numbering.total)) == expected
    with pytest.raises(QFaultConfigError, match=r"bit index=84 is invalid: allowed 0 to 83"):
        numbering.locate([84])
    fmodel = FModelAlt(model, incl_biases=True, format=fmt)
    assert fmodel.num_model_param_bits == 84 and list(fmodel.layer_bit_ranges) == [(0, 48), (48, 84)]
    x = torch.randn(5, 3)
    with torch.no_grad():
        clean = model(x)
        fmodel.explicitly_flip_bits([0, 40, 0])
        seen = []
        fmodel.handle.add_listener(lambda name, draw, old, new: seen.append((name, draw.bit_sites.tolist())))
        faulty = model(x)
        # bit 0: the MSB of kernel element 0; bit 40 = 36 + 4: bias 0, bit 5 - 4 = 1
        assert sorted(seen) == [("0:bias", [[0, 1]]), ("0:weight", [[0, 5]])]
        assert not torch.equal(faulty, clean) and torch.equal(model(x), faulty)  # stays until reset
        fmodel.explicitly_reset_bits([0, 40])
        assert torch.equal(model(x), clean)


def _qkeras_auto_reference(w: np.ndarray, bits: int, integer: int, alpha: str) -> np.ndarray:
    """QKeras' quantized_bits.__call__ for symmetric auto alphas, transcribed in numpy float32 on
    the Keras kernel (output channel last): scale over every axis but the last."""
    f32 = np.float32
    eps = f32(1e-7)
    x = w.astype(f32) / f32(2.0**integer)
    axes = tuple(range(x.ndim - 1))
    levels = f32((2 ** (bits - 1) - 1) * 2)
    scale = (np.max(np.abs(x), axis=axes, keepdims=True) * f32(2)) / levels
    if alpha == "auto_po2":
        scale = np.power(f32(2), np.round(np.log(scale + eps) / f32(np.log(2.0)))).astype(f32)
        for _ in range(5):
            v = np.floor(np.abs(x) / scale + f32(0.5))
            z = np.sign(x) * np.where(v < levels / 2, v, np.ones_like(v) * levels / 2)
            qx = np.mean(x * z, axis=axes, keepdims=True)
            qq = np.mean(z * z, axis=axes, keepdims=True)
            scale = np.power(f32(2), np.round(np.log(qx / (qq + eps) + eps) / f32(np.log(2.0)))).astype(f32)
    v = np.floor(np.abs(x) / scale + f32(0.5))
    z = np.sign(x) * np.where(v < levels / 2, v, np.ones_like(v) * levels / 2)
    return (f32(2.0**integer) * z * scale).astype(f32)


@pytest.mark.parametrize("alpha", ["auto", "auto_po2"])
@pytest.mark.parametrize("bits, integer", [(4, 0), (8, 2), (6, 1)])
def test_auto_alpha_scales_match_qkeras(alpha, bits, integer):
    gen = torch.Generator().manual_seed(bits)
    weight = torch.randn(5, 3, 3, 3, generator=gen) * torch.tensor([0.1, 1.0, 3.0, 0.02, 7.0]).view(5, 1, 1, 1)
    quantizer = quantized_bits(bits, integer, symmetric=1, alpha=alpha)
    keras_kernel = weight.permute(2, 3, 1, 0).numpy()  # (kh, kw, in, out)
    expected = _qkeras_auto_reference(keras_kernel, bits, integer, alpha)
    got = quantizer(weight).permute(2, 3, 1, 0).numpy()
    np.testing.assert_array_equal(got, expected)
    # flips act on the narrow-range codes z of z * scale, per output channel
    faulty = quantize_and_bitflip(weight, quantizer, [FaultyLayerBitRegion(0, 0, 1.0)], [], seed=0)
    fmt, scale, _ = quantizer.codes_format(weight)
    code = int(torch.round(quantizer(weight).reshape(-1)[0] / scale[0]))
    pattern = (code & (2**bits - 1)) ^ (1 << (bits - 1))
    assert float(faulty.reshape(-1)[0]) == pytest.approx((pattern - 2**bits if pattern >= 2 ** (bits - 1) else pattern)
                                                         * float(scale[0]), rel=1e-6)
    with pytest.raises(QFaultConfigError, match="symmetric"):
        quantized_bits(bits, integer, symmetric=0, alpha=alpha)
