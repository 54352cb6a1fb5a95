"""Stores never mix or lose results: model/data digests, golden check on resume, atomic creation,
refusals that leave every file untouched, integrity checks, a lock per writer, extending a
finished campaign, and model-dependent checks before anything is written."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from qfault import QFaultConfigError
from qfault.campaign import (
    CampaignSpec, CampaignStore, StoreMismatch, TrialContext, TrialFunction, check_campaign, load_batches,
    model_digest, run_campaign, spec_extension,
)
from qfault.campaign import _store
from qfault.campaign._store import TrialRow
from qfault.cli.main import main
from qfault.testing import tiny_digits_mlp
from test_campaign import rows, spec_dict

QUIET = {"progress": False, "log": lambda *_: None}


def files(path: Path) -> dict[str, str]:
    """SHA-256 of the store and of its -wal/-shm files (those that exist)."""
    out = {}
    for suffix in ("", "-wal", "-shm"):
        f = Path(str(path) + suffix)
        if f.exists():
            out[suffix] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def checkpoint_spec(tmp_path: Path, seed: int = 0, **changes) -> CampaignSpec:
    """A campaign on a checkpoint file (the tiny MLP of ``seed``), whose content can change."""
    path = tmp_path / "model.pt"
    torch.save(tiny_digits_mlp(seed).state_dict(), path)
    model = {"source": "checkpoint", "factory": "qfault.testing:tiny_digits_mlp", "path": str(path)}
    return CampaignSpec.from_dict(spec_dict(tmp_path, model=model, **changes))


def crashed_copy(tmp_path: Path, spec: CampaignSpec, trials: int = 3) -> Path:
    """A store as ``kill -9`` leaves it: trials committed in the -wal, never checkpointed."""
    run_campaign(spec, **QUIET)
    store = CampaignStore(spec.store_path(), spec)
    store.conn.execute("PRAGMA wal_autocheckpoint=0")
    for r in range(trials):
        store.add_trial(TrialRow(0, 100 + r, {"fault.ber": 0.0}, 1, 50.0, {"images": 1}, 0, 0.1))
    crash = tmp_path / "crash"
    crash.mkdir()
    for suffix in ("", "-wal", "-shm"):  # copied while the writer still holds it
        source = Path(str(spec.store_path()) + suffix)
        if source.exists():
            shutil.copy(source, crash / (source.name))
    store.close()
    assert Path(str(crash / spec.store_path().name) + "-wal").stat().st_size > 0
    return crash / spec.store_path().name


# -- what the trials depend on -----------------------------------------------------------------

def test_resume_after_the_model_file_changed_is_refused_untouched(tmp_path):
    spec = checkpoint_spec(tmp_path, repetitions=2)
    run_campaign(spec, **QUIET)
    before = files(spec.store_path())
    changed = checkpoint_spec(tmp_path, seed=1, repetitions=3)  # same spec text, other weights
    with pytest.raises(QFaultConfigError, match=r"the model changed since the store was created \(model_digest"):
        run_campaign(changed, **QUIET)
    assert files(spec.store_path()) == before
    assert len(rows(spec.store_path())) == 4


def test_resume_with_other_data_is_refused(tmp_path):
    spec = CampaignSpec.from_dict(spec_dict(tmp_path, repetitions=1))
    batches = load_batches(spec)
    run_campaign(spec, batches=batches, **QUIET)
    other = [(x.flip(-1), y) for x, y in batches]  # the same shapes, other images
    with pytest.raises(QFaultConfigError, match="the evaluated data changed"):
        run_campaign(spec, batches=other, **QUIET)


def test_resume_checks_the_golden_run_bit_for_bit(tmp_path):
    """A store without digests (older versions) is still protected by the golden run."""
    spec = checkpoint_spec(tmp_path, repetitions=1)
    run_campaign(spec, **QUIET)
    conn = sqlite3.connect(spec.store_path())
    conn.execute("DELETE FROM meta WHERE key IN ('model_digest', 'data_digest')")
    conn.commit()
    conn.close()
    before = files(spec.store_path())
    changed = checkpoint_spec(tmp_path, seed=1, repetitions=1)
    with pytest.raises(QFaultConfigError, match="a fault-free run now gives other logits than the stored golden"):
        run_campaign(changed, **QUIET)
    assert files(spec.store_path()) == before
    # the same model resumes (and gets its digests recorded)
    run_campaign(checkpoint_spec(tmp_path, repetitions=1), **QUIET)
    with CampaignStore(spec.store_path(), spec, create=False) as store:
        assert store.meta("model_digest") == model_digest(tiny_digits_mlp(0))


# -- creation ------------------------------------------------------------------------------------

def test_a_killed_creation_leaves_no_store(tmp_path, monkeypatch):
    spec = CampaignSpec.from_dict(spec_dict(tmp_path, repetitions=1))

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(_store.os, "link", killed)
    with pytest.raises(KeyboardInterrupt):
        run_campaign(spec, **QUIET)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.undo()
    # a temporary file of a dead process (kill -9 during creation) is cleared by the next creation
    stale = tmp_path / f".{spec.store_path().name}.999999999.creating"
    stale.write_bytes(b"half")
    result = run_campaign(spec, **QUIET)
    assert [p.trials for p in result.points] == [1, 1]
    assert not stale.exists()


def test_an_empty_store_is_made_anew(tmp_path):
    """What an older version's killed creation left (schema, no golden run, no trial)."""
    spec = CampaignSpec.from_dict(spec_dict(tmp_path, repetitions=1))
    CampaignStore(spec.store_path(), spec).close()
    result = run_campaign(spec, **QUIET)
    assert [p.trials for p in result.points] == [1, 1]
    with CampaignStore(spec.store_path(), spec, create=False) as store:
        assert store.golden() is not None and store.meta("golden_sha256")


# -- refusals leave every file untouched ------------------------------------------------------------

def test_refusing_a_changed_spec_after_a_crash_leaves_store_and_wal_untouched(tmp_path):
    spec = CampaignSpec.from_dict(spec_dict(tmp_path, repetitions=1))
    crashed = crashed_copy(tmp_path, spec)
    before = files(crashed)
    other = CampaignSpec.from_dict(spec_dict(tmp_path, repetitions=1, seed=9, store=str(crashed)))
    with pytest.raises(StoreMismatch, match="seed: 3 -> 9"):
        run_campaign(other, **QUIET)
    with pytest.raises(StoreMismatch):
        CampaignStore(crashed, other, create=False)
    assert files(crashed) == before
    # the crashed store itself is intact: its committed trials are all there
    same = CampaignSpec.from_dict(spec_dict(tmp_path, repetitions=1, store=str(crashed)))
    with CampaignStore(crashed, same, create=False) as store:
        assert store.count() == 2 + 3
    assert files(crashed) == before  # reading changes nothing either


def test_a_damaged_page_among_the_trials_is_refused_untouched(tmp_path):
    spec = CampaignSpec.from_dict(spec_dict(tmp_path, repetitions=1))
    with CampaignStore(spec.store_path(), spec) as store:
        for r in range(3000):  # many pages of trials
            store.add_trial(TrialRow(0, r, {"fault.ber": 0.0}, r, 50.0, {"images": 120, "masked": r}, 0, 0.1))
    path = spec.store_path()
    data = bytearray(path.read_bytes())
    assert not Path(str(path) + "-wal").exists() and len(data) > 20 * 4096
    data[10 * 4096:10 * 4096 + 64] = os.urandom(64)  # a page in the middle of the trials
    path.write_bytes(bytes(data))
    before = files(path)
    with pytest.raises(QFaultConfigError, match=r"store=.* is invalid: allowed an intact qfault campaign store "
                                                r"\(.*(malformed|integrity).*the file was left untouched"):
        CampaignStore(path, spec)
    assert main(["campaign", "--no-progress", "status", str(path)]) == 2
    assert files(path) == before


def test_an_altered_golden_run_that_still_decodes_is_refused(tmp_path, capsys):
    spec = CampaignSpec.from_dict(spec_dict(tmp_path, repetitions=1))
    run_campaign(spec, **QUIET)
    with CampaignStore(spec.store_path(), spec, create=False) as store:
        golden = store.golden()
    golden["logits"] = golden["logits"] + 1.0
    buffer = io.BytesIO()
    torch.save(golden, buffer)
    conn = sqlite3.connect(spec.store_path())
    conn.execute("UPDATE golden SET data = ?", (buffer.getvalue(),))
    conn.commit()
    conn.close()
    before = files(spec.store_path())
    for opener in (lambda: CampaignStore(spec.store_path(), spec), lambda: run_campaign(spec, **QUIET)):
        with pytest.raises(QFaultConfigError, match="the golden run's checksum does not match; the file was left "
                                                    "untouched"):
            opener()
    assert files(spec.store_path()) == before


def test_a_second_writer_is_refused_readers_are_not(tmp_path, capsys):
    spec = CampaignSpec.from_dict(spec_dict(tmp_path, repetitions=1))
    run_campaign(spec, **QUIET)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(spec_dict(tmp_path, repetitions=2)))
    with CampaignStore(spec.store_path(), spec):  # a run in progress
        with pytest.raises(QFaultConfigError, match="another 'qfault campaign run/resume' holds it"):
            CampaignStore(spec.store_path(), spec)
        capsys.readouterr()
        assert main(["campaign", "--no-progress", "run", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("qfault: error: store=") and "holds it" in err and "Traceback" not in err
        with CampaignStore(spec.store_path(), spec, create=False) as reader:
            assert reader.count() == 2
    assert main(["campaign", "--no-progress", "run", str(path)]) == 0  # released
    assert len(rows(spec.store_path())) == 4


# -- extending a campaign ---------------------------------------------------------------------------

def test_more_repetitions_and_sweep_values_extend_the_store(tmp_path):
    small = CampaignSpec.from_dict(spec_dict(tmp_path, repetitions=2, store=str(tmp_path / "grown.db")))
    run_campaign(small, **QUIET)
    kept = [row[1:5] for row in rows(small.store_path())]  # repetition, values, seed, accuracy
    messages = []
    grown = CampaignSpec.from_dict(spec_dict(tmp_path, repetitions=3, sweep={"fault.ber": [0.0, 0.01, 0.02]},
                                             store=str(tmp_path / "grown.db")))
    result = run_campaign(grown, progress=False, log=messages.append)
    assert messages == [f"Extending {tmp_path / 'grown.db'}: repetitions: 2 -> 3; sweep.fault.ber: adds [0.01]"]
    assert [p.trials for p in result.points] == [3, 3, 3]
    straight = CampaignSpec.from_dict(spec_dict(tmp_path, repetitions=3, sweep={"fault.ber": [0.0, 0.01, 0.02]},
                                                store=str(tmp_path / "straight.db")))
    run_campaign(straight, **QUIET)
    assert rows(grown.store_path()) == rows(straight.store_path())
    # every stored trial was kept (now under its point's new index: 0.02 moved from 1 to 2)
    assert len(kept) == 4 and set(kept) <= {row[1:5] for row in rows(grown.store_path())}
    # removing a value, or fewer repetitions, is not an extension
    for changes in ({"repetitions": 2}, {"sweep": {"fault.ber": [0.0, 0.01]}}):
        spec = CampaignSpec.from_dict(spec_dict(tmp_path, **{"repetitions": 3, **changes},
                                                store=str(tmp_path / "grown.db")))
        with pytest.raises(StoreMismatch):
            run_campaign(spec, **QUIET)


def test_spec_extension_lists_only_extensions():
    base = CampaignSpec.from_dict(spec_dict(Path("."))).to_dict()
    assert spec_extension(base, base) == []
    assert spec_extension(base, {**base, "repetitions": 5}) == ["repetitions: 3 -> 5"]
    assert spec_extension(base, {**base, "seed": 4}) is None
    assert spec_extension(base, {**base, "sweep": {"fault.ber": [0.0, 0.02, 0.5]}}) == ["sweep.fault.ber: adds [0.5]"]
    assert spec_extension(base, {**base, "sweep": {"fault.ber": [0.0]}}) is None
    assert spec_extension(base, {**base, "sweep": {"fault.ber": [0.0, 0.02], "fault.bits": [[0]]}}) is None
    assert spec_extension(base, {**base, "name": "other", "store": "x.db"}) == []  # not semantic


# -- model-dependent checks before anything is written ---------------------------------------------

def test_model_dependent_errors_are_all_reported_before_any_file(tmp_path, capsys):
    data = spec_dict(tmp_path, model={"source": "factory", "factory": "qfault.testing:tiny_digits_brevitas"},
                     faults=[{"fault": {"type": "bit_flip", "ber": 0.01, "bits": [9]}, "site": "weight"},
                             {"fault": {"type": "bit_flip", "ber": 0.01}, "site": "output", "types": ["Conv3d"]},
                             {"fault": {"type": "bit_flip", "ber": 0.01}, "site": "weight", "indices": [7]}],
                     sweep={"fault.ber": [0.0, 0.02]})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    for action in ("validate", "run"):
        assert main(["campaign", "--no-progress", action, str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("qfault: error: 3 invalid fields:\n")
        assert "faults[0].fault.bits=9 is invalid: allowed positions 0..7" in err
        assert "faults[1].types/names=" in err and "faults[2].indices=7 is invalid: allowed integers in [-2, 1]" in err
        assert "Traceback" not in err and "at sweep point" not in err  # every point has them
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]
    # an error at one sweep point only names it
    data.update(faults=[data["faults"][0]], sweep={"fault.bits": [[1], [9]]})
    path.write_text(yaml.safe_dump(data))
    assert main(["campaign", "--no-progress", "validate", str(path)]) == 2
    assert "(at sweep point {'fault.bits': [9]})" in capsys.readouterr().err
    data.update(sweep={"fault.bits": [[1], [2]]})
    path.write_text(yaml.safe_dump(data))
    assert main(["campaign", "--no-progress", "validate", str(path)]) == 0
    assert "valid; 2 sweep points, 6 trials" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_check_campaign_checks_a_thousand_points_in_groups(tmp_path):
    """A sweep over every single bit of a layer: one error among them is found and named."""
    sites = [[[e, b]] for e in range(64 * 32) for b in (0, 7)]
    sites[700] = [[64 * 32, 0]]  # one element past the layer
    spec = CampaignSpec.from_dict(spec_dict(tmp_path, repetitions=1, faults=[
        {"fault": {"type": "bit_flip", "sites": [[0, 0]]}, "site": "weight", "format": "int8", "indices": [0],
         "persistence": "permanent"}], sweep={"fault.sites": sites}))
    batches = load_batches(spec)
    with pytest.raises(QFaultConfigError) as info:
        check_campaign(spec, tiny_digits_mlp(), batches)
    assert str(info.value) == ("faults[0].fault.sites=(2048, 0) is invalid: allowed element < 2048 and bit < 8 "
                               "(at sweep point {'fault.sites': [[2048, 0]]})")
    del sites[700]
    plan = check_campaign(CampaignSpec.from_dict({**spec.to_dict(), "sweep": {"fault.sites": sites}}),
                          tiny_digits_mlp(), batches)
    assert len(plan.points) == 4095


@pytest.mark.parametrize("model, message", [
    ({"source": "demo", "name": "digits_cnn", "kwargs": {"epoch": 3}},
     "model.kwargs.epoch=3 is invalid: allowed keys epochs, cache, retrain, model_kwargs, train_faults"),
    ({"source": "factory", "factory": "qfault.testing:tiny_digits_mlp", "kwargs": {"width": 3}},
     "model.factory='qfault.testing:tiny_digits_mlp' is invalid: allowed a function that builds the model from "
     "model.kwargs (it raised TypeError: tiny_digits_mlp() got an unexpected keyword argument 'width')"),
    ({"source": "factory", "factory": "qfault.testing:__doc__"},
     "model.factory='qfault.testing:__doc__' is invalid: allowed a function that builds the model"),
    ({"source": "factory", "factory": "broken_factory_module:build"},
     "model.factory='broken_factory_module:build' is invalid: allowed an importable 'package.module:function' "
     "(SyntaxError"),
])
def test_bad_models_are_clear_errors(tmp_path, monkeypatch, capsys, model, message):
    (tmp_path / "broken_factory_module.py").write_text("def build(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(spec_dict(tmp_path, model=model)))
    assert main(["campaign", "--no-progress", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "t.qfault.db").exists()


# -- workers build the model themselves ---------------------------------------------------------------

def test_a_trial_function_ships_the_recipe_not_the_model(tmp_path):
    import pickle

    spec = CampaignSpec.from_dict(spec_dict(tmp_path, model={
        "source": "factory", "factory": "qfault.testing:tiny_digits_brevitas"}))
    from qfault.campaign import campaign_model, predict

    model = campaign_model(spec, log=lambda *_: None)
    batches = load_batches(spec)
    logits = predict(model, batches)
    golden = {"logits": logits, "labels": torch.cat([y for _, y in batches]), "accuracy": 0.0}
    with pytest.raises(Exception):  # Brevitas models do not pickle: why the recipe travels
        pickle.dumps(model)
    function = TrialFunction(TrialContext(spec, model, batches, golden, digest=model_digest(model)))
    shipped = pickle.loads(pickle.dumps(function))
    assert shipped.context.model is not model
    assert model_digest(shipped.context.model) == model_digest(model)
    item = (1, {"fault.ber": 0.02}, 0)
    same = lambda row: replace(row, elapsed_s=0.0)  # noqa: E731
    assert same(shipped(item)) == same(function(item))
    wrong = TrialFunction(TrialContext(spec, model, batches, golden, digest="0" * 64))
    with pytest.raises(QFaultConfigError, match=r"this worker built another one \(model digest"):
        pickle.loads(pickle.dumps(wrong))


def test_a_mitigation_section_needs_quantized_linear_layers_before_any_file(tmp_path, capsys):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(spec_dict(tmp_path, faults=[], sweep={},
                                             mitigation={"rate": 1.0, "method": "cvm", "tile": 16})))
    for action in ("validate", "run"):
        assert main(["campaign", "--no-progress", action, str(path)]) == 2
        assert capsys.readouterr().err == (
            "qfault: error: mitigation.model='Sequential' is invalid: allowed a model with SeedQuantLinear layers "
            "(swap them in first: qfault.layers.swap_modules(model, SeedQuantConfig()))\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.yaml"]
