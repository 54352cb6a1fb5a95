"""YAML files plus ``key=value`` overrides -> a plain dict, through OmegaConf."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable

from .._errors import QFaultConfigError
from ._errors import ConfigErrors

_INDEX = re.compile(r"^-?\d+$")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_yaml(path: str | os.PathLike, *, what: str = "config"):
    """An OmegaConf ``DictConfig`` of a YAML file (interpolations not resolved yet).

    An empty file is an empty mapping. Raises :class:`~qfault.QFaultConfigError` naming ``what``
    for a missing file, invalid YAML or a top level that is not a mapping.
    """
    import yaml
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(path)
    try:
        cfg = OmegaConf.load(path)
    except (FileNotFoundError, IsADirectoryError):
        raise QFaultConfigError(what, str(path), "an existing YAML file") from None
    except OSError as exc:
        raise QFaultConfigError(what, str(path), "a readable YAML file", hint=_first_line(exc)) from None
    except yaml.YAMLError as exc:
        raise QFaultConfigError(what, str(path), "valid YAML", hint=_first_line(exc)) from None
    except (OmegaConfBaseException, ValueError, TypeError) as exc:
        raise QFaultConfigError(what, str(path), "a YAML mapping OmegaConf can hold",
                                hint=_first_line(exc)) from None
    if not isinstance(cfg, DictConfig):
        raise QFaultConfigError(what, str(path), "a YAML mapping of fields (key: value lines)",
                                hint=f"the file holds a {type(cfg).__name__.replace('Config', '').lower()}")
    return cfg


def parse_value(text: str) -> Any:
    """An override value parsed as OmegaConf parses YAML (``1e-3`` is a float, ``[a, b]`` a list,
    ``null`` None, an empty value None); interpolations ``${...}`` stay strings until resolved."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.from_dotlist([f"value={text}"]), resolve=False)["value"]


def split_key(key: str, dotted_keys: Iterable[str] = ()) -> list[str]:
    """``"faults.0.fault.ber"`` -> ``["faults", "0", "fault", "ber"]``.

    Under a key of ``dotted_keys`` the rest is one key (``"sweep.fault.ber"`` -> ``["sweep",
    "fault.ber"]``): the keys of such a mapping are dotted paths themselves.
    """
    parts = key.split(".")
    if parts[0] in tuple(dotted_keys) and len(parts) > 1:
        parts = [parts[0], ".".join(parts[1:])]
    return parts


def _set(cfg, parts: list[str], value: Any, key: str) -> None:
    """Set ``value`` at ``parts`` in an OmegaConf tree, creating missing mappings."""
    from omegaconf import DictConfig, ListConfig

    node = cfg
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[:depth]) or "the top level"
        if isinstance(node, ListConfig):
            if not _INDEX.match(part):
                raise QFaultConfigError("override", key, f"an index into the list {where} (0..{len(node) - 1})")
            index = int(part)
            if not -len(node) <= index < len(node):
                raise QFaultConfigError("override", key, f"an index into the list {where} (0..{len(node) - 1})",
                                        hint=f"{where} has {len(node)} items")
            part = index
        elif not isinstance(node, DictConfig):  # pragma: no cover - caught one level up
            raise QFaultConfigError("override", key, "a path through mappings and lists")
        if last:
            node[part] = value
            return
        if isinstance(node, DictConfig) and (part not in node or node[part] is None):
            node[part] = {}
        child = node[part]
        if not isinstance(child, (DictConfig, ListConfig)):
            inner = ".".join(parts[:depth + 1])
            raise QFaultConfigError("override", key, "a path through mappings and lists",
                                    hint=f"{inner} is {child!r}, not a mapping")
        node = child


def apply_overrides(cfg, overrides: Iterable[str], *, dotted_keys: Iterable[str] = ()) -> None:
    """Apply ``key=value`` strings to an OmegaConf tree in place (all bad ones reported at once).

    Keys are dotted paths; a number indexes a list (``faults.0.fault.ber=1e-3``); a missing
    mapping on the way is created; a value replaces what was there (a mapping is not merged
    into the old one). Values are parsed as YAML (:func:`parse_value`).

    Raises:
        ConfigErrors: one ``override`` entry per override that is not ``key=value`` or whose
            path does not exist (an index out of range, a path through a scalar).
    """
    from omegaconf.errors import OmegaConfBaseException

    errors = ConfigErrors()
    dotted_keys = tuple(dotted_keys)
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            errors.add("override", item, "key=value (dotted key, YAML value)")
            continue
        key, text = item.split("=", 1)
        key = key.strip()
        parts = split_key(key, dotted_keys)
        if not key or any(not p for p in parts):
            errors.add("override", item, "key=value with a dotted key such as stop.rule=ci")
            continue
        try:
            value = parse_value(text)
        except Exception as exc:  # the grammar's errors have no common base class
            errors.add("override", item, "a YAML value after '='", hint=_first_line(exc))
            continue
        with errors.collect():
            try:
                _set(cfg, parts, value, key)
            except OmegaConfBaseException as exc:
                raise QFaultConfigError("override", item, "a key OmegaConf can set", hint=_first_line(exc)) from None
    errors.raise_if_any()


def to_plain(cfg, *, what: str = "config", source: str = "") -> dict:
    """A plain ``dict`` of an OmegaConf tree, interpolations (``${name}``, ``${oc.env:HOME}``)
    resolved."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        raise QFaultConfigError(what, source or "config", "resolvable ${...} interpolations",
                                hint=_first_line(exc)) from None


def load_config(path: str | os.PathLike, overrides: Iterable[str] = (), *, what: str = "config",
                dotted_keys: Iterable[str] = ()) -> dict:
    """A YAML file with ``key=value`` overrides applied, as a plain dict (not validated yet).

    Args:
        path: the YAML file (its top level a mapping; an empty file is ``{}``).
        overrides: ``key=value`` strings, applied in order (see :func:`apply_overrides`).
        what: the name errors give the file (``"spec"`` for a campaign spec).
        dotted_keys: top-level keys whose own keys are dotted paths (a campaign's ``sweep``):
            ``sweep.fault.ber=[0, 1e-3]`` sets the key ``fault.ber`` of ``sweep``.

    Returns:
        Plain dicts, lists and scalars, with interpolations resolved.

    Raises:
        QFaultConfigError: the file is missing or not a YAML mapping, an override is malformed
            (every bad override at once, as :class:`ConfigErrors`), or an interpolation fails.

    Example:
        >>> import tempfile, pathlib
        >>> spec = pathlib.Path(tempfile.mkdtemp()) / "c.yaml"
        >>> _ = spec.write_text("faults:\\n  - fault: {type: bit_flip, ber: 0.01}\\nsweep: {}\\n")
        >>> load_config(spec, ["faults.0.fault.ber=1e-3", "sweep.fault.ber=[0, 0.1]"], dotted_keys=["sweep"])
        {'faults': [{'fault': {'type': 'bit_flip', 'ber': 0.001}}], 'sweep': {'fault.ber': [0, 0.1]}}
    """
    cfg = load_yaml(path, what=what)
    apply_overrides(cfg, overrides, dotted_keys=dotted_keys)
    return to_plain(cfg, what=what, source=str(path))
