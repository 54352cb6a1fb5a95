"""Property-based fuzzing of campaign specs and overrides: a bad input is a config error, never a crash.

Specs are the shipped templates mutated at random (values of wrong types, dropped and added
keys, nested lists and mappings, numeric and odd strings, huge numbers, NaN, negatives), random
overrides and random text files. The properties: :meth:`CampaignSpec.from_dict` /
:meth:`CampaignSpec.from_yaml` either build a spec (that round-trips through its dict) or raise
:class:`qfault.QFaultConfigError` (any other exception is a bug) whose message is one line per
error, each naming a line of the file, an override or nothing; ``qfault campaign validate`` on a
bad file exits with 2 and writes no file; the train config (``FatConfig``, the same config path)
builds or raises the config error. Runs are derandomized (the same examples on every run) and
bounded, so CI never flakes.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from qfault import QFaultConfigError  # noqa: E402
from qfault.campaign import CampaignSpec  # noqa: E402
from qfault.cli._templates import templates  # noqa: E402
from qfault.cli.main import main  # noqa: E402
from qfault.config import ConfigErrors, load_config  # noqa: E402

FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

#: a spec touching the fields the templates leave out (several faults, formats, selections)
RICH = {
    "name": "rich", "seed": 3, "model": {"source": "demo", "name": "digits_cnn", "kwargs": {"epochs": 1}},
    "dataset": {"name": "digits"}, "batch_size": 64, "limit": 100,
    "faults": [
        {"fault": {"type": "bit_flip", "ber": 0.001, "bits": [0, "msb"]}, "site": "weight",
         "format": {"type": "int", "bits": 8}, "names": ["conv*", "re:fc.*"], "indices": [0, -1],
         "persistence": "permanent", "seed": 1},
        {"fault": {"type": "stuck_at", "rate": 1.0, "p_one": 0.5}, "site": "output", "types": ["QuantReLU"]},
        {"fault": "msb_flip", "site": "input", "active_in": "eval"},
    ],
    "sweep": {"fault.ber": [0.001, 0.01], "indices": "each", "seed": [1, 2]},
    "paired": ["seed"], "repetitions": 3,
    "stop": {"rule": "ci", "half_width": 2.0, "min_repetitions": 3, "max_repetitions": 10},
    "atol": 1e-6, "sdc_thresholds": [1, 5, 10], "reuse_prefix": False, "stack_trials": 4,
}


def _campaign_templates() -> dict[str, dict]:
    """Every shipped campaign spec template as loaded (plus :data:`RICH`)."""
    out = {}
    for name, resource in sorted(templates().items()):
        if name.startswith(("campaign_", "demo_")):
            out[name] = yaml.safe_load(resource.read_text(encoding="utf-8"))
    out["rich"] = RICH
    return out


TEMPLATES = _campaign_templates()

ODD_STRINGS = ["", " ", "each", "auto", "inf", "nan", "-inf", "1e-3", "1E3", "+5", ".5", "-.5e2", "0x10",
               "abc", "re:((", "re:conv.*", "fixed", "ci", "bit_flip", "weight", "output", "int8", "[1", "{a",
               "${name}", "${nowhere}", "mitigation.rate", "fault.ber", "é", "日本", "\u200b", "a" * 300,
               "null", "true", "-1", "1" * 40]
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-10, 10), st.integers(-(2**70), 2**70),
    st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**30, 1e308, -1e308, 5e-324]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([math.nan, math.inf, -math.inf, -0.0]),
    st.sampled_from(ODD_STRINGS), st.text(max_size=6),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.one_of(st.sampled_from(["type", "ber", "rate", "rule", "source", "n1", "x", "fault.ber"]),
                              st.text(max_size=4)), inner, max_size=3)), max_leaves=6)
KEYS = st.one_of(st.sampled_from(sorted({k for t in TEMPLATES.values() for k in t} | {
    "fault", "site", "ber", "count", "bits", "sites", "rule", "population", "margin", "mitigation.rate",
    "fault.ber", "fault.type", "indices", "kwargs", "array", "version", "type"})),
    st.text(max_size=5), st.integers(-2, 5))


def _slots(data):
    """Every (container, key) of a nested structure, each container before its children."""
    if isinstance(data, dict):
        for key in list(data):
            yield data, key
            yield from _slots(data[key])
    elif isinstance(data, list):
        for i in range(len(data)):
            yield data, i
            yield from _slots(data[i])


@st.composite
def mutated_specs(draw, templates: dict | None = None) -> dict:
    """A shipped template (of ``templates``, default the campaign specs) with one to four random
    mutations."""
    templates = TEMPLATES if templates is None else templates
    spec = copy.deepcopy(templates[draw(st.sampled_from(sorted(templates)))])
    for _ in range(draw(st.integers(1, 4))):
        slots = list(_slots(spec))
        op = draw(st.sampled_from(["replace", "replace", "replace", "drop", "add", "wrap_list", "wrap_dict",
                                   "stringify", "negate"]))
        if op == "add" or not slots:
            containers = [spec] + [c[k] for c, k in slots if isinstance(c[k], dict)]
            target = draw(st.sampled_from(containers))
            target[draw(KEYS)] = draw(values)
            continue
        container, key = draw(st.sampled_from(slots))
        old = container[key]
        if op == "replace":
            container[key] = draw(values)
        elif op == "drop":
            del container[key]
        elif op == "wrap_list":
            container[key] = [old]
        elif op == "wrap_dict":
            container[key] = {draw(KEYS): old}
        elif op == "stringify":
            container[key] = str(old)
        elif isinstance(old, (int, float)) and not isinstance(old, bool):
            container[key] = -old - 1
        else:
            container[key] = draw(values)
    return spec


override_keys = st.one_of(
    st.sampled_from(["seed", "seed.x", "faults", "faults.0", "faults.0.fault", "faults.0.fault.ber", "faults.5.site",
                     "faults.-1.site", "faults.x", "sweep", "sweep.fault.ber", "sweep.mitigation.rate", "stop",
                     "stop.rule", "stop.population", "model", "model.kwargs.epochs", "sdc_thresholds", "limit",
                     "mitigation.rate", "systolic.array.n1", "store", "name", "a..b", ".", "", " ", "é", "0", "1.2"]),
    st.text(max_size=8))
override_values = st.one_of(
    st.sampled_from(["[1", "1]", "{a", "{a: 1}", "[]", "{}", "null", "", "1e-3", "-1", "nan", ".nan", "x", "=",
                     "[0, 1e-3]", "{rule: ci}", "${name}", "${oc.env:NO_SUCH_VARIABLE_15}", "'quoted'", "*x",
                     "!!binary aGk=", "é", "1" * 50]),
    st.text(max_size=8))
overrides = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", override_keys, override_values),
    st.sampled_from(["=", "==", "seed", "seed=[1", "seed.x=1", "faults.5.site=w", "=1", "\x00=1"]),
    st.text(max_size=10))


def _check_or_config_error(build, path: Path | None = None):
    """``build()`` gives a spec or raises QFaultConfigError: any other exception fails the test.

    The message has one line per error (after a count when there are several); with the spec's
    ``path``, each error names a line of that file, an override, or nothing.
    """
    try:
        spec = build()
    except QFaultConfigError as exc:
        errors = exc.errors if isinstance(exc, ConfigErrors) else [exc]
        assert errors and len(str(exc).split("\n")) == (len(errors) + 1 if len(errors) > 1 else 1), str(exc)
        if path is not None:
            lines = max(1, len(path.read_bytes().split(b"\n")))
            for error in errors:
                location = getattr(error, "location", None)
                if location is not None and not location.startswith("from override "):
                    assert location.startswith(f"{path} line "), location
                    assert 1 <= int(location.rsplit(" ", 1)[1]) <= lines, location
        return None
    assert isinstance(spec, CampaignSpec)
    assert spec.fingerprint() == CampaignSpec.from_dict(spec.to_dict()).fingerprint()
    return spec


def _write(path: Path, spec: dict) -> bool:
    """``spec`` as YAML (False when PyYAML cannot represent it)."""
    try:
        path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    except (yaml.YAMLError, ValueError):
        return False
    return True


def _validate(spec_path: Path, extra: list[str] | None = None) -> tuple[int, str]:
    """``qfault campaign validate`` in-process, run in the spec's folder (a file written to the
    working directory shows there too)."""
    err = io.StringIO()
    with contextlib.chdir(spec_path.parent), contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(io.StringIO()):
        code = main(["campaign", "validate", spec_path.name, *(extra or [])])
    return code, err.getvalue()


@FUZZ
@given(spec=mutated_specs())
def test_from_dict_builds_or_raises_config_error(spec):
    _check_or_config_error(lambda: CampaignSpec.from_dict(spec))


@FUZZ
@given(spec=mutated_specs())
def test_from_yaml_builds_or_raises_config_error_and_validate_writes_nothing(tmp_path_factory, spec):
    folder = tmp_path_factory.mktemp("spec")
    path = folder / "spec.yaml"
    if not _write(path, spec):
        return
    if _check_or_config_error(lambda: CampaignSpec.from_yaml(path), path) is None:
        code, err = _validate(path)
        assert code == 2, err
        assert err.startswith("qfault: error: ") and "Traceback" not in err
        assert sorted(p.name for p in folder.iterdir()) == ["spec.yaml"]


@FUZZ
@given(name=st.sampled_from(sorted(TEMPLATES)), items=st.lists(overrides, min_size=1, max_size=3))
def test_overrides_build_or_raise_config_error(tmp_path_factory, name, items):
    folder = tmp_path_factory.mktemp("spec")
    path = folder / "spec.yaml"
    assert _write(path, TEMPLATES[name])
    if _check_or_config_error(lambda: CampaignSpec.from_yaml(path, items), path) is None:
        code, err = _validate(path, items)
        assert code == 2, err
        assert sorted(p.name for p in folder.iterdir()) == ["spec.yaml"]


@FUZZ
@given(text=st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
    st.lists(st.sampled_from(["a:", " b", "- c", "[", "]", "{", "}", ": ", "\n", "  ", "'", '"', "&x ", "*x", "!!str ",
                              "<<: ", "? ", "#", "faults:", "sweep:", "  - ", "fault.ber: ", "1e-3", "${x}", "\t"]),
             max_size=12).map("".join)))
def test_any_text_loads_or_raises_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("spec") / "spec.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    _check_or_config_error(lambda: CampaignSpec.from_yaml(path), path)
    with contextlib.suppress(QFaultConfigError):
        load_config(path)


TRAIN = {name: yaml.safe_load(resource.read_text(encoding="utf-8"))
         for name, resource in templates().items() if name.startswith("fat_")}


@FUZZ
@given(config=mutated_specs(TRAIN))
def test_train_configs_build_or_raise_config_error(config):
    from qfault.train import FatConfig

    try:
        FatConfig.from_dict(config)
    except QFaultConfigError as exc:
        errors = exc.errors if isinstance(exc, ConfigErrors) else [exc]
        assert len(str(exc).split("\n")) == (len(errors) + 1 if len(errors) > 1 else 1), str(exc)


def test_the_templates_themselves_are_valid():
    from qfault.train import FatConfig

    assert TRAIN and all(isinstance(FatConfig.from_dict(config), FatConfig) for config in TRAIN.values())
    for name, spec in TEMPLATES.items():
        assert isinstance(CampaignSpec.from_dict(spec), CampaignSpec), name
