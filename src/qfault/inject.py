"""``qfault.inject``: the verb. Importing names from here is deprecated: use ``qfault.injection``.

This module object is callable, so ``qfault.inject(model, spec)`` runs the verb whichever way
``qfault.inject`` was reached (``import qfault`` or an old ``from qfault.inject import ...``).
"""

from __future__ import annotations

import sys
import types
import warnings
from typing import Any


class _InjectVerb(types.ModuleType):
    """``qfault.inject``: calling it runs :func:`qfault.injection.inject`; its other attributes are
    the names of :mod:`qfault.injection`, reached with a FutureWarning."""

    def __call__(self, model, spec, **kwargs):
        from .injection import inject

        return inject(model, spec, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        from . import injection

        if not hasattr(injection, name):
            raise AttributeError(f"module 'qfault.inject' has no attribute {name!r}")
        warnings.warn(f"qfault.inject.{name} moved to qfault.injection.{name}; qfault.inject is the verb",
                      FutureWarning, stacklevel=2)
        return getattr(injection, name)


sys.modules[__name__].__class__ = _InjectVerb
