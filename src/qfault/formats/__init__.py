"""Number formats: float tensors <-> integer codes <-> bit patterns.

Every fault in qfault acts on the bit pattern of a value in one of these formats. Formats
describe themselves (``needs_qparams``, ``encodes_non_finite``, ``bit_regions()``), so callers
dispatch on those capabilities rather than on the format's class.
"""

from __future__ import annotations

import re

from .._config import from_dict
from .._errors import QFaultConfigError
from .._registry import Registry
from ._base import NumberFormat, broadcast_param, gather_param
from ._fixed import FixedPoint, qkeras_alpha_scale
from ._float import FloatFormat
from ._int import IntFormat, calibrate, round_codes

FORMATS: Registry = Registry("format")
FORMATS.register("int", IntFormat)
FORMATS.register("fixed", FixedPoint, aliases=("fixed_point", "quantized_bits"))
FORMATS.register("float", FloatFormat, aliases=("ieee",))

_FLOAT_ALIASES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
                  "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}
_INT_NAME = re.compile(r"^(u?)int(\d+)$")


def get_format(spec: "str | dict | NumberFormat", **kwargs) -> NumberFormat:
    """Resolve a format from a name (``"int8"``, ``"uint4"``, ``"float16"``, ``"fixed"``), a dict
    (``{"type": "fixed", "bits": 8, "integer": 3}``) or a format object.

    Example:
        >>> from qfault.formats import get_format
        >>> get_format("int4")
        IntFormat(bits=4, signed=True, rounding='half_even', range='full')
    """
    if isinstance(spec, NumberFormat):
        return spec
    if isinstance(spec, dict):
        return from_dict(FORMATS, spec)
    if not isinstance(spec, str):
        raise QFaultConfigError("format", spec, "a name (" + ", ".join(list_formats()) + "), a dict or a format object")
    key = spec.lower()
    if key in _FLOAT_ALIASES:
        return FloatFormat(_FLOAT_ALIASES[key])
    match = _INT_NAME.match(key)
    if match:
        return IntFormat(bits=int(match.group(2)), signed=not match.group(1), **kwargs)
    if key in FORMATS:
        return FORMATS.get(key)(**kwargs)
    raise QFaultConfigError("format", spec, "one of " + ", ".join(list_formats()), hint="unknown format")


def list_formats(pattern: str = "*") -> list[str]:
    """Names accepted by :func:`get_format` (``int<b>``/``uint<b>`` stand for 1 to 16 bits)."""
    import fnmatch

    names = FORMATS.list() + ["int<b>", "uint<b>"] + sorted(_FLOAT_ALIASES)
    return [n for n in names if fnmatch.fnmatch(n, pattern)]


__all__ = [
    "NumberFormat", "IntFormat", "FixedPoint", "FloatFormat",
    "get_format", "list_formats", "qkeras_alpha_scale", "calibrate", "round_codes", "broadcast_param", "gather_param", "FORMATS",
]
