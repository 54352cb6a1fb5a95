"""Mitigation of permanent stuck-at faults in stored weights (seed 000, WEBCRAFT)."""

from ._remap import BIT_FLIP_MAX_BITS, METHODS, cvm_codes, draw_stuck_map, remap

__all__ = ["BIT_FLIP_MAX_BITS", "METHODS", "cvm_codes", "draw_stuck_map", "remap"]
