"""Where faults go in a model: sites, selection, quantized-layer adapters and the ``inject`` verb."""

from ._adapters import (
    ADAPTERS, QuantAdapter, default_activation_types, is_lsq_layer, is_quantized, lsq_bit_widths, quantized_bits,
    quantized_format, quantizer_name, quantizer_of, quantizer_output_format, register_adapter,
    tensor_value,
    with_value,
)
from ._bits import BitTensor, ModelBits
from ._api import CONFIG_HANDLERS, InjectionHandle, inject, register_config
from ._select import matches_name, matches_type, select_modules
from ._sites import SITES, SiteKind
from ._grad import replace_at
from ._spec import InjectSpec, Mode, Site
from ._stats import SiteStats, Statistics

__all__ = ["inject", "ModelBits", "BitTensor", "InjectSpec", "InjectionHandle", "Site", "Mode", "Statistics", "SiteStats",
           "select_modules", "replace_at",
           "ADAPTERS", "QuantAdapter", "register_adapter", "quantizer_name", "quantizer_of", "quantized_format", "quantizer_output_format", "is_lsq_layer",
           "lsq_bit_widths", "quantized_bits", "is_quantized", "tensor_value",
           "with_value", "default_activation_types", "register_config", "CONFIG_HANDLERS", "SITES", "SiteKind",
           "matches_name", "matches_type"]
