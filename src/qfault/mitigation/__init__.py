"""Mitigation of permanent stuck-at faults in stored weights (seed 000, WEBCRAFT).

``remap`` computes what a writer that knows the stuck cells stores and reads back;
``qfault.inject(model, StuckAtSpec(...))`` faults every ``SeedQuantLinear`` of a model with it
(importing this package registers :class:`StuckAtSpec` with ``qfault.injection.register_config``).
The quantized Linear itself moved to :mod:`qfault.layers`; its old names here still work, with a
FutureWarning.
"""

from __future__ import annotations

import warnings
from typing import Any

from ._remap import METHODS, cvm_codes, draw_stuck_map, remap
from ._stuck import STUCK_METHODS, StuckAtHandle, StuckAtSpec, apply_stuck_at, stuck_layers

#: names that moved to qfault.layers (reached here with a FutureWarning)
_MOVED = ("SeedQuantLinear", "float_mode", "seed_quant_vit", "seed_quantize_activation", "seed_quantize_weight",
          "swap_linear")

__all__ = [
    "METHODS",
    "cvm_codes",
    "draw_stuck_map",
    "remap",
    "STUCK_METHODS",
    "StuckAtHandle",
    "StuckAtSpec",
    "apply_stuck_at",
    "stuck_layers",
]


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        from .. import layers

        warnings.warn(f"qfault.mitigation.{name} moved to qfault.layers.{name}", FutureWarning, stacklevel=2)
        return getattr(layers, name)
    raise AttributeError(f"module 'qfault.mitigation' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MOVED))
