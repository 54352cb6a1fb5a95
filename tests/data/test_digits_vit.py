"""The embedded default of seed 000's experiment: the digits_vit demo model and its template."""

from __future__ import annotations

import importlib
import warnings
from importlib.resources import files

import pytest
import torch
import yaml
from torch import nn

from qfault import QFaultConfigError
from qfault.campaign import CampaignSpec, run_campaign
from qfault.data import build_model, list_models, load_demo_model, load_digits_split
from qfault.layers import SeedQuantLinear, float_mode, seed_quant_vit

BLOCK_LAYERS = [f"blocks.{b}.{name}" for b in range(2) for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
TEMPLATE = files("qfault") / "configs" / "campaign_seed000.yaml"


def quant_layers(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, SeedQuantLinear)]


def test_digits_vit_builds_with_seed_quant_linear_everywhere_but_the_head():
    from timm.models.vision_transformer import VisionTransformer

    assert "digits_vit" in list_models()
    model = build_model("digits_vit")
    assert isinstance(model, VisionTransformer)
    assert quant_layers(model) == BLOCK_LAYERS
    assert [n for n, m in model.named_modules() if isinstance(m, nn.Linear)] == ["head"]
    assert all(m.weight_bits == 8 and m.act_bits == 8 and not m.frozen
               for m in model.modules() if isinstance(m, SeedQuantLinear))
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    # the random init is seeded: two builds are equal
    again = build_model("digits_vit").state_dict()
    assert all(torch.equal(v, again[k]) for k, v in model.state_dict().items())


def test_load_demo_model_trains_in_float_caches_float_weights_and_freezes(tmp_path):
    logs = []
    model, trained = load_demo_model("digits_vit", epochs=2, cache=tmp_path, log=logs.append)
    assert trained and any("Trained digits_vit" in line for line in logs)
    layers = [m for m in model.modules() if isinstance(m, SeedQuantLinear)]
    assert len(layers) == 8 and all(m.frozen and m.weight_codes.dtype == torch.int32 for m in layers)
    assert not model.training
    state = torch.load(tmp_path / "digits_vit_w8a8_e2.pt", weights_only=True)["model_state_dict"]
    assert not any(k.endswith(("weight_codes", "weight_scale")) for k in state)  # float weights only

    x = load_digits_split()[2][:64]
    cached, trained_again = load_demo_model("digits_vit", epochs=2, cache=tmp_path, log=logs.append)
    assert not trained_again
    assert all(m.frozen for m in cached.modules() if isinstance(m, SeedQuantLinear))
    with torch.no_grad():
        assert torch.equal(model(x), cached(x))
        with float_mode(cached):
            floats = cached(x)
        assert not torch.equal(floats, cached(x))  # quantized and float differ, both work
    # trained in float mode: the quantized layers' float weights moved (rounding has no gradient)
    init = [m for m in build_model("digits_vit").modules() if isinstance(m, SeedQuantLinear)]
    assert all(not torch.equal(trained.weight, start.weight) for trained, start in zip(layers, init))


def test_tiny_stuck_at_campaign_on_digits_vit(tmp_path):
    spec = CampaignSpec.from_dict({
        "name": "vit", "seed": 1, "store": str(tmp_path / "vit.qfault.db"),
        "model": {"source": "demo", "name": "digits_vit", "kwargs": {"epochs": 1, "cache": str(tmp_path)}},
        "dataset": "digits", "limit": 48, "batch_size": 48,
        "faults": [], "mitigation": {"rate": 1.0, "method": "cvm", "tile": 16},
        "sweep": {"mitigation.rate": [0, 5], "mitigation.method": ["raw", "bit_flip"]},
        "repetitions": 2,
    })
    result = run_campaign(spec, progress=False, log=lambda *_: None)
    assert result.float_accuracy is not None
    by = {(p.values["mitigation.rate"], p.values["mitigation.method"]): p for p in result.points}
    assert len(by) == 4 and all(p.trials == 2 and p.counts["images"] == 96 for p in by.values())
    for method in ("raw", "bit_flip"):
        assert by[(0, method)].counts["masked"] == 96
        assert by[(0, method)].accuracy_mean == pytest.approx(result.golden_accuracy)
    assert by[(5, "raw")].counts["masked"] < 96


def test_seed000_template_and_its_imagenet_block(tmp_path):
    spec = CampaignSpec.from_yaml(str(TEMPLATE))
    assert spec.model.source == "demo" and spec.model.name == "digits_vit"
    assert list(spec.faults) == [] and spec.repetitions == 20
    assert spec.sweep == {"mitigation.rate": [1, 2, 3, 4, 5],
                          "mitigation.method": ["raw", "cvm", "sign_flip", "bit_flip"]}
    assert len(spec.points()) == 20

    # the commented alternative (timm ViT, local ImageNet-val folder, local weights) is a valid spec
    text = TEMPLATE.read_text()
    block = text[text.index("# model:"):]
    alternative = yaml.safe_load("\n".join(line[2:] if line.startswith("# ") else line.lstrip("#")
                                           for line in block.splitlines()))
    data = {**yaml.safe_load(text), **alternative, "store": str(tmp_path / "inet.qfault.db")}
    module, _, attr = data["model"]["factory"].partition(":")
    with warnings.catch_warnings():  # the old path qfault.mitigation:seed_quant_vit still resolves
        warnings.simplefilter("ignore", FutureWarning)
        assert getattr(importlib.import_module(module), attr) is seed_quant_vit
    assert data["dataset"]["name"] == "imagenet_val"
    inet = CampaignSpec.from_dict(data)
    # missing files are refused naming the field (small ViT instead of ViT-B to stay fast)
    from qfault.campaign import build_campaign_model, load_batches

    with pytest.raises(QFaultConfigError, match="dataset.root"):
        load_batches(CampaignSpec.from_dict({**data, "dataset": {**data["dataset"], "root": str(tmp_path / "no")}}))
    model = {**data["model"], "kwargs": {"name": "vit_tiny_patch16_224", "checkpoint": str(tmp_path / "no.pth")}}
    with pytest.raises(QFaultConfigError, match="checkpoint"):
        build_campaign_model(CampaignSpec.from_dict({**data, "model": model}).model, log=lambda *_: None)
    assert inet.mitigation["tile"] == 64
