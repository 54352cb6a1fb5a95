"""Seed 001's Python API (``qfault.compat.fat``): the "Programmatic Usage" snippets of its document
run with only their import changed, and the documented schedule, statistics and strategies hold."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from qfault import QFaultConfigError
from qfault.data import build_model, load_digits_split
from qfault.testing import tiny_digits_brevitas
from qfault.train import faulty_steps


@pytest.fixture(scope="module")
def digits():
    return load_digits_split()


def loaders(digits, n_train=256, n_test=128, batch_size=32):
    x_train, y_train, x_test, y_test = digits
    train = DataLoader(TensorDataset(x_train[:n_train], y_train[:n_train]), batch_size=batch_size, shuffle=False)
    test = DataLoader(TensorDataset(x_test[:n_test], y_test[:n_test]), batch_size=batch_size, shuffle=False)
    return train, test


def outputs(model, x):
    with torch.no_grad():
        out = model(x)
    return getattr(out, "value", out)


# -- the document's snippets, pasted with only the import changed ----------------------------------


def test_basic_usage_and_statistics_tracking_snippets(digits, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = build_model("digits_cnn").eval()
    original = model
    _, test_loader = loaders(digits)

    # --- Basic Usage
    from qfault.compat.fat import (
        FaultInjectionConfig,
        FaultInjector,
        FaultStatistics,
    )

    # Create configuration
    config = FaultInjectionConfig(
        enabled=True,
        probability=5.0,
        mode="full_model",
        injection_type="random",
        apply_during="train",
    )

    # Validate configuration
    config.validate()

    # Create injector and inject layers into model
    injector = FaultInjector()
    model = injector.inject(model, config)

    # Get number of injection layers
    num_layers = injector.get_num_layers(model)
    print(f"Injected {num_layers} fault injection layers")

    # --- Statistics Tracking
    # Create statistics tracker
    stats = FaultStatistics(num_layers=num_layers)

    # Attach statistics to injection layers
    injector.set_statistics(model, stats)

    # Run inference...
    with torch.no_grad():
        for inputs, labels in test_loader:
            outputs = model(inputs)

    # Print statistics report
    stats.print_report()

    # Save to file
    stats.save_to_file("fault_stats.json")

    # Access statistics programmatically
    for layer_id, layer_stats in stats.layer_stats.items():
        print(f"Layer {layer_id}:")
        print(f"  Injection rate: {layer_stats.injection_rate:.2f}%")
        print(f"  Average RMSE: {layer_stats.avg_rmse:.4f}")
        print(f"  Cosine similarity: {layer_stats.avg_cosine_similarity:.4f}")

    # --- what the snippets promise
    out = capsys.readouterr().out
    assert model is original
    assert num_layers == 3  # QuantIdentity and two QuantReLU of digits_cnn
    assert "Injected 3 fault injection layers" in out
    assert "Layer    Injected     Total          Rate (%)     RMSE         Cos Sim (%)" in out
    assert out.count("Injection rate: ") == 3
    saved = json.loads((tmp_path / "fault_stats.json").read_text())
    assert saved == json.loads(json.dumps(stats.to_dict()))
    assert saved["summary"]["num_layers"] == 3
    assert saved["layers"]["0"]["total_activations"] == 128 * 64  # every input value, every batch
    for layer in saved["layers"].values():
        assert 3.5 < layer["injection_rate"] < 6.5  # 5 % per element (a few values drawn unchanged)
        assert layer["sample_count"] == len(test_loader)
        assert 0.0 < layer["avg_cosine_similarity"] < 1.0 and layer["avg_rmse"] > 0


def test_training_loop_dynamic_probability_and_removal_snippets(digits):
    from qfault.compat.fat import FaultInjectionConfig, FaultInjector, FaultStatistics

    torch.manual_seed(0)
    model = build_model("digits_cnn")
    train_loader, test_loader = loaders(digits)
    num_epochs = 2
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    criterion = nn.CrossEntropyLoss()
    config = FaultInjectionConfig(enabled=True, probability=5.0, apply_during="train", step_interval=0.5, seed=3)
    injector = FaultInjector()
    model = injector.inject(model, config)
    stats = FaultStatistics(num_layers=injector.get_num_layers(model))
    injector.set_statistics(model, stats)
    before = [p.detach().clone() for p in model.parameters()]

    # Training loop with fault injection
    for epoch in range(num_epochs):
        # Update epoch for all injection layers
        injector.update_epoch(model, epoch)

        # Reset iteration counters
        injector.reset_counters(model)

        # Set up step-level injection schedule
        if config.step_interval > 0:
            num_iterations = len(train_loader)
            injector.set_condition_injector(
                model, num_iterations, config.step_interval
            )

        # Enable/disable based on apply_during
        if config.apply_during in ("train", "both"):
            injector.set_enabled(model, True)
        else:
            injector.set_enabled(model, False)

        # Training loop
        model.train()
        for batch_idx, (inputs, labels) in enumerate(train_loader):
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()

        # Evaluation
        if config.apply_during in ("eval", "both"):
            injector.set_enabled(model, True)
        else:
            injector.set_enabled(model, False)

        model.eval()
        # ... evaluation code ...
        for inputs, labels in test_loader:
            with torch.no_grad():
                model(inputs)  # clean: apply_during="train" disabled the faults

    # the faulty steps are those the documented schedule draws (seed 3, each epoch)
    scheduled = sum(int(faulty_steps(config, 3, epoch, len(train_loader)).sum()) for epoch in range(num_epochs))
    assert 0 < scheduled < num_epochs * len(train_loader)
    assert all(s.forwards == scheduled for s in stats.layer_stats.values())
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))  # it trained

    # Update probability during training
    injector.update_probability(model, probability=10.0)

    # Update probability for specific layer only
    injector.update_probability(model, probability=15.0, layer_id=2)

    x = next(iter(test_loader))[0]
    injector.set_enabled(model, True)
    faulty = outputs_of(model, x)
    # Remove all fault injection layers
    model = injector.remove(model)

    # Now model is back to original structure
    assert injector.get_num_layers(model) == 0
    clean = outputs_of(model, x)
    assert not torch.equal(faulty, clean)
    assert torch.equal(outputs_of(model, x), clean)


def outputs_of(model, x):
    model.eval()
    return outputs(model, x)


def test_loading_configuration_from_yaml_snippet(tmp_path, monkeypatch):
    from qfault.compat.fat import FaultInjectionConfig

    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "fault_injection_example.yaml").write_text(
        "model:\n  name: quant_cnv\nfault_injection:\n  enabled: true\n  probability: 3.0\n"
        "  injection_type: msb_flip\n  gradient_mode: zero_faulty\n  epoch_interval: 5\n")

    import yaml

    with open("configs/fault_injection_example.yaml") as f:
        full_config = yaml.safe_load(f)

    fi_config = full_config.get("fault_injection", {})
    config = FaultInjectionConfig.from_dict(fi_config)

    assert (config.enabled, config.probability, config.injection_type, config.gradient_mode,
            config.epoch_interval) == (True, 3.0, "msb_flip", "zero_faulty", 5)
    with pytest.raises(QFaultConfigError, match="probability"):
        FaultInjectionConfig.from_dict({"probability": 120.0})


# -- the schedule --------------------------------------------------------------------------------


def faulty_pattern(injector, model, stats, steps, x):
    """Which of ``steps`` training-mode forwards were faulty (the statistics of layer 0 count
    every faulty forward)."""
    pattern = []
    model.train()
    for _ in range(steps):
        seen = stats.layer_stats[0].forwards
        with torch.no_grad():
            model(x)
        pattern.append(stats.layer_stats[0].forwards > seen)
    return torch.tensor(pattern)


def test_schedule_epoch_interval_and_step_interval():
    from qfault.compat.fat import FaultInjectionConfig, FaultInjector, FaultStatistics

    config = FaultInjectionConfig(enabled=True, probability=5.0, epoch_interval=3, step_interval=0.3, seed=11)
    injector, x = FaultInjector(), torch.rand(2, 1, 8, 8)
    model = injector.inject(tiny_digits_brevitas(), config)
    stats = FaultStatistics(2)
    injector.set_statistics(model, stats)
    steps = 60
    patterns = {}
    for epoch in range(5):
        injector.update_epoch(model, epoch)
        injector.reset_counters(model)
        injector.set_condition_injector(model, steps, config.step_interval)
        patterns[epoch] = faulty_pattern(injector, model, stats, steps, x)
        model.eval()
        seen = stats.layer_stats[0].forwards
        outputs(model, x)
        assert stats.layer_stats[0].forwards == seen + 1  # eval forwards are not steps: always faulty
    for epoch in (1, 2, 4):  # not a multiple of epoch_interval: no training faults
        assert not patterns[epoch].any()
    for epoch in (0, 3):
        assert 0.15 < patterns[epoch].float().mean() < 0.45  # about step_interval of the steps
        assert torch.equal(patterns[epoch], faulty_steps(config, 11, epoch, steps))  # drawn from seed and epoch
    assert not torch.equal(patterns[0], patterns[3])
    # the same schedule again after reset_counters
    injector.update_epoch(model, 3)
    injector.reset_counters(model)
    assert torch.equal(faulty_pattern(injector, model, stats, steps, x), patterns[3])


def test_schedule_without_condition_injector_follows_the_config():
    from qfault.compat.fat import FaultInjectionConfig, FaultInjector, FaultStatistics

    injector, x = FaultInjector(), torch.rand(2, 1, 8, 8)
    for share in (0.0, 0.6, 1.0):
        config = FaultInjectionConfig(enabled=True, step_interval=share, seed=5)
        model = injector.inject(tiny_digits_brevitas(), config)
        stats = FaultStatistics(2)
        injector.set_statistics(model, stats)
        pattern = faulty_pattern(injector, model, stats, 150, x)  # past the first blocks drawn (64, 128)
        assert torch.equal(pattern, faulty_steps(config, 5, 0, 150))
        assert abs(pattern.float().mean() - share) < 0.1
    # step_interval 0: no training step is faulty; set_mode("eval"): no forward is a step
    config = FaultInjectionConfig(enabled=True, step_interval=0.0, seed=5)
    model = injector.inject(tiny_digits_brevitas(), config)
    stats = FaultStatistics(2)
    injector.set_statistics(model, stats)
    assert not faulty_pattern(injector, model, stats, 5, x).any()
    injector.set_mode(model, "eval")
    assert faulty_pattern(injector, model, stats, 5, x).all()
    injector.set_mode(model, "train")
    model.eval()
    outputs(model, x)  # in eval mode, but a step: step_interval 0 keeps it clean
    assert stats.layer_stats[0].forwards == 5
    with pytest.raises(QFaultConfigError, match="mode"):
        injector.set_mode(model, "training")


def test_same_seed_same_faults_and_unseeded_runs_follow_torch_seed():
    from qfault.compat.fat import FaultInjectionConfig, FaultInjector, FaultStatistics

    x = torch.rand(16, 1, 8, 8)

    def run(config, torch_seed=0):
        model = tiny_digits_brevitas()  # (it seeds torch itself)
        torch.manual_seed(torch_seed)
        model = FaultInjector().inject(model, config)
        out = []
        for training in (True, True, True, False, False):
            model.train(training)
            out.append(outputs(model, x))
        return torch.stack(out)

    seeded = FaultInjectionConfig(enabled=True, probability=10.0, step_interval=0.5, seed=42)
    clean = torch.stack([outputs(tiny_digits_brevitas().train(t), x) for t in (True, True, True, False, False)])
    first = run(seeded)
    assert torch.equal(first, run(seeded, torch_seed=1))  # the config seed fixes everything
    assert not torch.equal(first, clean)
    assert not torch.equal(first[3], first[4])  # a fresh draw on every faulty forward
    assert not torch.equal(first, run(dataclasses.replace(seeded, seed=43)))
    # attaching statistics right after inject changes no fault
    plain, tracked = (FaultInjector().inject(tiny_digits_brevitas(), seeded) for _ in range(2))
    FaultInjector().set_statistics(tracked, FaultStatistics(2))
    assert torch.equal(outputs(plain, x), outputs(tracked, x))
    assert not torch.equal(outputs(plain, x), clean[3])
    unseeded = dataclasses.replace(seeded, seed=None)
    assert torch.equal(run(unseeded, 7), run(unseeded, 7))
    assert not torch.equal(run(unseeded, 7), run(unseeded, 8))


# -- probabilities, layers, removal ---------------------------------------------------------------


def test_update_probability_changes_only_that_layer():
    from qfault.compat.fat import FaultInjectionConfig, FaultInjector, FaultStatistics

    config = FaultInjectionConfig(enabled=True, probability=5.0, injection_type="lsb_flip", seed=1)
    injector, x = FaultInjector(), torch.rand(256, 1, 8, 8)
    model = injector.inject(tiny_digits_brevitas(), config)
    stats = FaultStatistics(2)
    injector.set_statistics(model, stats)

    def rates():
        stats.reset()
        for _ in range(4):
            outputs(model, x)
        return [stats.layer_stats[i].injection_rate for i in (0, 1)]

    assert rates() == pytest.approx([5.0, 5.0], abs=0.6)  # lsb_flip changes every hit value
    injector.update_probability(model, 60.0, layer_id=1)
    assert rates() == pytest.approx([5.0, 60.0], abs=1.5)
    injector.update_probability(model, 20.0)
    assert rates() == pytest.approx([20.0, 20.0], abs=1.0)
    injector.update_probability(model, 0.0, layer_id=0)
    low = rates()
    assert low[0] == 0.0 and low[1] == pytest.approx(20.0, abs=1.0)
    with pytest.raises(QFaultConfigError, match="layer_id"):
        injector.update_probability(model, 5.0, layer_id=2)
    # the hardware pattern takes its layer's probability too
    hw = dataclasses.replace(config, hw_mask=True, frequency_value=64, probability=25.0)
    model = injector.inject(tiny_digits_brevitas(), hw)
    stats = FaultStatistics(2)
    injector.set_statistics(model, stats)
    injector.update_probability(model, 50.0, layer_id=0)
    assert rates() == pytest.approx([50.0, 25.0], abs=6.0)  # the periodic pattern's share of the hit slots
    with pytest.raises(QFaultConfigError, match="probability"):
        injector.update_probability(model, 101.0)


def test_layer_mode(capsys):
    from qfault.compat.fat import FaultInjectionConfig, FaultInjector, FaultStatistics

    injector, x = FaultInjector(), torch.rand(32, 1, 8, 8)

    def injected_layers(config):
        model = injector.inject(build_model("digits_cnn").eval(), config)
        stats = FaultStatistics(injector.get_num_layers(model))
        injector.set_statistics(model, stats)
        outputs(model, x)
        return [i for i, s in stats.layer_stats.items() if s.total_activations]

    fixed = FaultInjectionConfig(enabled=True, mode="layer", injection_layer=1, seed=0)
    assert injected_layers(fixed) == [1]
    drawn = {seed: injected_layers(dataclasses.replace(fixed, injection_layer=-1, seed=seed)) for seed in range(12)}
    assert all(len(layers) == 1 for layers in drawn.values())
    assert injected_layers(dataclasses.replace(fixed, injection_layer=-1, seed=4)) == drawn[4]  # from the seed
    assert {layers[0] for layers in drawn.values()} == {0, 1, 2}
    with pytest.raises(QFaultConfigError, match="injection_layer"):
        injector.inject(build_model("digits_cnn"), dataclasses.replace(fixed, injection_layer=3))
    capsys.readouterr()
    injector.inject(build_model("digits_cnn"), dataclasses.replace(fixed, injection_layer=-1, seed=4, verbose=True))
    assert capsys.readouterr().out.splitlines() == [
        "Fault injection enabled: 3 injection layers added", "  Mode: layer", "  Probability: 5.0%",
        "  Injection type: random", "  Apply during: train", f"Randomly selected layer {drawn[4][0]} for injection"]


def test_remove_restores_the_model_bit_exactly():
    from qfault.compat.fat import FaultInjectionConfig, FaultInjector

    model, x = build_model("digits_cnn").eval(), torch.rand(16, 1, 8, 8)
    modules = [(n, type(m)) for n, m in model.named_modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    clean = outputs(model, x)
    injector = FaultInjector()
    config = FaultInjectionConfig(enabled=True, probability=20.0, injection_type="full_flip", seed=0)
    assert injector.inject(model, config) is model
    assert not torch.equal(outputs(model, x), clean)
    injector.set_enabled(model, False)
    assert torch.equal(outputs(model, x), clean)
    injector.set_enabled(model, True)
    injector.inject(model, config)  # injecting again replaces the injection
    assert injector.get_num_layers(model) == 3
    assert FaultInjector().get_num_layers(model) == 3  # the state travels with the model
    assert injector.remove(model) is model
    assert torch.equal(outputs(model, x), clean)
    assert [(n, type(m)) for n, m in model.named_modules()] == modules
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    assert "_qfault_fat_injection" not in model.__dict__
    injector.update_epoch(model, 1)  # the seed's calls on a model without injection do nothing
    injector.set_enabled(model, True)
    assert injector.get_num_layers(model) == 0


def test_disabled_config_and_models_without_targets():
    from qfault.compat.fat import FaultInjectionConfig, FaultInjector

    injector, model = FaultInjector(), build_model("digits_cnn").eval()
    assert injector.inject(model, FaultInjectionConfig(enabled=False)) is model
    assert injector.get_num_layers(model) == 0 and not model._forward_pre_hooks
    with pytest.raises(QFaultConfigError, match="QuantIdentity.*found .*Linear"):
        injector.inject(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), FaultInjectionConfig(enabled=True))
    assert injector.get_num_layers(injector.inject(model, {"enabled": True, "seed": 1})) == 3


def test_gradient_mode_zero_faulty_blocks_gradients_at_faults():
    from qfault.compat.fat import FaultInjectionConfig, FaultInjector

    grads = {}
    for mode in ("ste", "zero_faulty"):
        model = tiny_digits_brevitas()  # eval mode: the input scale does not depend on the batch
        config = FaultInjectionConfig(enabled=True, probability=50.0, injection_type="msb_flip", mode="layer",
                                      injection_layer=0, gradient_mode=mode, seed=2)
        FaultInjector().inject(model, config)
        x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
        out = model(x)
        getattr(out, "value", out).sum().backward()
        grads[mode] = x.grad
    zero = grads["zero_faulty"] == 0
    assert 0.4 < zero.float().mean() < 0.6  # about half the input codes were hit
    assert torch.equal(grads["zero_faulty"][~zero], grads["ste"][~zero])  # the same faults, STE elsewhere
    assert (grads["ste"][zero] != 0).float().mean() > 0.9  # STE passes the gradient at the faults


# -- statistics ----------------------------------------------------------------------------------


def test_statistics_record_schema_report_and_files(tmp_path, capsys):
    from qfault.compat.fat import FaultStatistics

    stats = FaultStatistics(num_layers=2)
    clean = torch.tensor([[1, 2, 3, 4], [0, -1, 5, 6]])
    faulty = torch.tensor([[1, 2, 7, 4], [0, -1, 5, -2]])
    stats.record(clean, faulty, clean != faulty, layer_id=0)
    stats.record(clean, clean, torch.zeros_like(clean, dtype=torch.bool), layer_id=0)
    c, f = clean.flatten().double(), faulty.flatten().double()
    changed = c != f
    rmse = float(((c - f)[changed] ** 2).mean().sqrt())
    cosine = float(c @ f / (c.norm() * f.norm()))
    layer = stats.layer_stats[0]
    assert (layer.total_activations, layer.injected_count, layer.sample_count) == (16, 2, 1)
    assert layer.injection_rate == pytest.approx(12.5)
    assert layer.avg_rmse == pytest.approx(rmse) and layer.avg_cosine_similarity == pytest.approx(cosine)
    assert stats.layer_stats[1].avg_cosine_similarity == 1.0  # nothing changed: identical

    data = stats.to_dict()
    assert set(data) == {"summary", "layers"}
    assert data["summary"] == {"total_injected": 2, "total_activations": 16, "overall_injection_rate": 12.5,
                               "num_layers": 2}
    assert set(data["layers"]) == {"0", "1"}
    assert set(data["layers"]["0"]) == {"layer_id", "total_activations", "injected_count", "injection_rate",
                                        "avg_rmse", "avg_cosine_similarity", "sample_count"}

    stats.print_report()
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "FAULT INJECTION STATISTICS"
    header = lines[4].split()
    assert header == ["Layer", "Injected", "Total", "Rate", "(%)", "RMSE", "Cos", "Sim", "(%)"]
    assert lines[6].split() == ["0", "2", "16", "12.5000", f"{rmse:.4f}", f"{100 * cosine:.4f}"]
    assert lines[9].split() == ["TOTAL", "2", "16", "12.5000"]

    path = tmp_path / "stats.json"
    stats.save_to_file(path)
    loaded = FaultStatistics.load_from_file(path).to_dict()
    assert loaded["summary"] == data["summary"]
    for key, layer in data["layers"].items():
        assert loaded["layers"][key] == pytest.approx(layer)

    stats.reset()
    assert stats.to_dict()["summary"]["total_activations"] == 0 and len(stats.layer_stats) == 2
    stats.record(clean, faulty, None, layer_id=3)  # a layer beyond num_layers adds those up to it
    assert list(stats.layer_stats) == [0, 1, 2, 3] and stats.get_summary()["num_layers"] == 4
    assert stats.layer_stats[3].injected_count == 2 and stats.layer_stats[2].total_activations == 0
    with pytest.raises(QFaultConfigError, match="faulty_int"):
        stats.record(clean, faulty[:1], None, layer_id=0)


def test_statistics_match_the_core_and_survive_rebuilds_and_removal():
    from qfault.compat.fat import FaultInjectionConfig, FaultInjector, FaultStatistics
    from qfault.injection import InjectSpec
    import qfault

    x = torch.rand(64, 1, 8, 8)
    config = FaultInjectionConfig(enabled=True, probability=10.0, injection_type="random", seed=9)
    injector = FaultInjector()
    model = injector.inject(tiny_digits_brevitas(), config)
    stats = FaultStatistics(2)
    injector.set_statistics(model, stats)
    outputs(model, x)
    first = stats.to_dict()
    injector.update_probability(model, 30.0, layer_id=0)  # a new handle for layer 0: its counts add up
    outputs(model, x)
    injector.remove(model)
    after = stats.to_dict()
    assert after["layers"]["0"]["total_activations"] == 2 * first["layers"]["0"]["total_activations"]
    assert after["layers"]["1"]["sample_count"] == 2
    outputs(model, x)  # removed: nothing more is counted
    assert stats.to_dict() == after
    # the same definitions as the core's statistics of one site
    model = tiny_digits_brevitas()
    spec = InjectSpec(fault={"type": "random_value", "probability": 10.0}, site="output", seed=0)
    with qfault.inject(model, spec) as handle:
        outputs(model, x)
        core = handle.statistics().sites[0]
    fat = FaultStatistics(1)
    injector.inject(model, config)
    injector.set_statistics(model, fat)
    outputs(model, x)
    mine = fat.layer_stats[0]
    assert mine.total_activations == core.total_values
    assert abs(mine.injection_rate - core.rate) < 3.0


# -- strategies ----------------------------------------------------------------------------------


def signed4(pattern):
    pattern = pattern & 0xF
    return torch.where(pattern >= 8, pattern - 16, pattern)


def test_strategies_on_explicit_codes():
    from qfault.compat.fat import (FullFlipStrategy, LSBFlipStrategy, MSBFlipStrategy, RandomStrategy,
                                   get_strategy)

    codes = torch.arange(-8, 8, dtype=torch.int32)
    msb = MSBFlipStrategy().apply(codes, bit_width=4, signed=True)
    full = FullFlipStrategy().apply(codes, bit_width=4, signed=True)
    lsb = LSBFlipStrategy().apply(codes, bit_width=4, signed=True)
    assert int(msb[codes == 3]) == -5 and int(msb[codes == -3]) == 5
    assert int(full[codes == 3]) == -4
    assert torch.equal(msb, signed4(codes ^ 0b1000)) and torch.equal(full, ~codes)  # two's-complement NOT
    assert torch.equal(lsb, codes ^ 1)
    unsigned = torch.arange(16)
    assert torch.equal(MSBFlipStrategy().apply(unsigned, 4, False), unsigned ^ 8)
    assert torch.equal(FullFlipStrategy().apply(unsigned, 4, False), 15 - unsigned)
    assert msb.dtype == torch.int32

    # only masked codes change
    mask = codes % 3 == 0
    hit = get_strategy("full_flip").inject(codes, mask, 4, True, torch.device("cpu"))
    assert torch.equal(hit[mask], ~codes[mask]) and torch.equal(hit[~mask], codes[~mask])

    # random: a uniform code of the format's range (full by default, narrow on request)
    many = torch.full((16000,), 3, dtype=torch.int32)
    full_range = RandomStrategy().apply(many, 4, True, seed=0)
    assert (int(full_range.min()), int(full_range.max())) == (-8, 7)
    counts = torch.bincount(full_range + 8, minlength=16).float()
    assert counts.min() > 800 and counts.max() < 1200  # 1000 expected per code
    narrow = RandomStrategy().apply(many, 4, True, seed=0, narrow_range=True)
    assert (int(narrow.min()), int(narrow.max())) == (-7, 7)
    uint = RandomStrategy().apply(torch.zeros(4000, dtype=torch.int64), 4, False, seed=1)
    assert (int(uint.min()), int(uint.max())) == (0, 15)  # not the seed code's [1, 16]
    assert torch.equal(RandomStrategy().apply(many, 4, True, seed=5), RandomStrategy().apply(many, 4, True, seed=5))
    torch.manual_seed(3)
    a = RandomStrategy().apply(many, 4, True)
    torch.manual_seed(3)
    assert torch.equal(a, RandomStrategy().apply(many, 4, True))

    assert type(get_strategy("random")) is RandomStrategy and type(get_strategy("random_value")) is RandomStrategy
    assert RandomStrategy().fault(5.0) == __import__("qfault").get_fault("random_value", probability=5.0)
    with pytest.raises(QFaultConfigError, match="injection_type.*full_flip.*random"):
        get_strategy("bit_flip")
    with pytest.raises(QFaultConfigError, match="int_tensor"):
        LSBFlipStrategy().apply(torch.tensor([1.0]), 4, True)
    with pytest.raises(QFaultConfigError, match="codes"):
        LSBFlipStrategy().apply(torch.tensor([9]), 4, True)  # not a 4-bit code
