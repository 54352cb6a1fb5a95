"""Seed 003's statistical campaign: a ``systolic`` section in a campaign spec."""

from __future__ import annotations

import csv
import sqlite3

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qfault import QFaultConfigError
from qfault.campaign import CampaignSpec, CampaignStore, classify, load_batches, run_campaign, write_report
from qfault.campaign._plan import plan_campaign, systolic_model
from qfault.campaign._trial import systolic_fault
from qfault.data import build_model
from qfault.systolic import FaultSpace, SystolicFaults, permuted_index, systolic_layers
from qfault.testing import tiny_digits_convnet

ARRAY = {"n1": 6, "n2": 8, "n3": 16, "dataflow": "output_stationary", "tiling": True}


def spec_dict(tmp_path, **changes) -> dict:
    data = {"name": "s", "seed": 5, "model": {"source": "factory", "factory": "qfault.testing:tiny_digits_convnet"},
            "dataset": "digits", "limit": 90, "batch_size": 30, "faults": [],
            "systolic": {"array": ARRAY, "channels": "auto", "polarities": [0, 1, 2]},
            "repetitions": 8, "store": str(tmp_path / "s.qfault.db")}
    data.update(changes)
    return data


def test_trials_equal_a_direct_recomputation(tmp_path):
    spec = CampaignSpec.from_dict(spec_dict(tmp_path))
    result = run_campaign(spec, progress=False, log=lambda *_: None)
    assert result.points[0].trials == 8
    batches = load_batches(spec)
    model = systolic_model(spec, tiny_digits_convnet())
    array = next(iter(systolic_layers(model).values())).array
    point = plan_campaign(spec, model).points[0]
    golden = torch.cat([model(x) for x, _ in batches]).detach()
    labels = torch.cat([y for _, y in batches])
    with CampaignStore(spec.store_path(), spec, create=False) as store:
        rows = list(store.trials())
    seen = set()
    for row in rows:
        index, fault, batch = systolic_fault(spec, point, row.repetition, len(batches))
        seen.add(index)
        assert row.details["fault_index"] == index and row.details["batch"] == batch
        assert row.details["fault"] == {"line": fault.line, "channel": fault.channel, "x": fault.x, "y": fault.y,
                                        "bit": fault.bit, "polarity": fault.polarity}
        with array.add_fault(fault), torch.no_grad():
            logits = model(batches[batch][0])
        start = sum(x.shape[0] for x, _ in batches[:batch])
        outcome = classify(golden[start:start + 30], logits, labels[start:start + 30])
        assert row.details["outcomes"] == outcome.outcome_index().tolist()
        assert row.counts == outcome.counts()
    assert len(seen) == 8  # sampled without replacement
    assert sorted(row.details["batch"] for row in rows[:3]) == [0, 1, 2]  # one pass over the 3 batches


def test_population_auto_is_the_seeds_n(tmp_path):
    data = spec_dict(tmp_path, model={"source": "demo", "name": "digits_lenet5"},
                     systolic={"array": {"n1": 29, "n2": 29, "n3": 161, "tiling": True}, "channels": 6,
                               "layers": ["conv1", "conv2"]},
                     stop={"rule": "leveugle", "population": "auto"})
    spec = CampaignSpec.from_dict(data)
    model = systolic_model(spec, build_model("digits_lenet5"))
    assert sorted(systolic_layers(model)) == ["conv1", "conv2"]
    point = plan_campaign(spec, model).points[0]
    assert point.population == 6 * 841 * 3 * 32 * 2 == point.systolic.size
    assert point.repetitions == 384
    assert point.stackable  # through the array's fault stacks


def test_resume_and_report(tmp_path):
    spec = CampaignSpec.from_dict(spec_dict(tmp_path, repetitions=5))
    run_campaign(spec, progress=False, log=lambda *_: None)
    conn = sqlite3.connect(spec.store_path())
    conn.execute("DELETE FROM trials WHERE repetition >= 2")
    conn.execute("DELETE FROM details WHERE repetition >= 2")
    conn.commit()
    conn.close()
    resumed = CampaignSpec.from_dict(spec_dict(tmp_path, repetitions=5))
    run_campaign(resumed, progress=False, log=lambda *_: None)
    straight = CampaignSpec.from_dict(spec_dict(tmp_path, repetitions=5, store=str(tmp_path / "b.qfault.db")))
    run_campaign(straight, progress=False, log=lambda *_: None)
    with CampaignStore(spec.store_path(), spec, create=False) as a, CampaignStore(straight.store_path(), straight,
                                                                                   create=False) as b:
        assert [(r.counts, r.details) for r in a.trials()] == [(r.counts, r.details) for r in b.trials()]
        result = run_campaign(resumed, progress=False, log=lambda *_: None)
        written = {p.name for p in write_report(result, a, tmp_path / "report")}
    assert {"systolic.csv", "systolic_lines.png", "systolic_pes.png", "report.html"} <= written
    with open(tmp_path / "report" / "systolic.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[:10] == ["fault_seed", "dataset_seed", "dataset_index", "line", "channel", "row", "col",
                                   "bit", "polarity", "ftype"]
    assert len(table) == 5 * 30
    assert {row["ftype"] for row in table} <= {"0", "1", "2", "3"}


def test_bad_systolic_sections_name_their_field(tmp_path):
    cases = [({"array": {**ARRAY, "n1": 0}}, r"systolic\.array\.n1=0"),
             ({"array": {**ARRAY, "colour": 1}}, r"systolic\.array\.colour"),
             ({"array": ARRAY, "lines": ["d"]}, r"systolic\.lines"),
             ({"array": {**ARRAY, "in_dtype": "int8"}, "bits": 9}, r"systolic\.bits=9.*at most 8"),
             ({"array": ARRAY, "batches": "some"}, r"systolic\.batches='some'"),
             ({"array": ARRAY, "speed": 3}, r"systolic\.speed"),
             ({"layers": ["x"]}, r"systolic\.array.*missing")]
    for section, message in cases:
        with pytest.raises(QFaultConfigError, match=message):
            CampaignSpec.from_dict(spec_dict(tmp_path, systolic=section))
    spec = CampaignSpec.from_dict(spec_dict(tmp_path, systolic={"array": ARRAY, "layers": ["7"]}))
    with pytest.raises(QFaultConfigError, match=r"systolic\.layers=.7.*compatible layers: 0, 3"):
        run_campaign(spec, progress=False, log=lambda *_: None)
    assert not spec.store_path().exists()


def test_specs_without_a_systolic_section_keep_their_fingerprint(tmp_path):
    data = spec_dict(tmp_path, systolic=None, faults=[{"fault": {"type": "bit_flip", "ber": 0.01}, "site": "weight",
                                                       "format": "int8"}])
    spec = CampaignSpec.from_dict(data)
    assert "systolic" not in spec.to_dict()
    assert "systolic" in CampaignSpec.from_dict(spec_dict(tmp_path)).to_dict()


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 3000), key=st.integers(0, 2**32))
def test_permuted_index_is_a_bijection_per_pass(size, key):
    first = [permuted_index(key, r, size) for r in range(size)]
    assert sorted(first) == list(range(size))
    second = [permuted_index(key, r, size) for r in range(size, 2 * size)]
    assert sorted(second) == list(range(size))


def test_fault_space_numbers_every_fault_once():
    space = FaultSpace(2, ((1, 1), (1, 2), (2, 1)), (("a", 3), ("c", 2)), (0, 2), "last")
    faults = [space.fault(i) for i in range(space.size)]
    assert space.size == 2 * 3 * 5 * 2 == len(set(faults))
    assert {(f.line, f.bit) for f in faults} == {("a", 0), ("a", 1), ("a", 2), ("c", 0), ("c", 1)}
    assert {f.channel for f in faults} == {0, 1} and {f.polarity for f in faults} == {0, 2}
    with pytest.raises(QFaultConfigError, match="fault index=60"):
        space.fault(60)
    assert SystolicFaults({"n1": 2, "n2": 2, "n3": 2}).to_dict()["lines"] == ["a", "b", "c"]


def test_stacked_trials_equal_trials_one_by_one(tmp_path, monkeypatch):
    """stack_trials > 1 runs several systolic trials per forward (the array's fault stacks);
    their rows equal those of one trial per forward."""
    from qfault.systolic import SystolicArray

    stacks = []
    original = SystolicArray.stack_faults
    monkeypatch.setattr(SystolicArray, "stack_faults", lambda self, sets: stacks.append(len(sets)) or original(self, sets))
    one = CampaignSpec.from_dict(spec_dict(tmp_path, repetitions=10, stack_trials=1))
    four = CampaignSpec.from_dict(spec_dict(tmp_path, repetitions=10, stack_trials=4,
                                            store=str(tmp_path / "four.qfault.db")))
    run_campaign(one, progress=False, log=lambda *_: None)
    run_campaign(four, progress=False, log=lambda *_: None, trials_per_task=10)
    with CampaignStore(one.store_path(), one, create=False) as a, CampaignStore(four.store_path(), four,
                                                                                 create=False) as b:
        assert [(r.counts, r.details) for r in a.trials()] == [(r.counts, r.details) for r in b.trials()]
    assert stacks and max(stacks) > 1  # the stacked path ran
