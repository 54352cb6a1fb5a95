"""qfault: bit-exact hardware fault injection for (quantized) PyTorch models.

Formats define bits <-> values, fault models define what happens to bits, and ``inject``
places faults in a model. Names load on first use (PEP 562), so ``qfault --help`` does not
import torch; Brevitas, timm and plotting load only where they are used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    # verbs
    "corrupt": "qfault.faults",
    "inject": "qfault.inject",
    "swap_modules": "qfault.layers",
    # configuration
    "InjectSpec": "qfault.injection",
    "InjectionHandle": "qfault.injection",
    "BitFlip": "qfault.faults",
    "StuckAt": "qfault.faults",
    # formats
    "IntFormat": "qfault.formats",
    "FixedPoint": "qfault.formats",
    "FloatFormat": "qfault.formats",
    "get_format": "qfault.formats",
    "list_formats": "qfault.formats",
    # registries and errors
    "get_fault": "qfault.faults",
    "list_faults": "qfault.faults",
    "QFaultConfigError": "qfault._errors",
    "Handle": "qfault._handle",
}

__all__ = list(_EXPORTS) + ["__version__"]


#: subpackages reached as attributes of ``qfault`` (imported on first use)
_SUBPACKAGES = ("config", "formats", "faults", "injection", "layers", "mitigation", "sensitivity", "systolic", "train",
               "campaign", "data",
               "compat",
               "cli")


def __getattr__(name: str) -> Any:
    if name == "inject":  # the verb: a callable module, the same object however it is reached
        value = importlib.import_module("qfault.inject")
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"qfault.{name}")
    else:
        raise AttributeError(f"module 'qfault' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBPACKAGES))


if TYPE_CHECKING:  # pragma: no cover
    from ._errors import QFaultConfigError
    from ._handle import Handle
    from .faults import BitFlip, StuckAt, corrupt, get_fault, list_faults
    from .formats import FixedPoint, FloatFormat, IntFormat, get_format, list_formats
    from .injection import InjectionHandle, InjectSpec, inject
    from .layers import swap_modules
