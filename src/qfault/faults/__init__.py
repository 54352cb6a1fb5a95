"""Fault models (what happens to bits), their O(#faults) sampling, codecs, and ``corrupt``."""

from ._apply import FaultRecord, apply_draw, corrupt
from ._codec import (
    CODECS, NUMPY, RANDOM, SCALAR, STUCK, TORCH, XOR, Codec, apply_to_codes, fast_codec_for, fault_values,
    fault_values_numpy, scalar_param, to_float32, xor_scalars,
)
from ._draw import (
    PER_IMAGE_SAMPLERS, SAMPLERS, ArrayDraw, FaultDraw, ScalarDraw, draw_faults, draw_per_image, group_bit_sites,
    hw_periodic_mask, hw_periodic_pattern, register_sampler, resolve_bits,
)
from ._layout import LAYOUTS, from_torch_index, keras_permutation, lbi_to_site, site_to_lbi, to_torch_index
from ._models import (
    FAULTS, BitFlip, FaultModel, FullFlip, HwPeriodic, LSBFlip, MSBFlip, PlaneBitFlip, RandomValue, RegionBitFlip,
    StuckAt, get_fault, list_faults, register_fault,
)
from ._sampling import (
    bernoulli_positions, binomial, ceil_count, derive_seed, distinct, make_generator, nested_bernoulli_array,
    uniform_index,
)

__all__ = [
    "FaultModel", "BitFlip", "PlaneBitFlip", "RegionBitFlip", "StuckAt", "RandomValue", "LSBFlip", "MSBFlip", "FullFlip", "HwPeriodic",
    "get_fault", "list_faults", "register_fault", "FAULTS",
    "corrupt", "draw_faults", "draw_per_image", "apply_draw", "apply_to_codes", "fault_values", "FaultDraw",
    "ArrayDraw", "ScalarDraw", "FaultRecord", "resolve_bits", "group_bit_sites", "hw_periodic_mask",
    "hw_periodic_pattern", "register_sampler", "SAMPLERS", "PER_IMAGE_SAMPLERS",
    "XOR", "STUCK", "RANDOM", "Codec", "CODECS", "TORCH", "NUMPY", "SCALAR", "fast_codec_for", "scalar_param", "to_float32", "xor_scalars", "fault_values_numpy",
    "LAYOUTS", "keras_permutation", "to_torch_index", "from_torch_index", "lbi_to_site", "site_to_lbi",
    "binomial", "distinct", "bernoulli_positions", "nested_bernoulli_array", "derive_seed", "make_generator", "uniform_index", "ceil_count",
]
