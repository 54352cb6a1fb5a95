"""Bit-sensitivity ranking (seed 002, FKeras): which weight bits matter most, from gradients and
the Hessian at the quantized weights, so campaigns can target them.

``rank_bits(model, (x, y), SensitivityConfig(method=...))`` returns a :class:`BitRanking`;
``ranking.fault_specs(k)`` turns its top ``k`` bits into explicit fault sites for a campaign.
"""

from ._curvature import Curvature, lanczos_eigenpairs
from ._rank import METHODS, BitRanking, SensitivityConfig, msb_first_order, rank_bits, register_method
from ._views import LeafForward, WeightView, weight_views

__all__ = ["rank_bits", "SensitivityConfig", "BitRanking", "METHODS", "register_method", "msb_first_order",
           "Curvature", "lanczos_eigenpairs", "LeafForward", "WeightView", "weight_views"]
