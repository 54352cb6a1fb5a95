"""Injection into LSQ-style layers (the ``lsq`` adapter): BER flips of each layer's k-bit weight
codes (and, on request, its quantized input activations), exact against the seed's own code
arithmetic, nested across BER values, straight-through gradients, and seed-style user layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import qfault
from qfault import BitFlip, InjectSpec, QFaultConfigError
from qfault.injection import lsq_bit_widths, quantized_bits
from qfault.layers import LsqConfig, set_bit_width, swap_modules


def _model(bits=((3, 4), (5, 6))) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    swap_modules(model, LsqConfig(weight_bits=None, act_bits=None))
    set_bit_width(model, [b[0] for b in bits], [b[1] for b in bits])
    model.eval()
    model(torch.randn(4, 1, 8, 8))  # initialise the steps
    return model


def _seed_flip(codes: torch.Tensor, masks: torch.Tensor, bits: int) -> torch.Tensor:
    """Seed 004's arithmetic: offset binary u = c + 2**(k-1), XOR, shift back (REFERENCE_NOTES 2.3)."""
    offset = 1 << (bits - 1)
    return ((codes + offset) ^ masks) - offset


def _capture(module: nn.Module, attr: str, store: dict):
    """A hook after the injector's on ``module.<attr>`` recording what the layer really uses."""
    return getattr(module, attr).register_forward_hook(lambda m, a, out: store.__setitem__(module, out.detach()))


@pytest.mark.parametrize("site, attr", [("weight", "quan_w_fn"), ("input", "quan_a_fn")])
def test_flips_are_the_seed_xor_on_each_layers_own_codes(site, attr):
    model = _model()
    layers = [m for m in model.modules() if lsq_bit_widths(m) is not None]
    x = torch.randn(4, 1, 8, 8)
    clean: dict = {}
    hooks = [_capture(m, attr, clean) for m in layers]  # before the injector's hooks: the clean codes
    handle = qfault.inject(model, InjectSpec(fault=BitFlip(ber=0.02), site=site, types=("QuanConv2d", "QuanLinear"),
                                             seed=3))
    draws: dict = {}
    handle.add_listener(lambda name, draw, old, new: draws.__setitem__(name.rsplit(":", 1)[0], draw))
    faulty: dict = {}
    hooks += [_capture(m, attr, faulty) for m in layers]  # after them: what the layer computes with
    with torch.no_grad():
        model(x)
    names = {m: n for n, m in model.named_modules()}
    total = 0
    for layer in layers:
        bits = lsq_bit_widths(layer)[0 if site == "weight" else 1]
        quantizer = getattr(layer, attr)
        step = quantizer.get_scale(bits)
        signed = not quantizer.all_positive
        codes = torch.round(clean[layer] / step).to(torch.int64).reshape(-1)
        draw = draws[names[layer]]
        assert int(draw.mask.max()) < (1 << bits)  # only the layer's own k bits
        masks = torch.zeros_like(codes)
        masks[draw.index] = draw.mask
        if signed:
            expected = _seed_flip(codes, masks, bits)
        else:  # unsigned activation codes: plain XOR
            expected = codes ^ masks
        assert torch.equal(faulty[layer].reshape(-1), expected.to(torch.float32) * step), names[layer]
        total += int(masks.ne(0).sum())
    assert total > 0
    assert quantized_bits(layers[2], "weight") == 5 and quantized_bits(layers[2], "input") == 6
    handle.remove()
    for h in hooks:
        h.remove()


def test_seed_arithmetic_is_twos_complement_xor_for_every_code_and_mask():
    for bits in range(1, 9):
        codes = torch.arange(-(1 << (bits - 1)), 1 << (bits - 1))
        for mask in range(1 << bits):
            masks = torch.full_like(codes, mask)
            twos = (codes & ((1 << bits) - 1)) ^ masks
            twos = torch.where(twos >= (1 << (bits - 1)), twos - (1 << bits), twos)
            assert torch.equal(_seed_flip(codes, masks, bits), twos)


def test_nested_faults_grow_with_the_ber_and_disable_is_bit_exact():
    model = _model()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        clean = model(x)
    previous = None
    for ber in (1e-3, 1e-2, 5e-2, 0.2):
        spec = InjectSpec(fault=BitFlip(ber=ber, nested=True), site="weight", persistence="permanent", seed=11)
        sites: set = set()
        with qfault.inject(model, spec) as handle:
            handle.add_listener(lambda name, draw, old, new: sites.update(
                (name, int(e), int(b)) for e, b in draw.bit_sites.tolist()))
            with torch.no_grad():
                model(x)
        if previous is not None:
            assert previous <= sites and len(sites) > len(previous)
        previous = sites
        with torch.no_grad():
            assert torch.equal(model(x), clean)


def test_straight_through_gradient_uses_the_clean_quantized_weights():
    model = _model()
    layer = model[7]
    x = torch.randn(4, 1, 8, 8)
    target = torch.randint(0, 10, (4,))
    spec = InjectSpec(fault=BitFlip(ber=0.05), site="weight", names=("7",), persistence="permanent", seed=1)
    handle = qfault.inject(model, spec)
    used: dict = {}
    hook = _capture(layer, "quan_w_fn", used)
    model.train()
    F.cross_entropy(model(x), target).backward()
    grad, step_grad = layer.weight.grad.clone(), layer.quan_w_fn.s.grad.clone()
    hook.remove()
    handle.remove()
    # reference: the same forward with w_f.detach() + (w_q - w_q.detach()) in place of w_q
    inputs: dict = {}
    pre = layer.register_forward_pre_hook(lambda m, a: inputs.__setitem__("x", a[0].detach()))
    model.zero_grad()
    model(x)
    pre.remove()
    model.zero_grad()
    w_q = layer.quan_w_fn(layer.weight, 8)
    assert not torch.equal(used[layer], w_q.detach())
    out = F.linear(layer.quan_a_fn(inputs["x"], 8), used[layer] + (w_q - w_q.detach()), layer.bias)
    F.cross_entropy(out, target).backward()
    assert torch.equal(layer.weight.grad, grad) and torch.equal(layer.quan_w_fn.s.grad, step_grad)


class SeedQuantizer(nn.Module):
    """A quantizer written as seed 004's code base writes it (not qfault's class)."""

    def __init__(self):
        super().__init__()
        self.s = nn.Parameter(torch.tensor([0.05]))
        self.bit_mapping = {4: 0}

    def get_scale(self, bit_width, detach=True):
        s = self.s[self.bit_mapping[int(bit_width)]]
        return s.detach() if detach else s

    def forward(self, x, bits, is_activation=False, skip_init=False, scale=None, **args):
        if bits is None or bits >= 32:
            return x
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        s = self.s[0]
        return ((x / s).clamp(lo, hi).round() - x / s).detach() * s + x  # value (x/s rounded)*s, up to rounding


class SeedStyleLinear(nn.Linear):
    def __init__(self):
        super().__init__(6, 3)
        self.quan_w_fn, self.quan_a_fn = SeedQuantizer(), SeedQuantizer()
        self.bits, self.fixed_bits = (4, 32), None

    def forward(self, x):
        w = self.quan_w_fn(self.weight, self.bits[0], is_activation=False)
        return F.linear(self.quan_a_fn(x, self.bits[1], is_activation=True), w, self.bias)


def test_a_seed_style_layer_is_found_by_its_attributes():
    torch.manual_seed(0)
    model = nn.Sequential(SeedStyleLinear())
    assert lsq_bit_widths(model[0]) == (4, 32)
    x = torch.randn(2, 6)
    with torch.no_grad():
        clean = model(x)
        with qfault.inject(model, InjectSpec(fault=BitFlip(ber=0.3), site="weight", seed=0)) as handle:
            flips = []
            handle.add_listener(lambda name, draw, old, new: flips.append(int(draw.mask.max())))
            assert not torch.equal(model(x), clean)
        assert flips and max(flips) < 16
        # activation bits 32: the quantizer passes through, nothing to fault
        with qfault.inject(model, InjectSpec(fault=BitFlip(ber=0.3), site="input", types=("Linear",), seed=0)):
            assert torch.equal(model(x), clean)
        assert torch.equal(model(x), clean)


def test_errors_inside_the_fault_path_propagate():
    model = nn.Sequential(SeedStyleLinear())
    model[0].bits = (5, 4)  # the quantizer has no step for 5 bits: get_scale raises KeyError
    with qfault.inject(model, InjectSpec(fault=BitFlip(ber=0.1), site="weight", seed=0)):
        with pytest.raises(KeyError):
            model(torch.randn(2, 6))


def test_unset_layers_need_a_format_like_any_float_layer():
    model = _model()
    model[2].bits = None
    with pytest.raises(QFaultConfigError, match="format"):
        qfault.inject(model, InjectSpec(fault=BitFlip(ber=0.1), site="weight", seed=0))
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        clean = model(x)
        with qfault.inject(model, InjectSpec(fault=BitFlip(ber=0.1), site="weight", format="int8", names=("2",),
                                             seed=0)):
            assert not torch.equal(model(x), clean)  # the float weights viewed as int8 codes
        assert torch.equal(model(x), clean)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_same_seed_gives_the_same_faults_on_cpu_and_cuda():
    results = []
    for device in ("cpu", "cuda"):
        model = _model().to(device)
        spec = InjectSpec(fault=BitFlip(ber=0.01, nested=True), site="weight", persistence="permanent", seed=5)
        sites = []
        with qfault.inject(model, spec) as handle:
            handle.add_listener(lambda name, draw, old, new: sites.append((name, draw.bit_sites.cpu().tolist())))
            with torch.no_grad():
                model(torch.randn(2, 1, 8, 8, device=device))
        results.append(sites)
    assert results[0] == results[1]
