"""Validation of plain mappings against frozen config dataclasses, every bad field at once."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Mapping

from .._config import CONFIG_VERSION
from .._errors import QFaultConfigError
from ._coerce import coerce_fields
from ._errors import ConfigErrors, did_you_mean, join
from ._load import source_map_of

#: a validator of one field: ``(value, dotted path, errors)``; it records what is wrong in
#: errors, and may return the value normalized (None: keep the value as given)
FieldCheck = Callable[[Any, str, ConfigErrors], Any]

_KEY = re.compile(r"[A-Za-z_]\w*")


def check_keys(data: Mapping, allowed: Iterable[str], where: str, errors: ConfigErrors) -> None:
    """Record every key of ``data`` not in ``allowed``, with the closest allowed key as a hint."""
    allowed = list(allowed)
    for key in data:
        if key not in allowed:
            name = key if str(key).isprintable() else repr(key)  # a key with a line break stays on one line
            errors.add(join(where, name), data[key], "keys " + ", ".join(allowed), hint=did_you_mean(key, allowed))


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _key_of(error: QFaultConfigError, where: str, names: Mapping | set) -> str | None:
    """The field of the dataclass that ``error`` names (``"stop.margin"`` under ``stop`` -> margin)."""
    field = str(error.field)
    if where and (field == where or field.startswith(where + ".")):
        field = field[len(where) + 1:]
    match = _KEY.match(field)
    return match.group(0) if match and match.group(0) in names else None


def check_dataclass(cls: type, data: Any, *, where: str = "", errors: ConfigErrors | None = None,
                    nested: Mapping[str, FieldCheck] | None = None,
                    stand_ins: Mapping[str, Any] | None = None) -> Any:
    """Build ``cls(**data)``, finding every bad field, not only the first.

    The steps, each recording into ``errors``:

    1. ``data`` must be a mapping; unknown keys are reported with the closest field name
       ("did you mean"), required fields that are missing are reported. A field annotated
       ``int`` or ``float`` takes a number written as a string (``"1e-3"``, see
       :func:`~qfault.config.as_number`).
    2. Nested fields are checked on their own: the validators in ``nested``, and every field
       whose default is a dataclass instance (e.g. ``stop: StopRule``) when ``data`` gives it a
       mapping (checked recursively, the instance then standing for the mapping). Their errors
       carry the dotted prefix (``stop.margin``). A validator that returns a value replaces
       the field's value with it. A nested field that failed is replaced by its
       ``stand_ins`` entry, else by its default, for the next step.
    3. ``cls(**fields)`` is built. The dataclass validates in ``__post_init__`` and stops at its
       first error; that error is recorded, the field it names is set back to its default and
       the build is tried again, until it succeeds or the error names no field that can be
       reset (a required field, a field not given, a combination). Each error found this way
       is real given the user's other values; a field that is only wrong together with another
       one shows once the others are fixed.

    Once a nested field has failed, an error the build raises about a nested field (or about
    no field) is a consequence of the stand-in and ends the search unreported.

    When ``data`` is what :func:`~qfault.config.load_config` returned, each error names the
    file line or the override its value came from (``... (spec.yaml line 9)``).

    Args:
        cls: a (frozen) dataclass validating in ``__post_init__`` with
            :class:`~qfault.QFaultConfigError`.
        data: the mapping of field values.
        where: the dotted path of ``data`` in the whole configuration (``"faults[0]"``).
        errors: where errors go; None: raise them (:class:`ConfigErrors`) at the end.
        nested: validators of single fields (``(value, path, errors) -> None``), run in order
            before the build (a validator may read what earlier ones found through a closure).
        stand_ins: values standing in for nested fields that failed (needed for required
            fields, or where the default does not fit the other fields).

    Returns:
        The instance, or None when a field is invalid (the reasons are in ``errors``).

    Raises:
        ConfigErrors: only when ``errors`` is None and a field is invalid.

    Example:
        >>> from dataclasses import dataclass
        >>> from qfault._errors import check_range
        >>> @dataclass(frozen=True)
        ... class Train:
        ...     epochs: int = 10
        ...     lr: float = 0.1
        ...     def __post_init__(self):
        ...         check_range("epochs", self.epochs, 1, 1000, integer=True)
        ...         check_range("lr", self.lr, 0.0, 1.0)
        >>> check_dataclass(Train, {"epochs": 0, "lr": 5.0, "momentun": 0.9}, where="train")
        Traceback (most recent call last):
        ...
        qfault.config._errors.ConfigErrors: 3 invalid fields:
          train.epochs=0 is invalid: allowed an integer in [1, 1000]
          train.lr=5.0 is invalid: allowed a number in [0.0, 1.0]
          train.momentun=0.9 is invalid: allowed keys epochs, lr (unknown key)
    """
    own = errors is None
    errors = ConfigErrors() if own else errors
    before = len(errors)
    result = _check(cls, data, where, errors, dict(nested or {}), dict(stand_ins or {}))
    errors.locate(source_map_of(data), before)
    if own:
        errors.raise_if_any()
    return result


def _check(cls, data, where, errors, nested, stand_ins):
    name = cls.__name__
    if not isinstance(data, Mapping):
        errors.add(where or name, data, f"a mapping of {name} fields")
        return None
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    found = ConfigErrors()  # this level's errors, sorted into the order of the given keys at the end
    result = _find(cls, data, where, found, nested, stand_ins, fields)
    order = {key: i for i, key in enumerate(list(data) + [k for k in fields if k not in data])}
    keys = [_key_of(e, where, order) for e in found]
    for _, error in sorted(zip(keys, found), key=lambda item: order.get(item[0], len(order))):
        errors.append(error)
    return result


def _find(cls, data, where, errors, nested, stand_ins, fields):
    check_keys(data, fields, where, errors)
    kwargs = coerce_fields(cls, {key: value for key, value in data.items() if key in fields})
    blocked = False
    for key, field in fields.items():
        if key not in kwargs and _default(field) is dataclasses.MISSING:
            errors.add(join(where, key), None, "a value (a required field)")
            blocked = True
    checks: dict[str, FieldCheck] = {key: check for key, check in nested.items() if key in fields}
    for key, field in fields.items():
        default = _default(field)
        if key not in checks and dataclasses.is_dataclass(default) and not isinstance(default, type):
            sub = type(default)
            checks[key] = lambda value, path, errs, sub=sub: (
                None if isinstance(value, sub) else check_dataclass(sub, value, where=path, errors=errs))
    changed = False  # a value was replaced: errors that name no given field may come from that
    for key, check in checks.items():
        if key not in kwargs:
            continue
        before = len(errors)
        normalized = check(kwargs[key], join(where, key), errors)
        if len(errors) == before and normalized is not None:
            kwargs[key] = normalized
        if len(errors) > before:
            changed = True
            if key in stand_ins:
                kwargs[key] = stand_ins[key]
            elif _default(fields[key]) is not dataclasses.MISSING:
                kwargs[key] = _default(fields[key])
            else:
                blocked = True
    if blocked:
        return None
    failed_nested = changed
    reset: set[str] = set()
    for _ in range(len(fields) + 1):
        try:
            instance = cls(**kwargs)
        except ConfigErrors as exc:  # a dataclass that collects on its own
            if not changed:
                errors.append(exc, where)
            return None
        except QFaultConfigError as exc:
            key = _key_of(exc, where, fields)
            if changed and (key is None or key not in kwargs or key in reset or (failed_nested and key in checks)):
                return None  # possibly caused by a replaced value: left for the next round
            errors.append(exc, where)
            if key is None or key not in kwargs or _default(fields[key]) is dataclasses.MISSING:
                return None
            kwargs[key] = _default(fields[key])
            reset.add(key)
            changed = True
            continue
        except (TypeError, ValueError, KeyError) as exc:  # a type the checks did not expect
            if not changed:
                errors.add(where or cls.__name__, dict(data), f"valid {cls.__name__} fields",
                           hint=f"{type(exc).__name__}: {exc}")
            return None
        return None if changed else instance
    return None  # pragma: no cover - every pass resets a new field


def _tuples(value: Any) -> Any:
    """Lists as tuples, one level deep inside (``[[0, 1]]`` -> ``((0, 1),)``), as configs hold them."""
    if isinstance(value, list):
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return value


def check_registered(registry: Any, data: Any, *, where: str, errors: ConfigErrors | None = None) -> Any:
    """Build a registered config (a fault, a format) from its name or its dict, every bad field at once.

    ``data`` is a registered name (built with its defaults) or a mapping with ``type`` (the
    name; aliases work), an optional ``version`` and the fields, as
    :func:`qfault._config.to_dict` writes it. An unknown name gets the closest registered one
    as a hint; the fields are checked with :func:`check_dataclass`.

    Args:
        registry: a :class:`qfault._registry.Registry` of dataclasses.
        data: the name or mapping.
        where: the dotted path of ``data`` (``"faults[0].fault"``).
        errors: where errors go; None: raise them at the end.

    Returns:
        The instance, or None when something is invalid.
    """
    own = errors is None
    errors = ConfigErrors() if own else errors
    result = None
    if isinstance(data, str):
        name, fields, name_at = data, {}, where
    elif isinstance(data, Mapping):
        fields = dict(data)
        name, name_at = fields.pop("type", None), join(where, "type")
        version = fields.pop("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            errors.add(join(where, "version"), version, str(CONFIG_VERSION))
        fields = {key: _tuples(value) for key, value in fields.items()}
    else:
        errors.add(where, data, f"a {registry.kind} name or a mapping with a 'type' key")
        name = None
    if isinstance(data, (str, Mapping)):
        names = registry.list()
        if name is None:
            errors.add(name_at, None, "one of " + ", ".join(names), hint=f"the {registry.kind} needs a type")
        elif name not in registry:
            errors.add(name_at, name, "one of " + ", ".join(names), hint=did_you_mean(name, names, registry.kind))
        else:
            result = check_dataclass(registry.get(name), fields, where=where, errors=errors)
    if own:
        errors.raise_if_any()
    return result
