"""``stop: {rule: leveugle, population: auto}``: the fault population of each sweep point."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qfault import QFaultConfigError
from qfault.campaign import CampaignSpec, campaign_status, fault_population, leveugle_sample_size, run_campaign
from qfault.testing import tiny_digits_mlp

from test_campaign import rows, spec_dict

QUIET = dict(progress=False, log=lambda *_: None)
STOP = {"rule": "leveugle", "population": "auto", "margin": 0.45, "confidence": 0.9, "p": 0.5}
SAMPLE = torch.zeros(3, 1, 8, 8)


def test_weight_population_is_elements_times_bits_per_layer(tmp_path):
    spec = CampaignSpec.from_dict(spec_dict(tmp_path, stop=STOP, sweep={"indices": "each"}))
    model = tiny_digits_mlp()  # Linear(64, 32) and Linear(32, 10), int8 weights
    points = spec.points(2)
    assert [fault_population(model, spec, p, SAMPLE) for p in points] == [64 * 32 * 8, 32 * 10 * 8]
    both = CampaignSpec.from_dict(spec_dict(tmp_path, stop=STOP, sweep={},
                                            faults=[{**spec.faults[0], "format": "int4"},
                                                    {**spec.faults[0], "site": "bias", "format": "float16"}]))
    assert fault_population(model, both, {}, SAMPLE) == (64 * 32 + 32 * 10) * 4 + (32 + 10) * 16


def test_activation_population_is_per_image(tmp_path):
    faults = [{"fault": {"type": "bit_flip", "count": 1}, "site": "output", "types": ["ReLU", "Linear"],
               "format": "int8", "per_image": True}]
    spec = CampaignSpec.from_dict(spec_dict(tmp_path, stop=STOP, faults=faults, sweep={"indices": "each"}))
    model = tiny_digits_mlp()  # outputs per image: Linear 32, ReLU 32, Linear 10
    assert [fault_population(model, spec, p, SAMPLE) for p in spec.points(3)] == [256, 256, 80]
    inputs = CampaignSpec.from_dict(spec_dict(tmp_path, stop=STOP, sweep={},
                                              faults=[{**faults[0], "site": "input", "types": ["Linear"]}]))
    assert fault_population(model, inputs, {}, SAMPLE) == (64 + 32) * 8


def test_brevitas_widths_come_from_the_quantizers(tmp_path):
    qnn = pytest.importorskip("brevitas.nn")
    model = nn.Sequential(nn.Flatten(), qnn.QuantLinear(64, 16, bias=False, weight_bit_width=4),
                          qnn.QuantReLU(bit_width=3), qnn.QuantLinear(16, 10, bias=False)).eval()
    weights = CampaignSpec.from_dict(spec_dict(tmp_path, stop=STOP, sweep={},
                                               faults=[{"fault": {"type": "bit_flip", "count": 1}, "site": "weight"}]))
    assert fault_population(model, weights, {}, SAMPLE) == 64 * 16 * 4 + 16 * 10 * 8
    acts = CampaignSpec.from_dict(spec_dict(tmp_path, stop=STOP, sweep={},
                                            faults=[{"fault": {"type": "bit_flip", "count": 1}, "site": "output"}]))
    assert fault_population(model, acts, {}, SAMPLE) == 16 * 3


def test_campaign_runs_the_sample_size_of_each_point(tmp_path):
    stop = {**STOP, "margin": 0.15}
    one_bit = [{"fault": {"type": "bit_flip", "count": 1}, "site": "weight", "format": "int1"}]
    spec = CampaignSpec.from_dict(spec_dict(tmp_path, stop=stop, faults=one_bit, sweep={"indices": "each"},
                                            limit=64))
    result = run_campaign(spec, **QUIET)
    expected = [leveugle_sample_size(n, 0.15, stop["confidence"], stop["p"]) for n in (64 * 32, 32 * 10)]
    assert [p.trials for p in result.points] == expected
    assert expected[0] > expected[1] > 1
    assert len(rows(spec.store_path())) == sum(expected)
    assert campaign_status(spec)["per_point"] is None
    run_campaign(spec, **QUIET)  # finished: nothing added
    assert len(rows(spec.store_path())) == sum(expected)


def test_population_auto_needs_a_known_width(tmp_path):
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.act_quant = None
            self.linear = nn.Linear(64, 10)

        def forward(self, x):
            return self.linear(x.flatten(1))

    spec = CampaignSpec.from_dict(spec_dict(tmp_path, stop=STOP, sweep={}, faults=[
        {"fault": {"type": "bit_flip", "count": 1}, "site": "output", "types": ["Linear"], "format": "int8"}]))
    assert fault_population(Plain(), spec, {}, SAMPLE) == 10 * 8
    with pytest.raises(QFaultConfigError, match="stop.population"):
        fault_population(Plain(), CampaignSpec.from_dict(spec_dict(tmp_path, stop=STOP, sweep={}, faults=[
            {"fault": {"type": "bit_flip", "count": 1}, "site": "output", "types": ["Linear"]}])), {}, SAMPLE)


@pytest.mark.parametrize("value", [0, -1, "many", 1.5])
def test_population_is_validated(tmp_path, value):
    with pytest.raises(QFaultConfigError, match="stop.population"):
        CampaignSpec.from_dict(spec_dict(tmp_path, stop={**STOP, "population": value}))
