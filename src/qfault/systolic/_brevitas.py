"""Brevitas ``QuantConv2d`` / ``QuantLinear`` layers whose products run on a systolic array.

The replacement is the Brevitas layer itself (sharing its parameters and quantizers) with one
method overridden: ``inner_forward_impl``, which receives the quantized input, weight and bias.
Brevitas computes the clean output as usual; the outputs a fault reaches are recomputed on the
array — from the dequantized values on a float array, or from the integer codes on an integer
array (``acc * input_scale * weight_scale + bias``; zero points must be 0 and the input a
QuantTensor, i.e. the previous layer returns quantized tensors). The classes are created on
first use, so importing qfault does not import Brevitas, and they pickle by name.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._errors import QFaultConfigError
from ..injection import tensor_value, with_value
from ._array import SystolicArray

_KINDS = {"QuantConv2d": "SystolicQuantConv2d", "QuantLinear": "SystolicQuantLinear"}


def brevitas_kind(module: nn.Module) -> str | None:
    """``"QuantConv2d"`` / ``"QuantLinear"`` for those Brevitas layers (not subclasses), else None."""
    cls = type(module)
    if cls.__module__.startswith("brevitas") and cls.__name__ in _KINDS:
        return cls.__name__
    return None


class BrevitasSystolic:
    """Mixin of the systolic Brevitas layers (see the module docstring)."""

    array: SystolicArray
    tiling: bool | None

    @property
    def is_conv(self) -> bool:
        return type(self).__name__ == "SystolicQuantConv2d"

    def inner_forward_impl(self, x: Any, quant_weight: Any, quant_bias: Any) -> Any:
        from ._layers import conv_on_array, linear_on_array

        clean = super().inner_forward_impl(x, quant_weight, quant_bias)
        if not self.array.faults and self.array.fault_blocks() is None:
            return clean
        value = tensor_value(clean)
        bias = None if quant_bias is None else tensor_value(quant_bias)
        inputs, weight, scale = self._operands(x, quant_weight)
        if self.is_conv:
            ph, pw = self._padding
            inputs = torch.nn.functional.pad(inputs, (pw, pw, ph, ph))
            out = conv_on_array(self.array, self.tiling, inputs, weight, bias, value, tuple(self.kernel_size),
                                tuple(self.stride), scale)
        else:
            lead = inputs.shape[:-1]
            out = linear_on_array(self.array, self.tiling, inputs.reshape(-1, inputs.shape[-1]), weight.t(), bias,
                                  value.reshape(-1, value.shape[-1]), scale).reshape(*lead, -1)
        return out if value is clean else with_value(clean, out)

    def _operands(self, x: Any, quant_weight: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(input, weight) in the array's input dtype, and the per-output scale of integer codes."""
        array = self.array
        if array.in_dtype.is_floating_point:
            return (array.cast(tensor_value(x).detach(), "input"), array.cast(tensor_value(quant_weight).detach(),
                                                                              "weight"), None)
        codes = []
        for name, tensor in (("input", x), ("weight", quant_weight)):
            if not hasattr(tensor, "int") or not hasattr(tensor, "scale"):
                raise QFaultConfigError(f"{name} of {type(self).__name__}", type(tensor).__name__,
                                        "a Brevitas QuantTensor on an integer array",
                                        hint="let the previous layer return quantized tensors "
                                             "(return_quant_tensor=True) or use a float array")
            if bool((tensor.zero_point != 0).any()):
                raise QFaultConfigError(f"{name} zero point", float(tensor.zero_point.flatten()[0]),
                                        "0 (symmetric quantization) on an integer array")
            codes.append(array.cast(tensor.int().detach(), name))
        if x.scale.numel() != 1:
            raise QFaultConfigError("input scale", tuple(x.scale.shape), "one scale per tensor on an integer array")
        outputs = self.out_channels if self.is_conv else self.out_features
        scale = (x.scale.reshape(()) * quant_weight.scale.reshape(-1)).detach().expand(outputs).to(tensor_value(x).dtype)
        return codes[0], codes[1], scale

    def extra_repr(self) -> str:
        return super().extra_repr() + f", array={self.array!r}"


def systolic_brevitas(module: nn.Module, array: SystolicArray, tiling: bool | None) -> nn.Module:
    """The systolic form of a Brevitas ``QuantConv2d`` / ``QuantLinear``: the same layer (its
    parameters, buffers and quantizers shared) running its products on ``array``."""
    kind = brevitas_kind(module)
    cls = globals()[_KINDS[kind]] if _KINDS[kind] in globals() else __getattr__(_KINDS[kind])
    padding = conv_padding(module) if kind == "QuantConv2d" else None  # checked before anything is built
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    for slot in ("_modules", "_parameters", "_buffers", "_forward_hooks", "_forward_pre_hooks"):
        if slot in module.__dict__:
            new.__dict__[slot] = type(module.__dict__[slot])(module.__dict__[slot])
    new.__dict__["array"] = array
    new.__dict__["tiling"] = tiling
    if padding is not None:
        new.__dict__["_padding"] = padding
    return new


def conv_padding(module: nn.Module) -> tuple[int, int]:
    """The zero padding (ph, pw) of a conv layer a systolic array can run (groups 1, dilation 1,
    zero padding; ``"same"`` only for odd kernels, as PyTorch pads it at stride 1).

    Raises:
        QFaultConfigError: a conv layer the single-channel lowering cannot compute.
    """
    for name, value, allowed in (("groups", module.groups, 1), ("dilation", tuple(module.dilation), (1, 1)),
                                 ("padding_mode", module.padding_mode, "zeros")):
        if value != allowed:
            raise QFaultConfigError(name, value, f"{allowed} (systolic convolution)")
    if getattr(module, "is_same_padded_strided", False):
        raise QFaultConfigError("padding", module.padding, "explicit padding (not 'same' with stride)")
    padding = module.padding
    if not isinstance(padding, str):
        return tuple(padding)
    if padding == "valid":
        return (0, 0)
    if any(k % 2 == 0 for k in module.kernel_size):
        raise QFaultConfigError("padding", padding, "'valid', integers, or 'same' with odd kernels")
    return tuple(k // 2 for k in module.kernel_size)


def __getattr__(name: str) -> Any:
    if name in _KINDS.values():
        import brevitas.nn as qnn

        base = {"SystolicQuantConv2d": qnn.QuantConv2d, "SystolicQuantLinear": qnn.QuantLinear}[name]
        cls = type(name, (BrevitasSystolic, base), {"__module__": __name__, "__qualname__": name})
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
