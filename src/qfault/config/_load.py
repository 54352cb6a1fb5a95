"""YAML files plus ``key=value`` overrides -> a plain dict, through OmegaConf."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any, Iterable

from .._errors import QFaultConfigError
from ._errors import ConfigErrors
from ._origins import SourceMap

_INDEX = re.compile(r"^-?\d+$")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _yaml_problem(exc: BaseException, *, lines: bool = True) -> str:
    """``"mapping values are not allowed here, line 3 column 7"`` of a PyYAML error (without the
    line for an override's value)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None)
    if problem and mark is not None and lines:
        return f"{problem}, line {mark.line + 1} column {mark.column + 1}"
    return problem or _first_line(exc)


def _read_yaml(path: str | os.PathLike, what: str):
    """``(DictConfig, YAML node)`` of a YAML file; every way the file can be unfit is a config error."""
    import yaml
    from omegaconf import DictConfig, OmegaConf

    path = Path(path)

    def unfit(allowed: str, hint: str) -> QFaultConfigError:
        return QFaultConfigError(what, str(path), allowed, hint=hint)

    try:
        raw = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise QFaultConfigError(what, str(path), "an existing YAML file") from None
    except OSError as exc:
        raise unfit("a readable YAML file", _first_line(exc)) from None
    if b"\x00" in raw:
        raise unfit("a YAML text file", "the file is binary: it holds NUL bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise unfit("a UTF-8 text file", f"byte 0x{raw[exc.start]:02x} on line {line} is not UTF-8") from None
    mapping = "a YAML mapping of fields (key: value lines)"
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)  # the lines of the values, for errors
        if isinstance(node, (yaml.SequenceNode, yaml.ScalarNode)):
            kind = "list" if isinstance(node, yaml.SequenceNode) else "single value"
            raise unfit(mapping, f"the file holds a {kind}")
        cfg = OmegaConf.load(io.StringIO(text))
    except yaml.YAMLError as exc:
        raise unfit("valid YAML", _yaml_problem(exc)) from None
    except RecursionError:
        raise unfit("YAML nested at most a few hundred levels deep", "too deep") from None
    except QFaultConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - the loader and OmegaConf refuse a file in many ways
        raise unfit("a YAML mapping OmegaConf can hold", _first_line(exc)) from None
    if not isinstance(cfg, DictConfig):  # pragma: no cover - the node's kind was checked
        raise unfit(mapping, f"the file holds a {type(cfg).__name__}")
    return cfg, node


def load_yaml(path: str | os.PathLike, *, what: str = "config"):
    """An OmegaConf ``DictConfig`` of a YAML file (interpolations not resolved yet).

    An empty file is an empty mapping. Raises :class:`~qfault.QFaultConfigError` naming ``what``
    for a missing, unreadable, binary or non-UTF-8 file, invalid YAML (with its line) or a top
    level that is not a mapping.
    """
    return _read_yaml(path, what)[0]


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


def _set(cfg, parts: list[str], value: Any, item: str) -> list[str]:
    """Set ``value`` at ``parts`` in an OmegaConf tree, creating missing mappings; returns the
    path of what the override made (the value, or the first mapping it created on the way),
    list indices counted from the start (``faults.-1`` -> ``["faults", "2"]``)."""
    from omegaconf import DictConfig, ListConfig

    node, done, created = cfg, [], None
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[:depth]) or "the top level"
        if isinstance(node, ListConfig):
            if not _INDEX.match(part):
                raise QFaultConfigError("override", item, f"an index into the list {where} (0..{len(node) - 1})")
            index = int(part)
            if not -len(node) <= index < len(node):
                raise QFaultConfigError("override", item, f"an index into the list {where} (0..{len(node) - 1})",
                                        hint=f"{where} has {len(node)} items")
            part = index % len(node)
        elif not isinstance(node, DictConfig):  # pragma: no cover - caught one level up
            raise QFaultConfigError("override", item, "a path through mappings and lists")
        done.append(str(part))
        if last:
            node[part] = value
            return created or done
        if isinstance(node, DictConfig) and (part not in node or node[part] is None):
            node[part] = {}
            created = created or list(done)
        child = node[part]
        if not isinstance(child, (DictConfig, ListConfig)):
            inner = ".".join(parts[:depth + 1])
            raise QFaultConfigError("override", item, "a path through mappings and lists",
                                    hint=f"{inner} is {child!r}, not a mapping")
        node = child
    return done  # pragma: no cover - parts is never empty


def apply_overrides(cfg, overrides: Iterable[str], *, dotted_keys: Iterable[str] = (),
                    source_map: SourceMap | None = None) -> None:
    """Apply ``key=value`` strings to an OmegaConf tree in place (all bad ones reported at once).

    Keys are dotted paths; a number indexes a list (``faults.0.fault.ber=1e-3``); a missing
    mapping on the way is created; a value replaces what was there (a mapping is not merged
    into the old one). Values are parsed as YAML (:func:`parse_value`). ``source_map`` (a
    :class:`SourceMap`) records the path each override set, so errors can name it.

    Raises:
        ConfigErrors: one ``override`` entry per override that is not ``key=value`` or whose
            path does not exist (an index out of range, a path through a scalar).
    """
    errors = ConfigErrors()
    dotted_keys = tuple(dotted_keys)
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            errors.add("override", item, "key=value (dotted key, YAML value)")
            continue
        key, text = item.split("=", 1)
        key = key.strip()
        parts = split_key(key, dotted_keys)
        if not key or any(not p.strip() for p in parts):
            errors.add("override", item, "key=value with a dotted key such as stop.rule=ci")
            continue
        try:
            value = parse_value(text)
        except Exception as exc:  # noqa: BLE001 - the grammar's errors have no common base class
            errors.add("override", item, "a YAML value after '='", hint=_yaml_problem(exc, lines=False))
            continue
        with errors.collect():
            try:
                done = _set(cfg, parts, value, item)
            except QFaultConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - OmegaConf refuses keys and values in many ways
                raise QFaultConfigError("override", item, "a key OmegaConf can set", hint=_first_line(exc)) from None
            if source_map is not None:
                source_map.set_by_override(done, item)
    errors.raise_if_any()


class LoadedConfig(dict):
    """The plain dict :func:`load_config` returns, with the :class:`SourceMap` of its values.

    :func:`~qfault.config.check_dataclass` given one names, in each error, the file line or
    the override its value came from.
    """

    def __init__(self, data: dict, source_map: SourceMap | None = None):
        super().__init__(data)
        self.source_map = source_map


def source_map_of(data: Any) -> SourceMap | None:
    """The :class:`SourceMap` of a dict :func:`load_config` returned (None for any other)."""
    return getattr(data, "source_map", None) if isinstance(data, LoadedConfig) else None


def to_plain(cfg, *, what: str = "config", source: str = "") -> dict:
    """A plain ``dict`` of an OmegaConf tree, interpolations (``${name}``, ``${oc.env:HOME}``)
    resolved."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:  # noqa: BLE001 - a resolver (oc.env, oc.decode, ...) fails in its own way
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
        Plain dicts, lists and scalars, with interpolations resolved; the top level a
        :class:`LoadedConfig` (a dict) that knows the file line or override of each value.

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
    from omegaconf import OmegaConf

    cfg, node = _read_yaml(path, what)
    source_map = SourceMap(str(path), node, OmegaConf.to_container(cfg, resolve=False))
    apply_overrides(cfg, overrides, dotted_keys=dotted_keys, source_map=source_map)
    return LoadedConfig(to_plain(cfg, what=what, source=str(path)), source_map)
