"""``ConfigErrors``: every invalid field of one configuration, reported together."""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from .._errors import QFaultConfigError


def suggest(name: Any, choices: Iterable[Any]) -> str | None:
    """The choice closest to ``name`` (case-insensitive, difflib ratio >= 0.6), or None."""
    by_lower = {str(c).lower(): str(c) for c in choices}
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def did_you_mean(name: Any, choices: Iterable[Any], what: str = "key") -> str:
    """``"unknown key; did you mean 'site'?"`` (or ``"unknown key"`` when nothing is close)."""
    close = suggest(name, choices)
    return f"unknown {what}; did you mean {close!r}?" if close else f"unknown {what}"


def join(where: str, key: Any) -> str:
    """The dotted path of ``key`` under ``where`` (``"faults[0]" + "site"``, ``"" + "seed"``)."""
    return f"{where}.{key}" if where else str(key)


def prefixed(error: QFaultConfigError, where: str) -> QFaultConfigError:
    """``error`` with its field under ``where``, unless the field already starts there."""
    field = str(error.field)
    if not where or field == where or field.startswith((where + ".", where + "[", where + " ")):
        return error
    return located(QFaultConfigError(join(where, field), error.value, error.allowed, hint=error.hint),
                   getattr(error, "location", None))


def located(error: QFaultConfigError, location: str | None) -> QFaultConfigError:
    """``error`` with where its value came from at the end of its message.

    ``faults[0].fault.ber='abc' is invalid: allowed a number in [0.0, 1.0] (spec.yaml line 9)``;
    the copy's ``location`` attribute holds ``"spec.yaml line 9"``. None: ``error`` itself.
    """
    if not location:
        return error
    out = QFaultConfigError(error.field, error.value, error.allowed, hint=error.hint)
    out.location = location
    out.args = (f"{out.args[0]} ({location})",)
    return out


class ConfigErrors(QFaultConfigError):
    """Every invalid field of one configuration, raised together.

    A :class:`~qfault.QFaultConfigError`, so ``except QFaultConfigError`` handlers (and the CLI's
    exit code 2) keep working; ``field``, ``value``, ``allowed`` and ``hint`` are those of the
    first error. ``errors`` holds one :class:`~qfault.QFaultConfigError` per bad field (each with
    its dotted ``field`` path, ``value``, ``allowed`` and ``hint``); the message lists them all,
    one per line (a single error reads exactly as that error).

    Args:
        errors: errors to start with (nested ``ConfigErrors`` are flattened).
        source: what was validated (a file name), named in the message of several errors.

    Example:
        >>> errors = ConfigErrors()
        >>> with errors.collect():
        ...     raise QFaultConfigError("batch_size", 0, "an integer >= 1")
        >>> errors.add("sede", 1, "keys seed, name", hint="unknown key; did you mean 'seed'?")
        >>> print(errors)
        2 invalid fields:
          batch_size=0 is invalid: allowed an integer >= 1
          sede=1 is invalid: allowed keys seed, name (unknown key; did you mean 'seed'?)
    """

    def __init__(self, errors: Iterable[QFaultConfigError] = (), *, source: str | None = None):
        ValueError.__init__(self)
        self.errors: list[QFaultConfigError] = []
        self.source = source
        for error in errors:
            self.append(error)

    # -- the first error stands for the whole (compatibility with QFaultConfigError) ---------
    @property
    def field(self) -> str:  # type: ignore[override]
        return self.errors[0].field if self.errors else (self.source or "config")

    @property
    def value(self) -> Any:  # type: ignore[override]
        return self.errors[0].value if self.errors else None

    @property
    def allowed(self) -> str:  # type: ignore[override]
        return self.errors[0].allowed if self.errors else ""

    @property
    def hint(self) -> str | None:  # type: ignore[override]
        return self.errors[0].hint if self.errors else None

    @property
    def fields(self) -> list[str]:
        """The dotted paths of the bad fields, in the order they were found."""
        return [e.field for e in self.errors]

    # -- collecting --------------------------------------------------------------------------
    def add(self, field: str, value: Any, allowed: str, hint: str | None = None) -> None:
        """Record one bad field."""
        self.append(QFaultConfigError(field, value, allowed, hint=hint))

    def append(self, error: QFaultConfigError, where: str = "") -> None:
        """Record ``error`` (each error of a ``ConfigErrors``), its field put under ``where``.

        An error already recorded (same message) is not repeated.
        """
        if isinstance(error, ConfigErrors):
            for inner in error.errors:
                self.append(inner, where)
            return
        error = prefixed(error, where)
        if all(str(error) != str(known) for known in self.errors):
            self.errors.append(error)

    @contextmanager
    def collect(self, where: str = "") -> Iterator[None]:
        """Record a :class:`~qfault.QFaultConfigError` raised in the block instead of raising it."""
        try:
            yield
        except QFaultConfigError as exc:
            self.append(exc, where)

    def locate(self, source_map: Any, start: int = 0) -> None:
        """Name where each value came from (a file line, an override), from error ``start`` on.

        ``source_map`` is a :class:`~qfault.config.SourceMap` (None: nothing to name); errors
        already located keep their location.
        """
        if source_map is None:
            return
        for i in range(start, len(self.errors)):
            error = self.errors[i]
            if getattr(error, "location", None) is None:
                self.errors[i] = located(error, source_map.locate(error.field, error.value))

    def raise_if_any(self) -> None:
        """Raise ``self`` when an error was recorded."""
        if self.errors:
            raise self

    def __len__(self) -> int:
        return len(self.errors)

    def __bool__(self) -> bool:
        return bool(self.errors)

    def __iter__(self) -> Iterator[QFaultConfigError]:
        return iter(self.errors)

    def __str__(self) -> str:
        if len(self.errors) == 1:
            return str(self.errors[0])
        where = f" in {self.source}" if self.source else ""
        lines = [f"{len(self.errors)} invalid fields{where}:"] + [f"  {e}" for e in self.errors]
        return "\n".join(lines)

    def __reduce__(self):  # picklable (to and from worker processes)
        items = [(e.field, e.value, e.allowed, e.hint, getattr(e, "location", None)) for e in self.errors]
        return _rebuild, (items, self.source)


def _rebuild(items: list[tuple], source: str | None) -> ConfigErrors:
    return ConfigErrors([located(QFaultConfigError(*item[:3], hint=item[3]), item[4] if len(item) > 4 else None)
                         for item in items], source=source)
