"""Numbers written as strings (``"1e-3"``, ``"+5"``) read as numbers where a field expects one.

PyYAML (YAML 1.1) reads ``1e-3`` as a string, a quoted number is a string in any loader, and a
dict built by hand may hold either; a config field annotated ``float`` or ``int`` takes such a
string as the number it spells. An integer field also takes an integral float (``1E3`` ->
1000), as YAML writes large counts. Anything else is left as it is, so the field's own check
reports it ("allowed a number in [0.0, 1.0]").
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from typing import Any, Mapping

#: a decimal number as people write one: ``5``, ``+5``, ``-.5``, ``1e-3``, ``1E3``, ``2.5e+2``
NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
#: integral floats beyond this stay floats (their field then reports them as not an integer)
_MAX_INTEGRAL = 2**63


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict:
    """The resolved annotations of the init fields of ``cls`` ({} where they do not resolve)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation naming something the module does not define
        return {}
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init and f.name in hints}


def _members(annotation: Any) -> tuple:
    """The members of a union (``int | None`` -> ``(int, NoneType)``); a non-union alone."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def as_number(value: Any, annotation: Any) -> Any:
    """``value`` converted to a number where ``annotation`` expects one, else ``value`` itself.

    Under an annotation with ``int`` (and not ``float``) a numeric string or an integral float
    becomes an ``int``; with ``float`` a numeric string becomes a ``float``. Tuples are
    converted item by item (``tuple[int, ...]``, ``tuple[tuple[int, int], ...]``). Booleans,
    ``"nan"``, ``"inf"`` and other strings are left unchanged.

    Example:
        >>> as_number("1e-3", float), as_number("1E3", int | None), as_number(" +5 ", int)
        (0.001, 1000, 5)
        >>> as_number("abc", float), as_number([1.0, "2"], tuple[int, ...])
        ('abc', [1, 2])
    """
    members = _members(annotation)
    if isinstance(value, (list, tuple)):
        for member in members:
            if typing.get_origin(member) is tuple and typing.get_args(member):
                args = typing.get_args(member)
                if len(args) == 2 and args[1] is Ellipsis:
                    items = [as_number(v, args[0]) for v in value]
                elif len(args) == len(value):
                    items = [as_number(v, a) for v, a in zip(value, args)]
                else:
                    continue
                return type(value)(items)
        return value
    wants_float, wants_int = float in members, int in members and float not in members
    if not (wants_float or wants_int) or isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        if not NUMBER.fullmatch(text):
            return value
        if wants_int and _INTEGER.fullmatch(text):
            return int(text)
        value = float(text)
        if wants_float:
            return value
    if wants_int and isinstance(value, float) and math.isfinite(value) and value.is_integer() \
            and abs(value) <= _MAX_INTEGRAL:
        return int(value)
    return value


def coerce_fields(cls: type, data: Mapping) -> dict:
    """``data`` (fields of the dataclass ``cls``) with numbers read where fields expect them.

    Keys that are not fields of ``cls`` and fields without a numeric annotation keep their
    values; see :func:`as_number`.

    Example:
        >>> from qfault.faults import BitFlip
        >>> coerce_fields(BitFlip, {"ber": "1e-3", "bits": ["7", "msb"], "other": "1"})
        {'ber': 0.001, 'bits': [7, 'msb'], 'other': '1'}
    """
    hints = _hints(cls)
    return {key: as_number(value, hints[key]) if key in hints else value for key, value in data.items()}
