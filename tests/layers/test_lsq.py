"""LSQ mixed-precision layers (seed 004): quantizer arithmetic and gradients against brute-force
references, conversion of a float model, bit widths from a search JSON and its errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from qfault import QFaultConfigError
from qfault.data import build_model
from qfault.layers import (
    LsqConfig,
    LsqQuantizer,
    QuanConv2d,
    QuanLinear,
    apply_bit_width_config,
    load_bit_width_config,
    lsq_layers,
    searchable_layers,
    set_bit_width,
    swap_modules,
)


def _reference_quantize(values: list[float], step: float, lo: int, hi: int) -> list[float]:
    """round-half-even(clamp(x / s, lo, hi)) * s, one Python float32 value at a time."""
    out = []
    for v in values:
        q = min(max(float(torch.tensor(v, dtype=torch.float32) / torch.tensor(step, dtype=torch.float32)), lo), hi)
        out.append(float(torch.tensor(round(q), dtype=torch.float32) * torch.tensor(step, dtype=torch.float32)))
    return out


@pytest.mark.parametrize("kind", ["signed", "unsigned", "symmetric"])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8, 16])
def test_quantizer_ranges_and_values_match_the_reference(kind, bits):
    if kind == "symmetric" and bits < 2:
        with pytest.raises(QFaultConfigError, match="symmetric"):
            LsqQuantizer(symmetric=True).thresholds(bits)
        return
    quantizer = LsqQuantizer(all_positive=kind == "unsigned", symmetric=kind == "symmetric")
    lo, hi = quantizer.thresholds(bits)
    expected = {"signed": (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1), "unsigned": (0, 2**bits - 1),
                "symmetric": (-(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1)}[kind]
    assert (lo, hi) == expected
    x = torch.randn(200) * 3
    quantizer(x, bits)  # initialises the step at this width from x
    step = float(quantizer.get_scale(bits))
    assert step == pytest.approx(max(2 * float(x.abs().mean()) / math.sqrt(hi if hi > 0 else -lo), 1e-8), rel=1e-6)
    got = quantizer(x, bits)
    assert got.tolist() == _reference_quantize(x.tolist(), step, lo, hi)
    codes = torch.round(got / step)
    assert int(codes.min()) >= lo and int(codes.max()) <= hi


def test_pass_through_and_bit_width_errors():
    quantizer = LsqQuantizer()
    x = torch.randn(5)
    assert quantizer(x, None) is x and quantizer(x, 32) is x
    for bad in (0, 17, -1):
        with pytest.raises(QFaultConfigError, match=r"bits=.* allowed an integer in \[1, 16\]"):
            quantizer(x, bad)
    with pytest.raises(QFaultConfigError, match="bits"):
        QuanLinear(nn.Linear(3, 2), bits=(4, 0))
    with pytest.raises(QFaultConfigError, match="fixed_bits"):
        QuanLinear(nn.Linear(3, 2), fixed_bits=(8, 8, 8))


def test_per_channel_steps():
    quantizer = LsqQuantizer(per_channel=True, channels=3)
    w = torch.randn(3, 4, 2, 2) * torch.tensor([1.0, 10.0, 100.0]).view(3, 1, 1, 1)
    out = quantizer(w, 4)
    steps = quantizer.get_scale(4)
    assert steps.shape == (3,)
    for c in range(3):
        assert out[c].flatten().tolist() == _reference_quantize(w[c].flatten().tolist(), float(steps[c]), -8, 7)


@settings(max_examples=25, deadline=None)
@given(bits=st.integers(2, 8), seed=st.integers(0, 2**16), numel=st.integers(1, 40))
def test_step_gradient_is_the_lsq_formula(bits, seed, numel):
    """d q / d s = (round(x/s) - x/s) inside the range, lo or hi where clamped, times the gradient
    scale 1 / sqrt(hi * n); d q / d x = 1 inside the range and 0 outside (straight-through)."""
    gen = torch.Generator().manual_seed(seed)
    quantizer = LsqQuantizer()
    x = (torch.randn(numel, generator=gen) * 2).requires_grad_()
    quantizer(x.detach(), bits)
    upstream = torch.randn(numel, generator=gen)
    (quantizer(x, bits) * upstream).sum().backward()
    lo, hi = quantizer.thresholds(bits)
    s = float(quantizer.s[bits - 1].detach())
    scale = 1.0 / math.sqrt(hi * numel)
    grad_s, grad_x = 0.0, []
    for v, g in zip(x.detach().tolist(), upstream.tolist()):
        r = float(torch.tensor(v, dtype=torch.float32) / torch.tensor(s, dtype=torch.float32))
        if r <= lo:
            grad_s += g * lo
            grad_x.append(0.0 if r < lo else g)
        elif r >= hi:
            grad_s += g * hi
            grad_x.append(0.0 if r > hi else g)
        else:
            grad_s += g * (round(r) - r)
            grad_x.append(g)
    assert float(quantizer.s.grad[bits - 1]) == pytest.approx(grad_s * scale, rel=1e-4, abs=1e-6)
    assert quantizer.s.grad[[b for b in range(16) if b != bits - 1]].abs().sum() == 0
    assert x.grad.tolist() == pytest.approx(grad_x)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        return self.head(self.body(torch.relu(self.stem(x))).flatten(1))


def test_conversion_fixes_first_and_last_and_computes_on_quantized_operands():
    model = _Net().eval()
    float_model = _Net().eval()
    handle = swap_modules(model, LsqConfig(weight_bits=3, act_bits=5))
    assert handle.swapped == ["stem", "body.0", "body.2", "head"]
    assert handle.config.fixed == ("stem", "head") and handle.config.signed_inputs == ("stem",)
    assert [name for name, _ in searchable_layers(model)] == ["body.0", "body.2"]
    assert model.stem.fixed_bits == (8, 8) and model.stem.bits is None and model.body[0].bits == (3, 5)
    assert not model.stem.quan_a_fn.all_positive and model.body[0].quan_a_fn.all_positive
    x = torch.randn(2, 3, 8, 8)
    out = model(x)
    # reference: the float layers on quantized operands, layer by layer
    ref = x
    for name, layer in (("stem", float_model.stem), ("body.0", float_model.body[0]), ("body.2", float_model.body[2])):
        lsq = model.get_submodule(name)
        wbits, abits = lsq.bit_widths()
        ref = F.conv2d(lsq.quan_a_fn(ref, abits), lsq.quan_w_fn(layer.weight, wbits), layer.bias, layer.stride,
                       layer.padding)
        ref = torch.relu(ref)
    lsq = model.head
    ref = F.linear(lsq.quan_a_fn(ref.flatten(1), 8), lsq.quan_w_fn(float_model.head.weight, 8), float_model.head.bias)
    assert torch.equal(out, ref)
    handle.remove()
    assert torch.equal(model(x), float_model(x))


def test_unset_bits_compute_in_float():
    layer = nn.Conv2d(2, 3, 3)
    x = torch.randn(1, 2, 5, 5)
    assert torch.equal(QuanConv2d(layer)(x), layer(x))
    model = _Net().eval()
    swap_modules(model, LsqConfig(weight_bits=None, act_bits=None))
    assert model.body[0].bits is None and model.body[0].bit_widths() is None


def test_config_validation():
    with pytest.raises(QFaultConfigError, match="act_bits"):
        LsqConfig(weight_bits=4, act_bits=None)
    with pytest.raises(QFaultConfigError, match="fixed_bits"):
        LsqConfig(fixed_bits=(8, 40))
    with pytest.raises(QFaultConfigError, match=r"fixed='nope'.*names of converted layers: stem, body.0"):
        swap_modules(_Net(), LsqConfig(fixed=("nope",)))
    handle = swap_modules(_Net(), LsqConfig(fixed_bits=None, skip=("head",)))
    assert handle.swapped == ["stem", "body.0", "body.2"] and handle.config.fixed == ()


def _write(tmp_path, data, name="bits.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_bit_widths_from_a_search_json_go_to_the_unfixed_layers_in_module_order(tmp_path):
    model = _Net()
    swap_modules(model, LsqConfig(weight_bits=None, act_bits=None))
    path = _write(tmp_path, {"arch": "net", "configurations": [
        {"weight_bits": [2, 3], "act_bits": [4, 5]}, {"weight_bits": [6, 7], "act_bits": [8, 8]}]})
    assert load_bit_width_config(path) == ([2, 3], [4, 5])
    assert apply_bit_width_config(model, path, config_index=1) == ([6, 7], [8, 8])
    assert model.body[0].bits == (6, 8) and model.body[2].bits == (7, 8) and model.stem.fixed_bits == (8, 8)
    assert [name for name, _ in lsq_layers(model)] == ["stem", "body.0", "body.2", "head"]


@pytest.mark.parametrize("content, index, message", [
    (None, 0, r"bit_width_config=.*missing.json.* an existing bit-width search JSON file"),
    ("{not json", 0, r"a readable JSON file \(JSONDecodeError"),
    ({"arch": "x"}, 0, r"bits.json: configurations=None .*a list of"),
    ({"configurations": []}, 0, r"configurations=\[\] .*at least one configuration"),
    ({"configurations": [{"weight_bits": [2], "act_bits": [2]}]}, 3,
     r"config_index=3 .*0 to 0 \(1 configurations in .*bits.json\)"),
    ({"configurations": [{"weight_bits": [2, 3], "act_bits": [2]}]}, 0,
     r"configurations\[0\].act_bits='1 values' .*as many as weight_bits \(2\)"),
    ({"configurations": [{"weight_bits": ["a"], "act_bits": [2]}]}, 0,
     r"configurations\[0\].weight_bits=\['a'\] .*integer bit widths"),
])
def test_search_json_errors_name_the_file_the_field_and_the_counts(tmp_path, content, index, message):
    path = tmp_path / "missing.json" if content is None else _write(tmp_path, content)
    with pytest.raises(QFaultConfigError, match=message):
        load_bit_width_config(path, index)


def test_length_mismatch_with_the_model_names_the_counts(tmp_path):
    model = _Net()
    swap_modules(model, LsqConfig(weight_bits=None, act_bits=None))
    path = _write(tmp_path, {"configurations": [{"weight_bits": [2, 3, 4], "act_bits": [4, 4, 4]}]})
    with pytest.raises(QFaultConfigError, match=r"bits.json: configurations\[0\]='3 values' .*the model has 2 "
                                                r"\(4 LSQ layers in all, 2 with fixed_bits\)"):
        apply_bit_width_config(model, path)
    with pytest.raises(QFaultConfigError, match=r"bits of layer 1 \(body.2\)\[0\]=17"):
        set_bit_width(model, [4, 17], [4, 4])


def test_digits_lsq_uses_the_shipped_search_json():
    model = build_model("digits_lsq")
    assert [layer.bit_widths() for _, layer in lsq_layers(model)] == [(8, 8), (6, 6), (4, 4), (2, 4), (8, 8)]


@pytest.mark.parametrize("library", ["torchvision", "timm"])
def test_a_resnet18_converts_with_its_stem_and_classifier_fixed(library):
    if library == "torchvision":
        import torchvision

        model = torchvision.models.resnet18(num_classes=10)
    else:
        import timm

        model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    convs = [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    handle = swap_modules(model, LsqConfig(weight_bits=4, act_bits=4))
    assert handle.swapped == convs and len(convs) == 21
    assert handle.config.fixed == ("conv1", "fc")
    assert [name for name, _ in searchable_layers(model)] == convs[1:-1]
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    handle.remove()
    assert [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)] == convs


def test_a_step_pushed_through_zero_still_quantizes():
    """An optimizer may drive the learned step negative; the quantizer computes with |s|, so an
    unsigned activation quantizer does not collapse to zeros with zero gradient."""
    quantizer = LsqQuantizer(all_positive=True)
    x = torch.rand(50) * 3
    positive = quantizer(x, 4)
    with torch.no_grad():
        quantizer.s[3].neg_()
    assert float(quantizer.s[3].detach()) < 0 and float(quantizer.get_scale(4)) > 0
    assert torch.equal(quantizer(x, 4), positive)
    y = x.clone().requires_grad_()
    quantizer(y, 4).sum().backward()
    assert y.grad.abs().sum() > 0 and quantizer.s.grad[3] != 0
