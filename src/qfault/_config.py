"""Dict/YAML round-trip for frozen config dataclasses (formats, faults, specs)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ._errors import QFaultConfigError

CONFIG_VERSION = 1


def to_dict(config: Any) -> dict[str, Any]:
    """A plain dict with ``type`` (the registered name), ``version`` and every field."""
    out: dict[str, Any] = {"type": config.type_name, "version": CONFIG_VERSION}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value) and hasattr(value, "type_name"):
            # the value's own to_dict where it has one (it may leave out fields at their defaults)
            value = value.to_dict() if callable(getattr(value, "to_dict", None)) else to_dict(value)
        elif isinstance(value, tuple):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        out[field.name] = value
    return out


def from_dict(registry: Any, data: dict[str, Any]) -> Any:
    """Build a config from :func:`to_dict` output, resolving ``type`` through ``registry``."""
    if not isinstance(data, dict) or "type" not in data:
        raise QFaultConfigError(registry.kind, data, "a mapping with a 'type' key")
    data = dict(data)
    name = data.pop("type")
    version = data.pop("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise QFaultConfigError(f"{registry.kind}.version", version, f"{CONFIG_VERSION}")
    cls = registry.get(name)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise QFaultConfigError(
            f"{name}.{unknown[0]}", data[unknown[0]], "fields " + ", ".join(sorted(names))
        )
    for key, value in list(data.items()):
        if isinstance(value, list):
            data[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return cls(**data)
