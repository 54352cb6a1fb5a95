"""Name registries for plug-in families (formats, faults, ...), in the style of timm."""

from __future__ import annotations

import fnmatch
from typing import Generic, TypeVar

from ._errors import QFaultConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names (and aliases) to factories.

    Args:
        kind: what the registry holds, used in error messages ("fault", "format").
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, obj: T | None = None, *, aliases: tuple[str, ...] = ()):
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def add(target: T) -> T:
            key = name.lower()
            if key in self._entries or key in self._aliases:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[key] = target
            for alias in aliases:
                self._aliases[alias.lower()] = key
            return target

        if obj is None:
            return add
        return add(obj)

    def canonical(self, name: str) -> str:
        """The registered name that ``name`` (or an alias of it) refers to."""
        if not isinstance(name, str):
            raise QFaultConfigError(self.kind, name, f"a name, one of {', '.join(self.list())}")
        key = name.lower()
        key = self._aliases.get(key, key)
        if key not in self._entries:
            raise QFaultConfigError(
                self.kind, name, "one of " + ", ".join(self.list()), hint=f"unknown {self.kind}"
            )
        return key

    def get(self, name: str) -> T:
        """The entry registered under ``name``; an unknown name lists the valid ones."""
        return self._entries[self.canonical(name)]

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a shell-style ``pattern``."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def values(self) -> list[T]:
        """Every registered entry, in registration order (no pattern matching: for hot paths)."""
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (
            name.lower() in self._entries or name.lower() in self._aliases
        )

