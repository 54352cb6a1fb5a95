"""The one handle protocol of every verb that changes a model (``inject``, ``swap_modules``).

A handle undoes its change with ``remove()`` (idempotent) and is a context manager that removes
on exit, like the hook handles of ``nn.Module.register_forward_hook``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Handle(Protocol):
    """What every verb that changes a model returns."""

    def remove(self) -> None:
        """Undo the change; the model is bit-exactly as before. Calling it again does nothing."""

    def __enter__(self) -> "Handle": ...

    def __exit__(self, *exc) -> None: ...


class RemovableHandle:
    """Base of the handles: a list of undo steps run in reverse by :meth:`remove`."""

    def __init__(self) -> None:
        self._undo: list = []
        self._removed = False

    def remove(self) -> None:
        """Undo every step, last first; the model is as before. Idempotent."""
        while self._undo:
            self._undo.pop()()
        self._removed = True

    @property
    def removed(self) -> bool:
        return self._removed

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
