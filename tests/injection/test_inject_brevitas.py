"""``qfault.inject`` on Brevitas-quantized models: faults act on the layers' own integer codes.

References are computed from the QuantTensors Brevitas produces with the injection disabled
(``.int()`` codes, scale, zero point, bit width) and pure-Python two's-complement arithmetic.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

brevitas_nn = pytest.importorskip("brevitas.nn")

from qfault import BitFlip, InjectSpec, QFaultConfigError, inject  # noqa: E402
from qfault.faults import FullFlip, LSBFlip, MSBFlip, RandomValue  # noqa: E402
from qfault.testing import FaultRecorder

qnn = brevitas_nn


def to_pattern(code: int, bits: int) -> int:
    return code & ((1 << bits) - 1)


def from_pattern(pattern: int, bits: int, signed: bool) -> int:
    pattern &= (1 << bits) - 1
    if signed and pattern >= 1 << (bits - 1):
        return pattern - (1 << bits)
    return pattern


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


Recorder = FaultRecorder


class QNet(nn.Module):
    def __init__(self, weight_bits: int = 4):
        super().__init__()
        self.inp = qnn.QuantIdentity(return_quant_tensor=True)
        self.conv = qnn.QuantConv2d(3, 4, 3, weight_bit_width=weight_bits)
        self.relu = qnn.QuantReLU(return_quant_tensor=True)
        self.flat = nn.Flatten()
        self.fc = qnn.QuantLinear(64, 5, bias=True, weight_bit_width=8)

    def forward(self, x):
        return self.fc(self.flat(self.relu(self.conv(self.inp(x)))))


def qnet(weight_bits: int = 4, seed: int = 0) -> QNet:
    torch.manual_seed(seed)
    return QNet(weight_bits).eval()


def inputs(shape=(2, 3, 6, 6), seed: int = 1, scale: float = 0.5) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def ints(qt) -> torch.Tensor:
    return qt.int().to(torch.int64)


def assert_same_quant_params(a, b) -> None:
    assert type(a) is type(b)
    assert torch.equal(a.scale, b.scale)
    assert torch.equal(a.zero_point, b.zero_point)
    assert torch.equal(a.bit_width, b.bit_width)
    assert bool(a.signed) == bool(b.signed)


# --------------------------------------------------------------------------------------------
# weight site


@pytest.mark.parametrize("weight_bits", [4, 8])
@pytest.mark.parametrize("element,bit", [(0, 0), (17, 1), (50, "msb"), (107, 2)])
def test_quant_conv_weight_single_bit_flip(weight_bits, element, bit):
    bit = weight_bits - 1 if bit == "msb" else bit
    model = qnet(weight_bits)
    layer = model.conv
    x = inputs()
    handle = inject(model, InjectSpec(fault=BitFlip(sites=((element, bit),)), site="weight",
                                      types=("QuantConv2d",), seed=0))
    assert [s.name for s in handle.sites] == ["conv"]
    captured = []
    layer.weight_quant.register_forward_hook(lambda m, a, out: captured.append(out))  # after inject
    rec = Recorder()
    handle.add_listener(rec)
    with torch.no_grad():
        handle.disable()
        y_clean = layer(model.inp(x))
        handle.enable()
        y_faulty = layer(model.inp(x))
        assert len(captured) == 2
        clean, faulty = captured
        assert_same_quant_params(clean, faulty)
        assert int(clean.bit_width) == weight_bits
        clean_codes, faulty_codes = ints(clean).reshape(-1), ints(faulty).reshape(-1)
        diff = torch.nonzero(clean_codes != faulty_codes).view(-1)
        assert diff.tolist() == [element]
        old = int(clean_codes[element])
        expected = from_pattern(to_pattern(old, weight_bits) ^ (1 << bit), weight_bits, signed=True)
        assert int(faulty_codes[element]) == expected
        (name, draw, rec_old, rec_new), = rec.calls
        assert name == "conv:weight"
        assert rec_old.tolist() == [old] and rec_new.tolist() == [expected]
        # quant_weight() goes through the same proxy
        assert torch.equal(ints(layer.quant_weight()).reshape(-1), faulty_codes)
        handle.disable()
        assert torch.equal(ints(layer.quant_weight()).reshape(-1), clean_codes)
        handle.enable()
        # the layer computes with the faulty quantized weight (float bias, no input quantizer)
        q_in = model.inp(x)
        expected_out = torch.nn.functional.conv2d(q_in.value, faulty.value, layer.bias)
        assert torch.allclose(y_faulty, expected_out, rtol=0, atol=1e-5)
        assert not torch.equal(y_faulty, y_clean)
    handle.remove()
    with torch.no_grad():
        assert torch.equal(layer(model.inp(x)), y_clean)


def test_brevitas_weight_default_selection_and_type_mro():
    model = qnet()
    handle = inject(model, InjectSpec(fault=BitFlip(count=1), site="weight", seed=0))
    assert [s.name for s in handle.sites] == ["conv", "fc"]  # default: Conv/Linear subclasses
    handle.remove()
    handle = inject(model, InjectSpec(fault=BitFlip(count=1), site="weight", types=("Conv2d",), seed=0))
    assert [s.name for s in handle.sites] == ["conv"]  # "Conv2d" is in QuantConv2d's MRO
    handle.remove()
    handle = inject(model, InjectSpec(fault=BitFlip(count=1), site="weight", types=(nn.Linear,), seed=0))
    assert [s.name for s in handle.sites] == ["fc"]
    handle.remove()
    handle = inject(model, InjectSpec(fault=BitFlip(count=1), site="weight", names=("re:c.*",), seed=0))
    assert [s.name for s in handle.sites] == ["conv"]
    handle.remove()


def test_brevitas_whole_model_weight_faults_and_remove():
    model = qnet(8)
    x = inputs()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        clean = model(x)
        with inject(model, InjectSpec(fault=BitFlip(ber=0.01), site="weight", seed=3)) as handle:
            faulty = model(x)
            stats = handle.statistics().to_dict()
        assert torch.equal(model(x), clean)
    assert not torch.equal(faulty, clean)
    assert stats["summary"]["total_activations"] == 108 + 320
    assert stats["summary"]["total_injected"] > 0
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key
    for _, module in model.named_modules():
        assert not module._forward_hooks


# --------------------------------------------------------------------------------------------
# output site


def test_output_default_selection_keeps_quant_tensors():
    model = qnet()
    x = inputs()
    handle = inject(model, InjectSpec(fault=BitFlip(ber=0.05), site="output", seed=1))
    assert [s.name for s in handle.sites] == ["inp", "relu"]  # Brevitas activations by default
    outs: dict[str, list] = {"inp": [], "relu": []}
    for name in outs:
        getattr(model, name).register_forward_hook(lambda m, a, o, name=name: outs[name].append(o))
    rec = Recorder()
    handle.add_listener(rec)
    with torch.no_grad():
        handle.disable()
        clean_y = model(x)
        handle.enable()
        faulty_y = model(x)
    assert not torch.equal(clean_y, faulty_y)
    assert sorted(c[0] for c in rec.calls) == ["inp:output", "relu:output"]
    for name, (clean, faulty) in outs.items():
        assert type(faulty).__name__ == "IntQuantTensor"
        assert_same_quant_params(clean, faulty)
        low, high = code_range(int(faulty.bit_width), bool(faulty.signed))
        codes = ints(faulty)
        assert int(codes.min()) >= low and int(codes.max()) <= high
    # the first site sees the clean input: only the drawn codes changed, to the listener's codes
    (_, draw, old, new), = [c for c in rec.calls if c[0] == "inp:output"]
    clean_codes, faulty_codes = ints(outs["inp"][0]).reshape(-1), ints(outs["inp"][1]).reshape(-1)
    changed = torch.nonzero(clean_codes != faulty_codes).view(-1)
    assert changed.tolist() == draw.index[new != old].tolist()
    assert faulty_codes[draw.index].tolist() == new.tolist()
    assert clean_codes[draw.index].tolist() == old.tolist()
    handle.remove()


def _element_expected(fault, old: int, draw_value, bits: int, signed: bool) -> int:
    p = to_pattern(old, bits)
    if isinstance(fault, LSBFlip):
        return from_pattern(p ^ 1, bits, signed)
    if isinstance(fault, MSBFlip):
        return from_pattern(p ^ (1 << (bits - 1)), bits, signed)
    if isinstance(fault, FullFlip):
        return from_pattern(~p, bits, signed)
    low, high = code_range(bits, signed)
    return (old + draw_value - low) % (high - low + 1) + low


@pytest.mark.parametrize("fault", [LSBFlip(probability=30.0), MSBFlip(probability=30.0),
                                   FullFlip(probability=30.0), RandomValue(probability=30.0)],
                         ids=["lsb", "msb", "full", "random"])
@pytest.mark.parametrize("kind", ["identity8", "identity4", "relu8"])
def test_element_fault_formulas(fault, kind):
    torch.manual_seed(0)
    module = {
        "identity8": lambda: qnn.QuantIdentity(return_quant_tensor=True),
        "identity4": lambda: qnn.QuantIdentity(bit_width=4, return_quant_tensor=True),
        "relu8": lambda: qnn.QuantReLU(return_quant_tensor=True),
    }[kind]().eval()
    x = inputs((4, 16), scale=0.6 if kind != "relu8" else 3.0)
    handle = inject(module, InjectSpec(fault=fault, site="output", seed=2))
    rec = Recorder()
    handle.add_listener(rec)
    with torch.no_grad():
        handle.disable()
        clean = module(x)
        handle.enable()
        faulty = module(x)
    assert_same_quant_params(clean, faulty)
    bits, signed = int(clean.bit_width), bool(clean.signed)
    (name, draw, old, new), = rec.calls
    assert name == "<model>:output"
    assert len(draw) > 0
    clean_codes, faulty_codes = ints(clean).reshape(-1), ints(faulty).reshape(-1)
    low, high = code_range(bits, signed)
    assert old.tolist() == clean_codes[draw.index].tolist()
    values = [None] * len(draw) if draw.value is None else draw.value.tolist()
    expected = [_element_expected(fault, o, v, bits, signed) for o, v in zip(old.tolist(), values)]
    assert new.tolist() == expected
    assert all(low <= c <= high for c in expected)
    assert faulty_codes[draw.index].tolist() == expected
    untouched = torch.ones_like(clean_codes, dtype=torch.bool)
    untouched[draw.index] = False
    assert torch.equal(faulty_codes[untouched], clean_codes[untouched])
    # faulty values are exactly (code - zero_point) * scale
    value = faulty.value.reshape(-1)[draw.index]
    assert torch.allclose(value, (torch.tensor(expected, dtype=torch.float32) - faulty.zero_point) * faulty.scale,
                          rtol=0, atol=1e-7)
    if not isinstance(fault, RandomValue):
        assert all(n != o for n, o in zip(new.tolist(), old.tolist()))
    handle.remove()


def test_quant_identity_output_with_explicit_format_on_float_output():
    """A float (non-QuantTensor) Brevitas output with a format is faulted as a float tensor."""
    torch.manual_seed(0)
    module = qnn.QuantIdentity(return_quant_tensor=False).eval()
    x = inputs((3, 8))
    handle = inject(module, InjectSpec(fault=BitFlip(count=2), site="output", format="int8", seed=0))
    rec = Recorder()
    handle.add_listener(rec)
    with torch.no_grad():
        handle.disable()
        clean = module(x)
        handle.enable()
        faulty = module(x)
    (name, draw, old, new), = rec.calls
    changed = torch.nonzero((clean != faulty).reshape(-1)).view(-1)
    assert changed.tolist() == draw.index[new != old].tolist()
    handle.remove()


# --------------------------------------------------------------------------------------------
# statistics


def test_statistics_quant_identity_brute_force():
    torch.manual_seed(0)
    module = qnn.QuantIdentity(return_quant_tensor=True).eval()
    xs = [inputs((3, 10), seed=4), inputs((2, 7), seed=5)]
    handle = inject(module, InjectSpec(fault=BitFlip(ber=0.05), site="output", seed=6))
    rec = Recorder()
    handle.add_listener(rec)
    rmses, cosines, changed_total, seen = [], [], 0, 0
    with torch.no_grad():
        for x in xs:
            handle.disable()
            clean = ints(module(x)).reshape(-1).double()
            handle.enable()
            rec.clear()
            module(x)
            (_, draw, old, new), = rec.calls
            assert old.tolist() == clean[draw.index].long().tolist()
            changed = new != old
            assert bool(changed.any())
            changed_total += int(changed.sum())
            seen += x.numel()
            delta = (new - old)[changed].double()
            rmses.append(math.sqrt(float((delta ** 2).sum()) / int(changed.sum())))
            faulty = clean.clone()
            faulty[draw.index] = new.double()
            cosines.append(float(torch.dot(clean, faulty)) / (float(clean.norm()) * float(faulty.norm())))
    stats = handle.statistics()
    data = stats.to_dict()
    assert set(data) == {"summary", "layers"}
    layer = data["layers"]["0"]
    assert layer["total_activations"] == seen == 44
    assert layer["injected_count"] == changed_total
    assert layer["forwards"] == 2 and layer["sample_count"] == 2
    assert layer["avg_rmse"] == pytest.approx(sum(rmses) / 2, rel=1e-9)
    assert layer["avg_cosine_similarity"] == pytest.approx(sum(cosines) / 2, rel=1e-9)
    assert layer["injection_rate"] == pytest.approx(100.0 * changed_total / seen)
    assert data["summary"]["total_injected"] == changed_total
    assert "TOTAL" in str(stats)
    handle.remove()


# --------------------------------------------------------------------------------------------
# errors


def test_brevitas_selection_error_lists_module_types():
    model = qnet()
    with pytest.raises(QFaultConfigError) as err:
        inject(model, InjectSpec(fault=BitFlip(count=1), site="output", types=("QuantHardTanh",)))
    msg = str(err.value)
    assert "types/names" in msg
    for type_name in ("QuantConv2d", "QuantIdentity", "QuantReLU", "QuantLinear"):
        assert type_name in msg


# --------------------------------------------------------------------------------------------
# regressions of defects found and fixed


def test_explicit_format_on_quant_tensor_output_is_not_silently_ignored():
    torch.manual_seed(0)
    module = qnn.QuantIdentity(return_quant_tensor=True).eval()
    x = inputs((2, 8))
    try:
        handle = inject(module, InjectSpec(fault=BitFlip(count=3), site="output", format="int8", seed=0))
        with torch.no_grad():
            handle.disable()
            clean = module(x)
            handle.enable()
            faulty = module(x)
    except QFaultConfigError:
        return  # refusing the combination is acceptable
    assert not torch.equal(clean.value, faulty.value)
    handle.remove()


def test_input_site_float_input_without_format_is_a_config_error():
    torch.manual_seed(0)
    module = qnn.QuantReLU(return_quant_tensor=True).eval()
    with pytest.raises(QFaultConfigError, match="format"):
        handle = inject(module, InjectSpec(fault=BitFlip(count=3), site="input", seed=0))
        with torch.no_grad():
            module(inputs((2, 8)))
        handle.remove()


def test_input_site_accepts_quant_tensor_input():
    torch.manual_seed(0)
    model = nn.Sequential(qnn.QuantIdentity(return_quant_tensor=True), qnn.QuantReLU()).eval()
    handle = inject(model, InjectSpec(fault=BitFlip(count=2), site="input", types=("QuantReLU",), seed=0))
    rec = Recorder()
    handle.add_listener(rec)
    with torch.no_grad():
        model(inputs((2, 8)))
    assert len(rec.calls) == 1
    handle.remove()


def test_wide_accumulator_input_needs_a_format_and_takes_one():
    torch.manual_seed(0)
    model = nn.Sequential(qnn.QuantIdentity(return_quant_tensor=True),
                          qnn.QuantLinear(8, 6, bias=False, return_quant_tensor=True), qnn.QuantReLU()).eval()
    spec = InjectSpec(fault=BitFlip(count=2), site="input", types=("QuantReLU",), seed=0)
    with inject(model, spec), torch.no_grad(), pytest.raises(QFaultConfigError) as info:
        model(inputs((2, 8)))
    message = str(info.value)
    assert message.startswith("format=None") and "-bit QuantTensor at 2:input" in message and "int8" in message
    rec = Recorder()
    with inject(model, InjectSpec(fault=BitFlip(count=2), site="input", types=("QuantReLU",), format="int8",
                                  seed=0)) as handle, torch.no_grad():
        handle.add_listener(rec)
        model(inputs((2, 8)))
    assert len(rec.calls) == 1 and rec.calls[0][1].bit_sites.shape == (2, 2)


def test_same_quantized_weights_again_reuse_the_faulty_codes():
    torch.manual_seed(0)
    model = nn.Sequential(qnn.QuantLinear(8, 6, bias=False)).eval()
    x = inputs((3, 8))
    proxy = model[0].weight_quant
    with torch.no_grad():
        constant = proxy(model[0].weight)
    proxy.forward = lambda *args, **kwargs: constant  # as a campaign replays a recorded quantizer
    try:
        spec = InjectSpec(fault=BitFlip(count=3), site="weight", persistence="permanent", track_statistics=False,
                          seed=0)
        rec = Recorder()
        with inject(model, spec) as handle, torch.no_grad():
            handle.add_listener(rec)
            first, second = model(x), model(x)
            assert handle.sites[0].weight_cache is not None  # the second forward reused the codes
            assert len(rec.calls) == 2 and torch.equal(rec.calls[0][3], rec.calls[1][3])
            handle.reset()  # a new generation redraws
            third = model(x)
            assert not torch.equal(rec.calls[2][1].index, rec.calls[0][1].index) or \
                not torch.equal(rec.calls[2][3], rec.calls[0][3])
        assert torch.equal(first, second) and not torch.equal(first, third)
        del proxy.forward
        with inject(model, spec) as handle, torch.no_grad():  # no replay: computed every forward
            assert torch.equal(model(x), first)
    finally:
        proxy.__dict__.pop("forward", None)


@pytest.mark.parametrize("fault, batch", [(BitFlip(count=1), 1), (BitFlip(count=1), 3), (BitFlip(count=1), 9),
                                          (BitFlip(ber=0.02), 4)])
def test_quant_tensor_faults_numpy_path_equals_tensor_path(fault, batch):
    """Outside autograd QuantTensor activations are faulted through numpy (Python numbers for a
    flip per image at batch <= 4); with autograd recording, with tensor operations. The same
    seed gives the same codes and outputs."""
    model = qnet()
    x = inputs((batch, 3, 6, 6))
    spec = InjectSpec(fault=fault, site="output", per_image=fault.count is not None, seed=4)
    runs = []
    for grad in (False, True):
        with inject(model, spec) as handle:
            rec = Recorder()
            handle.add_listener(rec)
            with torch.set_grad_enabled(grad):
                ys = [model(x).detach() for _ in range(3)]
        runs.append((ys, rec.signature()))
    (fast_ys, fast_calls), (tensor_ys, tensor_calls) = runs
    assert fast_calls == tensor_calls and len(fast_calls) == 6
    assert all(torch.equal(a, b) for a, b in zip(fast_ys, tensor_ys))
    with torch.no_grad():
        clean = model(x)
    assert any(not torch.equal(y, clean) for y in fast_ys)
