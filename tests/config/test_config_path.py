"""qfault.config: YAML + key=value overrides through OmegaConf, and errors of every field at once."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

import pytest
import yaml

from qfault import QFaultConfigError
from qfault._errors import check_choice, check_range
from qfault.config import (
    ConfigErrors, apply_overrides, check_dataclass, check_keys, check_registered, load_config, load_yaml,
    parse_value, split_key, suggest,
)


def write(tmp_path, text: str, name: str = "c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = """\
name: base
faults:
  - fault: {type: bit_flip, ber: 0.01}
    site: weight
  - fault: {type: random_value, probability: 1.0}
sweep:
  fault.ber: [0.001, 0.01]
stop: {rule: fixed}
"""


# -- loading and overrides ---------------------------------------------------------------------

def test_plain_file_loads_as_pyyaml_reads_it(tmp_path):
    path = write(tmp_path, BASE)
    assert load_config(path) == yaml.safe_load(BASE)


def test_overrides_index_lists_set_sweep_paths_and_create_mappings(tmp_path):
    path = write(tmp_path, BASE)
    data = load_config(path, [
        "faults.0.fault.ber=1e-3",            # list index; 1e-3 is a float (PyYAML: a string)
        "faults.1.site=output",
        "sweep.fault.ber=[0, 0.5]",           # an existing sweep path, replaced
        "sweep.format=[int8, int4]",          # a new one, appended after it
        "model.kwargs.epochs=3",              # missing mappings on the way are created
        "stop={rule: ci, half_width: 0.5}",   # a mapping replaces the old one (no merge)
        "limit=null",
        "name=renamed=twice",                 # only the first '=' splits
    ], dotted_keys=("sweep",))
    assert data["faults"][0]["fault"] == {"type": "bit_flip", "ber": 0.001}
    assert data["faults"][1] == {"fault": {"type": "random_value", "probability": 1.0}, "site": "output"}
    assert list(data["sweep"].items()) == [("fault.ber", [0, 0.5]), ("format", ["int8", "int4"])]
    assert data["model"] == {"kwargs": {"epochs": 3}}
    assert data["stop"] == {"rule": "ci", "half_width": 0.5}
    assert data["limit"] is None and data["name"] == "renamed=twice"


def test_without_dotted_keys_a_sweep_key_is_a_nested_path(tmp_path):
    data = load_config(write(tmp_path, BASE), ["sweep.fault.ber=[1]"])
    assert data["sweep"] == {"fault.ber": [0.001, 0.01], "fault": {"ber": [1]}}


def test_interpolations_resolve_after_overrides(tmp_path):
    path = write(tmp_path, "name: a\nstore: ${name}.db\n")
    assert load_config(path)["store"] == "a.db"
    assert load_config(path, ["name=b"])["store"] == "b.db"
    with pytest.raises(QFaultConfigError, match="interpolation"):
        load_config(write(tmp_path, "store: ${nowhere}\n", "bad.yaml"))


@pytest.mark.parametrize("text, value", [
    ("1e-3", 0.001), ("3", 3), ("[a, 1e-2]", ["a", 0.01]), ("{x: 1}", {"x": 1}), ("null", None), ("", None),
    ("true", True), ("'007'", "007"), ("re:conv.*", "re:conv.*"),
])
def test_values_parse_as_yaml(text, value):
    assert parse_value(text) == value


def test_split_key():
    assert split_key("faults.0.fault.ber") == ["faults", "0", "fault", "ber"]
    assert split_key("sweep.fault.ber", ("sweep",)) == ["sweep", "fault.ber"]
    assert split_key("sweep", ("sweep",)) == ["sweep"]


def test_every_bad_override_is_reported_at_once(tmp_path):
    path = write(tmp_path, BASE)
    with pytest.raises(ConfigErrors) as info:
        load_config(path, ["faults.5.site=output", "name.first=x", "batch_size", "faults.x=1", "a..b=1"])
    errors = info.value
    assert len(errors) == 5 and errors.fields == ["override"] * 5
    text = str(errors)
    assert text.startswith("5 invalid fields:")
    assert "faults has 2 items" in text and "name is 'base', not a mapping" in text
    assert "'batch_size'" in text and "key=value" in text and "'faults.x=1'" in text


@pytest.mark.parametrize("text, allowed", [
    ("a: [1, 2\n", "valid YAML"), ("- 1\n- 2\n", "a YAML mapping"),
])
def test_bad_files_name_the_file(tmp_path, text, allowed):
    with pytest.raises(QFaultConfigError, match=allowed) as info:
        load_config(write(tmp_path, text), what="spec")
    assert info.value.field == "spec"


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(QFaultConfigError, match="an existing YAML file"):
        load_yaml(tmp_path / "nope.yaml")
    assert load_config(write(tmp_path, ""), ["a=1"]) == {"a": 1}


def test_apply_overrides_edits_an_omegaconf_tree_in_place():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"a": [{"b": 1}]})
    apply_overrides(cfg, ["a.0.b=2", "a.-1.c=3"])
    assert OmegaConf.to_container(cfg) == {"a": [{"b": 2, "c": 3}]}


# -- validation ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Optim:
    lr: float = 0.1
    momentum: float = 0.9

    def __post_init__(self):
        check_range("lr", self.lr, 0.0, 1.0)
        check_range("momentum", self.momentum, 0.0, 1.0)


@dataclass(frozen=True)
class Source:
    kind: str = "demo"
    path: str | None = None

    def __post_init__(self):
        check_choice("source.kind", self.kind, ("demo", "file"))
        if self.kind == "file" and not self.path:
            raise QFaultConfigError("source.path", self.path, "a file for kind 'file'")


@dataclass(frozen=True)
class Train:
    epochs: int = 10
    batch_size: int = 32
    optim: Optim = field(default_factory=Optim)
    source: Source = field(default_factory=Source)

    def __post_init__(self):
        check_range("epochs", self.epochs, 1, 1000, integer=True)
        check_range("batch_size", self.batch_size, 1, 4096, integer=True)
        if isinstance(self.optim, dict):
            object.__setattr__(self, "optim", Optim(**self.optim))
        if isinstance(self.source, dict):
            object.__setattr__(self, "source", Source(**self.source))


def test_every_bad_field_at_once_with_nested_prefixes_and_suggestions():
    with pytest.raises(ConfigErrors) as info:
        check_dataclass(Train, {"epochs": 0, "batch_size": -1, "epoch": 3,
                                "optim": {"lr": 2.0, "momentum": -1.0, "moment": 1}})
    errors = info.value
    assert isinstance(errors, QFaultConfigError) and isinstance(errors, ValueError)
    assert errors.fields == ["epochs", "batch_size", "epoch", "optim.lr", "optim.momentum", "optim.moment"]
    lines = str(errors).splitlines()
    assert lines[0] == "6 invalid fields:" and len(lines) == 7
    assert "epoch=3 is invalid: allowed keys epochs, batch_size, optim, source (unknown key; did you mean 'epochs'?)" \
        in lines[3]
    assert "did you mean 'momentum'?" in lines[6]
    # the first error stands for the whole (old handlers read .field/.value/.allowed)
    assert (errors.field, errors.value, errors.allowed) == ("epochs", 0, "an integer in [1, 1000]")


def test_a_valid_mapping_builds_the_same_instance():
    data = {"epochs": 3, "optim": {"lr": 0.5}, "source": {"kind": "file", "path": "x"}}
    assert check_dataclass(Train, data) == Train(**data)
    assert check_dataclass(Train, {}) == Train()


def test_one_error_reads_exactly_as_the_single_error():
    with pytest.raises(ConfigErrors) as info:
        check_dataclass(Train, {"epochs": 0})
    assert str(info.value) == str(QFaultConfigError("epochs", 0, "an integer in [1, 1000]"))


def test_a_field_valid_only_with_another_is_not_reported_falsely():
    # kind=file with its path: valid together (checking kind alone against defaults would fail)
    assert check_dataclass(Source, {"kind": "file", "path": "x"}, where="source") == Source("file", "x")
    with pytest.raises(ConfigErrors) as info:  # a real combination error names the missing field
        check_dataclass(Source, {"kind": "file"}, where="source")
    assert info.value.fields == ["source.path"]
    # resetting a bad field to its default must not add an error caused by that default
    from qfault.faults import BitFlip

    with pytest.raises(ConfigErrors) as info:
        check_dataclass(BitFlip, {"ber": 2.0}, where="fault")
    assert info.value.fields == ["fault.ber"]


def test_errors_collect_into_a_given_collector_with_where():
    errors = ConfigErrors()
    assert check_dataclass(Optim, {"lr": 5}, where="train.optim", errors=errors) is None
    assert check_dataclass(Optim, "fast", where="eval.optim", errors=errors) is None
    assert check_dataclass(Optim, {"lr": 0.2}, where="x", errors=errors) == Optim(lr=0.2)
    assert errors.fields == ["train.optim.lr", "eval.optim"]
    assert "a mapping of Optim fields" in str(errors)


def test_required_fields_and_nested_validators_with_stand_ins():
    @dataclass(frozen=True)
    class Job:
        optim: Optim
        name: str = "job"

        def __post_init__(self):
            if not isinstance(self.name, str):
                raise QFaultConfigError("name", self.name, "a string")

    with pytest.raises(ConfigErrors) as info:
        check_dataclass(Job, {"name": 5})
    assert info.value.fields == ["optim"]  # cannot build without it: the rest waits

    def check_optim(value, where, errors):
        check_dataclass(Optim, value, where=where, errors=errors)

    with pytest.raises(ConfigErrors) as info:
        check_dataclass(Job, {"optim": {"lr": 7}, "name": 5}, nested={"optim": check_optim},
                        stand_ins={"optim": Optim()})
    assert info.value.fields == ["optim.lr", "name"]


def test_check_registered_resolves_names_aliases_and_suggests():
    from qfault.faults import FAULTS, BitFlip, RandomValue

    assert check_registered(FAULTS, {"type": "bitflip", "ber": 0.5}, where="fault") == BitFlip(ber=0.5)
    assert check_registered(FAULTS, {"type": "bit_flip", "version": 1, "count": 2, "bits": [7]},
                            where="f") == BitFlip(count=2, bits=(7,))
    assert check_registered(FAULTS, "random_value", where="f") == RandomValue()
    with pytest.raises(ConfigErrors) as info:
        check_registered(FAULTS, {"type": "random_valeu"}, where="faults[0].fault")
    assert info.value.fields == ["faults[0].fault.type"]
    assert "did you mean 'random_value'?" in str(info.value) and "unknown fault" in str(info.value)
    with pytest.raises(ConfigErrors) as info:
        check_registered(FAULTS, {"ber": 0.1, "version": 3}, where="f")
    assert info.value.fields == ["f.version", "f.type"]


def test_check_keys_and_suggest():
    errors = ConfigErrors()
    check_keys({"sede": 1, "zzz": 2, "seed": 3}, ("seed", "name"), "", errors)
    assert errors.fields == ["sede", "zzz"]
    assert errors.errors[0].hint == "unknown key; did you mean 'seed'?" and errors.errors[1].hint == "unknown key"
    assert suggest("Batch_Sise", ["batch_size", "limit"]) == "batch_size"
    assert suggest("qqq", ["batch_size"]) is None


def test_config_errors_collect_dedupe_and_pickle():
    errors = ConfigErrors(source="spec.yaml")
    with errors.collect("stop"):
        check_range("margin", 2.0, 0.0, 1.0)
    with errors.collect():
        check_range("stop.margin", 2.0, 0.0, 1.0)  # the same error again: kept once
    errors.add("seed", -1, "an integer >= 0")
    errors.append(ConfigErrors([QFaultConfigError("ber", 2, "[0, 1]")]), "faults[0].fault")
    assert errors.fields == ["stop.margin", "seed", "faults[0].fault.ber"]
    assert str(errors).splitlines()[0] == "3 invalid fields in spec.yaml:"
    again = pickle.loads(pickle.dumps(errors))
    assert str(again) == str(errors) and again.fields == errors.fields
    assert not ConfigErrors()
    ConfigErrors().raise_if_any()
    with pytest.raises(QFaultConfigError):
        errors.raise_if_any()
