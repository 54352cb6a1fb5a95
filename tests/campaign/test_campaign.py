"""Campaign engine end to end: specs, the SQLite store, resume after kill -9, stop rules, CLI."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from qfault import QFaultConfigError
from qfault.campaign import CampaignSpec, CampaignStore, StoreMismatch, run_campaign, spec_diff
from qfault.campaign._stats import leveugle_sample_size
from qfault.cli.main import main
from qfault.testing import store_rows

FACTORY = "qfault.testing:tiny_digits_mlp"


def spec_dict(tmp_path: Path, **changes) -> dict:
    data = {
        "name": "t",
        "seed": 3,
        "model": {"source": "factory", "factory": FACTORY},
        "dataset": "digits",
        "limit": 120,
        "batch_size": 64,
        "faults": [{"fault": {"type": "bit_flip", "ber": 0.01}, "site": "weight", "format": "int8",
                    "persistence": "permanent"}],
        "sweep": {"fault.ber": [0.0, 0.02]},
        "repetitions": 3,
        "store": str(tmp_path / "t.qfault.db"),
    }
    data.update(changes)
    return data


rows = store_rows


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- spec -------------------------------------------------------------------------------------

def test_yaml_round_trip_and_fingerprint(tmp_path):
    path = tmp_path / "c.yaml"
    data = spec_dict(tmp_path)
    data.pop("store")
    path.write_text(yaml.safe_dump(data))
    spec = CampaignSpec.from_yaml(path)
    assert spec.store_path() == tmp_path / "c.qfault.db"
    assert CampaignSpec.from_dict(spec.to_dict()).fingerprint() == spec.fingerprint()
    renamed = CampaignSpec.from_yaml(path, ["name=other", f"store={tmp_path / 'x.db'}"])
    assert renamed.fingerprint() == spec.fingerprint()  # name and store do not change results
    changed = CampaignSpec.from_yaml(path, ["seed=4", "sweep.fault.ber=[0.0, 0.05]"])
    assert changed.fingerprint() != spec.fingerprint()
    diff = spec_diff(spec.to_dict(), changed.to_dict())
    assert "seed: 3 -> 4" in diff and any(line.startswith("sweep.fault.ber.1: 0.02 -> 0.05") for line in diff)


@pytest.mark.parametrize("change, field", [
    ({"unknown_key": 1}, "unknown_key"),
    ({"stop": {"rule": "fixed", "margin": 2.0}}, "stop.margin"),
    ({"stop": {"rule": "sometimes"}}, "stop.rule"),
    ({"repetitions": 0}, "repetitions"),
    ({"model": {"source": "factory"}}, "model.factory"),
    ({"model": {"source": "demo", "colour": 1}}, "model.colour"),
    ({"sweep": {"fault.ber": [0.1, 2.0]}}, "sweep"),
    ({"faults": [{"fault": {"type": "bit_flip", "ber": 0.1}, "sight": "weight"}]}, "sight"),
    ({"faults": [{"fault": {"type": "no_such_fault"}}]}, "fault"),
])
def test_bad_specs_fail_before_any_work_naming_the_field(tmp_path, change, field):
    with pytest.raises(QFaultConfigError) as info:
        CampaignSpec.from_dict(spec_dict(tmp_path, **change))
    assert field in str(info.value)
    assert not (tmp_path / "t.qfault.db").exists()


def test_every_bad_field_is_reported_at_once(tmp_path):
    bad = spec_dict(tmp_path, batch_size=0, colour="red",
                    faults=[{"fault": {"type": "bit_flip", "ber": 2.0}, "site": "weight", "format": "int8"}])
    with pytest.raises(QFaultConfigError) as info:
        CampaignSpec.from_dict(bad)
    assert info.value.fields == ["batch_size", "faults[0].fault.ber", "colour"]  # in the order of the spec
    lines = str(info.value).splitlines()
    assert lines[0] == "3 invalid fields:"
    assert lines[1] == "  batch_size=0 is invalid: allowed an integer in [1, 10000000]"
    assert lines[2] == "  faults[0].fault.ber=2.0 is invalid: allowed a number in [0.0, 1.0]"
    assert lines[3].startswith("  colour='red' is invalid: allowed keys name, seed,") and "(unknown key)" in lines[3]
    # sweep values are named by their sweep path, each bad value once (not once per point)
    with pytest.raises(QFaultConfigError) as info:
        CampaignSpec.from_dict(spec_dict(tmp_path, sweep={"fault.ber": [0.1, 2.0, 3.0], "format": ["int8", "int4"]},
                                         stop={"rule": "fixd", "margin": 2.0}, sdc_thresholds=[-1]))
    assert info.value.fields == ["sweep.fault.ber", "sweep.fault.ber", "stop.rule", "stop.margin", "sdc_thresholds"]
    assert [e.value for e in info.value.errors[:2]] == [2.0, 3.0]
    # overrides: a list index, a sweep path; a typo gets the closest key
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(spec_dict(tmp_path)))
    with pytest.raises(QFaultConfigError) as info:
        CampaignSpec.from_yaml(path, ["sweep.fault.ber=[0, 7]", "repetition=2", "batch_size=0"])
    assert info.value.fields == ["batch_size", "sweep.fault.ber", "repetition"]
    assert "did you mean 'repetitions'?" in str(info.value) and f"in {path}:" in str(info.value)
    with pytest.raises(QFaultConfigError, match=r"^faults\[0\]\.fault\.ber=1\.5 is invalid"):
        CampaignSpec.from_yaml(path, ["faults.0.fault.ber=1.5"])
    spec = CampaignSpec.from_yaml(path, ["faults.0.fault.ber=1e-3", "sweep.fault.ber=[0, 1e-2]", "stop.rule=ci"])
    assert spec.faults[0]["fault"]["ber"] == 0.001 and spec.sweep == {"fault.ber": [0, 0.01]}
    assert spec.stop.rule == "ci"


def test_cli_validate_lists_every_error_without_a_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(sort_keys=False, data=spec_dict(tmp_path, batch_size=0, colour="red", faults=[
        {"fault": {"type": "bit_flip", "ber": 2.0}, "site": "weight", "format": "int8"}])))
    result = subprocess.run([sys.executable, "-m", "qfault.cli.main", "campaign", "validate", str(path),
                             "stop.rule=sometimes"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == f"qfault: error: 4 invalid fields in {path}:"
    assert [line.split("=")[0].strip() for line in lines[1:]] == ["batch_size", "faults[0].fault.ber", "colour",
                                                                   "stop.rule"]
    assert not (tmp_path / "t.qfault.db").exists()


def test_valid_specs_keep_their_fingerprint(tmp_path):
    """Stores written before keep opening: the fingerprints of these specs are pinned."""
    from importlib.resources import files

    folder = files("qfault") / "configs"
    for name, expected in [
        ("campaign_digits.yaml", "c0a5a7cc5d56faec611f30cd5bd3bc73af35ea61ed6d8d4cb9bf87cbffdae2e4"),
        ("campaign_seed000.yaml", "6ac0610046748230a5a29b23f2c344c82e63c95c0b6a416992377c32b2d558e8"),
    ]:
        spec = CampaignSpec.from_yaml(folder / name)
        assert spec.fingerprint() == expected, name
        assert spec.store_path() == Path(str(folder / name)).with_suffix(".qfault.db")
        assert CampaignSpec.from_dict(spec.to_dict()).to_dict() == spec.to_dict()
    spec = CampaignSpec.from_dict(spec_dict(tmp_path, faults=[
        {"fault": {"type": "bit_flip", "ber": 0.01, "bits": [7]}, "site": "output", "format": "int8",
         "types": ["ReLU"], "indices": [0]}], stop={"rule": "ci", "half_width": 0.5}))
    assert spec.fingerprint() == "48f4f2d5ff26c04733dafb36b86aa242ea7ea584828263b973314ac9989db155"


def test_sweep_points_are_the_cartesian_product(tmp_path):
    spec = CampaignSpec.from_dict(spec_dict(tmp_path, sweep={"fault.ber": [0.0, 0.1], "format": ["int8", "int4"]}))
    assert spec.points() == [{"fault.ber": 0.0, "format": "int8"}, {"fault.ber": 0.0, "format": "int4"},
                             {"fault.ber": 0.1, "format": "int8"}, {"fault.ber": 0.1, "format": "int4"}]


# -- store ------------------------------------------------------------------------------------

def test_foreign_and_corrupt_files_are_refused_untouched(tmp_path):
    spec = CampaignSpec.from_dict(spec_dict(tmp_path))
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    conn.execute("INSERT INTO meta VALUES ('format', 'something-else')")
    conn.commit()
    conn.close()
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(os.urandom(4096))
    for path in (foreign, corrupt):
        before = digest(path)
        with pytest.raises(QFaultConfigError, match="store"):
            CampaignStore(path, spec)
        assert digest(path) == before
        assert not Path(str(path) + "-wal").exists()


def test_resuming_with_another_spec_is_refused_with_a_diff(tmp_path):
    spec = CampaignSpec.from_dict(spec_dict(tmp_path))
    CampaignStore(spec.store_path(), spec).close()
    other = CampaignSpec.from_dict(spec_dict(tmp_path, seed=9, repetitions=4))
    with pytest.raises(StoreMismatch) as info:
        CampaignStore(other.store_path(), other)
    assert "seed: 3 -> 9" in str(info.value) and "repetitions: 3 -> 4" in str(info.value)


# -- running ----------------------------------------------------------------------------------

def test_run_records_every_trial_and_is_deterministic(tmp_path):
    spec = CampaignSpec.from_dict(spec_dict(tmp_path))
    result = run_campaign(spec, progress=False, log=lambda *_: None)
    assert [p.trials for p in result.points] == [3, 3]
    clean, faulty = result.points
    # BER 0: every image masked, accuracy equals the golden run
    assert clean.counts["masked"] == clean.counts["images"] == 3 * 120
    assert clean.accuracy_mean == pytest.approx(result.golden_accuracy)
    assert faulty.counts["masked"] < faulty.counts["images"]
    again = CampaignSpec.from_dict(spec_dict(tmp_path, store=str(tmp_path / "again.db")))
    run_campaign(again, progress=False, log=lambda *_: None)
    assert rows(spec.store_path()) == rows(again.store_path())
    # a finished campaign run again adds nothing
    run_campaign(spec, progress=False, log=lambda *_: None)
    assert len(rows(spec.store_path())) == 6


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path):
    killed = tmp_path / "killed.yaml"
    # enough trials that the kill lands midway even when they take a millisecond each
    data = spec_dict(tmp_path, repetitions=150, store=str(tmp_path / "killed.db"))
    killed.write_text(yaml.safe_dump(data))
    proc = subprocess.Popen([sys.executable, "-m", "qfault.cli.main", "campaign", "run", str(killed), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = tmp_path / "killed.db"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if store.exists():
                try:
                    if len(rows(store)) >= 4:
                        break
                except sqlite3.Error:
                    pass
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    partial = rows(store)
    assert 4 <= len(partial) < 300, "the campaign must have been killed midway"
    resumed = run_campaign(CampaignSpec.from_yaml(killed), progress=False, log=lambda *_: None)
    assert [p.trials for p in resumed.points] == [150, 150]
    straight = CampaignSpec.from_dict(spec_dict(tmp_path, repetitions=150, store=str(tmp_path / "straight.db")))
    run_campaign(straight, progress=False, log=lambda *_: None)
    assert rows(store) == rows(straight.store_path())


def test_ci_stop_rule_stops_between_min_and_max(tmp_path):
    spec = CampaignSpec.from_dict(spec_dict(
        tmp_path, stop={"rule": "ci", "half_width": 0.5, "min_repetitions": 3, "max_repetitions": 7}))
    result = run_campaign(spec, progress=False, log=lambda *_: None)
    clean, faulty = result.points
    assert clean.trials == 3  # no variance at BER 0: stops at the minimum
    assert 3 <= faulty.trials <= 7
    assert faulty.trials == 7 or faulty.accuracy_ci <= 0.5


def test_leveugle_rule_sets_the_repetitions(tmp_path):
    stop = {"rule": "leveugle", "margin": 0.3, "confidence": 0.95, "p": 0.5}
    spec = CampaignSpec.from_dict(spec_dict(tmp_path, stop=stop, sweep={"fault.ber": [0.01]}))
    result = run_campaign(spec, progress=False, log=lambda *_: None)
    assert result.points[0].trials == leveugle_sample_size(float("inf"), 0.3, 0.95, 0.5)


def test_per_layer_sweep_with_each(tmp_path):
    spec = CampaignSpec.from_dict(spec_dict(tmp_path, sweep={"indices": "each"}, repetitions=1))
    result = run_campaign(spec, progress=False, log=lambda *_: None)
    assert [p.values for p in result.points] == [{"indices": [0]}, {"indices": [1]}]


def test_cli_run_status_report(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(spec_dict(tmp_path, repetitions=2)))
    assert main(["campaign", "validate", str(path)]) == 0
    assert main(["campaign", "run", str(path), "--no-progress"]) == 0
    assert main(["campaign", "status", str(path)]) == 0
    assert "4 trials completed" in capsys.readouterr().out
    out = tmp_path / "report"
    assert main(["campaign", "report", str(path), "--out", str(out)]) == 0
    for name in ("summary.json", "points.csv", "trials.csv", "accuracy.png", "outcomes.png", "report.html"):
        assert (out / name).stat().st_size > 0, name
    assert len((out / "trials.csv").read_text().splitlines()) == 1 + 4
    assert main(["campaign", "run", str(path), "seed=5", "--no-progress"]) == 2
    assert "seed: 3 -> 5" in capsys.readouterr().err


def test_prefix_reuse_gives_identical_rows(tmp_path):
    base = dict(sweep={"indices": "each"}, repetitions=2,
                faults=[{"fault": {"type": "bit_flip", "count": 3}, "site": "output", "types": ["ReLU", "Linear"],
                         "format": "int8"}])
    reuse = CampaignSpec.from_dict(spec_dict(tmp_path, **base, store=str(tmp_path / "reuse.db")))
    plain = CampaignSpec.from_dict(spec_dict(tmp_path, **base, store=str(tmp_path / "plain.db"), reuse_prefix=False))
    assert reuse.fingerprint() == plain.fingerprint()
    result = run_campaign(reuse, progress=False, log=lambda *_: None)
    run_campaign(plain, progress=False, log=lambda *_: None)
    assert len(result.points) == 3
    from qfault.campaign import load_batches
    from qfault.campaign._plan import plan_campaign
    from qfault.campaign._runner import prepare_prefix
    from qfault.testing import tiny_digits_mlp

    model = tiny_digits_mlp()
    _, names, _ = prepare_prefix(plan_campaign(reuse, model), model, load_batches(reuse))
    assert [names[i][-1] for i in range(3)] == ["1", "2", "3"]  # each faulted layer's clean output
    assert rows(reuse.store_path()) == rows(plain.store_path())
    assert any(p.counts["masked"] < p.counts["images"] for p in result.points)


def test_prefix_order_and_maximal_modules():
    import torch
    from torch import nn

    from qfault.campaign._prefix import reusable_prefix, trace_order

    shared = nn.ReLU()
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 4), shared), nn.Linear(4, 4), shared, nn.Linear(4, 2))
    order = trace_order(model, torch.ones(1, 4))
    assert order["0.1"][2] == 2  # the shared ReLU (named once) is called twice per forward
    assert reusable_prefix(order, ["3"]) == ["0", "1"]  # maximal modules only
    assert reusable_prefix(order, ["0.1"]) == ["0.0"]  # faulting the shared ReLU: only what runs before it
    assert reusable_prefix(order, ["1"]) == ["0"]
    assert reusable_prefix(order, ["0.0"]) == []


def test_stuck_at_mitigation_campaign(tmp_path):
    """Seed 000's experiment in small: stuck-at rates x mitigation methods on SeedQuantLinear layers."""
    data = spec_dict(tmp_path, model={"source": "factory", "factory": "qfault.testing:tiny_digits_seed_quant"},
                     faults=[], mitigation={"rate": 1.0, "method": "cvm", "tile": 16},
                     sweep={"mitigation.rate": [0.0, 5.0], "mitigation.method": ["raw", "cvm", "sign_flip", "bit_flip"]},
                     repetitions=2)
    spec = CampaignSpec.from_dict(data)
    result = run_campaign(spec, progress=False, log=lambda *_: None)
    by_values = {(p.values["mitigation.rate"], p.values["mitigation.method"]): p for p in result.points}
    for method in ("raw", "cvm", "sign_flip", "bit_flip"):
        assert by_values[(0.0, method)].counts["masked"] == by_values[(0.0, method)].counts["images"]
    faulty = {m: by_values[(5.0, m)] for m in ("raw", "cvm", "sign_flip", "bit_flip")}
    assert all(p.counts["masked"] < p.counts["images"] for p in faulty.values())
    # the float baseline is the unquantized MLP on the same images
    import torch

    from qfault.campaign import load_batches, predict
    from qfault.testing import tiny_digits_mlp

    batches = load_batches(spec)
    labels = torch.cat([y for _, y in batches])
    expected = 100.0 * float((predict(tiny_digits_mlp(), batches).argmax(1) == labels).float().mean())
    assert result.float_accuracy == pytest.approx(expected)
    with pytest.raises(QFaultConfigError, match="mitigation"):
        CampaignSpec.from_dict({**data, "mitigation": {"rate": 1.0, "method": "magic"}})
    with pytest.raises(QFaultConfigError, match="sweep"):
        CampaignSpec.from_dict({**data, "sweep": {"fault.ber": [0.1]}})


def test_stuck_at_handle_restores_codes_exactly():
    import torch

    from qfault import inject
    from qfault.mitigation import StuckAtSpec, stuck_layers
    from qfault.testing import tiny_digits_mlp, tiny_digits_seed_quant

    model = tiny_digits_seed_quant()
    before = [layer.weight_codes.clone() for _, layer in stuck_layers(model)]
    with inject(model, StuckAtSpec(rate=10.0, method="sign_flip", seed=3)) as handle:
        assert handle.changed_weights > 0
        after = [layer.weight_codes for _, layer in stuck_layers(model)]
        assert any(not torch.equal(a, b) for a, b in zip(before, after))
    assert all(torch.equal(a, layer.weight_codes) for a, (_, layer) in zip(before, stuck_layers(model)))
    with pytest.raises(QFaultConfigError, match="SeedQuantLinear"):
        inject(tiny_digits_mlp(), StuckAtSpec(rate=1.0))


def test_methods_share_fault_maps_and_order_by_weight_error():
    """Same seed, same maps: per weight CVM <= raw, and per group bit_flip, sign_flip <= CVM."""
    from qfault import inject
    from qfault.mitigation import StuckAtSpec, stuck_layers
    from qfault.testing import tiny_digits_seed_quant

    model = tiny_digits_seed_quant()
    clean = [layer.weight_codes.clone() for _, layer in stuck_layers(model)]
    errors = {}
    for method in ("raw", "cvm", "sign_flip", "bit_flip"):
        with inject(model, StuckAtSpec(rate=8.0, method=method, tile=16, seed=11)) as handle:
            errors[method] = sum(int((layer.weight_codes - c).abs().sum())
                                 for c, (_, layer) in zip(clean, stuck_layers(model)))
            assert handle.stuck_cells > 0
    assert errors["raw"] > errors["cvm"] >= max(errors["sign_flip"], errors["bit_flip"])


def test_float_mode_computes_the_unquantized_layers():
    import torch

    from qfault.layers import float_mode
    from qfault.testing import tiny_digits_mlp, tiny_digits_seed_quant

    x = torch.randn(7, 1, 8, 8)
    model = tiny_digits_seed_quant()
    quantized = model(x)
    with float_mode(model):
        assert torch.allclose(model(x), tiny_digits_mlp()(x), rtol=0, atol=1e-6)
    assert torch.equal(model(x), quantized)


@pytest.mark.filterwarnings("ignore:imagenet_val")
def test_seed_000_campaign_on_a_vit_with_imagenet_style_files(tmp_path):
    """The seed's setting end to end, small: a timm ViT (random init, no download) with quantized
    Linear layers, ImageNet-val file names, stuck-at rates x mitigation methods."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "val"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i, synset in enumerate(["n01440764", "n01443537", "n01440764", "n01443537"]):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"ILSVRC2012_val_{i + 1:08d}_{synset}.JPEG")
    checkpoint = tmp_path / "vit.pth"
    import timm
    import torch

    torch.manual_seed(0)
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2).state_dict(), checkpoint)
    spec = CampaignSpec.from_dict({
        "name": "vit", "store": str(tmp_path / "vit.db"), "batch_size": 4,
        "model": {"source": "factory", "factory": "qfault.layers:seed_quant_vit",
                  "kwargs": {"name": "vit_tiny_patch16_224", "num_classes": 2, "checkpoint": str(checkpoint)}},
        "dataset": {"name": "imagenet_val", "root": str(root), "resize": None},
        "faults": [], "mitigation": {"rate": 2.0, "method": "cvm"},
        "sweep": {"mitigation.method": ["raw", "sign_flip"]}, "repetitions": 1,
    })
    result = run_campaign(spec, progress=False, log=lambda *_: None)
    assert [p.values["mitigation.method"] for p in result.points] == ["raw", "sign_flip"]
    assert result.float_accuracy is not None
    assert all(p.counts["images"] == 4 and p.counts["masked"] < 4 for p in result.points)


def test_sweep_over_fault_models_and_bit_positions(tmp_path):
    models = [{"type": "bit_flip", "count": 2, "bits": [7]}, {"type": "stuck_at", "rate": 2.0},
              {"type": "random_value", "probability": 1.0}]
    spec = CampaignSpec.from_dict(spec_dict(tmp_path, sweep={"fault": models}, repetitions=1, limit=64))
    result = run_campaign(spec, progress=False, log=lambda *_: None)
    assert [p.values["fault"]["type"] for p in result.points] == ["bit_flip", "stuck_at", "random_value"]
    bits = CampaignSpec.from_dict(spec_dict(tmp_path, faults=[{"fault": {"type": "bit_flip", "count": 4, "bits": [0]},
                                                               "site": "weight", "format": "int8"}],
                                            sweep={"fault.bits": [[0], [7]]}, repetitions=2, limit=64,
                                            store=str(tmp_path / "bits.db")))
    low, high = run_campaign(bits, progress=False, log=lambda *_: None).points
    assert low.values == {"fault.bits": [0]} and high.values == {"fault.bits": [7]}
    assert low.counts["sdc1"] < high.counts["sdc1"]  # flipping the MSB changes more decisions
    with pytest.raises(QFaultConfigError, match="bits"):
        CampaignSpec.from_dict(spec_dict(tmp_path, sweep={"fault.bits": [[9]]}))


@pytest.mark.parametrize("faults", [
    [{"fault": {"type": "bit_flip", "count": 2}, "site": "weight"}],  # Brevitas weight codes
    [{"fault": {"type": "bit_flip", "ber": 0.01}, "site": "weight", "format": "int8"}],  # float weights
    [{"fault": {"type": "bit_flip", "count": 1}, "site": "output", "per_image": True}],  # activations
], ids=["codes", "float", "act"])
def test_replayed_weight_quantizers_give_identical_rows(tmp_path, faults):
    pytest.importorskip("brevitas")
    from qfault.campaign import load_batches
    from qfault.campaign._plan import plan_campaign
    from qfault.campaign._runner import prepare_prefix
    from qfault.testing import tiny_digits_brevitas

    common = dict(model={"source": "factory", "factory": "qfault.testing:tiny_digits_brevitas"}, faults=faults,
                  sweep={"indices": "each"}, repetitions=2, limit=64, stack_trials=1)
    reuse = CampaignSpec.from_dict(spec_dict(tmp_path, **common, store=str(tmp_path / "reuse.db")))
    plain = CampaignSpec.from_dict(spec_dict(tmp_path, **common, reuse_prefix=False, store=str(tmp_path / "plain.db")))
    result = run_campaign(reuse, progress=False, log=lambda *_: None)
    run_campaign(plain, progress=False, log=lambda *_: None)
    assert rows(reuse.store_path()) == rows(plain.store_path())
    assert any(p.counts["masked"] < p.counts["images"] for p in result.points)
    model = tiny_digits_brevitas()
    prefix, names, _ = prepare_prefix(plan_campaign(reuse, model), model, load_batches(reuse))
    replayed = [{name for name in names[i] if name in prefix.constants} for i in range(2)]
    if "format" in faults[0]:  # a layer whose float weights are faulted must requantize them
        assert replayed == [{"4.weight_quant"}, {"2.weight_quant"}]
    else:
        assert replayed == [{"2.weight_quant", "4.weight_quant"}] * 2
    if faults[0]["site"] == "output":  # the faulted layer's clean output, before the fault hook
        assert "0.act_quant" in names[0] and "3.act_quant" in names[1]
        assert "0" in names[1] and "3" not in names[1]  # the prefix before layer 3, not layer 3 itself


def test_a_bad_data_or_model_path_leaves_no_store_behind(tmp_path):
    bad_data = CampaignSpec.from_dict(spec_dict(tmp_path, dataset={"name": "cifar10", "root": str(tmp_path / "nope")}))
    with pytest.raises(QFaultConfigError, match="dataset.root"):
        run_campaign(bad_data, progress=False, log=lambda *_: None)
    assert not bad_data.store_path().exists()
    bad_model = CampaignSpec.from_dict(spec_dict(tmp_path, model={
        "source": "factory", "factory": "qfault.layers:seed_quant_vit",
        "kwargs": {"name": "vit_tiny_patch16_224", "checkpoint": str(tmp_path / "missing.pth")}}))
    with pytest.raises(QFaultConfigError, match=r"^model\.kwargs\.checkpoint="):
        run_campaign(bad_model, progress=False, log=lambda *_: None)
    assert not bad_model.store_path().exists()
    fixed = CampaignSpec.from_dict(spec_dict(tmp_path, repetitions=1))  # same store path, corrected spec
    assert [p.trials for p in run_campaign(fixed, progress=False, log=lambda *_: None).points] == [1, 1]


class CountingExecutor:
    """In process; records how many trials each task it runs holds."""

    def __init__(self):
        self.tasks: list[int] = []

    def map(self, fn, items):
        for item in items:
            self.tasks.append(len(item))
            yield fn(item)


@pytest.mark.parametrize("per_task", [1, 3])
def test_trials_classified_together_give_the_rows_of_one_at_a_time(tmp_path, per_task):
    common = dict(repetitions=7, sweep={"fault.ber": [0.005, 0.05]})
    grouped = CampaignSpec.from_dict(spec_dict(tmp_path, **common, store=str(tmp_path / "grouped.db")))
    default = CountingExecutor()
    run_campaign(grouped, executor=default, progress=False, log=lambda *_: None)
    assert default.tasks == [7, 7]  # eight per task by default: one task per point
    single = CampaignSpec.from_dict(spec_dict(tmp_path, **common, store=str(tmp_path / "single.db")))
    small = CountingExecutor()
    run_campaign(single, executor=small, trials_per_task=per_task, progress=False, log=lambda *_: None)
    assert small.tasks == ([1] * 7 if per_task == 1 else [3, 3, 1]) * 2
    assert rows(grouped.store_path()) == rows(single.store_path())
    assert len(rows(single.store_path())) == 14
    with pytest.raises(QFaultConfigError, match="trials_per_task"):
        run_campaign(single, trials_per_task=0, progress=False, log=lambda *_: None)
