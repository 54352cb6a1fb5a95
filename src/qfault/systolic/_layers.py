"""PyTorch layers computed on a (faulty) systolic array, and the ``"systolic"`` layer swap.

``nn.Linear`` runs as (batch, in) @ (in, out) on the array (A = activations, B = the transposed
weight), then adds the bias. ``nn.Conv2d`` runs as the reference tool's single-channel im2col
lowering: for every image, output channel co and input channel ci, the lowered activation
(oh, kh * W) @ the banded lowered kernel (kh * W, ow) is one product on the array; the output
is the bias plus these products summed over ci in order. Outputs that no fault reaches come
from the clean PyTorch layer; reached outputs are recomputed exactly (``SystolicArray.recompute``)
with the gradient passed straight through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._errors import QFaultConfigError
from ..layers import register_layer_swap
from ._array import ArrayConfig, MatmulPlan, SystolicArray, replace_outputs
from ._lowering import kernel_columns, lower_activation


class _SystolicLayer(nn.Module):
    """Shared parts: the array, the tiling choice, the parameters of the replaced layer."""

    def __init__(self, source: nn.Module, array: SystolicArray, tiling: bool | None) -> None:
        super().__init__()
        if not isinstance(array, SystolicArray):
            raise QFaultConfigError("array", type(array).__name__, "a SystolicArray")
        self.array = array
        self.tiling = tiling
        self.weight = source.weight
        self.bias = source.bias

    def _operand(self, value: torch.Tensor, name: str) -> torch.Tensor:
        return self.array.cast(value.detach(), name)

    def _plans(self, shape: tuple[int, int, int], channels: int | None
               ) -> list[tuple[MatmulPlan, torch.Tensor | None]]:
        """(plan, output channels it applies to; None = all) for every distinct fault set."""
        faults = self.array.faults
        if not faults:
            return []
        if channels is None or all(f.channel == -1 for f in faults):
            plan = self.array.plan(shape, faults, self.tiling)
            return [] if plan.empty else [(plan, None)]
        common = tuple(f for f in faults if f.channel == -1)
        own = sorted({f.channel for f in faults if 0 <= f.channel < channels})
        plans = []
        for channel in own:
            subset = tuple(f for f in faults if f.channel in (-1, channel))
            plan = self.array.plan(shape, subset, self.tiling)
            if not plan.empty:
                plans.append((plan, torch.tensor([channel])))
        if common:
            rest = torch.tensor([c for c in range(channels) if c not in own], dtype=torch.long)
            plan = self.array.plan(shape, common, self.tiling)
            if not plan.empty and rest.numel():
                plans.append((plan, rest))
        return plans


class SystolicLinear(_SystolicLayer):
    """An ``nn.Linear`` computed on ``array`` (it shares the source layer's parameters).

    Args:
        source: the ``nn.Linear`` replaced.
        array: the array every replaced layer of a model shares (and its faults).
        tiling: override the array config's ``tiling`` (the batch is the product's m).
    """

    def __init__(self, source: nn.Linear, array: SystolicArray, tiling: bool | None = None) -> None:
        super().__init__(source, array, tiling)
        self.in_features = source.in_features
        self.out_features = source.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        a = self._operand(flat, "input")
        b = self._operand(self.weight, "weight").t()
        if self.array.in_dtype.is_floating_point:
            clean = F.linear(flat, self.weight, self.bias)
        else:
            clean = self.array.clean_matmul(a, b).to(x.dtype)
            if self.bias is not None:
                clean = clean + self.bias
        for plan, _ in self._plans((flat.shape[0], self.in_features, self.out_features), None):
            plan = plan.to(x.device)
            values = self.array.recompute(a.index_select(0, plan.rows), b.index_select(1, plan.cols).t(), plan)
            values = values.to(x.dtype)
            if self.bias is not None:
                values = values + self.bias.detach().index_select(0, plan.cols)
            clean = replace_outputs(clean, (plan.rows, plan.cols), values)
        return clean.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, array={self.array!r}"


class SystolicConv2d(_SystolicLayer):
    """An ``nn.Conv2d`` (groups 1, dilation 1, zero padding) computed on ``array`` by
    single-channel im2col lowering; it shares the source layer's parameters.

    Args:
        source: the ``nn.Conv2d`` replaced.
        array: the shared array.
        tiling: override the array config's ``tiling``.

    A fault with ``channel >= 0`` acts on that output channel only (if the layer has it).
    """

    def __init__(self, source: nn.Conv2d, array: SystolicArray, tiling: bool | None = None) -> None:
        super().__init__(source, array, tiling)
        for name, value, allowed in (("groups", source.groups, 1), ("dilation", tuple(source.dilation), (1, 1)),
                                     ("padding_mode", source.padding_mode, "zeros")):
            if value != allowed:
                raise QFaultConfigError(name, value, f"{allowed} (systolic convolution)")
        padding = source.padding
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            else:  # "same" with stride 1 (PyTorch's rule); only symmetric for odd kernels
                if any(k % 2 == 0 for k in source.kernel_size):
                    raise QFaultConfigError("padding", padding, "'valid', integers, or 'same' with odd kernels")
                padding = tuple(k // 2 for k in source.kernel_size)
        self.in_channels = source.in_channels
        self.out_channels = source.out_channels
        self.kernel_size = tuple(source.kernel_size)
        self.stride = tuple(source.stride)
        self.padding = tuple(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph, pw = self.padding
        padded = F.pad(x, (pw, pw, ph, ph))
        xa = self._operand(padded, "input")
        wa = self._operand(self.weight, "weight")
        if self.array.in_dtype.is_floating_point:
            clean = F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        else:
            clean = F.conv2d(xa.double(), wa.double(), None, self.stride).to(x.dtype)
            if self.bias is not None:
                clean = clean + self.bias.view(1, -1, 1, 1)
        height, width = padded.shape[-2:]
        oh, ow = (height - kh) // sh + 1, (width - kw) // sw + 1
        depth = kh * width
        plans = self._plans((oh, depth, ow), self.out_channels)
        if plans:
            lowered = lower_activation(xa, self.kernel_size, self.stride)     # (B, Cin, oh, kh*W)
        for plan, channels in plans:
            plan = plan.to(x.device)
            rows = lowered.index_select(2, plan.rows)                         # (B, Cin, Q, kh*W)
            kernels = wa if channels is None else wa.index_select(0, channels.to(x.device))
            columns = kernel_columns(kernels, plan.cols, width, self.stride)  # (C, Cin, Q, kh*W)
            values = self.array.recompute(rows.unsqueeze(1), columns.unsqueeze(0), plan)  # (B, C, Cin, Q)
            values = values.to(x.dtype)
            total = torch.zeros(values.shape[:2] + values.shape[3:], dtype=x.dtype, device=x.device)
            if self.bias is not None:
                bias = self.bias.detach() if channels is None else self.bias.detach().index_select(0, channels.to(x.device))
                total = total + bias.view(1, -1, 1)
            for ci in range(self.in_channels):  # the tool's channel order: bias, then += each ci
                total = total + values[:, :, ci]
            chans = torch.arange(self.out_channels, device=x.device) if channels is None else channels.to(x.device)
            index = (slice(None), chans[:, None], plan.rows[None, :], plan.cols[None, :])
            clean = replace_outputs(clean, index, total)
        return clean.squeeze(0) if unbatched else clean

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, array={self.array!r}")


_LAYER_TYPES = {nn.Linear: SystolicLinear, nn.Conv2d: SystolicConv2d}


def compatible_layers(model: nn.Module) -> list[str]:
    """Qualified names of the ``nn.Conv2d`` / ``nn.Linear`` layers a systolic array can run."""
    return [name for name, module in model.named_modules() if type(module) in _LAYER_TYPES and name]


#: the array a :class:`SystolicLayers` swap builds when none is given
DEFAULT_ARRAY = ArrayConfig(100, 100, 150, "output_stationary", "float32", tiling=True)


@dataclass(frozen=True)
class SystolicLayers:
    """Run a model's ``nn.Conv2d`` / ``nn.Linear`` layers on one shared systolic array.

    Args:
        array: the array (a :class:`SystolicArray`, shared with the caller so faults can be
            added later) or its :class:`ArrayConfig` / dict form (an array is built, reachable
            as ``handle.config.array``). Default: a 100 x 100 x 150 float32
            output-stationary array with tiling (the reference tool's default layer array).
        names: qualified names of the layers to run on the array (default: every compatible
            layer).
        tiling: override the array config's ``tiling`` for these layers.

    Example:
        >>> from qfault.layers import swap_modules
        >>> model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
        >>> handle = swap_modules(model, SystolicLayers(ArrayConfig(8, 8, 64, tiling=True)))
        >>> handle.swapped
        ['0', '2']
    """

    array: Any = DEFAULT_ARRAY
    names: tuple[str, ...] | None = None
    tiling: bool | None = None

    def __post_init__(self) -> None:
        array = self.array
        if isinstance(array, dict):
            array = ArrayConfig(**array)
        if not isinstance(array, (ArrayConfig, SystolicArray)):
            raise QFaultConfigError("array", type(self.array).__name__, "a SystolicArray, an ArrayConfig or its dict")
        object.__setattr__(self, "array", array)
        if self.names is not None:
            names = (self.names,) if isinstance(self.names, str) else tuple(self.names)
            if not all(isinstance(n, str) for n in names):
                raise QFaultConfigError("names", self.names, "qualified layer names")
            object.__setattr__(self, "names", names)
        if self.tiling is not None and not isinstance(self.tiling, bool):
            raise QFaultConfigError("tiling", self.tiling, "None, True or False")


def _prepare(model: nn.Module, config: SystolicLayers) -> SystolicLayers:
    array = config.array if isinstance(config.array, SystolicArray) else SystolicArray(config.array)
    if config.names is not None:
        known = set(compatible_layers(model))
        unknown = [n for n in config.names if n not in known]
        if unknown:
            raise QFaultConfigError("names", unknown[0], "compatible layers: " + ", ".join(sorted(known)))
    return SystolicLayers(array, config.names, config.tiling)


@register_layer_swap("systolic", SystolicLayers, prepare=_prepare,
                     matches=lambda name, module, config: type(module) in _LAYER_TYPES
                     and (config.names is None or name in config.names))
def _build(module: nn.Module, config: SystolicLayers, name: str) -> nn.Module:
    return _LAYER_TYPES[type(module)](module, config.array, config.tiling)


def systolic_layers(model: nn.Module) -> dict[str, _SystolicLayer]:
    """The systolic layers of ``model`` by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, _SystolicLayer)}

