"""Mitigation of permanent stuck-at faults in stored weights (seed 000, WEBCRAFT)."""

from ._linear import (
    SeedQuantLinear,
    float_mode,
    seed_quantize_activation,
    seed_quant_vit,
    seed_quantize_weight,
    swap_linear,
)
from ._remap import METHODS, cvm_codes, draw_stuck_map, remap
from ._stuck import STUCK_METHODS, StuckAtHandle, StuckAtSpec, apply_stuck_at, stuck_layers

__all__ = [
    "METHODS",
    "SeedQuantLinear",
    "cvm_codes",
    "float_mode",
    "draw_stuck_map",
    "remap",
    "seed_quant_vit",
    "seed_quantize_activation",
    "seed_quantize_weight",
    "swap_linear",
    "STUCK_METHODS",
    "StuckAtHandle",
    "StuckAtSpec",
    "apply_stuck_at",
    "stuck_layers",
]
