"""Systolic Conv2d / Linear layers and the "systolic" layer swap against the reference."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from qfault import QFaultConfigError
from qfault.layers import swap_modules
from qfault.systolic import (
    ArrayConfig,
    ArrayFault,
    SystolicArray,
    SystolicConv2d,
    SystolicLayers,
    SystolicLinear,
    compatible_layers,
    lower_activation,
    lower_kernel,
    model_array,
    systolic_layers,
)

from ._reference import RefFault, reference_conv2d, reference_linear, reference_reach
from ._reference import lower_activation as ref_lower_activation
from ._reference import lower_kernel as ref_lower_kernel


def _ref(f: ArrayFault) -> RefFault:
    return RefFault(f.line, f.x, f.y, f.bit, f.polarity, f.t_start, f.t_stop, f.msb)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def _integer_conv(seed: int, cin=2, cout=3, k=3, stride=1, padding=0) -> nn.Conv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding)
    with torch.no_grad():
        conv.weight.copy_(torch.randint(-3, 4, conv.weight.shape).float())
        conv.bias.copy_(torch.randint(-3, 4, conv.bias.shape).float())
    return conv


@pytest.mark.parametrize("dataflow", ["output_stationary", "row_stationary", "col_stationary", "no_local_reuse"])
@pytest.mark.parametrize("integer_valued", [True, False])
def test_conv_equals_the_reference(dataflow, integer_valued):
    rng = np.random.default_rng(1)
    conv = _integer_conv(0, stride=(1, 2), padding=(1, 0))
    if not integer_valued:
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape))
    x = torch.randint(-4, 5, (2, 2, 6, 7)).float() if integer_valued else torch.randn(2, 2, 6, 7)
    array = SystolicArray(ArrayConfig(8, 4, 24, dataflow, tiling=True))
    layer = SystolicConv2d(conv, array)
    with torch.no_grad():
        assert torch.equal(layer(x), conv(x))
        for case in range(4):
            array.clear_faults()
            pes = array.pes()
            x_pe, y_pe = pes[rng.integers(len(pes))]
            channel = -1 if case % 2 == 0 else int(rng.integers(3))
            fault = ArrayFault("abc"[case % 3], x_pe, y_pe, int(rng.integers(1, 9)), case % 3, channel=channel)
            array.add_fault(fault)
            got = layer(x)
            ref = reference_conv2d(x.numpy(), conv.weight.numpy(), conv.bias.numpy(), N=array.config.bounds,
                                   T=array.matrix, faults=[_ref(fault)], channel=channel, stride=(1, 2),
                                   padding=(1, 0), tiling=True)
            clean = conv(x)
            # positions the fault reaches: tile-local reach on the lowered (oh, kh*W, ow) product
            oh, ow = got.shape[-2:]
            n1, n2, n3 = array.config.bounds
            local = {(i, j) for i, j, _ in reference_reach(array.config.bounds, array.matrix, _ref(fault),
                                                           (min(oh, n1), min(ow, n2), min(3 * 7, n3)))}
            for co in range(3):
                for r in range(oh):
                    for c in range(ow):
                        hit = (r % n1, c % n2) in local and channel in (-1, co)
                        expected = torch.from_numpy(ref[:, co, r, c]) if hit else clean[:, co, r, c]
                        if hit or not integer_valued:
                            assert torch.equal(_bits(got[:, co, r, c]), _bits(expected)), (co, r, c)
                        else:
                            assert torch.equal(got[:, co, r, c], torch.from_numpy(ref[:, co, r, c]))


def test_linear_equals_the_reference_with_a_batch_larger_than_the_array():
    rng = np.random.default_rng(2)
    linear = nn.Linear(7, 5)
    array = SystolicArray(ArrayConfig(3, 4, 4, "output_stationary", tiling=True))
    layer = SystolicLinear(linear, array)
    x = torch.randn(8, 7)
    with torch.no_grad():
        assert torch.equal(layer(x), linear(x))
        for line in "abc":
            array.clear_faults()
            fault = ArrayFault(line, int(rng.integers(1, 4)), int(rng.integers(1, 5)), 2, 1)
            array.add_fault(fault)
            got = layer(x)
            ref = reference_linear(x.numpy(), linear.weight.numpy(), linear.bias.numpy(), N=array.config.bounds,
                                   T=array.matrix, faults=[_ref(fault)], tiling=True)
            local = {(i, j) for i, j, _ in reference_reach(array.config.bounds, array.matrix, _ref(fault), (3, 4, 4))}
            clean = linear(x)
            for b in range(8):
                for o in range(5):
                    expected = torch.tensor(ref[b, o]) if (b % 3, o % 4) in local else clean[b, o]
                    assert _bits(got[b, o:o + 1]) == _bits(expected.reshape(1)), (b, o)


def test_integer_array_layers_on_integer_valued_models():
    conv = _integer_conv(3)
    array = SystolicArray(ArrayConfig(8, 8, 32, "output_stationary", "int8"))
    layer = SystolicConv2d(conv, array)
    x = torch.randint(-20, 20, (2, 2, 6, 6)).float()
    array.add_fault(ArrayFault("a", 2, 3, 0, 2))  # sign bit of an int8 operand
    got = layer(x)
    ref = reference_conv2d(x.numpy().astype(np.int8), conv.weight.detach().numpy().astype(np.int8),
                           conv.bias.detach().numpy().astype(np.int32), N=array.config.bounds, T=array.matrix,
                           faults=[_ref(array.faults[0])], in_dtype=np.int8)
    assert torch.equal(got, torch.from_numpy(ref).float())
    assert not torch.equal(got, conv(x))
    with pytest.raises(QFaultConfigError, match=r"input=0\.5.*int8"):
        layer(x * 0 + 0.5)


def test_swap_shares_one_array_and_removes_cleanly():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    original = copy.deepcopy(model)
    x = torch.randn(5, 1, 8, 8)
    reference = model(x)
    handle = swap_modules(model, SystolicLayers(ArrayConfig(8, 8, 40, tiling=True)))
    assert handle.swapped == ["0", "2", "4"] == compatible_layers(original)
    layers = systolic_layers(model)
    assert {id(layer.array) for layer in layers.values()} == {id(handle.config.array)}
    assert model_array(model) is handle.config.array
    with pytest.raises(QFaultConfigError, match="runs on a systolic array|run on a systolic array"):
        model_array(original)
    assert layers["0"].weight is original[0].weight or torch.equal(layers["0"].weight, original[0].weight)
    with torch.no_grad():
        assert torch.equal(model(x), reference)
        fault = handle.config.array.add_fault(ArrayFault("c", 1, 1, 1, 1))
        assert not torch.equal(model(x), reference)
        fault.remove()
        assert torch.equal(model(x), reference)
    handle.remove()
    assert [type(m) for m in model] == [type(m) for m in original]
    assert torch.equal(model(x), reference)


def test_swap_names_and_errors():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    array = SystolicArray(ArrayConfig(8, 8, 64))
    handle = swap_modules(model, SystolicLayers(array, names=("2",)))
    assert handle.swapped == ["2"] and handle.config.array is array
    handle.remove()
    with pytest.raises(QFaultConfigError, match=r"names='9'.*compatible layers: 0, 2"):
        swap_modules(model, SystolicLayers(array, names=("9",)))
    with pytest.raises(QFaultConfigError, match=r"groups=2"):
        SystolicConv2d(nn.Conv2d(2, 2, 3, groups=2), array)
    with pytest.raises(QFaultConfigError, match=r"dilation=\(2, 2\)"):
        SystolicConv2d(nn.Conv2d(2, 2, 3, dilation=2), array)
    with pytest.raises(QFaultConfigError, match=r"array=.*SystolicArray, an ArrayConfig"):
        SystolicLayers(array=5)
    small = swap_modules(nn.Sequential(nn.Linear(4, 2)), SystolicLayers(ArrayConfig(2, 2, 4)))
    small.config.array.add_fault(ArrayFault("a", 1, 1, 0))
    with pytest.raises(QFaultConfigError, match=r"3 rows of A.*n1=2.*tiling"):
        small.modules["0"](torch.randn(3, 4))
    assert swap_modules(nn.Sequential(nn.Linear(4, 2)), {"type": "systolic", "array": {"n1": 2, "n2": 2, "n3": 4}}
                        ).config.array.config.n3 == 4


def test_channel_limits_a_fault_to_one_conv_output_channel():
    conv = _integer_conv(5, cin=1, cout=4)
    array = SystolicArray(ArrayConfig(8, 8, 32))
    layer = SystolicConv2d(conv, array)
    x = torch.randint(-3, 4, (2, 1, 6, 6)).float()
    with torch.no_grad():
        clean = conv(x)
        array.add_fault(ArrayFault("c", 1, 1, 1, 1, channel=2))
        array.add_fault(ArrayFault("c", 2, 2, 1, 1, channel=7))  # no such channel here: no effect
        changed = (layer(x) != clean).any(dim=(0, 2, 3))
    assert changed.tolist() == [False, False, True, False]


def test_gradients_pass_straight_through():
    conv = nn.Conv2d(2, 3, 3)
    faulty = copy.deepcopy(conv)
    array = SystolicArray(ArrayConfig(8, 8, 32))
    layer = SystolicConv2d(faulty, array)
    array.add_fault(ArrayFault("a", 1, 1, 2, 1))
    x = torch.randn(2, 2, 6, 6, requires_grad=True)
    weights = torch.randn(2, 3, 4, 4)
    (layer(x) * weights).sum().backward()
    grad_x, grad_w = x.grad.clone(), faulty.weight.grad.clone()
    x.grad = None
    (conv(x) * weights).sum().backward()
    assert torch.equal(grad_x, x.grad) and torch.equal(grad_w, conv.weight.grad)


def test_lowering_equals_the_reference_layout():
    rng = np.random.default_rng(4)
    for _ in range(10):
        h, w = int(rng.integers(3, 8)), int(rng.integers(3, 8))
        kh, kw = int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
        stride = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        x = rng.standard_normal((h, w)).astype(np.float32)
        k = rng.standard_normal((kh, kw)).astype(np.float32)
        assert np.array_equal(lower_activation(torch.from_numpy(x), (kh, kw), stride).numpy(),
                              ref_lower_activation(x, kh, kw, stride))
        assert np.array_equal(lower_kernel(torch.from_numpy(k), w, stride).numpy(), ref_lower_kernel(k, w, stride))


def test_stacked_fault_sets_equal_separate_forwards():
    """K fault sets in one forward: block k of the batch is exactly the forward of its images
    with fault set k alone (every block is its own product, tiles and all)."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, stride=2), nn.Flatten(),
                          nn.Linear(4 * 3 * 3, 5))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randint(-2, 3, p.shape).float())
    handle = swap_modules(model, SystolicLayers(ArrayConfig(3, 4, 16, "col_stationary", tiling=True)))
    array = handle.config.array
    array.add_fault(ArrayFault("b", 1, -1, 9, 1))  # on every block
    rng = np.random.default_rng(0)
    pes = array.pes()
    sets = []
    for k in range(4):
        x_pe, y_pe = pes[rng.integers(len(pes))]
        sets.append([ArrayFault("abc"[k % 3], x_pe, y_pe, int(rng.integers(1, 12)), k % 3, channel=k - 1)])
    sets[3] = []
    x = torch.randint(-3, 4, (4 * 5, 2, 7, 7)).float()
    with torch.no_grad():
        separate = []
        for k, fault_set in enumerate(sets):
            faults = [array.add_fault(f) for f in fault_set]
            separate.append(model(x[5 * k:5 * (k + 1)]))
            for f in faults:
                f.remove()
        with array.stack_faults(sets):
            stacked = model(x)
        assert array.fault_blocks() is None
    assert torch.equal(_bits(stacked), _bits(torch.cat(separate)))  # bits: NaN outputs included
    assert not torch.equal(_bits(separate[0]), _bits(separate[3]))
    with array.stack_faults(sets), pytest.raises(QFaultConfigError, match=r"batch=7.*multiple of the 4"):
        model(x[:7])
    with pytest.raises(QFaultConfigError, match=r"\(x, y\)=\(9, 9\)"):
        array.stack_faults([[ArrayFault("a", 9, 9, 0)]])


def _brevitas_model(return_quant_tensor: bool):
    import brevitas.nn as qnn
    from brevitas.quant import Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint

    torch.manual_seed(4)
    return nn.Sequential(
        qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint, return_quant_tensor=return_quant_tensor),
        qnn.QuantConv2d(2, 3, 3, padding=1, bias=False, weight_quant=Int8WeightPerTensorFixedPoint),
    ).eval()


@pytest.mark.parametrize("in_dtype", ["float32", "int8"])
def test_brevitas_layers_run_on_the_array(in_dtype):
    """Brevitas QuantConv2d: on a float array its dequantized operands, on an int8 array its
    integer codes (scaled back by input x weight scale) give the faulty outputs; the rest is
    Brevitas' own clean output."""
    model = _brevitas_model(return_quant_tensor=in_dtype == "int8")
    x = torch.randn(3, 2, 6, 6)
    with torch.no_grad():
        clean = model(x)
        quant_input = model[0](x)
        weight = model[1].quant_weight()
    handle = swap_modules(model, SystolicLayers(ArrayConfig(6, 6, 24, "output_stationary", in_dtype)))
    assert handle.swapped == ["1"] and type(model[1]).__name__ == "SystolicQuantConv2d"
    array = handle.config.array
    fault = ArrayFault("a", 2, 3, 4, 1)
    array.add_fault(fault)
    with torch.no_grad():
        got = model(x)
    if in_dtype == "float32":
        inputs, kernels, scale, dtype = quant_input.numpy(), weight.value.numpy(), 1.0, np.float32
    else:
        inputs, kernels = quant_input.int().numpy().astype(np.int8), weight.int().numpy().astype(np.int8)
        scale, dtype = float(quant_input.scale * weight.scale), np.int8
    ref = reference_conv2d(inputs, kernels, None, N=array.config.bounds, T=array.matrix, faults=[_ref(fault)],
                           padding=(1, 1), in_dtype=dtype)
    local = {(i, j) for i, j, _ in reference_reach(array.config.bounds, array.matrix, _ref(fault), (6, 6, 3 * 8))}
    value = got.value if hasattr(got, "value") else got
    assert local
    for r in range(6):
        for c in range(6):
            expected = torch.from_numpy(np.asarray(ref[:, :, r, c] * scale, dtype=np.float32)) if (r, c) in local \
                else clean[:, :, r, c]
            assert torch.equal(value[:, :, r, c], expected), (r, c)
    handle.remove()
    assert type(model[1]).__name__ == "QuantConv2d"
    with torch.no_grad():
        assert torch.equal(model(x), clean)


def test_integer_arrays_need_quantized_inputs():
    model = _brevitas_model(return_quant_tensor=False)
    handle = swap_modules(model, SystolicLayers(ArrayConfig(6, 6, 24, in_dtype="int8")))
    handle.config.array.add_fault(ArrayFault("a", 1, 1, 0))
    with pytest.raises(QFaultConfigError, match=r"input of SystolicQuantConv2d.*QuantTensor.*return_quant_tensor"):
        model(torch.randn(1, 2, 6, 6))


def test_brevitas_model_with_float_inputs_on_a_float_array():
    from qfault.data import build_model

    model = build_model("digits_cnn").eval()
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        clean = model(x)
        handle = swap_modules(model, SystolicLayers(ArrayConfig(16, 16, 64, tiling=True)))
        assert handle.swapped == ["1", "4", "8"] and sorted(systolic_layers(model)) == ["1", "4", "8"]
        assert torch.equal(model(x), clean)
        fault = handle.config.array.add_fault(ArrayFault("b", 1, 1, 1, 1))  # an exponent bit of fc weights
        assert not torch.equal(model(x), clean)
        fault.remove()
        handle.remove()
        assert torch.equal(model(x), clean)


def test_band_shortcut_equals_the_full_reduction(monkeypatch):
    """Conv outputs skip the structural zeros of the banded lowered kernel only where that is
    exact: b faults setting bits of those zeros (other than their sign) or line-c faults fall
    back; an operand there that is not finite (0 * inf = NaN) makes the output NaN. Both paths
    give the same bits on every case here, NaN for NaN (whose payload each add kernel chooses)."""
    import qfault.systolic._layers as layers

    rng = np.random.default_rng(8)
    conv = _integer_conv(9, cin=2, cout=3, k=3, stride=(1, 2), padding=(1, 1))
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape))
    array = SystolicArray(ArrayConfig(8, 8, 40, "output_stationary"))
    layer = SystolicConv2d(conv, array)
    x = torch.randn(2, 2, 6, 9)
    original = layers._band_values
    sign = ArrayFault("b", 1, 1, 0, 1)  # -0 for the zeros: the band still serves
    cases = [ArrayFault("a", 1, 1, 1, 1), ArrayFault("b", 1, 1, 1, 1), ArrayFault("b", 2, 2, 30, 1, msb="last"), sign]
    pes = array.pes()
    cases += [ArrayFault("ab"[i % 2], *pes[rng.integers(len(pes))], int(rng.integers(32)), int(rng.integers(3)))
              for i in range(12)]
    spoilt = x.clone()
    spoilt[1, 0, 4, 7] = math.inf  # an input that is not finite: NaN wherever a skipped product holds it
    # line-a faults on the row holding the spoilt value, all along or in a window of cycles (the
    # masked operands of an output differ from step to step): an exponent bit stuck at 0 makes
    # the inf finite, stuck at 1 makes values in [1, 2) inf or NaN
    windowed = [ArrayFault("a", 4, 1, 1, 0), ArrayFault("a", 4, 1, 1, 0, t_start=12, t_stop=24),
                ArrayFault("a", 4, 1, 1, 1, t_start=12, t_stop=24), ArrayFault("a", 1, 1, 1, 1, t_start=3, t_stop=9),
                (ArrayFault("a", 4, 1, 9, 1, t_start=8), ArrayFault("a", 4, 1, 1, 1, t_start=16, t_stop=20))]
    inputs = [(x, fault) for fault in cases + windowed]
    # a mantissa or sign bit leaves the exponent as it was: the inf stays inf under the mask
    as_is = [ArrayFault("a", 4, 1, 20, 0), ArrayFault("a", 5, 1, 0, 1), ArrayFault("a", 6, 1, 31, 2, t_start=10)]
    inputs += [(spoilt, fault) for fault in [ArrayFault("a", 2, 3, 20, 0), sign] + windowed + as_is]
    used = nans = poisoned = 0
    with torch.no_grad():
        for batch, fault in inputs:
            array.clear_faults()
            for one in fault if isinstance(fault, tuple) else (fault,):  # several at once: several mask pairs
                array.add_fault(one)
            calls = []
            monkeypatch.setattr(layers, "_band_values", lambda *a: calls.append(original(*a)) or calls[-1])
            fast = layer(batch)
            used += bool(calls) and calls[0] is not None
            assert fault != sign or calls[0] is not None
            poisoned += bool(calls) and calls[0] is not None and bool(calls[0].isnan().any())
            monkeypatch.setattr(layers, "_band_values", lambda *a: None)
            full = layer(batch)
            assert torch.equal(fast.isnan(), full.isnan()), fault
            nans += int(full.isnan().sum())
            assert torch.equal(_bits(fast.nan_to_num(0.0)), _bits(full.nan_to_num(0.0))), fault
    assert 0 < used < len(inputs)  # both paths ran
    assert nans and poisoned  # NaN outputs, some of them from the band
