"""Fault models (what happens to bits), their O(#faults) sampling, and ``corrupt``."""

from ._apply import FaultDraw, FaultRecord, apply_draw, apply_to_codes, corrupt, draw_faults, fault_values
from ._models import (
    FAULTS, BitFlip, FaultModel, FullFlip, HwPeriodic, LSBFlip, MSBFlip, RandomValue, StuckAt,
    get_fault, list_faults, register_fault,
)
from ._sampling import bernoulli_positions, binomial, derive_seed, distinct, make_generator, uniform_index

__all__ = [
    "FaultModel", "BitFlip", "StuckAt", "RandomValue", "LSBFlip", "MSBFlip", "FullFlip", "HwPeriodic",
    "get_fault", "list_faults", "register_fault", "FAULTS",
    "corrupt", "draw_faults", "apply_draw", "apply_to_codes", "fault_values", "FaultDraw", "FaultRecord",
    "binomial", "distinct", "bernoulli_positions", "derive_seed", "make_generator", "uniform_index",
]
