"""LSQ mixed-precision layers (seed 004): ``QuanConv2d`` / ``QuanLinear`` with learned step sizes,
a bit width per layer, and the layer swap ``"lsq"`` (:class:`LsqConfig`) that converts the
Conv2d/Linear layers of a float model.

Numerics (LSQ, Esser et al. 2020; REFERENCE_NOTES 2.3): with step ``s`` and code range
``[lo, hi]``, ``q(x) = round(clamp(x / s, lo, hi)) * s`` (round half to even); the rounding passes
the gradient straight through and the step's gradient is scaled by ``1 / sqrt(hi * n)`` (``n``
values per step). Weights are signed: ``[-2**(k-1), 2**(k-1) - 1]``, the ``k``-bit
two's-complement codes. Activations are unsigned (``[0, 2**k - 1]``) after a ReLU, signed where a
layer sees signed inputs (the first layer, by default).

A layer's bit widths are ``fixed_bits = (weight, activation)`` where set (the first and last
layer, 8/8 by default), else ``bits``, set per layer from a bit-width search
(:func:`set_bit_width`, :func:`load_bit_width_config`); a layer with neither computes in float.
The quantizer keeps one step per bit width (1 to 16; it computes with ``|s|``, so an optimizer
step through zero cannot break it), initialised from the first tensor it
quantizes at that width (``2 * mean|x| / sqrt(hi)``, ``hi`` read as ``|lo|`` for 1-bit signed codes), so bit widths may change at any time.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .._config import to_dict
from .._errors import QFaultConfigError, check_bool, check_range
from ..injection import is_lsq_layer
from ._swap import register_layer_swap

MAX_BITS = 16


def _round_pass(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward (exactly: the added term is ``0``), identity backward."""
    return x.round().detach() + (x - x.detach())


def _grad_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` forward (exactly), gradient times ``factor`` backward."""
    scaled = x * factor
    return x.detach() + (scaled - scaled.detach())


#: the smallest step a quantizer uses
MIN_STEP = 1e-8


def _positive(step: torch.Tensor) -> torch.Tensor:
    """The step the quantizer computes with: ``max(|s|, MIN_STEP)``. An optimizer may push the
    learned ``s`` through zero; a negative step would turn an unsigned quantizer's outputs into
    zeros with zero gradient, from which training never recovers."""
    return step.abs().clamp_min(MIN_STEP)


def _check_width(field: str, bits) -> int:
    if isinstance(bits, torch.Tensor):
        bits = int(bits)
    check_range(field, bits, 1, MAX_BITS, integer=True)
    return bits


class LsqQuantizer(nn.Module):
    """An LSQ quantizer with one learned step size per bit width.

    Args:
        all_positive: unsigned codes ``[0, 2**k - 1]`` (activations after a ReLU); else signed
            ``[-2**(k-1), 2**(k-1) - 1]``.
        symmetric: signed codes ``[-(2**(k-1) - 1), 2**(k-1) - 1]`` instead.
        per_channel: one step per output channel (dim 0) instead of one per tensor.
        channels: number of output channels (``per_channel`` only).
        scale_grad: scale the step's gradient by ``1 / sqrt(hi * n)`` as in the LSQ paper (``n``
            values per step).

    Call as ``quantizer(x, bits, is_activation=False)``; ``bits`` None or 32 and above passes
    ``x`` through unchanged (seed 004's convention).
    """

    def __init__(self, *, all_positive: bool = False, symmetric: bool = False, per_channel: bool = False,
                 channels: int = 1, scale_grad: bool = True) -> None:
        super().__init__()
        if all_positive and symmetric:
            raise QFaultConfigError("symmetric", symmetric, "False for an all-positive (unsigned) quantizer")
        self.all_positive = bool(all_positive)
        self.symmetric = bool(symmetric)
        self.per_channel = bool(per_channel)
        self.scale_grad = bool(scale_grad)
        self.s = nn.Parameter(torch.ones(MAX_BITS, channels if per_channel else 1))
        self.register_buffer("init_state", torch.zeros(MAX_BITS, dtype=torch.bool))

    def thresholds(self, bits: int) -> tuple[int, int]:
        """The code range ``(lo, hi)`` at ``bits``."""
        if self.all_positive:
            return 0, (1 << bits) - 1
        if self.symmetric:
            if bits < 2:
                raise QFaultConfigError("bits", bits, ">= 2 for a symmetric quantizer")
            return -(1 << (bits - 1)) + 1, (1 << (bits - 1)) - 1
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    def get_scale(self, bits: int, detach: bool = True) -> torch.Tensor:
        """The step size at ``bits`` (positive): a 0-d tensor, or ``[channels]`` per channel."""
        step = _positive(self.s[_check_width("bits", bits) - 1])
        step = step if self.per_channel else step.reshape(())
        return step.detach() if detach else step

    @torch.no_grad()
    def _initialise(self, x: torch.Tensor, bits: int, hi: int) -> None:
        dims = list(range(1, x.dim())) if self.per_channel and x.dim() > 1 else None
        mean = x.detach().abs().mean(dim=dims) if dims else x.detach().abs().mean()
        step = (2.0 * mean / math.sqrt(hi)).clamp_min(1e-8).to(self.s.dtype)
        self.s[bits - 1].copy_(step.reshape(-1).expand(self.s.shape[1]))
        self.init_state[bits - 1] = True

    def forward(self, x: torch.Tensor, bits: int | None, is_activation: bool = False, **_: object) -> torch.Tensor:
        if bits is None or int(bits) >= 32:
            return x
        bits = _check_width("bits", bits)
        lo, hi = self.thresholds(bits)
        levels = hi if hi > 0 else -lo  # Q_P of the paper; |lo| for 1-bit signed codes, whose hi is 0
        if not bool(self.init_state[bits - 1]):
            self._initialise(x, bits, levels)
        step = _positive(self.s[bits - 1])
        shape = (-1,) + (1,) * (x.dim() - 1) if self.per_channel and x.dim() > 1 else ()
        if not torch.is_grad_enabled() or not (x.requires_grad or step.requires_grad):
            step = step.reshape(shape)  # no autograd: the same values without the estimator's extra ops
            return torch.clamp(x / step, lo, hi).round_().mul_(step)
        per_step = x.numel() // step.numel() if x.numel() else 1
        if self.scale_grad:
            step = _grad_scale(step, 1.0 / math.sqrt(levels * per_step))
        step = step.reshape(shape)
        return _round_pass(torch.clamp(x / step, lo, hi)) * step

    def extra_repr(self) -> str:
        kind = "unsigned" if self.all_positive else "symmetric" if self.symmetric else "signed"
        return f"{kind}, per_channel={self.per_channel}"


class _LsqLayer:
    """What QuanConv2d and QuanLinear share: bit widths and the quantized operands."""

    bits: tuple[int, int] | None
    fixed_bits: tuple[int, int] | None

    def bit_widths(self) -> tuple[int, int] | None:
        """``(weight bits, activation bits)`` in use: ``fixed_bits``, else ``bits``, else None."""
        widths = self.fixed_bits if self.fixed_bits is not None else self.bits
        return None if widths is None else (int(widths[0]), int(widths[1]))

    def quantized_operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        widths = self.bit_widths()
        if widths is None:
            return x, self.weight
        weight_bits, act_bits = widths
        return self.quan_a_fn(x, act_bits, is_activation=True), self.quan_w_fn(self.weight, weight_bits,
                                                                                is_activation=False)

    def _init_lsq(self, source: nn.Module, bits, fixed_bits, per_channel: bool, act_signed: bool,
                  channels: int) -> None:
        with torch.no_grad():
            self.weight.copy_(source.weight)
            if source.bias is not None:
                self.bias.copy_(source.bias)
        self.bits = None if bits is None else _check_pair("bits", bits)
        self.fixed_bits = None if fixed_bits is None else _check_pair("fixed_bits", fixed_bits)
        device = source.weight.device  # the steps live where the layer does
        self.quan_w_fn = LsqQuantizer(per_channel=per_channel, channels=channels).to(device)
        self.quan_a_fn = LsqQuantizer(all_positive=not act_signed).to(device)


def _check_pair(field: str, pair) -> tuple[int, int]:
    if isinstance(pair, int) and not isinstance(pair, bool):
        pair = (pair, pair)
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise QFaultConfigError(field, pair, "(weight bits, activation bits), each 1 to 16")
    return _check_width(f"{field}[0]", pair[0]), _check_width(f"{field}[1]", pair[1])


class QuanConv2d(_LsqLayer, nn.Conv2d):
    """An ``nn.Conv2d`` with LSQ-quantized weights and input activations.

    Args:
        m: the float layer whose configuration and weights are copied.
        bits: ``(weight bits, activation bits)``, or None until set.
        fixed_bits: bit widths that :func:`set_bit_width` leaves alone (first and last layer).
        per_channel: one weight step per output channel.
        act_signed: signed activation codes (the first layer's input); else unsigned.
    """

    def __init__(self, m: nn.Conv2d, *, bits=None, fixed_bits=None, per_channel: bool = False,
                 act_signed: bool = False) -> None:
        nn.Conv2d.__init__(self, m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                           dilation=m.dilation, groups=m.groups, bias=m.bias is not None,
                           padding_mode=m.padding_mode, device=m.weight.device, dtype=m.weight.dtype)
        self._init_lsq(m, bits, fixed_bits, per_channel, act_signed, m.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, weight = self.quantized_operands(x)
        return self._conv_forward(x, weight, self.bias)


class QuanLinear(_LsqLayer, nn.Linear):
    """An ``nn.Linear`` with LSQ-quantized weights and input activations (arguments as
    :class:`QuanConv2d`)."""

    def __init__(self, m: nn.Linear, *, bits=None, fixed_bits=None, per_channel: bool = False,
                 act_signed: bool = False) -> None:
        nn.Linear.__init__(self, m.in_features, m.out_features, bias=m.bias is not None, device=m.weight.device,
                           dtype=m.weight.dtype)
        self._init_lsq(m, bits, fixed_bits, per_channel, act_signed, m.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, weight = self.quantized_operands(x)
        return F.linear(x, weight, self.bias)


@dataclass(frozen=True)
class LsqConfig:
    """Converting a float model's ``nn.Conv2d`` / ``nn.Linear`` layers into LSQ layers.

    Args:
        weight_bits: weight bits of the layers without fixed bits (1 to 16); None leaves their
            ``bits`` unset (float) until :func:`set_bit_width` sets them.
        act_bits: their activation bits.
        fixed_bits: ``(weight, activation)`` bits of the ``fixed`` layers; None fixes none.
        fixed: qualified names of the layers with ``fixed_bits``; None: the first and the last
            converted layer (module order).
        signed_inputs: names of layers whose input activations are signed; None: the first
            converted layer (it sees the image).
        skip: shell globs of layer names left as they are.
        per_channel: one weight step per output channel.
    """

    weight_bits: int | None = 4
    act_bits: int | None = 4
    fixed_bits: tuple[int, int] | None = (8, 8)
    fixed: tuple[str, ...] | None = None
    signed_inputs: tuple[str, ...] | None = None
    skip: tuple[str, ...] = ()
    per_channel: bool = False

    def __post_init__(self) -> None:
        if (self.weight_bits is None) != (self.act_bits is None):
            raise QFaultConfigError("act_bits" if self.act_bits is None else "weight_bits", None,
                                    "1 to 16 (weight_bits and act_bits are set together or both None)")
        if self.weight_bits is not None:
            _check_pair("weight_bits/act_bits", (self.weight_bits, self.act_bits))
        if self.fixed_bits is not None:
            object.__setattr__(self, "fixed_bits", _check_pair("fixed_bits", self.fixed_bits))
        for field in ("fixed", "signed_inputs", "skip"):
            value = getattr(self, field)
            if isinstance(value, str):
                value = (value,)
            if value is not None:
                if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
                    raise QFaultConfigError(field, value, "a list of layer names")
                object.__setattr__(self, field, tuple(value))
        check_bool("per_channel", self.per_channel)

    def to_dict(self) -> dict:
        return to_dict(self)


def _convertible(name: str, module: nn.Module, config: LsqConfig) -> bool:
    return (type(module) in (nn.Conv2d, nn.Linear)
            and not any(fnmatch.fnmatchcase(name, pattern) for pattern in config.skip))


def _prepare(model: nn.Module, config: LsqConfig) -> LsqConfig:
    names = [name for name, module in model.named_modules() if name and _convertible(name, module, config)]
    if not names:
        return config
    fixed = config.fixed if config.fixed is not None else (
        () if config.fixed_bits is None else tuple(dict.fromkeys((names[0], names[-1]))))
    signed = config.signed_inputs if config.signed_inputs is not None else (names[0],)
    for field, listed in (("fixed", fixed), ("signed_inputs", signed)):
        unknown = [n for n in listed if n not in names]
        if unknown:
            raise QFaultConfigError(field, unknown[0], "names of converted layers: " + ", ".join(names[:12])
                                    + (" ..." if len(names) > 12 else ""))
    if fixed and config.fixed_bits is None:
        raise QFaultConfigError("fixed_bits", None, "(weight bits, activation bits) for the fixed layers")
    return LsqConfig(config.weight_bits, config.act_bits, config.fixed_bits, fixed, signed, config.skip,
                     config.per_channel)


@register_layer_swap("lsq", LsqConfig, matches=_convertible, prepare=_prepare, aliases=("lsq_qat",))
def _build(module: nn.Module, config: LsqConfig, name: str) -> nn.Module:
    cls = QuanConv2d if isinstance(module, nn.Conv2d) else QuanLinear
    fixed = name in (config.fixed or ())
    bits = None if fixed or config.weight_bits is None else (config.weight_bits, config.act_bits)
    return cls(module, bits=bits, fixed_bits=config.fixed_bits if fixed else None, per_channel=config.per_channel,
               act_signed=name in (config.signed_inputs or ()))


# -- bit widths per layer ------------------------------------------------------------------------

def lsq_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, layer)`` of every LSQ-style layer of ``model`` in module order: ours
    and any layer exposing the same attributes (``quan_w_fn.get_scale`` and ``bits`` or
    ``fixed_bits``), such as seed 004's ``QuanConv2d`` / ``QuanLinear``."""
    return [(name, module) for name, module in model.named_modules() if is_lsq_layer(module)]


def searchable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The LSQ-style layers without ``fixed_bits``, in module order: those a bit-width search
    configures."""
    return [(name, m) for name, m in lsq_layers(model) if getattr(m, "fixed_bits", None) is None]


def set_bit_width(model: nn.Module, weight_bits: Sequence[int], act_bits: Sequence[int]) -> list[str]:
    """Set ``bits = (weight_bits[i], act_bits[i])`` on the i-th layer without fixed bits
    (:func:`searchable_layers`); returns their names.

    Raises:
        QFaultConfigError: lists of different lengths, a length other than the number of such
            layers, or bit widths outside 1..16.
    """
    layers = searchable_layers(model)
    weight_bits, act_bits = list(weight_bits), list(act_bits)
    if len(weight_bits) != len(act_bits):
        raise QFaultConfigError("act_bits", f"{len(act_bits)} values",
                                f"as many values as weight_bits ({len(weight_bits)})")
    if len(weight_bits) != len(layers):
        found = sum(1 for _ in lsq_layers(model))
        raise QFaultConfigError(
            "weight_bits", f"{len(weight_bits)} values",
            f"one value per quantized layer without fixed_bits: the model has {len(layers)} "
            f"({found} LSQ layers in all, {found - len(layers)} with fixed_bits)")
    for i, (name, layer) in enumerate(layers):
        layer.bits = _check_pair(f"bits of layer {i} ({name})", (weight_bits[i], act_bits[i]))
    return [name for name, _ in layers]


def load_bit_width_config(path: str | os.PathLike, config_index: int = 0) -> tuple[list[int], list[int]]:
    """``(weight_bits, act_bits)`` of configuration ``config_index`` in a bit-width search JSON
    (``{"configurations": [{"weight_bits": [...], "act_bits": [...]}, ...]}``).

    Raises:
        QFaultConfigError: a missing or unreadable file, no or an empty ``configurations`` list,
            an index out of range, lists of different lengths or non-integer bit widths; each
            message names the file and the field.
    """
    path = Path(path)
    where = f"{path}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QFaultConfigError("bit_width_config", where, "an existing bit-width search JSON file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QFaultConfigError("bit_width_config", where, "a readable JSON file",
                                hint=f"{type(exc).__name__}: {exc}") from None
    configurations = data.get("configurations") if isinstance(data, dict) else None
    if not isinstance(configurations, list):
        raise QFaultConfigError(f"{where}: configurations", None if configurations is None else configurations,
                                "a list of {weight_bits: [...], act_bits: [...]} entries")
    if not configurations:
        raise QFaultConfigError(f"{where}: configurations", [], "at least one configuration")
    if isinstance(config_index, bool) or not isinstance(config_index, int) \
            or not -len(configurations) <= config_index < len(configurations):
        raise QFaultConfigError("config_index", config_index,
                                f"0 to {len(configurations) - 1} ({len(configurations)} configurations in {where})")
    entry = configurations[config_index]
    lists = []
    for key in ("weight_bits", "act_bits"):
        values = entry.get(key) if isinstance(entry, dict) else None
        if not isinstance(values, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and v.is_integer()
                for v in values):
            raise QFaultConfigError(f"{where}: configurations[{config_index}].{key}", values,
                                    "a list of integer bit widths")
        lists.append([int(v) for v in values])
    if len(lists[0]) != len(lists[1]):
        raise QFaultConfigError(f"{where}: configurations[{config_index}].act_bits", f"{len(lists[1])} values",
                                f"as many as weight_bits ({len(lists[0])})")
    return lists[0], lists[1]


def apply_bit_width_config(model: nn.Module, path: str | os.PathLike,
                           config_index: int = 0) -> tuple[list[int], list[int]]:
    """:func:`load_bit_width_config` then :func:`set_bit_width`: the i-th configured bit widths
    go to the i-th LSQ layer without fixed bits, in module order. Returns the two lists."""
    weight_bits, act_bits = load_bit_width_config(path, config_index)
    try:
        set_bit_width(model, weight_bits, act_bits)
    except QFaultConfigError as exc:
        raise QFaultConfigError(f"{path}: configurations[{config_index}]", exc.value, exc.allowed, exc.hint) from None
    return weight_bits, act_bits
