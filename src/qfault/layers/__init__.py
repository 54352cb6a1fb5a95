"""Quantized and simulated layers, put into a model by one verb: ``swap_modules(model, config)``.

Each layer family registers a frozen config under a name (``list_layer_swaps()``); the verb
returns a :class:`SwapHandle` (the :class:`qfault.Handle` protocol) whose ``remove()`` puts the
original modules back. Registered now: ``"seed_quant_linear"`` (:class:`SeedQuantConfig`, the
seed-000 / WEBCRAFT quantized ``nn.Linear``) and ``"lsq"`` (:class:`LsqConfig`, seed 004's LSQ
mixed-precision ``QuanConv2d`` / ``QuanLinear``).
"""

from ._lsq import (
    LsqConfig,
    LsqQuantizer,
    QuanConv2d,
    QuanLinear,
    apply_bit_width_config,
    load_bit_width_config,
    lsq_layers,
    searchable_layers,
    set_bit_width,
)
from ._seed_quant import (
    SeedQuantConfig,
    SeedQuantLinear,
    float_mode,
    seed_quant_vit,
    seed_quantize_activation,
    seed_quantize_weight,
    swap_linear,
)
from ._swap import (
    LAYERS,
    LayerSwap,
    SwapHandle,
    get_layer_swap,
    layer_config,
    list_layer_swaps,
    register_layer_swap,
    swap_modules,
)

__all__ = [
    # the verb and its registry
    "swap_modules",
    "SwapHandle",
    "LAYERS",
    "LayerSwap",
    "register_layer_swap",
    "get_layer_swap",
    "list_layer_swaps",
    "layer_config",
    # seed 000: the quantized Linear
    "SeedQuantConfig",
    "SeedQuantLinear",
    "seed_quantize_weight",
    "seed_quantize_activation",
    "float_mode",
    "seed_quant_vit",
    "swap_linear",
    # seed 004: LSQ mixed-precision layers
    "LsqConfig",
    "LsqQuantizer",
    "QuanConv2d",
    "QuanLinear",
    "lsq_layers",
    "searchable_layers",
    "set_bit_width",
    "load_bit_width_config",
    "apply_bit_width_config",
]
