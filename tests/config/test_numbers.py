"""Numbers written as strings (``"1e-3"``, ``"1E3"``, ``"+5"``, ``".5"``) where a field expects a number."""

from __future__ import annotations

import math

import pytest
import yaml

from qfault.config import ConfigErrors, as_number, coerce_fields, load_config


@pytest.mark.parametrize("value, annotation, expected", [
    ("1e-3", float, 0.001), ("1E3", float, 1000.0), ("+5", float, 5.0), (".5", float, 0.5), ("-.5e2", float, -50.0),
    (" 2.5 ", float, 2.5), ("5.", float, 5.0), (3, float, 3),                       # an int is a number already
    ("1e3", int, 1000), ("1E3", int | None, 1000), ("+5", int, 5), ("-7", int, -7), (1000.0, int, 1000),
    ("12345678901234567890", int, 12345678901234567890),                         # exact, not through a float
    ("1.5", int, 1.5), (1.5, int, 1.5),                                           # not integral: left to the check
    (1e300, int, 1e300), (math.inf, int, math.inf),                               # beyond an int64: stays a float
    ("abc", float, "abc"), ("", float, ""), ("nan", float, "nan"), ("inf", float, "inf"), ("0x10", int, "0x10"),
    ("1_000", int, "1_000"), ("1e-3", str, "1e-3"), ("1e-3", str | None, "1e-3"),
    (True, int, True), (False, float, False),                                     # booleans are not numbers here
    ("8", int | str, 8), ("auto", int | str, "auto"),                             # stack_trials: an int or "auto"
    (["1", "msb"], tuple[int | str, ...] | None, [1, "msb"]),
    (("0", "-1"), tuple[int, ...], (0, -1)), ([["3", "1e1"]], tuple[tuple[int, int], ...], [[3, 10]]),
    (["1", "2", "3"], tuple[int, int], ["1", "2", "3"]),                          # the wrong length: unchanged
    (None, float | None, None), ({"a": "1"}, float, {"a": "1"}),
])
def test_as_number(value, annotation, expected):
    out = as_number(value, annotation)
    assert out == expected and type(out) is type(expected)
    if isinstance(out, (list, tuple)):
        assert [type(v) for v in out] == [type(v) for v in expected]


def test_coerce_fields_uses_the_annotations_of_the_dataclass():
    from qfault.faults import BitFlip, StuckAt

    assert coerce_fields(BitFlip, {"ber": "1e-3", "count": "1E3", "bits": ["7", "msb"], "nested": "1", "x": "1"}) == {
        "ber": 0.001, "count": 1000, "bits": [7, "msb"], "nested": "1", "x": "1"}
    assert coerce_fields(StuckAt, {"rate": ".5", "p_one": "+1", "stuck_mask": "1"}) == {
        "rate": 0.5, "p_one": 1.0, "stuck_mask": "1"}


FAT = """\
seed: {value: '+7'}
quantization: {weight_bit_width: '8', act_bit_width: 4.0}
training: {batch_size: '1E2', epochs: '3'}
optimizer: {learning_rate: '1e-3', weight_decay: '.5', momentum: '+0.5'}
scheduler: {T_max: '1e1', gamma: '5e-1'}
fault_injection: {probability: '1e-3', step_interval: '.25', injection_layer: '-1', seed: '+5', frequency_value: '1e3'}
"""


def test_train_configs_read_numbers_written_as_strings(tmp_path):
    from qfault.train import FatConfig

    path = tmp_path / "fat.yaml"
    path.write_text(FAT)
    config = FatConfig.from_yaml(path)
    assert config.seed.value == 7
    assert (config.quantization.weight_bit_width, config.quantization.act_bit_width) == (8, 4)
    assert (config.training.batch_size, config.training.epochs) == (100, 3)
    optimizer = config.optimizer
    assert (optimizer.learning_rate, optimizer.weight_decay, optimizer.momentum) == (0.001, 0.5, 0.5)
    assert (config.scheduler.T_max, config.scheduler.gamma) == (10, 0.5)
    fi = config.fault_injection
    assert (fi.probability, fi.step_interval, fi.injection_layer, fi.seed, fi.frequency_value) == (
        0.001, 0.25, -1, 5, 1000)
    assert all(type(v) is int for v in (config.seed.value, config.training.epochs, fi.seed, fi.frequency_value))
    # PyYAML reads the unquoted forms as strings too: the same config from its dict
    assert FatConfig.from_dict(yaml.safe_load(FAT.replace("'", ""))).fingerprint() == config.fingerprint()


def test_a_string_that_is_no_number_is_named_with_the_number_expected(tmp_path):
    from qfault.train import FatConfig

    path = tmp_path / "fat.yaml"
    path.write_text("training: {epochs: ten}\noptimizer: {learning_rate: fast}\n")
    with pytest.raises(ConfigErrors) as info:
        FatConfig.from_yaml(path)
    assert str(info.value).splitlines()[1:] == [
        f"  training.epochs='ten' is invalid: allowed an integer in [1, 1000000] ({path} line 1)",
        f"  optimizer.learning_rate='fast' is invalid: allowed a number in [0.0, 1000.0] ({path} line 2)",
    ]


def test_the_override_grammar_reads_these_numbers_already(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a: 1\n")
    data = load_config(path, ["a=1e-3", "b=1E3", "c=+5", "d=.5"])
    assert data == {"a": 0.001, "b": 1000.0, "c": 5, "d": 0.5}
