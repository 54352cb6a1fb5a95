"""flauers' exception classes, as subclasses of qfault's configuration errors.

``except flauers.exceptions.CastingError`` and ``except qfault.QFaultConfigError`` both catch
what this compat layer raises. Each class is built either the flauers way, from one message,
or the qfault way, from ``(field, value, allowed, hint)``.
"""

from __future__ import annotations

from typing import Any

from ..._errors import QFaultConfigError
from ...systolic import SystolicCastingError

__all__ = ["CastingError", "DimensionError", "InjectionError", "WrongDtypeError"]

_MESSAGE_ONLY = object()


class _FlauersError:
    """Mixin: ``Error(message)`` (flauers) or ``Error(field, value, allowed, hint=None)`` (qfault)."""

    prefix = ""

    def __init__(self, field: Any, value: Any = _MESSAGE_ONLY, allowed: str = "", hint: str | None = None) -> None:
        if value is _MESSAGE_ONLY:
            self.field, self.value, self.allowed, self.hint = None, None, None, None
            ValueError.__init__(self, self.prefix + str(field))
        else:
            QFaultConfigError.__init__(self, field, value, allowed, hint)  # type: ignore[arg-type]

    def __reduce__(self):
        if self.field is None:  # built from a message
            return type(self), (str(self)[len(self.prefix):],)
        return type(self), (self.field, self.value, self.allowed, self.hint)


class InjectionError(_FlauersError, QFaultConfigError):
    """A fault that does not fit the array (a PE outside it, a bit past the register width)."""


class WrongDtypeError(_FlauersError, QFaultConfigError):
    """A dtype the array cannot use (unsupported input dtype, an accumulator that does not fit)."""

    prefix = "unsupported dtype: "


class CastingError(_FlauersError, SystolicCastingError):
    """An operand whose values the array's input dtype does not hold exactly."""


class DimensionError(_FlauersError, QFaultConfigError):
    """Operand shapes that do not multiply, or a product larger than the array without tiling."""

    prefix = "incompatible dimensions: "
