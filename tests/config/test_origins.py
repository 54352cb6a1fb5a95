"""Each error of a loaded configuration names the file line or the override its value came from."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

import pytest
import yaml

from qfault import QFaultConfigError
from qfault._errors import check_range
from qfault.config import ConfigErrors, LoadedConfig, SourceMap, check_dataclass, load_config, located, source_map_of


@dataclass(frozen=True)
class Inner:
    rate: float = 1.0

    def __post_init__(self):
        check_range("rate", self.rate, 0.0, 100.0)


@dataclass(frozen=True)
class Job:
    name: str = "job"
    epochs: int = 1
    inner: Inner = field(default_factory=Inner)
    items: tuple = ()

    def __post_init__(self):
        check_range("epochs", self.epochs, 1, 10, integer=True)


def write(tmp_path, text: str, name: str = "job.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


JOB = """\
name: job
epochs: 0
inner:
  rate: 500
colour: red
"""


def test_check_dataclass_names_the_line_of_each_bad_value(tmp_path):
    path = write(tmp_path, JOB)
    with pytest.raises(ConfigErrors) as info:
        check_dataclass(Job, load_config(path))
    assert str(info.value).splitlines() == [
        "3 invalid fields:",
        f"  epochs=0 is invalid: allowed an integer in [1, 10] ({path} line 2)",
        f"  inner.rate=500 is invalid: allowed a number in [0.0, 100.0] ({path} line 4)",
        f"  colour='red' is invalid: allowed keys name, epochs, inner, items (unknown key) ({path} line 5)",
    ]
    assert [e.location for e in info.value] == [f"{path} line {n}" for n in (2, 4, 5)]
    assert [e.field for e in info.value] == ["epochs", "inner.rate", "colour"]  # fields stay as they were


def test_a_value_set_by_an_override_names_the_override(tmp_path):
    path = write(tmp_path, JOB)
    with pytest.raises(ConfigErrors) as info:
        check_dataclass(Job, load_config(path, ["epochs=99", "inner={rate: -1}", "colour=blue", "new.key=1"]))
    assert str(info.value).splitlines()[1:] == [
        "  epochs=99 is invalid: allowed an integer in [1, 10] (from override epochs=99)",
        "  inner.rate=-1 is invalid: allowed a number in [0.0, 100.0] (from override inner={rate: -1})",
        "  colour='blue' is invalid: allowed keys name, epochs, inner, items (unknown key) (from override colour=blue)",
        "  new={'key': 1} is invalid: allowed keys name, epochs, inner, items (unknown key) (from override new.key=1)",
    ]


def test_a_single_error_reads_as_one_line_with_its_location(tmp_path):
    path = write(tmp_path, "epochs: abc\n")
    with pytest.raises(ConfigErrors) as info:
        check_dataclass(Job, load_config(path))
    assert str(info.value) == f"epochs='abc' is invalid: allowed an integer in [1, 10] ({path} line 1)"


def test_a_plain_dict_has_no_location():
    with pytest.raises(ConfigErrors) as info:
        check_dataclass(Job, {"epochs": 0})
    assert str(info.value) == "epochs=0 is invalid: allowed an integer in [1, 10]"
    assert source_map_of({"epochs": 0}) is None


def test_loaded_config_is_a_dict_that_compares_as_one(tmp_path):
    data = load_config(write(tmp_path, JOB))
    assert isinstance(data, LoadedConfig) and isinstance(data, dict)
    assert data == yaml.safe_load(JOB) and dict(data) == data
    assert isinstance(source_map_of(data), SourceMap)


def test_located_errors_pickle_with_their_location(tmp_path):
    path = write(tmp_path, JOB)
    with pytest.raises(ConfigErrors) as info:
        check_dataclass(Job, load_config(path))
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value) and again.errors[0].location == f"{path} line 2"


def test_located_leaves_the_fields_and_adds_the_location_to_the_message():
    error = located(QFaultConfigError("a.b", 1, "a string", hint="why"), "x.yaml line 3")
    assert (error.field, error.value, error.allowed, error.hint) == ("a.b", 1, "a string", "why")
    assert str(error) == "a.b=1 is invalid: allowed a string (why) (x.yaml line 3)"
    plain = QFaultConfigError("a", 1, "b")
    assert located(plain, None) is plain


# -- SourceMap: dotted fields to lines --------------------------------------------------------

SPEC = """\
faults:
  - fault: {type: bit_flip, ber: 0.01}
    site: weight
  - fault:
      type: stuck_at
      rate: 1.0
sweep:
  fault.ber:
    - 0.001
    - 2.0
    - abc
model:
  kwargs: {a.b: 1}
"""


def source_map(text: str = SPEC) -> SourceMap:
    return SourceMap("s.yaml", yaml.compose(text), yaml.safe_load(text))


@pytest.mark.parametrize("field_name, value, where", [
    ("faults[0].fault.ber", 0.01, "s.yaml line 2"),      # a flow mapping: the line of its key
    ("faults[0].site", "weight", "s.yaml line 3"),
    ("faults[1].fault.rate", 1.0, "s.yaml line 6"),
    ("faults[1].fault", None, "s.yaml line 4"),          # a block mapping: the line of its key
    ("faults[1]", None, "s.yaml line 4"),                # a list item: its first line
    ("faults[-1].fault.rate", 1.0, "s.yaml line 6"),     # negative indices count from the end
    ("faults[1].fault.bits", None, "s.yaml line 4"),     # not in the file: its closest parent
    ("faults[0].nothing.deeper", None, "s.yaml line 2"),
    ("sweep.fault.ber", 2.0, "s.yaml line 10"),          # a sweep value: the line of that item
    ("sweep.fault.ber", "abc", "s.yaml line 11"),
    ("sweep.fault.ber", [], "s.yaml line 8"),            # the whole axis: its key
    ("sweep.fault.ber", 7.0, "s.yaml line 8"),           # a value in no item: the key
    ("sweep {'fault.ber': 2.0}: faults[1].site", None, "s.yaml line 7"),
    ("model.kwargs.a.b", 1, "s.yaml line 13"),           # a key holding dots
    ("faults[7]", None, "s.yaml line 1"),                # an index beyond the list: the list
    ("seed", 1, None),                                   # not in the file
    ("", None, None),
])
def test_source_map_traces_dotted_fields_to_lines(field_name, value, where):
    assert source_map().locate(field_name, value) == where


def test_the_last_override_of_a_path_or_an_ancestor_wins():
    origins = source_map()
    origins.set_by_override(["faults", "1"], "faults.1={fault: x}")
    origins.set_by_override(["faults", "1", "fault"], "faults.1.fault=y")
    origins.set_by_override(["sweep", "fault.ber"], "sweep.fault.ber=[5]")
    assert origins.locate("faults[1].fault.rate") == "from override faults.1.fault=y"
    assert origins.locate("faults[1].site") == "from override faults.1={fault: x}"
    assert origins.locate("sweep.fault.ber", 5) == "from override sweep.fault.ber=[5]"
    assert origins.locate("faults[0].site") == "s.yaml line 3"


def test_overrides_record_the_path_they_made(tmp_path):
    path = write(tmp_path, SPEC)
    origins = source_map_of(load_config(path, ["faults.-1.fault.rate=2", "model.new.deep=1", "sweep.fault.ber=[1]"],
                                        dotted_keys=("sweep",)))
    assert [parts for parts, _ in origins.overrides] == [
        ["faults", "1", "fault", "rate"],  # -1 counted from the start
        ["model", "new"],                   # the first mapping it created
        ["sweep", "fault", "ber"],
    ]
    assert origins.locate("model.new.other") == "from override model.new.deep=1"


# -- a file that is not a YAML mapping ---------------------------------------------------------

@pytest.mark.parametrize("content, allowed, hint", [
    (b"seed: 1\n\x00\x01", "a YAML text file", "the file is binary: it holds NUL bytes"),
    ("name: caf\xe9\nseed: 2\n".encode("latin-1"), "a UTF-8 text file", "byte 0xe9 on line 1 is not UTF-8"),
    (b"seed: 1\nfaults: [a, b\n", "valid YAML", "expected ',' or ']', but got '<stream end>', line 3 column 1"),
    (b"a: 1\n b: 2\n", "valid YAML", "mapping values are not allowed here, line 2 column 3"),
    (b"seed: 1\nseed: 2\n", "valid YAML", "found duplicate key seed, line 2 column 1"),
    (b"- a\n- b\n", "a YAML mapping of fields (key: value lines)", "the file holds a list"),
    (b"just text\n", "a YAML mapping of fields (key: value lines)", "the file holds a single value"),
    (b"a: " + b"[" * 2000 + b"]" * 2000, "YAML nested at most a few hundred levels deep", "too deep"),
])
def test_a_file_that_is_not_a_yaml_mapping_is_one_clear_error(tmp_path, content, allowed, hint):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(QFaultConfigError) as info:
        load_config(path, what="spec")
    assert str(info.value) == f"spec={str(path)!r} is invalid: allowed {allowed} ({hint})"


def test_a_folder_or_a_missing_file_is_one_clear_error(tmp_path):
    for path in (tmp_path, tmp_path / "missing.yaml"):
        with pytest.raises(QFaultConfigError) as info:
            load_config(path, what="spec")
        assert str(info.value) == f"spec={str(path)!r} is invalid: allowed an existing YAML file"


def test_a_bad_override_value_says_what_the_parser_expected(tmp_path):
    with pytest.raises(ConfigErrors) as info:
        load_config(write(tmp_path, "seed: 1\n"), ["seed=[1", "seed.x=1"])
    assert str(info.value).splitlines()[1:] == [
        "  override='seed=[1' is invalid: allowed a YAML value after '=' (did not find expected ',' or ']')",
        "  override='seed.x=1' is invalid: allowed a path through mappings and lists (seed is 1, not a mapping)",
    ]


def test_train_configs_name_their_lines_too(tmp_path):
    from qfault.train import FatConfig

    path = write(tmp_path, "training:\n  epochs: 1.5\nfault_injection:\n  probability: abc\n", "fat.yaml")
    with pytest.raises(ConfigErrors) as info:
        FatConfig.from_yaml(path, ["optimizer.momentum=x"])
    assert str(info.value).splitlines() == [
        f"3 invalid fields in {path}:",
        f"  training.epochs=1.5 is invalid: allowed an integer in [1, 1000000] ({path} line 2)",
        f"  fault_injection.probability='abc' is invalid: allowed a number in [0.0, 100.0] ({path} line 4)",
        "  optimizer.momentum='x' is invalid: allowed a number in [0.0, 1.0] (from override optimizer.momentum=x)",
    ]
