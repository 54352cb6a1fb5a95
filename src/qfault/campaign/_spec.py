"""Campaign specifications: validated YAML <-> frozen dataclasses, fingerprints and diffs.

A campaign evaluates a model on a data set under fault specs (``InjectSpec`` dicts), over the
points of a sweep (dotted paths into the first fault spec, e.g. ``fault.ber``), with repetitions
decided by a stop rule: a fixed count, the sample size of Leveugle et al. (DATE 2009), or "until
the confidence interval of the accuracy is narrower than x".

Specs load through the shared config path (:func:`qfault.config.load_config`: YAML plus
``key=value`` overrides), and :meth:`CampaignSpec.from_dict` reports every invalid field at once
(:class:`qfault.config.ConfigErrors`): each section is checked on its own, sweep values are
named by their sweep path (``sweep.fault.ber=2.0``), and the spec's own fields through
:func:`qfault.config.check_dataclass`. A valid spec is built exactly as before (same
``to_dict`` and fingerprint).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._errors import QFaultConfigError, check_choice, check_range
from ..config import (
    ConfigErrors, check_dataclass, check_keys, check_registered, coerce_fields, load_config, source_map_of,
)

SPEC_VERSION = 1
STOP_RULES = ("fixed", "leveugle", "ci")
MODEL_SOURCES = ("demo", "checkpoint", "factory")
#: spec keys that do not change results (excluded from the fingerprint)
NON_SEMANTIC = ("name", "store", "progress", "reuse_prefix", "stack_trials")
#: ``stack_trials: auto`` stacks trials until a forward holds about this many images
STACK_IMAGES = 1024
#: keys of the ``mitigation`` section
MITIGATION_KEYS = ("rate", "method", "tile")


def _unknown(section: str, data: dict, allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            raise QFaultConfigError(f"{section}.{key}" if section else key, data[key],
                                    "keys " + ", ".join(allowed), hint="unknown key")


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from.

    ``source="demo"``: a registered demo model (``name``), trained once and cached.
    ``source="checkpoint"``: ``factory`` builds the architecture (``package.module:function``,
    called with ``kwargs``) and ``path`` holds a state dict (or ``{"model_state_dict": ...}``).
    ``source="factory"``: ``factory`` returns the ready model.
    """

    source: str = "demo"
    name: str = "digits_cnn"
    path: str | None = None
    factory: str | None = None
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("model.source", self.source, MODEL_SOURCES)
        if self.source in ("checkpoint", "factory") and not self.factory:
            raise QFaultConfigError("model.factory", self.factory, "'package.module:function' for source "
                                    f"{self.source!r}")
        if self.factory is not None and (":" not in self.factory or self.factory.count(":") != 1):
            raise QFaultConfigError("model.factory", self.factory, "'package.module:function'")
        if self.source == "checkpoint" and not self.path:
            raise QFaultConfigError("model.path", self.path, "the path of a checkpoint file")


@dataclass(frozen=True)
class StopRule:
    """How many repetitions each sweep point gets.

    ``fixed``: ``repetitions``. ``leveugle``: the statistical sample size for fault population
    ``population`` (an int, ``"inf"``, or ``"auto"``: per sweep point, the number of bits its
    faults can hit, see :func:`~qfault.campaign.fault_population`), error ``margin``
    (fraction), ``confidence`` and ``p``.
    ``ci``: repeat until the ``confidence`` interval half-width of the accuracy (percentage
    points) is at most ``half_width``, between ``min_repetitions`` and ``max_repetitions``.
    """

    rule: str = "fixed"
    margin: float = 0.05
    confidence: float = 0.95
    p: float = 0.5
    population: int | str = "inf"
    half_width: float = 1.0
    min_repetitions: int = 3
    max_repetitions: int = 100

    def __post_init__(self) -> None:
        check_choice("stop.rule", self.rule, STOP_RULES)
        check_range("stop.margin", self.margin, 1e-9, 0.999999)
        check_range("stop.confidence", self.confidence, 1e-9, 0.999999)
        check_range("stop.p", self.p, 1e-9, 0.999999)
        if self.population not in ("inf", "auto"):
            check_range("stop.population", self.population, 1, 2**62, integer=True)
        check_range("stop.half_width", self.half_width, 1e-9, 100.0)
        check_range("stop.min_repetitions", self.min_repetitions, 2, 10**7, integer=True)
        check_range("stop.max_repetitions", self.max_repetitions, self.min_repetitions, 10**7, integer=True)


@dataclass(frozen=True)
class CampaignSpec:
    """A whole campaign. See ``configs/campaign_digits.yaml`` for a commented example.

    Args:
        name: label used in reports and the default store file name.
        seed: campaign seed; trial seeds derive from (seed, sweep point, repetition).
        model: a :class:`ModelSource` (or its dict).
        dataset: a dataset name or dict for ``qfault.data.build_dataset``.
        batch_size: evaluation batch size.
        limit: evaluate only the first ``limit`` images (None: all).
        faults: fault specs (dicts of ``InjectSpec`` fields), applied together in every trial.
        sweep: ``{dotted path in faults[0]: [values]}``; the points are the cartesian product.
            The special value ``"each"`` for ``indices`` sweeps every matching layer.
        repetitions: trials per point for the ``fixed`` rule.
        stop: a :class:`StopRule` (or its dict).
        atol: outputs equal within ``atol`` count as masked.
        sdc_thresholds: SDC-x% thresholds in percent.
        store: SQLite file of the results (default ``<name>.qfault.db``).
        reuse_prefix: replay the recorded clean outputs of modules that run before the first
            faulted module instead of recomputing them (identical results, more memory).
        mitigation: stuck-at cells under the stored weight codes of ``SeedQuantLinear`` layers
            with write-side mitigation (seed 000): ``{rate: percent, method: raw|cvm|sign_flip|
            bit_flip, tile: 64}``; sweep it with paths ``mitigation.rate``, ``mitigation.method``.
        stack_trials: trials evaluated together in one forward (their batches stacked) when every
            fault acts on activations of fixed layers: an integer >= 1 (1: off) or ``"auto"``
            (off on the CPU, about ``STACK_IMAGES`` images per forward on other devices). Used
            only where a fault-free stacked forward is bit-identical to the plain one, so results
            do not depend on it.
        paired: sweep paths whose points share trial seeds: trial ``r`` of points that differ
            only in these paths has the same seed (common random numbers). With
            ``BitFlip(nested=True)`` and ``paired: [fault.ber]``, trial ``r``'s flips at a lower
            BER are a subset of its flips at a higher one.
        systolic: run the model's Conv2d/Linear layers on a systolic array and give every trial
            one register fault drawn from its fault space (seed 003): the fields of
            :class:`~qfault.systolic.SystolicFaults` (``array``, ``layers``, ``channels``,
            ``bits``, ``lines``, ``polarities``, ``msb``, ``batches``).
    """

    name: str = "campaign"
    seed: int = 0
    model: Any = field(default_factory=ModelSource)
    dataset: Any = "digits"
    batch_size: int = 256
    limit: int | None = None
    faults: tuple = ()
    sweep: dict = field(default_factory=dict)
    repetitions: int = 5
    stop: Any = field(default_factory=StopRule)
    atol: float = 0.0
    sdc_thresholds: tuple = (10.0, 20.0)
    store: str | None = None
    reuse_prefix: bool = True
    mitigation: dict | None = None
    stack_trials: int | str = "auto"
    paired: tuple = ()
    systolic: dict | None = None

    def __post_init__(self) -> None:
        from ..injection import InjectSpec

        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        # fields on their own first, then the ones that depend on others (faults, sweep,
        # mitigation): ``from_dict`` relies on this order to report every bad field
        if not isinstance(self.name, str) or not self.name:
            raise QFaultConfigError("name", self.name, "a non-empty string")
        check_range("seed", self.seed, 0, 2**63 - 1, integer=True)
        if isinstance(self.model, dict):
            _unknown("model", self.model, tuple(ModelSource.__dataclass_fields__))
            set_("model", ModelSource(**self.model))
        if isinstance(self.stop, dict):
            _unknown("stop", self.stop, tuple(StopRule.__dataclass_fields__))
            set_("stop", StopRule(**self.stop))
        check_range("batch_size", self.batch_size, 1, 10**7, integer=True)
        if self.limit is not None:
            check_range("limit", self.limit, 1, 10**12, integer=True)
        check_range("repetitions", self.repetitions, 1, 10**7, integer=True)
        check_range("atol", self.atol, 0.0, 1e30)
        if not isinstance(self.reuse_prefix, bool):
            raise QFaultConfigError("reuse_prefix", self.reuse_prefix, "true or false")
        if self.stack_trials != "auto":
            check_range("stack_trials", self.stack_trials, 1, 10**6, integer=True)
        if self.store is not None and not isinstance(self.store, (str, os.PathLike)):
            raise QFaultConfigError("store", self.store, "a file path (or null: <name>.qfault.db)")
        set_("sdc_thresholds", _thresholds(self.sdc_thresholds))
        faults = self.faults if isinstance(self.faults, (list, tuple)) else [self.faults]
        if self.mitigation is not None:
            if not isinstance(self.mitigation, dict):
                raise QFaultConfigError("mitigation", self.mitigation, "a mapping {rate, method, tile}")
            _unknown("mitigation", self.mitigation, MITIGATION_KEYS)
            _stuck_spec(self.mitigation)
        if self.systolic is not None:
            set_("systolic", _systolic_section(self.systolic).to_dict())
        if not faults and self.mitigation is None and self.systolic is None:
            raise QFaultConfigError("faults", list(faults),
                                    "a list with at least one fault spec (or a mitigation or systolic section)")
        normalized = []
        for i, item in enumerate(faults):
            spec = item if isinstance(item, InjectSpec) else _inject_spec(f"faults[{i}]", item)
            normalized.append(spec.to_dict())
        set_("faults", tuple(normalized))
        if not isinstance(self.sweep, dict):
            raise QFaultConfigError("sweep", self.sweep, "a mapping {dotted.path: [values]}")
        for path, values in self.sweep.items():
            _check_axis(path, values)
        if not faults and any(not path.startswith("mitigation.") for path in self.sweep):
            raise QFaultConfigError("sweep", list(self.sweep), "only mitigation.* paths when faults is empty")
        for point in self.points():  # every point must give valid fault specs
            for data in point_faults(self.faults, point):
                _inject_spec("sweep", data, sweep_point=point)
            if self.mitigation is not None:
                _stuck_spec(point_mitigation(self.mitigation, point), point)
            elif any(path.startswith("mitigation.") for path in point):
                raise QFaultConfigError("sweep", point, "mitigation.* paths only with a mitigation section")
        paired = (self.paired,) if isinstance(self.paired, str) else self.paired
        if not isinstance(paired, (list, tuple)):
            raise QFaultConfigError("paired", self.paired, "a list of sweep paths")
        for path in paired:
            if not isinstance(path, str) or path not in self.sweep:
                raise QFaultConfigError("paired", path, "sweep paths: " + (", ".join(self.sweep) or "(no sweep)"))
        set_("paired", tuple(paired))

    # -- sweep -------------------------------------------------------------------------------
    def points(self, num_layers: int | None = None) -> list[dict]:
        """The sweep points in order (``[{}]`` without a sweep). ``"each"`` needs ``num_layers``."""
        return _sweep_points(self.sweep, num_layers)

    # -- identity ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = asdict(self)
        out["faults"] = [dict(f) for f in self.faults]
        out["sdc_thresholds"] = list(self.sdc_thresholds)
        if not self.paired:  # a newer field: absent at its default, so older fingerprints stay
            del out["paired"]
        else:
            out["paired"] = list(self.paired)
        if self.systolic is None:  # likewise
            del out["systolic"]
        out["version"] = SPEC_VERSION
        return json.loads(json.dumps(out, default=str))

    def trials_per_forward(self, device: Any = None) -> int:
        """``stack_trials`` resolved to a number for trials on ``device`` (default: the CPU).

        ``auto`` is 1 on the CPU, where stacking was measured slower (bench/bench_campaign.py:
        CPU kernels are already compute-bound at an evaluation batch), and about
        ``STACK_IMAGES`` images per forward on other devices, where small batches are bound by
        kernel launches.
        """
        if self.stack_trials == "auto":
            if device is None or getattr(device, "type", str(device)) == "cpu":
                return 1
            return max(1, STACK_IMAGES // self.batch_size)
        return int(self.stack_trials)

    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON of every field that changes results."""
        data = {k: v for k, v in self.to_dict().items() if k not in NON_SEMANTIC}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: dict) -> "CampaignSpec":
        """A spec from its dict (as :meth:`to_dict` or a YAML file gives it).

        Raises:
            QFaultConfigError: a :class:`~qfault.config.ConfigErrors` listing every invalid
                field at once (unknown keys with the closest known one, values out of range,
                fault specs, sweep values).
        """
        if not isinstance(data, Mapping):
            raise QFaultConfigError("campaign", type(data).__name__, "a mapping of campaign fields")
        errors = ConfigErrors()
        source_map = source_map_of(data)  # a loaded file: errors name the line of their value
        data = dict(data)
        version = data.pop("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            errors.add("version", version, str(SPEC_VERSION))
        if isinstance(data.get("sdc_thresholds"), list):
            data["sdc_thresholds"] = tuple(data["sdc_thresholds"])
        if isinstance(data.get("faults"), list):
            data["faults"] = tuple(data["faults"])
        spec = check_dataclass(cls, data, errors=errors, nested=_nested_checks())
        errors.locate(source_map)
        errors.raise_if_any()
        return spec

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> "CampaignSpec":
        """Load a YAML file; ``overrides`` are ``key=value`` strings (dotted keys, YAML values).

        A number in a key indexes a list (``faults.0.fault.ber=1e-3``); under ``sweep`` the rest
        of the key is one sweep path (``sweep.fault.ber=[0, 1e-3]``). ``store`` defaults to the
        spec's path with the suffix ``.qfault.db``; a relative ``store`` is relative to the
        spec's folder. See :func:`qfault.config.load_config`.

        Raises:
            QFaultConfigError: every invalid field at once (see :meth:`from_dict`); a missing
                or malformed file; malformed overrides.

        Example:
            >>> spec = CampaignSpec.from_yaml("campaign_digits.yaml", ["repetitions=10"])  # doctest: +SKIP
        """
        path = Path(path)
        data = load_config(path, overrides, what="spec", dotted_keys=("sweep",))
        store = data.get("store")
        if store is None:  # next to the spec file
            data["store"] = str(path.with_suffix(".qfault.db"))
        elif isinstance(store, str) and store and not Path(store).is_absolute():  # relative to the spec file
            data["store"] = str(path.parent / store)
        try:
            return cls.from_dict(data)
        except ConfigErrors as exc:
            exc.source = str(path)
            raise

    def store_path(self) -> Path:
        return Path(self.store or f"{self.name}.qfault.db")


def _thresholds(value: Any, errors: ConfigErrors | None = None) -> tuple | None:
    """The SDC-x% thresholds: a list of percentages in [0, 1e6] (numbers, or numbers written as
    strings). Every bad item is recorded in ``errors`` (None: the first is raised)."""
    from ..config import as_number

    errors_ = ConfigErrors() if errors is None else errors
    before = len(errors_)
    out: list[float] = []
    if not isinstance(value, (list, tuple)):
        errors_.add("sdc_thresholds", value, "a list of percentages (numbers in [0, 1e6])")
    else:
        for item in value:
            item = as_number(item, float)
            with errors_.collect():
                check_range("sdc_thresholds", item, 0.0, 1e6)
                out.append(float(item))
    if len(errors_) > before:
        if errors is None:
            raise errors_.errors[0]
        return None
    return tuple(out)


def _inject_spec(field_name: str, data: Any, sweep_point: dict | None = None):
    from ..injection import InjectSpec

    if not isinstance(data, dict):
        raise QFaultConfigError(field_name, data, "a mapping of InjectSpec fields")
    try:
        return InjectSpec.from_dict(data)
    except QFaultConfigError as exc:
        where = f"{field_name}.{exc.field}" if sweep_point is None else f"sweep {sweep_point}: {exc.field}"
        raise QFaultConfigError(where, exc.value, exc.allowed) from None
    except TypeError as exc:
        raise QFaultConfigError(field_name, data, "InjectSpec fields", hint=str(exc)) from None


def _stuck_spec(data: dict, point: dict | None = None):
    from ..mitigation import StuckAtSpec

    try:
        return StuckAtSpec(**data)
    except QFaultConfigError as exc:
        where = f"mitigation.{exc.field}" if point is None else f"sweep {point}: mitigation.{exc.field}"
        raise QFaultConfigError(where, exc.value, exc.allowed) from None


def _systolic_section(data: Any):
    from ..systolic import SECTION_KEYS, SystolicFaults

    if isinstance(data, SystolicFaults):
        return data
    if not isinstance(data, Mapping):
        raise QFaultConfigError("systolic", data, "a mapping {array, layers, channels, bits, lines, polarities, ...}")
    _unknown("systolic", dict(data), SECTION_KEYS)
    if "array" not in data:
        raise QFaultConfigError("systolic.array", None, "a mapping of ArrayConfig fields (n1, n2, n3, ...)",
                                hint="missing")
    try:
        return SystolicFaults(**data)
    except TypeError as exc:
        raise QFaultConfigError("systolic", dict(data), "SystolicFaults fields", hint=str(exc)) from None


def _sweep_points(sweep: Mapping, num_layers: int | None = None) -> list[dict]:
    axes = []
    for path, values in sweep.items():
        if values == "each":
            values = [[i] for i in range(num_layers)] if num_layers is not None else [[0]]
        axes.append([(path, v) for v in values])
    return [dict(combo) for combo in itertools.product(*axes)] if axes else [{}]


def _check_axis(path: str, values: Any) -> None:
    """One sweep axis: a non-empty list of values, or ``"each"`` for ``indices``."""
    if not isinstance(values, (list, tuple)) and values != "each":
        raise QFaultConfigError(f"sweep.{path}", values, "a list of values (or 'each' for indices)")
    if values == "each" and path != "indices":
        raise QFaultConfigError(f"sweep.{path}", values, "a list ('each' only applies to indices)")
    if isinstance(values, (list, tuple)) and not values:
        raise QFaultConfigError(f"sweep.{path}", list(values), "a non-empty list of values")


# -- every bad field at once (CampaignSpec.from_dict) ----------------------------------------

_BAD = object()  # marks a section whose own check failed


def _check_inject_spec(data: Any, where: str, errors: ConfigErrors):
    """The ``InjectSpec`` of one fault spec dict, or None (every bad field recorded in ``errors``)."""
    from ..faults import FAULTS, BitFlip, FaultModel
    from ..formats import FORMATS, NumberFormat
    from ..injection import InjectSpec

    if isinstance(data, InjectSpec):
        return data
    if not isinstance(data, Mapping):
        errors.add(where, data, "a mapping of InjectSpec fields")
        return None
    data = dict(data)
    data.pop("type", None)  # as InjectSpec.from_dict
    data.pop("version", None)
    for key in ("types", "names", "indices"):
        if isinstance(data.get(key), list):
            data[key] = tuple(data[key])

    def check_fault(value: Any, path: str, errs: ConfigErrors) -> Any:
        if not isinstance(value, FaultModel):
            return check_registered(FAULTS, value, where=path, errors=errs)
        return None

    def check_format(value: Any, path: str, errs: ConfigErrors) -> Any:
        if isinstance(value, Mapping) and not isinstance(value, NumberFormat):  # a name: get_format parses it
            return check_registered(FORMATS, value, where=path, errors=errs)
        return None

    return check_dataclass(InjectSpec, data, where=where, errors=errors,
                           nested={"fault": check_fault, "format": check_format},
                           stand_ins={"fault": BitFlip(ber=0.0)})


def _sweep_error(error: QFaultConfigError, point: dict, prefix: str) -> QFaultConfigError:
    """An error of a sweep point's fault spec, named after the sweep path that caused it."""
    field_name = str(error.field)
    rel = field_name[len(prefix) + 1:] if prefix and field_name.startswith(prefix + ".") else field_name
    if prefix in ("", "faults[0]"):
        named = [path for path in point if rel == path or rel.startswith(path + ".")]
        if not named:
            named = [path for path in point if path.rsplit(".", 1)[-1] == rel]
            named = named if len(named) == 1 else []
        if named:
            path = named[0]
            return QFaultConfigError(f"sweep.{path}{rel[len(path):] if rel.startswith(path) else ''}",
                                     error.value, error.allowed, hint=error.hint)
    return QFaultConfigError(f"sweep {point}: {field_name}", error.value, error.allowed, hint=error.hint)


def _check_point(point: dict, faults: tuple, mitigation: dict | None, errors: ConfigErrors) -> None:
    from ..mitigation import StuckAtSpec

    try:
        point_specs = point_faults(faults, point)
    except QFaultConfigError as exc:
        errors.append(exc)
        return
    for i, data in enumerate(point_specs):
        found = ConfigErrors()
        _check_inject_spec(data, f"faults[{i}]", found)
        for error in found:
            errors.append(_sweep_error(error, point, f"faults[{i}]"))
    if mitigation is not None:
        found = ConfigErrors()
        check_dataclass(StuckAtSpec, point_mitigation(mitigation, point), where="mitigation", errors=found)
        for error in found:
            errors.append(_sweep_error(error, point, ""))


def _axis_numbers(path: str, values: list, first: Any) -> list:
    """A sweep axis with numbers written as strings read as numbers, where the field the path
    names (in ``faults[0]``, or ``mitigation.<field>``) is annotated as a number."""
    from ..mitigation import StuckAtSpec

    keys = path.split(".")
    if keys[0] == "mitigation":
        cls = StuckAtSpec if len(keys) == 2 else None
    else:
        target = first
        for key in keys[:-1]:
            target = getattr(target, key, None) if dataclasses.is_dataclass(target) else None
        cls = type(target) if dataclasses.is_dataclass(target) else None
    if cls is None:
        return values
    return [coerce_fields(cls, {keys[-1]: value})[keys[-1]] for value in values]


def _nested_checks() -> dict:
    """Validators of the sections of a spec dict, in order: faults and mitigation, then the
    sweep, whose points are checked only when the sections they change are valid. Each returns
    its section normalized (numbers written as strings read as numbers) or None on errors."""
    from ..mitigation import StuckAtSpec

    state: dict[str, Any] = {"faults": (), "first": None, "mitigation": None, "systolic": None}

    def check_faults(value: Any, where: str, errors: ConfigErrors) -> Any:
        items = value if isinstance(value, (list, tuple)) else [value]
        before = len(errors)
        specs = [_check_inject_spec(item, f"{where}[{i}]", errors) for i, item in enumerate(items)]
        if len(errors) > before:
            state["faults"] = _BAD
            return None
        state["faults"] = tuple(spec.to_dict() for spec in specs)
        state["first"] = specs[0] if specs else None
        return state["faults"]

    def check_mitigation(value: Any, where: str, errors: ConfigErrors) -> Any:
        if value is None:
            return None
        before = len(errors)
        if not isinstance(value, dict):
            errors.add(where, value, "a mapping {rate, method, tile}")
        else:
            check_keys(value, MITIGATION_KEYS, where, errors)
            value = coerce_fields(StuckAtSpec, value)
            check_dataclass(StuckAtSpec, {k: v for k, v in value.items() if k in MITIGATION_KEYS}, where=where,
                            errors=errors)
        state["mitigation"] = dict(value) if len(errors) == before else _BAD
        return None if state["mitigation"] is _BAD else state["mitigation"]

    def check_systolic(value: Any, where: str, errors: ConfigErrors) -> Any:
        if value is None:
            return None
        before = len(errors)
        value = _systolic_numbers(value)
        if isinstance(value, Mapping) and isinstance(value.get("array"), Mapping):  # its every bad field
            from ..systolic import ArrayConfig

            check_dataclass(ArrayConfig, value["array"], where=f"{where}.array", errors=errors)
        if len(errors) > before:
            state["systolic"] = _BAD
            return None
        try:
            state["systolic"] = _systolic_section(value).to_dict()
        except QFaultConfigError as exc:
            errors.append(exc)
            state["systolic"] = _BAD
            return None
        return value

    def check_thresholds(value: Any, where: str, errors: ConfigErrors) -> Any:
        return _thresholds(value, errors)

    def check_sweep(value: Any, where: str, errors: ConfigErrors) -> Any:
        if not isinstance(value, dict):
            errors.add(where, value, "a mapping {dotted.path: [values]}")
            return None
        before = len(errors)
        for path, values in value.items():
            if not isinstance(path, str) or not path.isprintable() or any(not key for key in path.split(".")):
                name = path if isinstance(path, str) and path.isprintable() else repr(path)
                errors.add(f"{where}.{name}", values, "values under dotted paths into faults[0] (fault.ber) "
                           "or mitigation.<field>", hint=f"the key {path!r} is not a dotted path")
                continue
            with errors.collect():
                _check_axis(path, values)
        faults, mitigation = state["faults"], state["mitigation"]
        if len(errors) > before or faults is _BAD or mitigation is _BAD:
            return None  # the points cannot be checked
        paths = list(value)
        if not faults and any(not path.startswith("mitigation.") for path in paths):
            errors.add(where, paths, "only mitigation.* paths when faults is empty")
            return None
        if mitigation is None and any(path.startswith("mitigation.") for path in paths):
            errors.add(where, paths, "mitigation.* paths only with a mitigation section")
            return None
        sweep = {path: values if values == "each" else type(values)(_axis_numbers(path, list(values), state["first"]))
                 for path, values in value.items()}
        points = _sweep_points(sweep)
        everywhere: dict[tuple, list] = {}  # an error every point has is reported once
        for point in points:
            found = ConfigErrors()
            _check_point(point, faults, mitigation, found)
            prefix = f"sweep {point}: "
            for error in found:
                field_name = str(error.field)
                if not field_name.startswith(prefix):
                    errors.append(error)
                    continue
                key = (field_name[len(prefix):], repr(error.value), error.allowed, error.hint)
                everywhere.setdefault(key, []).append(error)
        for (field_name, _, allowed, hint), group in everywhere.items():
            if len(points) > 1 and len(group) == len(points):
                errors.add(f"sweep (all {len(points)} points): {field_name}", group[0].value, allowed, hint=hint)
            else:
                for error in group:
                    errors.append(error)
        return sweep if len(errors) == before else None

    return {"faults": check_faults, "mitigation": check_mitigation, "systolic": check_systolic,
            "sdc_thresholds": check_thresholds, "sweep": check_sweep}


def _systolic_numbers(value: Any) -> Any:
    """The ``systolic`` section with numbers written as strings read as numbers."""
    from ..config import as_number
    from ..systolic import ArrayConfig, SystolicFaults

    if not isinstance(value, Mapping):
        return value
    out = coerce_fields(SystolicFaults, value)
    for key in ("channels", "bits"):  # an integer or "auto"
        if key in out:
            out[key] = as_number(out[key], int | str)
    if isinstance(out.get("array"), Mapping):
        out["array"] = coerce_fields(ArrayConfig, out["array"])
    return out


def point_mitigation(mitigation: dict | None, point: dict) -> dict | None:
    """The mitigation section of a sweep point (paths ``mitigation.<field>``)."""
    if mitigation is None:
        return None
    out = dict(mitigation)
    for path, value in point.items():
        if path.startswith("mitigation."):
            out[path.split(".", 1)[1]] = value
    return out


def _set_path(data: dict, keys: list[str], value: Any) -> None:
    try:
        for key in keys[:-1]:
            if key.isdigit() and isinstance(data, list):
                data = data[int(key)]
            else:
                data = data.setdefault(key, {})
        last = keys[-1]
        if last.isdigit() and isinstance(data, list):
            data[int(last)] = value
        else:
            data[last] = value
    except (AttributeError, IndexError, TypeError):
        raise QFaultConfigError("sweep." + ".".join(keys), value, "a path through the mappings and lists of "
                                "faults[0] (or mitigation.<field>)") from None


def point_faults(faults: tuple, point: dict) -> list[dict]:
    """The fault spec dicts of a sweep point (paths other than ``mitigation.*`` apply to ``faults[0]``)."""
    out = [copy.deepcopy(f) for f in faults]
    for path, value in point.items():
        if not path.startswith("mitigation."):
            _set_path(out[0], path.split("."), value)
    return out


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": 1}`` style view of nested dicts and lists."""
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(data, list):
        out = {}
        for i, value in enumerate(data):
            out.update(flatten(value, f"{prefix}{i}."))
        return out or {prefix.rstrip("."): []}
    return {prefix.rstrip("."): data}


def spec_diff(old: dict, new: dict) -> list[str]:
    """Readable lines ``key: old -> new`` for every semantic difference between two spec dicts."""
    a = flatten({k: v for k, v in old.items() if k not in NON_SEMANTIC})
    b = flatten({k: v for k, v in new.items() if k not in NON_SEMANTIC})
    lines = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            lines.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
    return lines
