"""Errors raised for bad user input."""

from __future__ import annotations

from typing import Any, Iterable


class QFaultConfigError(ValueError):
    """A configuration value is invalid.

    The message always names the field, the value given and what is allowed.
    """

    def __init__(self, field: str, value: Any, allowed: str, hint: str | None = None):
        self.field = field
        self.value = value
        self.allowed = allowed
        self.hint = hint
        msg = f"{field}={value!r} is invalid: allowed {allowed}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)

    def __reduce__(self):  # picklable (a worker process raises it, the driver reports it)
        return type(self), (self.field, self.value, self.allowed, self.hint)


def check_range(field: str, value: Any, low: float, high: float, *, integer: bool = False) -> None:
    """Raise :class:`QFaultConfigError` unless ``low <= value <= high``."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        integer and not isinstance(value, int)
    ):
        raise QFaultConfigError(field, value, f"{kind} in [{low}, {high}]")
    if not (low <= value <= high):  # also rejects NaN
        raise QFaultConfigError(field, value, f"{kind} in [{low}, {high}]")


def check_choice(field: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise :class:`QFaultConfigError` unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise QFaultConfigError(field, value, "one of " + ", ".join(repr(c) for c in choices))


def check_bool(field: str, value: Any) -> None:
    """Raise :class:`QFaultConfigError` unless ``value`` is True or False."""
    if not isinstance(value, bool):
        raise QFaultConfigError(field, value, "True or False")
