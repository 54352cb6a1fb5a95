"""Campaign specs: numbers written as strings, and every bad value named with its file line or override."""

from __future__ import annotations

import contextlib
import io

import pytest
import yaml

from qfault import QFaultConfigError
from qfault.campaign import CampaignSpec
from qfault.cli.main import main
from qfault.config import ConfigErrors

NUMBERS = """\
name: numbers
seed: 3
batch_size: 1000
limit: 1000
repetitions: 5
atol: 0.5
sdc_thresholds: [10, 20]
stack_trials: 8
faults:
  - fault: {type: bit_flip, ber: 0.001, bits: [7, msb]}
    site: weight
    format: {type: int, bits: 8}
    indices: [0, -1]
    seed: 5
  - fault: {type: stuck_at, rate: 0.5, p_one: 0.5}
    site: output
sweep:
  fault.ber: [0.0001, 0.01]
  seed: [1, 2]
stop: {rule: leveugle, margin: 0.05, confidence: 0.95, population: 1000000}
"""

#: the same spec with every number written as a string, in the forms PyYAML leaves as strings
STRINGS = """\
name: numbers
seed: '+3'
batch_size: '1E3'
limit: '1e3'
repetitions: '+5'
atol: '.5'
sdc_thresholds: ['1e1', '+20']
stack_trials: '8'
faults:
  - fault: {type: bit_flip, ber: '1e-3', bits: ['7', msb]}
    site: weight
    format: {type: int, bits: '8'}
    indices: ['0', '-1']
    seed: '+5'
  - fault: {type: stuck_at, rate: '.5', p_one: '5e-1'}
    site: output
sweep:
  fault.ber: ['1e-4', '1E-2']
  seed: ['1', '+2']
stop: {rule: leveugle, margin: '5e-2', confidence: '.95', population: '1E6'}
"""


def write(tmp_path, text: str, name: str = "spec.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_numbers_written_as_strings_give_the_same_spec(tmp_path):
    expected = CampaignSpec.from_yaml(write(tmp_path, NUMBERS, "numbers.yaml"))
    spec = CampaignSpec.from_yaml(write(tmp_path, STRINGS))
    assert spec.fingerprint() == expected.fingerprint()
    assert {k: v for k, v in spec.to_dict().items() if k != "store"} == {
        k: v for k, v in expected.to_dict().items() if k != "store"}
    assert spec.limit == 1000 and type(spec.limit) is int and spec.stop.population == 1000000
    assert spec.sweep == {"fault.ber": [0.0001, 0.01], "seed": [1, 2]}
    assert spec.faults[0]["fault"]["ber"] == 0.001 and spec.faults[0]["fault"]["bits"] == [7, "msb"]
    assert spec.points() == expected.points()


def test_pyyaml_dicts_with_unquoted_exponents_load_as_from_the_file(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-3, 1E3 and 1e3 as strings: from_dict reads them as numbers
    text = NUMBERS.replace("0.001,", "1e-3,").replace("batch_size: 1000", "batch_size: 1E3").replace(
        "population: 1000000", "population: 1e6").replace("[0.0001, 0.01]", "[1e-4, 1E-2]")
    data = yaml.safe_load(text)
    assert data["faults"][0]["fault"]["ber"] == "1e-3" and data["batch_size"] == "1E3"  # what PyYAML gives
    assert CampaignSpec.from_dict(data).fingerprint() == CampaignSpec.from_yaml(write(tmp_path, NUMBERS)).fingerprint()


def test_mitigation_and_systolic_sections_read_numbers_written_as_strings():
    mitigation = CampaignSpec.from_dict({
        "faults": [], "mitigation": {"rate": "1", "method": "cvm", "tile": "16"},
        "sweep": {"mitigation.rate": ["1", "2.5"], "mitigation.tile": ["8", "1.6e1"]}})
    assert mitigation.mitigation == {"rate": 1.0, "method": "cvm", "tile": 16}
    assert mitigation.sweep == {"mitigation.rate": [1.0, 2.5], "mitigation.tile": [8, 16]}
    systolic = CampaignSpec.from_dict({
        "faults": [], "systolic": {"array": {"n1": "29", "n2": "2.9e1", "n3": "+161"}, "channels": "6", "bits": "8",
                                   "polarities": ["0", "1"]}})
    assert systolic.systolic["array"]["n1"] == systolic.systolic["array"]["n2"] == 29
    assert (systolic.systolic["channels"], systolic.systolic["bits"], systolic.systolic["polarities"]) == (6, 8, [0, 1])


BAD = """\
name: bad
faults:
  - fault: {type: bit_flip, ber: abc}
    site: weight
limit: many
batch_size: 1.5
atol: tiny
sdc_thresholds: [10, x]
stop: {rule: ci, half_width: wide}
"""


def test_a_string_that_is_no_number_names_the_field_the_number_and_the_line(tmp_path):
    path = write(tmp_path, BAD)
    with pytest.raises(ConfigErrors) as info:
        CampaignSpec.from_yaml(path)
    assert str(info.value).splitlines() == [
        f"6 invalid fields in {path}:",
        f"  faults[0].fault.ber='abc' is invalid: allowed a number in [0.0, 1.0] ({path} line 3)",
        f"  limit='many' is invalid: allowed an integer in [1, 1000000000000] ({path} line 5)",
        f"  batch_size=1.5 is invalid: allowed an integer in [1, 10000000] ({path} line 6)",
        f"  atol='tiny' is invalid: allowed a number in [0.0, 1e+30] ({path} line 7)",
        f"  sdc_thresholds='x' is invalid: allowed a number in [0.0, 1000000.0] ({path} line 8)",
        f"  stop.half_width='wide' is invalid: allowed a number in [1e-09, 100.0] ({path} line 9)",
    ]


SWEEP = """name: sweep
faults:
  - fault: {type: bit_flip, ber: 0.001}
    site: weight
sweep:
  fault.ber:
    - 0.001
    - 2.0
    - '1e-2'
    - x
  mitigation.rate: [1]
"""


def test_a_bad_sweep_value_names_the_line_of_its_item(tmp_path):
    path = write(tmp_path, SWEEP.replace("  mitigation.rate: [1]\n", ""))
    with pytest.raises(ConfigErrors) as info:
        CampaignSpec.from_yaml(path)
    assert str(info.value).splitlines() == [
        f"2 invalid fields in {path}:",
        f"  sweep.fault.ber=2.0 is invalid: allowed a number in [0.0, 1.0] ({path} line 8)",
        f"  sweep.fault.ber='x' is invalid: allowed a number in [0.0, 1.0] ({path} line 10)",
    ]
    with pytest.raises(ConfigErrors) as info:
        CampaignSpec.from_yaml(write(tmp_path, SWEEP, "mitigation.yaml"))
    assert str(info.value) == (f"sweep=['fault.ber', 'mitigation.rate'] is invalid: allowed mitigation.* paths only "
                               f"with a mitigation section ({tmp_path / 'mitigation.yaml'} line 5)")


def test_values_set_by_overrides_name_the_override(tmp_path):
    path = write(tmp_path, SWEEP.replace("  mitigation.rate: [1]\n", ""))
    with pytest.raises(ConfigErrors) as info:
        CampaignSpec.from_yaml(path, ["sweep.fault.ber=[0.5, 3]", "seed=abc", "stop={rule: ci, margin: 2}"])
    assert str(info.value).splitlines() == [
        f"3 invalid fields in {path}:",
        "  sweep.fault.ber=3 is invalid: allowed a number in [0.0, 1.0] (from override sweep.fault.ber=[0.5, 3])",
        "  seed='abc' is invalid: allowed an integer in [0, 9223372036854775807] (from override seed=abc)",
        "  stop.margin=2 is invalid: allowed a number in [1e-09, 0.999999] (from override stop={rule: ci, margin: 2})",
    ]
    with pytest.raises(ConfigErrors) as info:  # a negative index names the override as typed
        CampaignSpec.from_yaml(path, ["faults.-1.site=nowhere"])
    assert str(info.value) == ("faults[0].site='nowhere' is invalid: allowed one of 'weight', 'bias', 'output', "
                               "'input' (from override faults.-1.site=nowhere)")


def _validate(folder, *argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["campaign", "validate", *argv])
    return code, err.getvalue()


TEMPLATE = """name: t
model: {source: demo, name: digits_cnn}
faults:
  - fault: {type: bit_flip, ber: 0.001}
    site: weight
sweep:
  fault.ber: [0.001, 0.01]
stop: {rule: fixed}
sdc_thresholds: [10, 20]
seed: 0
"""


@pytest.mark.parametrize("edit, overrides, message", [
    (("model: {source: demo, name: digits_cnn}", "model: digits_cnn"), [],
     "model='digits_cnn' is invalid: allowed a mapping of ModelSource fields ({path} line 2)"),
    (("stop: {rule: fixed}", "stop: fixed"), [],
     "stop='fixed' is invalid: allowed a mapping of StopRule fields ({path} line 8)"),
    (("sdc_thresholds: [10, 20]", "sdc_thresholds: x"), [],
     "sdc_thresholds='x' is invalid: allowed a list of percentages (numbers in [0, 1e6]) ({path} line 9)"),
    (("sdc_thresholds: [10, 20]", "sdc_thresholds: '12'"), [],  # a string is no list of characters
     "sdc_thresholds='12' is invalid: allowed a list of percentages (numbers in [0, 1e6]) ({path} line 9)"),
    (("name: t", "name: t\nstore: 5"), [],
     "store=5 is invalid: allowed a file path (or null: <name>.qfault.db) ({path} line 2)"),
    (("[0.001, 0.01]", "[]"), [], "sweep.fault.ber=[] is invalid: allowed a non-empty list of values ({path} line 7)"),
    (("    site: weight", "    site: weight\n    names: ['re:((']"), [],
     "faults[0].names='re:((' is invalid: allowed shell globs or 're:<regex>' with a valid regular expression "
     "(missing ), unterminated subpattern at position 1) ({path} line 6)"),
    (("sweep:\n  fault.ber: [0.001, 0.01]", "sweep: {1: [0.1]}"), [],
     "sweep.1=[0.1] is invalid: allowed values under dotted paths into faults[0] (fault.ber) or mitigation.<field> "
     "(the key 1 is not a dotted path) ({path} line 6)"),
    (("stop: {rule: fixed}", "paired: [[fault.ber]]\nstop: {rule: fixed}"), [],
     "paired=['fault.ber'] is invalid: allowed sweep paths: fault.ber ({path} line 8)"),
    (None, ["seed=[1"], "override='seed=[1' is invalid: allowed a YAML value after '=' (did not find expected ',' "
     "or ']')"),
    (None, ["seed.x=1"], "override='seed.x=1' is invalid: allowed a path through mappings and lists "
     "(seed is 0, not a mapping)"),
    (None, ["faults.5.site=w"], "override='faults.5.site=w' is invalid: allowed an index into the list faults "
     "(0..0) (faults has 1 items)"),
    (None, ["="], "override='=' is invalid: allowed key=value with a dotted key such as stop.rule=ci"),
])
def test_the_bad_inputs_of_the_issue_are_one_line_each_exit_2_and_no_file(tmp_path, edit, overrides, message):
    text = TEMPLATE if edit is None else TEMPLATE.replace(*edit)
    assert text != TEMPLATE or edit is None
    path = write(tmp_path, text)
    code, err = _validate(tmp_path, str(path), *overrides)
    assert (code, err) == (2, f"qfault: error: {message.format(path=path)}\n")
    assert [p.name for p in tmp_path.iterdir()] == ["spec.yaml"]


@pytest.mark.parametrize("content, message", [
    (b"- a\n- b\n", "allowed a YAML mapping of fields (key: value lines) (the file holds a list)"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "allowed a YAML text file (the file is binary: it holds NUL bytes)"),
    ("name: caf\xe9\n".encode("latin-1"), "allowed a UTF-8 text file (byte 0xe9 on line 1 is not UTF-8)"),
])
def test_a_file_that_is_no_spec_is_one_line_exit_2(tmp_path, content, message):
    path = tmp_path / "spec.yaml"
    path.write_bytes(content)
    code, err = _validate(tmp_path, str(path))
    assert (code, err) == (2, f"qfault: error: spec={str(path)!r} is invalid: {message}\n")
    assert [p.name for p in tmp_path.iterdir()] == ["spec.yaml"]


def test_from_dict_reports_errors_without_lines():
    with pytest.raises(QFaultConfigError) as info:
        CampaignSpec.from_dict({"faults": [{"fault": {"type": "bit_flip", "ber": "abc"}}]})
    assert str(info.value) == "faults[0].fault.ber='abc' is invalid: allowed a number in [0.0, 1.0]"


def test_an_error_of_every_sweep_point_is_reported_once(tmp_path):
    """A fault spec the sweep makes invalid at every point (sites given, the sweep adds a BER)."""
    path = write(tmp_path, SWEEP.replace("    - 2.0\n    - '1e-2'\n    - x\n", "").replace(
        "  mitigation.rate: [1]\n", "").replace("{type: bit_flip, ber: 0.001}", "{type: bit_flip, sites: [[0, 1]]}")
        .replace("    - 0.001\n", "    - 0.001\n    - 0.01\n"))
    with pytest.raises(QFaultConfigError) as info:
        CampaignSpec.from_yaml(path)
    assert str(info.value) == (
        "sweep (all 2 points): faults[0].fault.bit_flip=['ber', 'sites'] is invalid: allowed exactly one of ber, "
        f"count or sites (e.g. BitFlip(ber=1e-3) or BitFlip(count=1)) ({path} line 5)")  # the sweep
