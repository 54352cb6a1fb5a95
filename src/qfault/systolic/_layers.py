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

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._errors import QFaultConfigError
from ..layers import register_layer_swap
from ._array import ArrayConfig, MatmulPlan, SystolicArray, replace_outputs
from ._brevitas import BrevitasSystolic, brevitas_kind, conv_padding, systolic_brevitas
from ._lowering import kernel_columns, output_size


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


def _parts(array: SystolicArray, tiling: bool | None, shape: tuple[int, int, int], batch: int,
           channels: int | None) -> tuple[list[tuple[MatmulPlan, torch.Tensor | None, int]], int]:
    """What the faults reach in one forward: ``(parts, per_block)``, each part ``(plan, output
    channels or None for all, block)`` for the ``(m, k, n)`` product ``shape`` of the images of
    one block of the batch (``per_block`` images each; one block unless
    :meth:`SystolicArray.stack_faults` holds several fault sets). One part per distinct fault
    subset: their number grows with the faults, not with the outputs."""
    blocks = array.fault_blocks()
    if blocks is None:
        blocks = [array.faults]
    if len(blocks) > 1 and batch % len(blocks):
        raise QFaultConfigError("batch", batch, f"a multiple of the {len(blocks)} stacked fault sets")
    parts = [(plan, chans, block) for block, faults in enumerate(blocks)
             for plan, chans in _groups(array, tiling, shape, faults, channels)]
    return parts, batch // len(blocks)


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
    blocks = len(array.fault_blocks() or [()])
    parts, per_block = _parts(array, tiling, (batch // blocks, features, b.shape[1]), batch, None)
    for plan, _, block in parts:
        plan = plan.to(a.device)
        rows = block * per_block + plan.rows                                 # rows of the whole batch
        values = array.recompute(a.index_select(0, rows), b.index_select(1, plan.cols).t(), plan).to(clean.dtype)
        if scale is not None:
            values = values * scale.index_select(0, plan.cols)
        if bias is not None:
            values = values + bias.detach().index_select(0, plan.cols)
        clean = replace_outputs(clean, (rows, plan.cols), values)
    return clean


def conv_on_array(array: SystolicArray, tiling: bool | None, xa: torch.Tensor, wa: torch.Tensor,
                  bias: torch.Tensor | None, clean: torch.Tensor, kernel_size: tuple[int, int],
                  stride: tuple[int, int], scale: torch.Tensor | None = None) -> torch.Tensor:
    """``clean`` (B, Cout, oh, ow) with every output a fault reaches replaced by its value on the
    array: the bias plus, over input channels in order, each single-channel lowered product of
    the padded input ``xa`` (B, Cin, H, W) and kernel ``wa`` (Cout, Cin, kh, kw) (both in the
    input dtype) times ``scale[co]`` (integer codes: the dequantization scale; None: 1)."""
    kh, sh = kernel_size[0], stride[0]
    height, width = xa.shape[-2:]
    oh, ow = output_size((height, width), kernel_size, stride)
    parts, per_block = _parts(array, tiling, (oh, kh * width, ow), xa.shape[0], wa.shape[0])
    if not parts:
        return clean
    device = xa.device
    # the input step-major: row r of a lowered activation is column-major X[r*sh : r*sh + kh, :],
    # so its step col * kh + u is X[r*sh + u, col]; (W, H, Cin, B) makes every step's values of
    # all outputs, channels and images one gather
    columns_first = xa.permute(3, 2, 1, 0).contiguous()                     # (W, H, Cin, B)
    for plan, chans, block in parts:
        plan = plan.to(device)
        chans = torch.arange(wa.shape[0], device=device) if chans is None else chans.to(device)
        images = slice(block * per_block, (block + 1) * per_block)
        source = columns_first[..., images]                                   # (W, H, Cin, b)
        kernels = wa.index_select(0, chans)
        values = _band_values(array, source, kernels, plan, stride)
        if values is None:
            columns = kernel_columns(kernels, plan.cols, width, stride)       # (C, Cin, Q, kh*W)
            rows = _lowered_rows(source, plan.rows, kh, sh)                   # (kh*W, Q, Cin, b)
            values = _recompute_conv(array, rows, columns.permute(3, 2, 0, 1), plan)
        values = values.to(clean.dtype)                                       # (b, C, Cin, Q)
        if scale is not None:
            values = values * scale.index_select(0, chans).view(1, -1, 1, 1)
        total = torch.zeros(values.shape[0], values.shape[1], values.shape[3], dtype=clean.dtype, device=device)
        if bias is not None:
            total = total + bias.detach().index_select(0, chans).view(1, -1, 1)
        for ci in range(xa.shape[1]):  # the tool's channel order: bias, then += each input channel
            total = total + values[:, :, ci]
        index = (images, chans[:, None], plan.rows[None, :], plan.cols[None, :])
        clean = replace_outputs(clean, index, total)
    return clean


def _lowered_rows(source: torch.Tensor, rows: torch.Tensor, kh: int, sh: int) -> torch.Tensor:
    """Lowered activation rows ``rows`` (R,), step-major: (kh*W, R, Cin, b) from the input
    ``source`` (W, H, Cin, b). Row r is column-major X[r*sh : r*sh + kh, :], so its step
    col * kh + u is X[r*sh + u, col]: one gather of heights for all steps."""
    heights = (rows[None, :] * sh + torch.arange(kh, device=source.device)[:, None]).flatten()  # (kh*R,)
    lowered = source.index_select(1, heights)                                               # (W, kh*R, Cin, b)
    return lowered.view(source.shape[0] * kh, rows.numel(), *lowered.shape[2:])


def _band_values(array: SystolicArray, source: torch.Tensor, kernels: torch.Tensor, plan: MatmulPlan,
                 stride: tuple[int, int]) -> torch.Tensor | None:
    """The planned outputs (b, C, Cin, Q) from the kernel's band of each lowered column only, or
    None when that would not be exact; ``source`` (W, H, Cin, b) the padded input, column-first.

    Column c of a lowered kernel is zero outside rows c*sw*kh ... c*sw*kh + kh*kw - 1, so the
    products there are +-0, which leave a partial sum unchanged (it is never -0: it starts at +0
    and only a line-c fault could make it -0). Skipping them is exact unless a line-c mask acts
    (its ops run at every step) or a b mask sets a bit of those zeros other than an IEEE sign
    (-0 products change no sum that is not -0); then None. An operand there that is not finite
    makes its product NaN (inf * 0, or the NaN itself), and so the output: NaN (which NaN's bits
    an add keeps is the kernel's choice, in the full reduction too). Whether any masked operand
    can be infinite or NaN is first decided on ``source`` under each of the plan's line-a masks
    (the rows repeat its values); only then are the skipped products looked at.
    """
    if plan.k_tiles != 1 or "c" in plan.masks:
        return None
    kh, kw = kernels.shape[-2:]
    band = _band(array, plan, (kh, kw), stride, source.shape[:2], source.is_floating_point())
    if band is None:
        return None
    poisoned = None
    if source.is_floating_point():
        spoiled = array.spoiled_operands(source, plan, "a")
        if spoiled:
            poisoned = _poisoned(spoiled, source, plan, band)                                    # (b, 1, Cin, Q)
    rows = source.flatten(0, 1).index_select(0, band["gather"])
    rows = rows.view(kh * kw, plan.cols.numel(), *source.shape[2:])                             # (band, Q, Cin, b)
    flat = kernels.transpose(-1, -2).reshape(*kernels.shape[:2], kh * kw)                        # column-major
    columns = flat.permute(2, 0, 1).unsqueeze(1)                                                 # (band, 1, C, Cin)
    values = _recompute_conv(array, rows, columns, band["plan"])
    return values if poisoned is None else values.masked_fill(poisoned, math.nan)


def _band(array: SystolicArray, plan: MatmulPlan, kernel_size: tuple[int, int], stride: tuple[int, int],
          size: tuple[int, int], floating: bool) -> dict | None:
    """What the band shortcut of ``plan`` needs for a ``kernel_size`` / ``stride`` lowering of a
    (W, H) = ``size`` input, computed once per plan: the skipped steps ``outside`` (Q, kh*W), the
    flat (W*H) input index of every band step (band*Q,), the plan restricted to the band (its
    line-a and b masks on the band's steps only); None where a b mask sets a bit of the skipped
    zeros other than an IEEE sign (no shortcut)."""
    key = ("band", kernel_size, stride, size, floating)
    if key in plan.cache:
        return plan.cache[key]
    (kh, kw), (sh, sw), (width, height) = kernel_size, stride, size
    band = kh * kw
    device = plan.cols.device
    positions = plan.cols[:, None] * (sw * kh) + torch.arange(band, device=device)                # (Q, band)
    outside = torch.ones(plan.cols.numel(), width * kh, dtype=torch.bool, device=device)
    outside.scatter_(1, positions, False)
    entry = None
    significant = (1 << (array.widths["b"] - 1)) - 1 if floating else -1
    if "b" not in plan.masks or not bool(((plan.masks["b"][1][outside] & significant) != 0).any()):
        # band step v * kh + u of output (r, c) is X[r*sh + u, c*sw + v]
        steps = torch.arange(band, device=device)
        along_w = plan.cols[None, :] * sw + (steps // kh)[:, None]                              # (band, Q)
        along_h = plan.rows[None, :] * sh + (steps % kh)[:, None]
        entry = {"outside": outside, "gather": (along_w * height + along_h).flatten(), "kh": kh, "sh": sh,
                 "plan": plan.restrict(positions, lines=("a", "b"))}
    plan.cache[key] = entry
    return entry


def _poisoned(spoiled: list, source: torch.Tensor, plan: MatmulPlan, band: dict) -> torch.Tensor | None:
    """Where a skipped product of the band shortcut is NaN: outputs (b, 1, Cin, Q) with a masked
    line-a operand that is infinite or NaN at a step outside their band; None if there is none.
    ``spoiled`` holds, per mask pair of line a (None: unmasked), where it makes the input
    ``source`` (W, H, Cin, b) infinite or NaN (:meth:`SystolicArray.spoiled_operands`); an output
    counts those of its lowered row at its skipped steps under that mask pair: a
    (Q_r, kh*W) @ (kh*W, Cin*b) product per distinct output row r (the index tensors are kept
    in ``band``, see :func:`_band`)."""
    if "row_groups" not in band:  # the distinct output rows, and the outputs of each
        rows, row_of = torch.unique(plan.rows, return_inverse=True)
        band["distinct_rows"] = rows
        band["row_groups"] = [(row_of == r).nonzero().flatten() for r in range(rows.numel())]
    counts = torch.zeros(plan.rows.numel(), source.shape[2] * source.shape[3], device=source.device)
    for mask, where in spoiled:
        lowered = _lowered_rows(where, band["distinct_rows"], band["kh"], band["sh"])            # (kh*W, R, Cin, b)
        lowered = lowered.flatten(2).float()                                                     # (kh*W, R, Cin*b)
        steps = band.get(("steps", mask))
        if steps is None:  # the skipped steps under this mask pair (Q, kh*W)
            masks = plan.masks.get("a")
            if masks is None:
                steps = band["outside"]
            elif mask is None:
                steps = band["outside"] & (masks[0] == -1) & (masks[1] == 0)
            else:
                steps = band["outside"] & (masks[0] == mask[0]) & (masks[1] == mask[1])
            steps = band[("steps", mask)] = steps.float()
        for r, of_row in enumerate(band["row_groups"]):
            counts.index_add_(0, of_row, steps.index_select(0, of_row) @ lowered[:, r])
    if not bool((counts > 0).any()):
        return None
    return (counts > 0).view(-1, *source.shape[2:]).permute(2, 1, 0).unsqueeze(1)


def _recompute_conv(array: SystolicArray, rows: torch.Tensor, columns: torch.Tensor, plan: MatmulPlan
                    ) -> torch.Tensor:
    """``recompute_steps`` of step-major rows (k, Q, Cin, b) against columns (k, Q or 1, C, Cin),
    the images innermost (every step's slab is contiguous over them); returns (b, C, Cin, Q)."""
    values = array.recompute_steps(rows.unsqueeze(2), columns.unsqueeze(-1), plan)             # (Q, C, Cin, b)
    return values.permute(3, 1, 2, 0)


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
        padding = conv_padding(source)
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


def model_array(model: nn.Module) -> SystolicArray:
    """The array ``model``'s systolic layers run on (the first one's, for a model built by one
    ``SystolicLayers`` swap: they all share it)."""
    layers = systolic_layers(model)
    if not layers:
        raise QFaultConfigError("model", type(model).__name__, "a model whose layers run on a systolic array",
                                hint="swap_modules(model, SystolicLayers(...)) first")
    return next(iter(layers.values())).array

