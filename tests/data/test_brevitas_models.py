"""Seed 001's registered Brevitas models: quant_cnv (FINN's CNV) and quant_resnet20."""

from __future__ import annotations

import brevitas.nn as qnn
import pytest
import torch
from torch import nn

import qfault
from qfault import QFaultConfigError
from qfault.data import _brevitas_models  # noqa: F401  (registers the models; idempotent)
from qfault.data import accuracy, build_model, list_models, load_demo_model, load_digits_split
from qfault.injection import InjectSpec, select_modules

SHAPES = [(1, 8, 10), (3, 32, 10), (1, 28, 10), (3, 32, 100)]  # (in_channels, image_size, num_classes)
FLIP = {"type": "bit_flip", "ber": 0.05}
CNV_ACTS = ["features.2", "features.5", "features.9", "features.12", "features.16", "features.19",
            "classifier.2", "classifier.5"]


def of_type(model: nn.Module, cls: type) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, cls)]


def weight_bits(model: nn.Module) -> list[int]:
    layers = [m for _, m in of_type(model, (qnn.QuantConv2d, qnn.QuantLinear))]
    return [int(m.quant_weight().bit_width) for m in layers]


def test_both_models_are_registered():
    assert {"quant_cnv", "quant_resnet20"} <= set(list_models())
    assert list_models("quant_*") == sorted(list_models("quant_*"))


@pytest.mark.parametrize("name", ["quant_cnv", "quant_resnet20"])
@pytest.mark.parametrize("in_channels,image_size,num_classes", SHAPES)
def test_builds_and_classifies_every_shape(name, in_channels, image_size, num_classes):
    model = build_model(name, in_channels=in_channels, image_size=image_size, num_classes=num_classes).eval()
    with torch.no_grad():
        logits = model(torch.rand(3, in_channels, image_size, image_size))
    assert isinstance(logits, torch.Tensor) and logits.shape == (3, num_classes)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("w,a", [(2, 2), (4, 4), (8, 8), (3, 5)])
def test_cnv_topology_and_bit_widths(w, a):
    model = build_model("quant_cnv", weight_bit_width=w, act_bit_width=a)
    convs, linears = of_type(model, qnn.QuantConv2d), of_type(model, qnn.QuantLinear)
    assert [m.out_channels for _, m in convs] == [64, 64, 128, 128, 256, 256]
    assert all(m.kernel_size == (3, 3) and m.padding == (0, 0) and m.bias is None for _, m in convs)
    assert [(m.in_features, m.out_features) for _, m in linears] == [(256, 512), (512, 512), (512, 10)]
    assert [n for n, _ in of_type(model, nn.MaxPool2d)] == ["features.6", "features.13"]
    assert len(of_type(model, nn.BatchNorm2d)) == 6 and len(of_type(model, nn.BatchNorm1d)) == 2
    assert isinstance(model.classifier[-1], _brevitas_models.TensorNorm)
    assert model.resize is None and not of_type(model, qnn.QuantIdentity)  # no input quantizer, as the seed
    assert weight_bits(model) == [8] + [w] * 8
    for _, layer in convs + linears:  # constant scale: codes on [-1, 1], narrow range
        bits = int(layer.quant_weight().bit_width)
        q = layer.quant_weight()
        assert torch.allclose(q.scale, torch.tensor(1.0 / (2 ** (bits - 1) - 1)))
        assert int(q.int().abs().max()) <= 2 ** (bits - 1) - 1
    relus = of_type(model, qnn.QuantReLU)
    assert [n for n, _ in relus] == CNV_ACTS
    assert all(int(m.act_quant.bit_width()) == a and not m.act_quant.is_signed for _, m in relus)


def test_cnv_activations_take_at_most_2_to_the_a_levels():
    model = build_model("quant_cnv", in_channels=1, image_size=8, act_bit_width=2).eval()
    levels = {}
    hooks = [m.register_forward_hook(lambda m, i, out, n=n: levels.__setitem__(n, out.unique().numel()))
             for n, m in of_type(model, qnn.QuantReLU)]
    with torch.no_grad():
        model(load_digits_split()[0][:64])
    for h in hooks:
        h.remove()
    assert list(levels) == CNV_ACTS
    assert all(1 <= count <= 4 for count in levels.values()), levels
    assert max(levels.values()) >= 2


@pytest.mark.parametrize("image_size,side", [(1, 1), (8, 1), (28, 1), (32, 1), (36, 2), (64, 9)])
def test_cnv_resizes_small_inputs_and_widens_for_large_ones(image_size, side):
    model = build_model("quant_cnv", in_channels=1, image_size=image_size, num_classes=3).eval()
    assert (model.resize is not None) == (image_size < 32)
    if model.resize is not None:
        assert model.resize.size == (32, 32) and model.resize.mode == "bilinear"
    x = torch.rand(2, 1, image_size, image_size)
    with torch.no_grad():
        features = model.features(x if model.resize is None else model.resize(x))
        assert model(x).shape == (2, 3)
    assert features.shape == (2, 256, side, side)
    assert _brevitas_models.cnv_feature_side(image_size) == side
    assert model.classifier[0].in_features == 256 * side * side


def test_resnet20_topology_and_bit_widths():
    model = build_model("quant_resnet20", weight_bit_width=3, act_bit_width=5)
    convs = of_type(model, qnn.QuantConv2d)
    assert len(convs) == 21 and len(of_type(model, qnn.QuantLinear)) == 1
    shortcuts = [n for n, m in convs if m.kernel_size == (1, 1)]
    assert shortcuts == ["layer2.0.downsample.0", "layer3.0.downsample.0"]
    assert [m.stride for n, m in convs if n in shortcuts] == [(2, 2), (2, 2)]
    blocks = of_type(model, _brevitas_models.QuantBasicBlock)
    assert len(blocks) == 9
    assert [b.conv2.out_channels for _, b in blocks] == [16] * 3 + [32] * 3 + [64] * 3
    assert [b.downsample is not None for _, b in blocks] == [False] * 3 + [True, False, False] * 2
    assert model.fc.in_features == 64 and model.fc.bias is not None
    assert weight_bits(model) == [8] + [3] * 20 + [8]  # stem conv and classifier at 8 bits
    relus = of_type(model, qnn.QuantReLU)
    assert len(relus) == 19 and all(int(m.act_quant.bit_width()) == 5 and not m.act_quant.is_signed
                                    for _, m in relus)
    assert int(model.quant_input.act_quant.bit_width()) == 8 and model.quant_input.act_quant.is_signed


def test_resnet20_default_is_w4a4_and_size_agnostic():
    model = build_model("quant_resnet20", in_channels=1, image_size=8).eval()
    assert weight_bits(model) == [8] + [4] * 20 + [8]
    assert {int(m.act_quant.bit_width()) for _, m in of_type(model, qnn.QuantReLU)} == {4}
    with torch.no_grad():
        assert model(torch.rand(2, 1, 12, 12)).shape == (2, 10)  # global average pooling


@pytest.mark.parametrize("name,sites,weights", [("quant_cnv", 8, 9), ("quant_resnet20", 20, 22)])
def test_default_injection_sites(name, sites, weights):
    model = build_model(name, in_channels=1, image_size=8).eval()
    selected = select_modules(model, InjectSpec(fault=FLIP, site="output"))
    assert len(selected) == sites
    if name == "quant_cnv":
        assert [n for n, _ in selected] == CNV_ACTS
    assert len(select_modules(model, InjectSpec(fault=FLIP, site="weight"))) == weights

    x = load_digits_split()[2][:16]
    with torch.no_grad():
        clean = model(x)
        with qfault.inject(model, InjectSpec(fault=FLIP, site="output", seed=0)) as handle:
            assert handle.num_sites == sites
            faulty = model(x)
        assert not torch.equal(clean, faulty)
        assert torch.equal(model(x), clean)  # removed: bit-exactly clean again
    stats = handle.statistics()
    assert len(stats.sites) == sites and all(s.faulted_values > 0 for s in stats.sites)


@pytest.mark.parametrize("name,minimum,bad", [
    *[("quant_cnv", 1, bad) for bad in (0, -3, 2.5, True, "32")],
    *[("quant_resnet20", 8, bad) for bad in (0, 7, 8.0, False)],
])
def test_bad_image_size_is_refused_with_the_minimum(name, minimum, bad):
    with pytest.raises(QFaultConfigError) as err:
        build_model(name, image_size=bad)
    assert err.value.field == "image_size" and err.value.value == bad
    assert f"an integer >= {minimum}" in str(err.value)  # the minimum itself forwards: see above


@pytest.mark.parametrize("name", ["quant_cnv", "quant_resnet20"])
@pytest.mark.parametrize("field,bad", [("weight_bit_width", 1), ("act_bit_width", 0), ("in_channels", 0),
                                       ("num_classes", 1), ("seed", 1.5)])
def test_bad_arguments_name_their_field(name, field, bad):
    with pytest.raises(QFaultConfigError) as err:
        build_model(name, **{field: bad})
    assert err.value.field == field


@pytest.mark.parametrize("name", ["quant_cnv", "quant_resnet20"])
def test_seeded_init_is_deterministic_and_leaves_the_global_rng_alone(name):
    state = torch.random.get_rng_state()
    a = build_model(name, in_channels=1, image_size=8, seed=3).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_model(name, in_channels=1, image_size=8, seed=3).state_dict()
    c = build_model(name, in_channels=1, image_size=8, seed=4).state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(v, b[k]) for k, v in a.items())
    assert any(not torch.equal(v, c[k]) for k, v in a.items() if v.is_floating_point())


def test_tensor_norm_against_a_brute_force_reference():
    norm = _brevitas_models.TensorNorm()
    with torch.no_grad():
        norm.weight.fill_(2.0)
        norm.bias.fill_(0.5)
    x = torch.randn(6, 10) * 3 + 1
    y = norm(x)  # training: normalized by the whole tensor's biased variance
    expected = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-4) * 2.0 + 0.5
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm.running_mean, 0.1 * x.mean().reshape(1))
    torch.testing.assert_close(norm.running_var, 0.9 + 0.1 * x.var(unbiased=True).reshape(1))
    norm.eval()
    expected = (x - norm.running_mean) / torch.sqrt(norm.running_var + 1e-4) * 2.0 + 0.5
    torch.testing.assert_close(norm(x), expected)


@pytest.mark.slow  # one epoch of the full CNV on 32x32 upsampled digits: about 10 s on 2 cores
def test_load_demo_model_trains_quant_cnv_on_digits_and_caches_it(tmp_path):
    kwargs = {"in_channels": 1, "image_size": 8}
    logs = []
    model, trained = load_demo_model("quant_cnv", epochs=1, cache=tmp_path, model_kwargs=kwargs, log=logs.append)
    assert trained and not model.training and any("Trained quant_cnv" in line for line in logs)
    _, _, x_test, y_test = load_digits_split()
    assert accuracy(model, x_test, y_test) > 50.0  # 10 classes: chance is 10 %
    cached, trained_again = load_demo_model("quant_cnv", epochs=1, cache=tmp_path, model_kwargs=kwargs, log=logs.append)
    assert not trained_again
    with torch.no_grad():
        assert torch.equal(cached(x_test[:64]), model(x_test[:64]))
