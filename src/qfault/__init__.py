"""qfault: bit-exact hardware fault injection for (quantized) PyTorch models.

Formats define bits <-> values, fault models define what happens to bits, and ``inject``
places faults in a model. Brevitas, timm and plotting load only where they are used.
"""

from ._errors import QFaultConfigError
from .faults import BitFlip, StuckAt, corrupt, get_fault, list_faults
from .formats import FixedPoint, FloatFormat, IntFormat, get_format, list_formats
from .inject import InjectionHandle, InjectSpec, inject

__version__ = "0.1.0"

__all__ = [
    # verbs
    "corrupt", "inject",
    # configuration
    "InjectSpec", "InjectionHandle", "BitFlip", "StuckAt",
    # formats
    "IntFormat", "FixedPoint", "FloatFormat", "get_format", "list_formats",
    # registries and errors
    "get_fault", "list_faults", "QFaultConfigError",
    "__version__",
]
