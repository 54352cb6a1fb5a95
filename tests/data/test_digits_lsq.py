"""The mixed-precision LSQ demo model: QAT, fault-aware training from settings, and a campaign."""

from __future__ import annotations

import pytest
import torch

from qfault import QFaultConfigError
from qfault.campaign import CampaignSpec, CampaignStore, run_campaign
from qfault.data import build_model, load_demo_model
from qfault.layers import lsq_layers

FAT = [{"fault": {"type": "bit_flip", "ber": 0.01}, "site": "weight"}]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_fault_aware_training_is_its_own_reproducible_variant(tmp_path):
    clean, trained = load_demo_model("digits_lsq", epochs=1, cache=tmp_path / "a", log=lambda *_: None)
    fat, _ = load_demo_model("digits_lsq", epochs=1, cache=tmp_path / "a", train_faults=FAT, log=lambda *_: None)
    again, _ = load_demo_model("digits_lsq", epochs=1, cache=tmp_path / "b", train_faults=FAT, log=lambda *_: None)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert trained and len(files) == 2 and files[0] != files[1]  # one cache file per variant
    assert any(not torch.equal(v, _state(clean)[k]) for k, v in _state(fat).items())
    assert all(torch.equal(v, _state(again)[k]) for k, v in _state(fat).items())  # seeded: reproducible
    # the faults were removed after training: evaluation is clean and deterministic
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(fat(x), fat(x)) and torch.equal(fat(x), again(x))
    assert not any(m._forward_hooks for m in fat.modules())


def test_model_kwargs_choose_the_bit_widths(tmp_path):
    model, _ = load_demo_model("digits_lsq", epochs=1, cache=tmp_path, model_kwargs={"config_index": 1},
                               log=lambda *_: None)
    assert [layer.bit_widths() for _, layer in lsq_layers(model)] == [(8, 8), (4, 4), (4, 4), (4, 4), (8, 8)]
    with pytest.raises(QFaultConfigError, match=r"model_kwargs.bitwidths=.*arguments of the digits_lsq builder: "
                                                r"bit_widths, config_index"):
        load_demo_model("digits_lsq", cache=tmp_path, model_kwargs={"bitwidths": "x.json"})
    with pytest.raises(QFaultConfigError, match=r"train_faults\[0\]\.site=.*allowed one of 'weight'"):
        load_demo_model("digits_lsq", cache=tmp_path, train_faults=[{"fault": {"type": "bit_flip", "ber": 0.1},
                                                                     "site": "weights"}])
    with pytest.raises(QFaultConfigError, match="config_index=5"):
        build_model("digits_lsq", config_index=5)


def test_campaign_on_the_lsq_model_faults_its_weight_codes(tmp_path):
    spec = CampaignSpec.from_dict({
        "name": "lsq", "seed": 0, "store": str(tmp_path / "lsq.qfault.db"),
        "model": {"source": "demo", "name": "digits_lsq", "kwargs": {"epochs": 2, "cache": str(tmp_path)}},
        "dataset": "digits", "limit": 64, "batch_size": 64,
        "faults": [{"fault": {"type": "bit_flip", "ber": 0.0, "nested": True}, "site": "weight",
                    "persistence": "permanent"}],
        "sweep": {"fault.ber": [0.0, 0.05]},
        "repetitions": 2,
    })
    result = run_campaign(spec, progress=False, log=lambda *_: None)
    by = {p.values["fault.ber"]: p for p in result.points}
    assert by[0.0].counts["masked"] == 128 and by[0.0].accuracy_mean == pytest.approx(result.golden_accuracy)
    assert by[0.05].counts["masked"] < 128


def test_paired_sweep_points_share_seeds_and_nested_faults_grow(tmp_path):
    base = {
        "name": "lsq", "seed": 0,
        "model": {"source": "demo", "name": "digits_lsq", "kwargs": {"epochs": 2, "cache": str(tmp_path)}},
        "dataset": "digits", "limit": 32, "batch_size": 32,
        "faults": [{"fault": {"type": "bit_flip", "ber": 0.0, "nested": True}, "site": "weight",
                    "persistence": "permanent"}],
        "sweep": {"fault.ber": [0.002, 0.01, 0.05]}, "repetitions": 3,
    }
    unpaired = CampaignSpec.from_dict({**base, "store": str(tmp_path / "a.db")})
    assert "paired" not in unpaired.to_dict()  # older fingerprints are unchanged
    paired = CampaignSpec.from_dict({**base, "store": str(tmp_path / "b.db"), "paired": ["fault.ber"]})
    assert paired.fingerprint() != unpaired.fingerprint()
    run_campaign(paired, progress=False, log=lambda *_: None)
    rows = sorted(CampaignStore(paired.store, paired, create=False).trials(), key=lambda r: (r.repetition, r.point))
    for repetition in range(3):
        mine = [r for r in rows if r.repetition == repetition]
        assert len({r.seed for r in mine}) == 1  # one seed at every BER
        changed = [r.faults for r in mine]
        assert changed == sorted(changed) and changed[0] < changed[-1]  # the nested flips only grow
    with pytest.raises(QFaultConfigError, match="paired='fault.bits' is invalid: allowed sweep paths: fault.ber"):
        CampaignSpec.from_dict({**base, "paired": ["fault.bits"]})


def test_a_changed_bit_width_file_is_a_new_cache_entry(tmp_path):
    import json

    path = tmp_path / "bits.json"
    path.write_text(json.dumps({"configurations": [{"weight_bits": [4, 4, 4], "act_bits": [4, 4, 4]}]}))
    cache = tmp_path / "cache"
    _, trained = load_demo_model("digits_lsq", epochs=1, cache=cache, model_kwargs={"bit_widths": str(path)},
                                 log=lambda *_: None)
    _, again = load_demo_model("digits_lsq", epochs=1, cache=cache, model_kwargs={"bit_widths": str(path)},
                               log=lambda *_: None)
    assert trained and not again  # the same file: the cached model
    path.write_text(json.dumps({"configurations": [{"weight_bits": [2, 2, 2], "act_bits": [4, 4, 4]}]}))
    model, retrained = load_demo_model("digits_lsq", epochs=1, cache=cache, model_kwargs={"bit_widths": str(path)},
                                       log=lambda *_: None)
    assert retrained and len(list(cache.iterdir())) == 2
    assert [layer.bit_widths() for _, layer in lsq_layers(model)][1:4] == [(2, 4)] * 3
