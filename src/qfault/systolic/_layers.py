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
from ._brevitas import BrevitasSystolic, brevitas_kind, systolic_brevitas
from ._lowering import entry_columns, lower_activation


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

def _entries(array: SystolicArray, tiling: bool | None, shape: tuple[int, int, int], batch: int,
             channels: int | None) -> tuple | None:
    """Every output a fault reaches in one forward, as one combined plan.

    Returns None when nothing is reached, else ``(plan, block, channel, per_block)``: the plan's
    entries are (block of the batch, output channel, row, column) outputs of the ``(m, k, n)``
    product ``shape``; ``block``/``channel`` (E,) give the first two (channel 0 for linear
    layers), ``per_block`` the images per block (see :meth:`SystolicArray.stack_faults`).
    """
    blocks = array.fault_blocks()
    if blocks is None:
        blocks = [array.faults]
    if len(blocks) > 1 and batch % len(blocks):
        raise QFaultConfigError("batch", batch, f"a multiple of the {len(blocks)} stacked fault sets")
    parts = []
    for block, faults in enumerate(blocks):
        for plan, chans in _groups(array, tiling, shape, faults, channels):
            count = 1 if channels is None else (channels if chans is None else chans.numel())
            chans = torch.zeros(1, dtype=torch.long) if channels is None else (
                torch.arange(channels) if chans is None else chans)
            parts.append((plan, count, chans, block))
    if not parts:
        return None
    plan = _combine(parts)
    block = torch.cat([torch.full((p.rows.numel() * n,), b, dtype=torch.long) for p, n, _, b in parts])
    channel = torch.cat([c.repeat_interleave(p.rows.numel()) for p, _, c, _ in parts])
    return plan, block, channel, batch // len(blocks)


def _groups(array: SystolicArray, tiling: bool | None, shape: tuple[int, int, int], faults: tuple,
            channels: int | None) -> list[tuple[MatmulPlan, torch.Tensor | None]]:
    """(plan, output channels it applies to; None = all) for every distinct fault subset of
    ``faults`` (conv faults with ``channel >= 0`` act on that channel only)."""
    if not faults:
        return []
    if channels is None or all(f.channel == -1 for f in faults):
        plan = array.plan(shape, faults, tiling)
        return [] if plan.empty else [(plan, None)]
    common = tuple(f for f in faults if f.channel == -1)
    own = sorted({f.channel for f in faults if 0 <= f.channel < channels})
    plans = []
    for channel in own:
        subset = tuple(f for f in faults if f.channel in (-1, channel))
        plan = array.plan(shape, subset, tiling)
        if not plan.empty:
            plans.append((plan, torch.tensor([channel])))
    if common:
        rest = torch.tensor([c for c in range(channels) if c not in own], dtype=torch.long)
        plan = array.plan(shape, common, tiling)
        if not plan.empty and rest.numel():
            plans.append((plan, rest))
    return plans


def linear_on_array(array: SystolicArray, tiling: bool | None, a: torch.Tensor, b: torch.Tensor,
                    bias: torch.Tensor | None, clean: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """``clean`` (batch, out) with every output a fault reaches replaced by its value on the
    array: ``a`` (batch, in) @ ``b`` (in, out), both in the input dtype, times ``scale[out]``
    (integer codes: the dequantization scale; None: 1), plus ``bias``."""
    batch, features = a.shape
    blocks = array.fault_blocks()
    per_block = batch // len(blocks) if blocks and batch % len(blocks) == 0 else batch
    found = _entries(array, tiling, (per_block, features, b.shape[1]), batch, None)
    if found is None:
        return clean
    plan, block, _, per_block = found
    plan, block = plan.to(a.device), block.to(a.device)
    rows = block * per_block + plan.rows                                     # rows of the whole batch
    values = array.recompute(a.index_select(0, rows), b.index_select(1, plan.cols).t(), plan).to(clean.dtype)
    if scale is not None:
        values = values * scale.index_select(0, plan.cols)
    if bias is not None:
        values = values + bias.detach().index_select(0, plan.cols)
    return replace_outputs(clean, (rows, plan.cols), values)


def conv_on_array(array: SystolicArray, tiling: bool | None, xa: torch.Tensor, wa: torch.Tensor,
                  bias: torch.Tensor | None, clean: torch.Tensor, kernel_size: tuple[int, int],
                  stride: tuple[int, int], scale: torch.Tensor | None = None) -> torch.Tensor:
    """``clean`` (B, Cout, oh, ow) with every output a fault reaches replaced by its value on the
    array: the bias plus, over input channels in order, each single-channel lowered product of
    the padded input ``xa`` (B, Cin, H, W) and kernel ``wa`` (Cout, Cin, kh, kw) (both in the
    input dtype) times ``scale[co]`` (integer codes: the dequantization scale; None: 1)."""
    kh, kw = kernel_size
    sh, sw = stride
    height, width = xa.shape[-2:]
    oh, ow = (height - kh) // sh + 1, (width - kw) // sw + 1
    found = _entries(array, tiling, (oh, kh * width, ow), xa.shape[0], wa.shape[0])
    if found is None:
        return clean
    plan, block, channel, per_block = found
    device = xa.device
    plan, block, channel = plan.to(device), block.to(device), channel.to(device)
    lowered = lower_activation(xa, kernel_size, stride).unflatten(0, (-1, per_block))  # (blocks, b, Cin, oh, kh*W)
    rows = lowered[block, :, :, plan.rows].permute(1, 2, 0, 3)                        # (b, Cin, E, kh*W)
    columns = entry_columns(wa.index_select(0, channel), plan.cols, width, stride)    # (E, Cin, kh*W)
    values = array.recompute(rows, columns.transpose(0, 1).unsqueeze(0), plan).to(clean.dtype)  # (b, Cin, E)
    if scale is not None:
        values = values * scale.index_select(0, channel)
    total = torch.zeros(values.shape[0], values.shape[2], dtype=clean.dtype, device=device)
    if bias is not None:
        total = total + bias.detach().index_select(0, channel)
    for ci in range(xa.shape[1]):  # the tool's channel order: bias, then += each input channel
        total = total + values[:, ci]
    images = block[None, :] * per_block + torch.arange(per_block, device=device)[:, None]   # (b, E)
    return replace_outputs(clean, (images, channel[None, :], plan.rows[None, :], plan.cols[None, :]), total)


def _combine(parts: list[tuple[MatmulPlan, int, torch.Tensor, int]]) -> MatmulPlan:
    """One plan whose entries are those of each ``(plan, count, ...)`` repeated ``count`` times
    (one copy per output channel); lines a part lacks get identity masks there."""
    if len(parts) == 1 and parts[0][1] == 1:
        return parts[0][0]
    first = parts[0][0]
    rows = torch.cat([p.rows.repeat(n) for p, n, _, _ in parts])
    cols = torch.cat([p.cols.repeat(n) for p, n, _, _ in parts])
    masks = {}
    for line in sorted({line for p, _, _, _ in parts for line in p.masks}):
        dtype = next(p.masks[line][0].dtype for p, _, _, _ in parts if line in p.masks)
        keeps, xors = [], []
        for p, n, _, _ in parts:
            if line in p.masks:
                keeps.append(p.masks[line][0].repeat(n, 1))
                xors.append(p.masks[line][1].repeat(n, 1))
            else:
                size = (p.rows.numel() * n, first.depth * first.k_tiles)
                keeps.append(torch.full(size, -1, dtype=dtype))
                xors.append(torch.zeros(size, dtype=dtype))
        masks[line] = (torch.cat(keeps), torch.cat(xors))
    c_columns = tuple(sorted({c for p, _, _, _ in parts for c in p.c_columns}))
    return MatmulPlan(rows, cols, first.depth, first.k_tiles, masks, c_columns)


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
        clean = linear_on_array(self.array, self.tiling, a, b, self.bias, clean)
        return clean.reshape(*lead, self.out_features)

    is_conv = False

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
        clean = conv_on_array(self.array, self.tiling, xa, wa, self.bias, clean, self.kernel_size, self.stride)
        return clean.squeeze(0) if unbatched else clean

    is_conv = True

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, array={self.array!r}")


_LAYER_TYPES = {nn.Linear: SystolicLinear, nn.Conv2d: SystolicConv2d}


def _builder(module: nn.Module):
    """How ``module`` becomes a systolic layer (``(module, array, tiling) -> layer``), or None."""
    builder = _LAYER_TYPES.get(type(module))
    if builder is None and brevitas_kind(module) is not None:
        builder = systolic_brevitas
    return builder


def compatible_layers(model: nn.Module) -> list[str]:
    """Qualified names of the layers a systolic array can run: ``nn.Conv2d``, ``nn.Linear`` and
    Brevitas ``QuantConv2d`` / ``QuantLinear``."""
    return [name for name, module in model.named_modules() if name and _builder(module) is not None]


#: the array a :class:`SystolicLayers` swap builds when none is given
DEFAULT_ARRAY = ArrayConfig(100, 100, 150, "output_stationary", "float32", tiling=True)


@dataclass(frozen=True)
class SystolicLayers:
    """Run a model's ``nn.Conv2d`` / ``nn.Linear`` layers (and Brevitas ``QuantConv2d`` /
    ``QuantLinear``) on one shared systolic array.

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
                     matches=lambda name, module, config: _builder(module) is not None
                     and (config.names is None or name in config.names))
def _build(module: nn.Module, config: SystolicLayers, name: str) -> nn.Module:
    return _builder(module)(module, config.array, config.tiling)


def systolic_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers of ``model`` that run on a systolic array, by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (_SystolicLayer, BrevitasSystolic))}

