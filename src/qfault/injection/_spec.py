"""``InjectSpec``: what fault, where in a model, and when."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .._config import to_dict
from .._errors import QFaultConfigError, check_bool, check_choice, check_range
from ..faults import FaultModel, get_fault
from ..faults import resolve_bits
from ..formats import NumberFormat, get_format
from ._grad import GRADIENT_MODES


class Site(str, Enum):
    """Which tensor of a selected module is faulted."""

    WEIGHT = "weight"
    BIAS = "bias"
    OUTPUT = "output"
    INPUT = "input"


class Mode(str, Enum):
    """When faults are active: in ``train`` mode, ``eval`` mode or ``both``."""

    TRAIN = "train"
    EVAL = "eval"
    BOTH = "both"


LAYER_MODES = ("all", "random_per_run", "random_per_forward")
GRANULARITIES = ("per_channel", "per_tensor")
#: fields added after the first spec version: left out of ``to_dict`` at their default, so the
#: dicts (and the campaign fingerprints built from them) of specs that do not use them stay as
#: they were
_NEWER_FIELDS = {"granularity": None}
PERSISTENCE = ("transient", "permanent")


def _as_tuple(field: str, value: Any, kinds: tuple[type, ...]) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, kinds):
        value = (value,)
    if not isinstance(value, (list, tuple)) or not value:
        raise QFaultConfigError(field, value, "None or a non-empty list")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, kinds):
            raise QFaultConfigError(field, item, "items of type " + "/".join(k.__name__ for k in kinds))
    return tuple(value)


@dataclass(frozen=True)
class InjectSpec:
    """One fault model attached to a set of sites.

    Args:
        fault: the fault model (object, registered name or dict).
        site: ``"weight"``, ``"bias"``, ``"output"`` (layer outputs) or ``"input"``.
        format: number format of plain float tensors (``"int8"``, ``"float16"``...). Brevitas
            quantized weights and activations use their own bit width, scale and zero point
            when this is None.
        scale: fixed scale for an int format on float tensors; None calibrates (weights once
            per output channel at injection time, activations per tensor on every forward).
        granularity: how an int format is calibrated on float weights and biases:
            ``"per_channel"`` (per output channel, the default for weights) or ``"per_tensor"``
            (one scale per tensor, as per-tensor quantized hardware stores them). None: the
            default. Activations are calibrated per tensor.
        types: module class names (any class in the MRO matches) or classes.
            Default: Conv/Linear for weight/bias, Brevitas QuantIdentity/QuantReLU/QuantHardTanh
            for output/input.
        names: shell globs over qualified module names, or ``"re:<regex>"``.
        indices: positions in the list of matching modules (negative counts from the end).
        layer_mode: ``"all"``, ``"random_per_run"`` (one random layer per injection/reset) or
            ``"random_per_forward"`` (one random layer per model forward).
        persistence: ``"transient"`` (redrawn every forward) or ``"permanent"`` (drawn once,
            kept until ``reset()``); None takes the fault's default (stuck-at is permanent).
        per_image: with ``BitFlip(count=...)``, draw that many faults in each image of a batch.
        active_in: ``"train"``, ``"eval"`` or ``"both"`` (module ``training`` flag).
        gradient: ``"ste"`` or ``"zero_faulty"`` at faulted positions.
        seed: fixes every draw (None draws a random base seed per injection).
        track_statistics: collect per-site statistics (one extra pass over each tensor).
    """

    fault: Any
    site: Site | str = Site.WEIGHT
    format: Any = None
    scale: float | None = None
    granularity: str | None = None
    types: tuple | None = None
    names: tuple[str, ...] | None = None
    indices: tuple[int, ...] | None = None
    layer_mode: str = "all"
    persistence: str | None = None
    per_image: bool = False
    active_in: Mode | str = Mode.BOTH
    gradient: str = "ste"
    seed: int | None = None
    track_statistics: bool = True

    type_name = "inject"

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("fault", get_fault(self.fault) if not isinstance(self.fault, FaultModel) else self.fault)
        check_choice("site", str(getattr(self.site, "value", self.site)), [s.value for s in Site])
        set_("site", Site(getattr(self.site, "value", self.site)))
        if self.format is not None and not isinstance(self.format, NumberFormat):
            set_("format", get_format(self.format))
        if self.format is not None and getattr(self.fault, "bits", None) is not None:
            resolve_bits(self.fault.bits, self.format)  # positions the format holds, checked up front
        if self.scale is not None:
            check_range("scale", self.scale, 1e-38, 3e38)
        if self.granularity is not None:
            check_choice("granularity", self.granularity, GRANULARITIES)
            if self.site in (Site.OUTPUT, Site.INPUT):
                raise QFaultConfigError("granularity", self.granularity,
                                        "None for output/input sites (activations are calibrated per tensor)")
        set_("types", _as_tuple("types", self.types, (str, type)))
        set_("names", _as_tuple("names", self.names, (str,)))
        for pattern in self.names or ():
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as exc:
                    raise QFaultConfigError("names", pattern, "shell globs or 're:<regex>' with a valid regular "
                                            "expression", hint=str(exc)) from None
        set_("indices", _as_tuple("indices", self.indices, (int,)))
        check_choice("layer_mode", self.layer_mode, LAYER_MODES)
        if self.persistence is not None:
            check_choice("persistence", self.persistence, PERSISTENCE)
        check_bool("per_image", self.per_image)
        check_choice("active_in", str(getattr(self.active_in, "value", self.active_in)), [m.value for m in Mode])
        set_("active_in", Mode(getattr(self.active_in, "value", self.active_in)))
        check_choice("gradient", self.gradient, GRADIENT_MODES)
        if self.seed is not None:
            check_range("seed", self.seed, 0, 2**63 - 1, integer=True)
        check_bool("track_statistics", self.track_statistics)

    @property
    def permanent(self) -> bool:
        if self.persistence is None:
            return type(self.fault).permanent_by_default
        return self.persistence == "permanent"

    def to_dict(self) -> dict:
        out = to_dict(self)
        for name, default in _NEWER_FIELDS.items():
            if out.get(name) == default:
                del out[name]
        out["site"] = self.site.value
        out["active_in"] = self.active_in.value
        if self.types is not None:
            out["types"] = [t if isinstance(t, str) else t.__name__ for t in self.types]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "InjectSpec":
        data = dict(data)
        data.pop("type", None)
        data.pop("version", None)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise QFaultConfigError(unknown[0], data[unknown[0]], "fields " + ", ".join(sorted(known)))
        for key in ("types", "names", "indices"):
            if isinstance(data.get(key), list):
                data[key] = tuple(data[key])
        return cls(**data)
