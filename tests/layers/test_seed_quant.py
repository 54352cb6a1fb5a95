"""Tests of the seed-000 quantized Linear (``qfault.layers``) against an independent
numpy/Python-int reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from qfault._errors import QFaultConfigError
from qfault.layers import (
    SeedQuantConfig,
    SeedQuantLinear,
    seed_quantize_activation,
    seed_quantize_weight,
    swap_linear,
    swap_modules,
)
from qfault.mitigation import remap

F32 = np.float32


# ----------------------------------------------------------------------------- reference
def ref_weight(w: np.ndarray, bits: int):
    """Seed formulas in float32 numpy: per-row scale, multiply by the reciprocal, half-up round."""
    w = w.astype(F32)
    s = ((w.max(axis=1) - w.min(axis=1)) + F32(1e-15)) / F32(2 ** bits - 2)
    recip = (F32(1.0) / s).astype(F32)
    lim = 2 ** (bits - 1) - 1
    q = np.clip(np.floor(w * recip[:, None] + F32(0.5)), -lim, lim)
    return [[int(v) for v in row] for row in q], s.astype(F32)


def ref_act(x: np.ndarray, bits: int):
    """Per-sample (dim 0) scale over all other dims, division by the scale, half-up round."""
    x = x.astype(F32)
    flat = x.reshape(x.shape[0], -1)
    s = ((flat.max(axis=1) - flat.min(axis=1)) + F32(1e-15)) / F32(2 ** bits - 1)
    q = np.clip(np.floor(flat / s[:, None] + F32(0.5)), -(2 ** (bits - 1)), 2 ** bits - 1)
    return q.reshape(x.shape), s.astype(F32)


def ref_forward(x: np.ndarray, w: np.ndarray, b, wbits: int, abits: int, codes=None):
    """Exact integer dot products in Python ints, then float32 scaling as the seed does."""
    qw, sw = ref_weight(w, wbits)
    if codes is not None:
        qw = [[int(v) for v in row] for row in codes]
    qx, sx = ref_act(x, abits)
    lead = x.shape[:-1]
    out = np.zeros(lead + (w.shape[0],), dtype=F32)
    for idx in np.ndindex(*lead):
        row = [int(v) for v in qx[idx]]
        for o in range(w.shape[0]):
            acc = sum(a * c for a, c in zip(row, qw[o]))  # exact Python int
            y = F32(acc) * sx[idx[0]] * sw[o]
            if b is not None:
                y = F32(y + F32(b[o]))
            out[idx + (o,)] = y
    return out


def _layer(in_f, out_f, wbits, abits, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=bias)
    return lin, SeedQuantLinear.from_linear(lin, weight_bits=wbits, act_bits=abits)


# ----------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("wbits,abits", [(8, 8), (4, 8), (4, 4), (2, 8), (16, 16)])
@pytest.mark.parametrize("shape", [(3, 13), (2, 5, 13)])  # [B, C] and ViT-like tokens [B, T, C]
@pytest.mark.parametrize("bias", [True, False])
def test_forward_matches_reference(wbits, abits, shape, bias):
    lin, q = _layer(shape[-1], 6, wbits, abits, bias=bias, seed=wbits * 100 + abits + len(shape))
    torch.manual_seed(1)
    x = torch.randn(*shape) * 2 + 0.3
    x[0] *= 10  # per-sample scales differ
    got = q(x)
    assert got.dtype == torch.float32 and got.shape == shape[:-1] + (6,)
    b = lin.bias.detach().numpy() if bias else None
    want = ref_forward(x.numpy(), lin.weight.detach().numpy(), b, wbits, abits)
    np.testing.assert_array_equal(got.detach().numpy(), want)


def test_quantizers_match_reference_and_ranges():
    torch.manual_seed(3)
    w = torch.randn(7, 20)
    w[0, 0] = -50.0  # |min| >> max: the symmetric clamp clips this row
    for bits in (2, 4, 8, 12):
        codes, scale = seed_quantize_weight(w, bits)
        rq, rs = ref_weight(w.numpy(), bits)
        assert codes.dtype == torch.int32 and scale.dtype == torch.float32 and scale.shape == (7,)
        assert codes.tolist() == rq
        np.testing.assert_array_equal(scale.numpy(), rs)
        assert int(codes.abs().max()) <= 2 ** (bits - 1) - 1
    x = torch.randn(3, 4, 5)
    for bits in (2, 4, 8, 16):
        codes, scale = seed_quantize_activation(x, bits)
        rq, rs = ref_act(x.numpy(), bits)
        np.testing.assert_array_equal(codes.numpy(), rq)
        np.testing.assert_array_equal(scale.numpy(), rs)
        assert int(codes.min()) >= -(2 ** (bits - 1)) and int(codes.max()) <= 2 ** bits - 1


def test_round_is_half_up_and_constant_rows():
    # Round(x) = floor(x + 0.5): -2.5 -> -2, 2.5 -> 3 (not banker's rounding)
    w = torch.tensor([[-2.5, 2.5, 0.0, 5.0, -5.0]])
    codes, scale = seed_quantize_weight(w, 4)  # s = 10/14
    rq, _ = ref_weight(w.numpy(), 4)
    assert codes.tolist() == rq
    # constant row: scale = 1e-15/(2^b-2), zeros stay 0, nonzeros saturate
    codes, scale = seed_quantize_weight(torch.tensor([[0.0, 0.0], [0.5, 0.5]]), 8)
    assert codes.tolist() == [[0, 0], [127, 127]] and float(scale[0]) > 0


def test_long_rows_exact_where_float32_product_rounds():
    """The seed accumulates q_x @ q_w.T in float32 and Rounds it; on long rows with large codes
    float32 partial sums exceed 2**24 and are rounded, our float64 accumulation is exact."""
    torch.manual_seed(5)
    in_f, out_f = 4096, 16
    lin = nn.Linear(in_f, out_f)
    with torch.no_grad():
        lin.weight.uniform_(0.5, 1.0)
        lin.weight[:, 0] = -1.0  # codes ~ 63..127
    q = SeedQuantLinear.from_linear(lin)
    x = torch.rand(2, in_f) * 0.5 + 0.5
    x[:, 0] = 0.0  # activation codes ~ 127..255
    qx, sx = seed_quantize_activation(x, 8)
    qw, sw = seed_quantize_weight(lin.weight, 8)
    exact = qx.to(torch.int64) @ qw.to(torch.int64).t()  # int64 matmul, exact
    assert int(exact.max()) > 2 ** 24
    seed_acc = torch.floor(qx.float() @ qw.float().t() + 0.5)  # the seed's product
    assert (seed_acc.to(torch.int64) != exact).any()
    ours = exact.to(torch.float32) * sx[:, None] * sw[None, :] + lin.bias.detach()
    torch.testing.assert_close(q(x), ours, rtol=0, atol=0)
    # on a spot check, the brute-force Python-int reference agrees too
    want = ref_forward(x[:1].numpy(), lin.weight.detach().numpy()[:2], lin.bias.detach().numpy()[:2], 8, 8)
    np.testing.assert_array_equal(q(x[:1])[:, :2].detach().numpy(), want)


def test_short_rows_seed_product_variant_agrees():
    lin, q = _layer(64, 8, 8, 8, seed=7)
    x = torch.randn(4, 64)
    qx, sx = seed_quantize_activation(x, 8)
    qw, sw = seed_quantize_weight(lin.weight, 8)
    seed = torch.floor(qx.float() @ qw.float().t() + 0.5) * sx[:, None] * sw[None, :] + lin.bias.detach()
    torch.testing.assert_close(q(x), seed, rtol=0, atol=0)


def test_one_dim_and_empty_inputs():
    lin, q = _layer(9, 4, 8, 8, seed=11)
    x = torch.randn(9)
    want = ref_forward(x.numpy()[None], lin.weight.detach().numpy(), lin.bias.detach().numpy(), 8, 8)[0]
    np.testing.assert_array_equal(q(x).detach().numpy(), want)
    assert q(torch.zeros(0, 9)).shape == (0, 4)
    with pytest.raises(QFaultConfigError) as e:
        q(torch.zeros(2, 8))
    assert e.value.field == "input"


# ----------------------------------------------------------------------------- freeze
def test_freeze_equals_unfrozen_and_uses_stored_codes():
    _, q = _layer(24, 10, 8, 8, seed=13)
    x = torch.randn(3, 5, 24)
    before = q(x)
    assert not q.frozen and q.weight_codes is None
    q.freeze()
    assert q.frozen and q.weight_codes.dtype == torch.int32 and q.weight_codes.shape == (10, 24)
    assert q.weight_scale.dtype == torch.float32 and q.weight_scale.shape == (10,)
    torch.testing.assert_close(q(x), before, rtol=0, atol=0)
    assert set(q.state_dict()) == {"weight", "bias", "weight_codes", "weight_scale"}
    # after freeze, the weight parameter is no longer read
    with torch.no_grad():
        q.weight.zero_()
    torch.testing.assert_close(q(x), before, rtol=0, atol=0)
    q.unfreeze()
    assert not q.frozen


def test_faulty_codes_from_remap_are_used():
    lin, q = _layer(16, 4, 8, 8, seed=17)
    q.freeze()
    codes = q.weight_codes.clone()
    codes[0, 0] = 127
    mask = torch.zeros_like(codes)
    mask[0, 0] = 1  # LSB stuck-at-0 under 127: sign_flip reads back +128 (REFERENCE_NOTES 4.3)
    value = torch.zeros_like(codes)
    read = remap(codes, mask, value, bits=8, method="sign_flip", tile=64)
    q.set_weight_codes(read)
    x = torch.randn(2, 16)
    want = ref_forward(x.numpy(), lin.weight.detach().numpy(), lin.bias.detach().numpy(), 8, 8,
                       codes=read.numpy())
    np.testing.assert_array_equal(q(x).detach().numpy(), want)
    # direct buffer assignment works the same way
    q.weight_codes = read.clone()
    np.testing.assert_array_equal(q(x).detach().numpy(), want)
    for bad in (torch.full((4, 16), 129), torch.zeros(4, 15, dtype=torch.int32), torch.zeros(4, 16)):
        with pytest.raises(QFaultConfigError) as e:
            q.set_weight_codes(bad)
        assert e.value.field == "weight_codes"


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("bad", [1, 17, 0, -8, 8.0, True, "8", None])
def test_bits_validation(bad):
    for field in ("weight_bits", "act_bits"):
        with pytest.raises(QFaultConfigError) as e:
            SeedQuantLinear(4, 3, **{field: bad})
        assert e.value.field == field and field in str(e.value)
        with pytest.raises(QFaultConfigError) as e:
            SeedQuantLinear.from_linear(nn.Linear(4, 3), **{field: bad})
        assert e.value.field == field
        with pytest.raises(QFaultConfigError) as e:
            swap_linear(nn.Sequential(nn.Linear(4, 3)), **{field: bad})
        assert e.value.field == field
    with pytest.raises(QFaultConfigError) as e:
        seed_quantize_weight(torch.zeros(2, 2), bad)
    assert e.value.field == "weight_bits"


def test_other_validation():
    with pytest.raises(QFaultConfigError) as e:
        SeedQuantLinear(2 ** 20 + 1, 3)
    assert e.value.field == "in_features"
    with pytest.raises(QFaultConfigError) as e:
        SeedQuantLinear.from_linear(nn.Conv2d(3, 3, 1))
    assert e.value.field == "linear"
    with pytest.raises(QFaultConfigError) as e:
        swap_linear(nn.Linear(3, 3))
    assert e.value.field == "model"


# ----------------------------------------------------------------------------- swap
class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)) for _ in range(2)])
        self.shared = nn.Linear(4, 4)
        self.alias = self.shared
        self.head = nn.Linear(4, 2)


def test_swap_linear_skip_rules_and_shared_modules():
    m = _Toy()
    names = swap_linear(m, skip=("blocks.0.2", "head"), weight_bits=4)
    assert names == ["blocks.0.0", "blocks.1.0", "blocks.1.2", "shared"]
    assert isinstance(m.blocks[0][2], nn.Linear) and isinstance(m.head, nn.Linear)
    assert isinstance(m.shared, SeedQuantLinear) and m.alias is m.shared and m.shared.weight_bits == 4
    assert swap_linear(m, skip="head") == ["blocks.0.2"]  # a str is one name; already-swapped stay


def test_swap_linear_vit_tiny():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    n_linear = sum(isinstance(mod, nn.Linear) for mod in model.modules())
    names = swap_linear(model)
    assert len(names) == 48 == n_linear - 1
    suffixes = sorted({n.split(".", 2)[2] for n in names})
    assert suffixes == ["attn.proj", "attn.qkv", "mlp.fc1", "mlp.fc2"]
    assert all(n.startswith("blocks.") for n in names)
    assert type(model.head) is nn.Linear
    assert isinstance(model.patch_embed.proj, nn.Conv2d)
    assert sum(isinstance(mod, SeedQuantLinear) for mod in model.modules()) == 48
    for mod in model.modules():
        if isinstance(mod, SeedQuantLinear):
            mod.freeze()
    with torch.no_grad():
        y = model(torch.randn(1, 3, 224, 224))
    assert y.shape == (1, 1000) and bool(torch.isfinite(y).all())
    assert not math.isnan(float(y.std()))


# ----------------------------------------------------------------------------- the config
def test_seed_quant_config_fields_and_validation():
    config = SeedQuantConfig(weight_bits=4, act_bits=6, skip=["head", "fc"], freeze=True)
    assert config.skip == ("head", "fc") and SeedQuantConfig(skip="head").skip == ("head",)
    assert config.to_dict() == {"type": "seed_quant_linear", "version": 1, "weight_bits": 4, "act_bits": 6,
                                "skip": ["head", "fc"], "freeze": True}
    for kwargs, field in [({"weight_bits": 1}, "weight_bits"), ({"act_bits": 17}, "act_bits"),
                          ({"skip": 3}, "skip"), ({"skip": ("head", 3)}, "skip"), ({"freeze": 1}, "freeze")]:
        with pytest.raises(QFaultConfigError) as e:
            SeedQuantConfig(**kwargs)
        assert e.value.field == field


def test_swap_modules_equals_swap_linear_and_freeze_option():
    a, b = _Toy(), _Toy()
    b.load_state_dict(a.state_dict())
    names = swap_linear(a, skip=("head",), weight_bits=4, act_bits=6)
    handle = swap_modules(b, SeedQuantConfig(weight_bits=4, act_bits=6, skip=("head",), freeze=True))
    assert handle.swapped == names == ["blocks.0.0", "blocks.0.2", "blocks.1.0", "blocks.1.2", "shared"]
    assert all(b.get_submodule(n).frozen and not a.get_submodule(n).frozen for n in names)
    x = torch.randn(3, 4)
    for n in names:
        assert torch.equal(b.get_submodule(n)(x), a.get_submodule(n)(x))  # frozen codes = quantized on the fly
        assert torch.equal(b.get_submodule(n).weight_codes, seed_quantize_weight(a.get_submodule(n).weight, 4)[0])
