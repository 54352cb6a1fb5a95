"""Seed 004's fault injector API (``qfault.compat.rfq``): the snippets of its document run with only
their import changed, and what the document promises holds."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from qfault import QFaultConfigError
from qfault.data import accuracy, build_model
from qfault.layers import LsqConfig, swap_modules


@pytest.fixture()
def bit_width_json(tmp_path):
    path = tmp_path / "search" / "resnet18_cifar10_single_gpu_search_bit_width_config.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"arch": "digits", "bops_limits": [1.0], "target_bits": [6, 5, 4, 3, 2],
                                "configurations": [{"bops_limit": 1.0, "weight_bits": [5, 3, 2],
                                                    "act_bits": [6, 4, 3]}]}))
    return path


def load_model():
    """A quantized model with QuanConv2d/QuanLinear layers (the snippets' ``model = ...``)."""
    model = build_model("digits_lsq")
    model.eval()
    model(torch.randn(8, 1, 8, 8))  # initialise the LSQ steps
    return model


def test_mixed_precision_snippet(bit_width_json, capsys):
    from qfault.compat.rfq import FaultInjector, setup_model_with_bit_width_config

    model = load_model()
    input_tensor = torch.randn(4, 1, 8, 8)
    setup_model_with_bit_width_config(model, json_path=str(bit_width_json), config_index=0, verbose=True)
    assert "weight 2 bits, activation 3 bits" in capsys.readouterr().out
    with torch.no_grad():
        clean = model(input_tensor)
    injector = FaultInjector(model=model, mode="ber", ber=1e-2, enable_in_training=False,
                             enable_in_inference=True, seed=42)
    injector.enable()
    model.eval()
    with torch.no_grad():
        output = model(input_tensor)
        again = model(input_tensor)
    injector.disable()
    assert not torch.equal(output, clean)
    assert torch.equal(again, output)  # seeded: one fault pattern for the injector's lifetime
    with torch.no_grad():
        assert torch.equal(model(input_tensor), clean)  # bit-identical after disable()


def test_single_precision_snippet_and_unseeded_redraws():
    from qfault.compat.rfq import FaultInjector

    model = load_model()
    input_tensor = torch.randn(4, 1, 8, 8)
    injector = FaultInjector(model=model, mode="ber", ber=5e-2, enable_in_training=False,
                             enable_in_inference=True)
    injector.enable()
    with torch.no_grad():
        first, second = model(input_tensor), model(input_tensor)
    injector.disable()
    assert not torch.equal(first, second)  # no seed: a new pattern every forward


def test_training_loop_snippet_injects_in_training_and_gradients_flow():
    from qfault.compat.rfq import FaultInjector

    model = load_model()
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    train_loader = [(x[:16], y[:16]), (x[16:], y[16:])]
    val_loader = [(x, y)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    criterion = nn.CrossEntropyLoss()
    before = [p.detach().clone() for p in model.parameters()]
    injector = FaultInjector(model=model, mode="ber", ber=1e-3, enable_in_training=True, enable_in_inference=True)
    injector.enable()
    for epoch in range(2):
        model.train()
        for inputs, targets in train_loader:
            optimizer.zero_grad()
            output = model(inputs)
            loss = criterion(output, targets)
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        for inputs, targets in val_loader:
            output = model(inputs)
    injector.disable()
    assert torch.isfinite(output).all()
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before) if p.requires_grad and p.grad is not None)


@pytest.mark.parametrize("training, inference", [(False, True), (True, False), (True, True), (False, False)])
def test_injection_follows_each_modules_training_flag(training, inference):
    from qfault.compat.rfq import FaultInjector

    model = load_model()
    x = torch.randn(4, 1, 8, 8)
    results = {}
    for mode in ("train", "eval"):
        getattr(model, mode)()
        with torch.no_grad():
            clean = model(x)
            injector = FaultInjector(model, ber=0.05, seed=1, enable_in_training=training,
                                     enable_in_inference=inference)
            injector.enable()
            results[mode] = not torch.equal(model(x), clean)
            injector.disable()
            assert torch.equal(model(x), clean)
    assert results == {"train": training, "eval": inference}


def test_ber_sweep_snippet_is_nested_and_reproducible(bit_width_json):
    from qfault.compat.rfq import FaultInjector, setup_model_with_bit_width_config

    model = load_model()
    setup_model_with_bit_width_config(model, str(bit_width_json), verbose=False)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))

    def evaluate_model(model, loader):
        return accuracy(model, *loader)

    def evaluate_model_with(model, ber, loader):  # the same seeded injector again: the same accuracy
        again = FaultInjector(model=model, mode="ber", ber=ber, seed=42)
        again.enable()
        try:
            return evaluate_model(model, loader)
        finally:
            again.disable()

    test_loader = (x, y)
    ber_values = [1e-4, 1e-3, 1e-2, 5e-2]
    baseline_acc = evaluate_model(model, test_loader)
    flipped = []
    for ber in ber_values:
        injector = FaultInjector(model=model, mode="ber", ber=ber, enable_in_inference=True, seed=42)
        injector.enable()
        sites = set()
        injector.handle.add_listener(lambda name, draw, old, new: sites.update(
            (name, e, b) for e, b in draw.bit_sites.tolist()))
        acc_with_fault = evaluate_model(model, test_loader)
        injector.disable()
        assert evaluate_model(model, test_loader) == baseline_acc
        acc_drop = baseline_acc - acc_with_fault  # the snippet's figure
        assert acc_drop == baseline_acc - evaluate_model_with(model, ber, test_loader)
        flipped.append(sites)
    for lower, higher in zip(flipped, flipped[1:]):
        assert lower <= higher  # the faults at a lower BER are a subset of those at a higher one
    assert len(flipped[-1]) > len(flipped[1]) > 0
    # the same seed again: the same faults
    injector = FaultInjector(model=model, mode="ber", ber=ber_values[-1], seed=42)
    injector.enable()
    again = set()
    injector.handle.add_listener(lambda name, draw, old, new: again.update((name, e, b) for e, b in draw.bit_sites.tolist()))
    evaluate_model(model, test_loader)
    injector.disable()
    assert again == flipped[-1]


def test_manual_bit_width_snippet(bit_width_json):
    from qfault.compat.rfq import FaultInjector, load_bit_width_config_from_json, set_bit_width

    model = load_model()
    weight_bits, act_bits = load_bit_width_config_from_json(str(bit_width_json), config_index=0)
    assert (weight_bits, act_bits) == ([5, 3, 2], [6, 4, 3])
    set_bit_width(model, weight_bits, act_bits)
    injector = FaultInjector(model, mode="ber", ber=1e-6)
    injector.enable()
    assert injector.enabled and injector.layer_names() == ["0", "3", "6", "9", "13"]
    injector.disable()
    assert not injector.enabled and injector.handle is None


def test_only_weights_unless_activations_are_asked_for():
    from qfault.compat.rfq import FaultInjector

    model = load_model()
    injector = FaultInjector(model, ber=0.01, seed=0)
    assert [spec.site.value for spec in injector.specs()] == ["weight"]
    both = FaultInjector(model, ber=0.01, seed=0, activations=True)
    assert [spec.site.value for spec in both.specs()] == ["weight", "input"]
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        injector.enable()
        weights_only = model(x)
        injector.disable()
        both.enable()
        assert not torch.equal(model(x), weights_only)
        both.disable()


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="bit"), r"mode='bit' is invalid: allowed one of 'ber'"),
    (dict(ber=1.5), r"ber=1.5 is invalid: allowed a number in \[0.0, 1.0\]"),
    (dict(ber=-1e-3), r"ber=-0.001 is invalid"),
    (dict(ber="often"), r"ber='often' is invalid: allowed a number in \[0, 1\] \(or a string holding one\)"),
    (dict(ber=None), r"ber=None is invalid"),
    (dict(seed=-1), r"seed=-1 is invalid"),
    (dict(device="gpu0"), r"device='gpu0' is invalid"),
])
def test_bad_input_is_one_clear_error(kwargs, message):
    from qfault.compat.rfq import FaultInjector

    with pytest.raises(QFaultConfigError, match=message):
        FaultInjector(load_model(), **kwargs)


def test_strings_are_accepted_as_ber_and_a_float_model_is_refused():
    from qfault.compat.rfq import FaultInjector

    assert FaultInjector(load_model(), ber="1e-2").ber == 0.01
    float_model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    with pytest.raises(QFaultConfigError, match=r"model='Sequential' is invalid: allowed a model with quantized "
                                                r"QuanConv2d/QuanLinear layers.*found 1 Sequential, 1 Conv2d, 1 ReLU"):
        FaultInjector(float_model, ber=1e-3)
    unset = nn.Sequential(nn.Conv2d(1, 4, 3))
    swap_modules(unset, LsqConfig(weight_bits=None, act_bits=None, fixed_bits=None))
    with pytest.raises(QFaultConfigError, match="QuanConv2d"):
        FaultInjector(unset, ber=1e-3)


def test_unseeded_faults_follow_the_global_torch_seed():
    """Without a seed every forward draws new faults; torch.manual_seed makes a run repeatable."""
    from qfault.compat.rfq import FaultInjector

    model = load_model()
    x = torch.randn(4, 1, 8, 8)
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        injector = FaultInjector(model, ber=0.02, enable_in_training=False)
        injector.enable()
        with torch.no_grad():
            runs.append([model(x), model(x)])
        injector.disable()
    assert not torch.equal(runs[0][0], runs[0][1])
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
