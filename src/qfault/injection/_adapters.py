"""Quantized-layer adapters: how a library's quantized modules expose integer codes.

An adapter translates only: where a module's quantizers are (the submodules whose outputs are
the quantized weight or activation tensors), whether a value is such a quantized tensor, and its
bit width, signedness, scale and zero point. The injection runtime faults the integer codes
``round(value / scale) + zero_point`` and hands the faulty values back through the adapter, so a
new quantization library (LSQ layers, simulated layers) plugs in by registering one adapter.

Brevitas is the first adapter (``QuantTensor`` with ``value``, ``scale``, ``zero_point``,
``bit_width``, ``signed``; proxies ``weight_quant`` / ``act_quant``). The second, ``lsq``, serves
layers whose quantizers return plain float tensors (LSQ layers of seed 004, and any user layer
with the same attributes): it reads the bit width from the quantizer call and the step size from
the quantizer's ``get_scale(bits)``.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from .._errors import QFaultConfigError
from .._registry import Registry
from ..formats import IntFormat


class QuantAdapter(Protocol):
    """What the injection runtime needs of a quantization library."""

    #: module class names selected by default for ``output``/``input`` sites
    activation_types: tuple[str, ...]
    #: what the library calls its quantized tensors (for messages)
    tensor_name: str

    def quantizer(self, module: nn.Module, role: str) -> str | None:
        """The attribute name of ``module``'s quantizer for ``role`` (``"weight"`` or
        ``"output"``) whose forward returns a quantized tensor, or None."""

    def is_quantized(self, x: Any) -> bool:
        """Whether ``x`` is a quantized tensor of this library."""

    def qparams(self, x: Any) -> tuple[IntFormat, torch.Tensor, torch.Tensor]:
        """``(integer format, scale, zero point)`` of a quantized tensor (raises
        :class:`QFaultConfigError` where its width has no int format)."""

    def scale_zero(self, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero point)`` of a quantized tensor."""

    def value(self, x: Any) -> torch.Tensor:
        """The dequantized float values of a quantized tensor."""

    def with_value(self, x: Any, value: torch.Tensor) -> Any:
        """A quantized tensor like ``x`` holding ``value`` (same scale, zero point, width)."""

    def owns(self, module: nn.Module) -> bool:
        """Whether ``module`` belongs to this library (it may produce quantized tensors)."""

    def bits(self, module: nn.Module, role: str, x: Any = None) -> int | None:
        """Bits per value: of quantized tensor ``x``, else of ``module``'s ``role`` quantizer
        (``"weight"`` or ``"output"``); None where neither says."""

    def output_qparams(self, quantizer: nn.Module, args: tuple, kwargs: dict,
                       out: Any) -> tuple[IntFormat, Any, Any, int | None] | None:
        """``(format, scale, zero point, axis)`` of a plain tensor ``out`` that ``quantizer``
        returned for a call with ``args``/``kwargs`` (``axis``: the dim of a per-channel scale,
        else None); None where the call quantized nothing (the output is passed on unfaulted).
        Quantized tensors (:meth:`is_quantized`) carry their own parameters instead."""


ADAPTERS: Registry = Registry("layer adapter")


def register_adapter(name: str, adapter: QuantAdapter) -> QuantAdapter:
    """Register a quantized-layer adapter under ``name``."""
    ADAPTERS.register(name, adapter)
    return adapter


class BrevitasAdapter:
    """Brevitas ``QuantTensor`` values and ``weight_quant`` / ``act_quant`` proxies."""

    activation_types = ("QuantIdentity", "QuantReLU", "QuantHardTanh")
    tensor_name = "QuantTensor"
    _ROLES = {"weight": "weight_quant", "output": "act_quant"}

    def quantizer(self, module: nn.Module, role: str) -> str | None:
        attr = self._ROLES.get(role)
        proxy = getattr(module, attr, None) if attr else None
        if isinstance(proxy, nn.Module) and bool(getattr(proxy, "is_quant_enabled", False)):
            return attr
        return None

    def is_quantized(self, x: Any) -> bool:
        return not isinstance(x, torch.Tensor) and all(
            hasattr(x, a) for a in ("value", "scale", "zero_point", "bit_width"))

    def qparams(self, x: Any) -> tuple[IntFormat, torch.Tensor, torch.Tensor]:
        bits = int(round(float(x.bit_width)))
        return IntFormat(bits=bits, signed=bool(x.signed)), x.scale, x.zero_point

    def scale_zero(self, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return x.scale, x.zero_point

    def value(self, x: Any) -> torch.Tensor:
        return x.value

    def with_value(self, x: Any, value: torch.Tensor) -> Any:
        if hasattr(x, "set"):
            return x.set(value=value)
        return x._replace(value=value)  # pragma: no cover - older Brevitas

    def owns(self, module: nn.Module) -> bool:
        return type(module).__module__.startswith("brevitas")

    def output_qparams(self, quantizer, args, kwargs, out):
        return None  # a float output of a Brevitas quantizer (quantization disabled): not faulted

    def bits(self, module: nn.Module, role: str, x: Any = None) -> int | None:
        if x is None and role == "weight" and hasattr(module, "quant_weight"):
            x = module.quant_weight()
        width = getattr(x, "bit_width", None)
        if width is None:  # a float output of a Brevitas layer: its quantizer's width
            proxy = getattr(module, self._ROLES.get(role, ""), None)
            width = proxy.bit_width() if proxy is not None and hasattr(proxy, "bit_width") else None
        return None if width is None else int(round(float(width)))


register_adapter("brevitas", BrevitasAdapter())


def lsq_bit_widths(module: nn.Module) -> tuple[int, int] | None:
    """``(weight bits, activation bits)`` of an LSQ-style layer: ``fixed_bits`` where set, else
    ``bits``; None for a layer without them (unquantized) or a module that is no such layer.

    An LSQ-style layer has a ``quan_w_fn`` with ``get_scale(bits)`` and a ``bits`` or
    ``fixed_bits`` attribute (seed 004's ``QuanConv2d``/``QuanLinear``, ours in
    :mod:`qfault.layers`).

    Example:
        >>> lsq_bit_widths(torch.nn.Linear(2, 2)) is None
        True
    """
    if not is_lsq_layer(module):
        return None
    widths = getattr(module, "fixed_bits", None)
    if widths is None:
        widths = getattr(module, "bits", None)
    if widths is None:
        return None
    weight_bits, act_bits = (widths, widths) if isinstance(widths, int) else tuple(widths)[:2]
    return int(weight_bits), int(act_bits)


def is_lsq_layer(module: nn.Module) -> bool:
    """Whether ``module`` exposes LSQ-style quantizers (``quan_w_fn.get_scale`` and ``bits`` or
    ``fixed_bits``), whatever its class."""
    quantizer = getattr(module, "quan_w_fn", None)
    return (isinstance(quantizer, nn.Module) and callable(getattr(quantizer, "get_scale", None))
            and (hasattr(module, "bits") or hasattr(module, "fixed_bits")))


class LsqAdapter:
    """LSQ-style layers: ``quan_w_fn(weight, bits)`` / ``quan_a_fn(x, bits)`` return
    ``round(clamp(x / s, lo, hi)) * s`` as plain tensors, with ``s = get_scale(bits)``.

    Weight codes are ``bits``-bit two's complement (``[-2**(k-1), 2**(k-1) - 1]``); activation
    codes unsigned where the quantizer is ``all_positive``. A call with ``bits`` None or 32 and
    above (the quantizer's pass-through) is not faulted.
    """

    activation_types: tuple[str, ...] = ()
    tensor_name = "LSQ-quantized tensor"
    _ROLES = {"weight": "quan_w_fn", "input": "quan_a_fn"}

    def quantizer(self, module: nn.Module, role: str) -> str | None:
        attr = self._ROLES.get(role)
        if attr is None or lsq_bit_widths(module) is None or not isinstance(getattr(module, attr, None), nn.Module):
            return None
        return attr

    def is_quantized(self, x: Any) -> bool:
        return False  # plain tensors: the quantizer call says what they hold

    def qparams(self, x: Any):  # pragma: no cover - plain tensors carry no parameters
        raise QFaultConfigError("format", None, "a format for a plain tensor")

    def scale_zero(self, x: Any):  # pragma: no cover
        return None, None

    def value(self, x: Any) -> torch.Tensor:
        return x

    def with_value(self, x: Any, value: torch.Tensor) -> Any:
        return value

    def owns(self, module: nn.Module) -> bool:
        return False  # its layers return float tensors, which need a format like any other

    def bits(self, module: nn.Module, role: str, x: Any = None) -> int | None:
        widths = lsq_bit_widths(module)
        if widths is None or role not in self._ROLES:
            return None
        return widths[0] if role == "weight" else widths[1]

    def output_qparams(self, quantizer, args, kwargs, out):
        bits = kwargs["bits"] if "bits" in kwargs else args[1] if len(args) > 1 else None
        if bits is None:
            return None
        bits = int(bits)
        if bits >= 32:
            return None
        if not 1 <= bits <= 16:
            raise QFaultConfigError("bits", bits, "1 to 16 for the integer codes of an LSQ quantizer (32 and "
                                    "above: not quantized)")
        scale = quantizer.get_scale(bits).detach().to(torch.float32)
        axis = None
        if scale.numel() > 1:
            scale, axis = scale.reshape(-1), 0
        else:
            scale = scale.reshape(())
        signed = not bool(getattr(quantizer, "all_positive", False))
        return IntFormat(bits=bits, signed=signed), scale, None, axis


register_adapter("lsq", LsqAdapter())


def quantizer_name(module: nn.Module, role: str) -> str | None:
    """The attribute of ``module`` holding its ``role`` quantizer (``"weight"`` or ``"output"``)
    under any registered adapter, or None for a module without one.

    Example:
        >>> quantizer_name(torch.nn.Linear(2, 2), "weight") is None
        True
    """
    for adapter in ADAPTERS.values():
        attr = adapter.quantizer(module, role)
        if attr is not None:
            return attr
    return None


def quantizer_of(module: nn.Module, role: str) -> tuple[QuantAdapter, str] | None:
    """``(adapter, attribute)`` of ``module``'s ``role`` quantizer (``"weight"``, ``"output"``,
    ``"input"``) under the first registered adapter that finds one, or None."""
    for adapter in ADAPTERS.values():
        attr = adapter.quantizer(module, role)
        if attr is not None:
            return adapter, attr
    return None


def quantized_bits(module: nn.Module, role: str, x: Any = None) -> int | None:
    """Bits per value of a quantized tensor ``x`` produced at ``module``, or of ``module``'s
    ``role`` quantizer (``"weight"``, ``"output"``), under the first adapter that knows; None
    where none does (a plain float module).

    Example:
        >>> quantized_bits(torch.nn.Linear(2, 2), "weight") is None
        True
    """
    for adapter in ADAPTERS.values():
        bits = adapter.bits(module, role, x)
        if bits is not None:
            return bits
    return None


def adapter_of(x: Any) -> QuantAdapter | None:
    """The adapter whose quantized tensor ``x`` is, or None (plain tensors and other values)."""
    if isinstance(x, torch.Tensor):
        return None
    for adapter in ADAPTERS.values():
        if adapter.is_quantized(x):
            return adapter
    return None


def is_quantized(x: Any) -> bool:
    """Whether ``x`` is a quantized tensor of a registered adapter (e.g. a Brevitas QuantTensor)."""
    return adapter_of(x) is not None


def tensor_value(x: Any) -> Any:
    """The float values of a quantized tensor; anything else is returned as is."""
    adapter = adapter_of(x)
    return x if adapter is None else adapter.value(x)


def with_value(x: Any, value: torch.Tensor) -> Any:
    """``x`` holding ``value``: a quantized tensor keeps its scale, zero point and width; a plain
    tensor is replaced by ``value``."""
    adapter = adapter_of(x)
    return value if adapter is None else adapter.with_value(x, value)


def owned_by_adapter(module: nn.Module) -> bool:
    """Whether a registered adapter's library defines ``module`` (it may pass quantized tensors)."""
    return any(adapter.owns(module) for adapter in ADAPTERS.values())


def default_activation_types() -> tuple[str, ...]:
    """Module class names every registered adapter selects for activation sites by default."""
    out: list[str] = []
    for adapter in ADAPTERS.values():
        out.extend(t for t in adapter.activation_types if t not in out)
    return tuple(out)


def quantized_format(x: Any, where: str) -> tuple[IntFormat, torch.Tensor, torch.Tensor]:
    """The own ``(format, scale, zero point)`` of quantized tensor ``x``; wider than 16 bits (an
    accumulator) it has no int format of its own, and the error names the site ``where``."""
    adapter = adapter_of(x)
    try:
        return adapter.qparams(x)
    except QFaultConfigError:
        raise QFaultConfigError(
            "format", None, f"a number format for the {float(x.bit_width):g}-bit {adapter.tensor_name} at "
            f"{where} (own formats are used up to 16 bits)",
            hint="give the spec a format, e.g. int8, or select other layers") from None


def quantizer_output_format(adapter: QuantAdapter, quantizer: nn.Module, args: tuple, kwargs: dict, out: Any,
                            where: str) -> tuple[IntFormat, Any, Any, int | None] | None:
    """``(format, scale, zero point, axis)`` of what ``quantizer`` (found by ``adapter``)
    returned for a call with ``args``/``kwargs``: a quantized tensor's own parameters, else what
    the adapter reads from the call; None where the call quantized nothing. ``where`` names the
    site in errors."""
    if adapter.is_quantized(out):
        fmt, scale, zero = quantized_format(out, where)
        return fmt, scale, zero, None
    return adapter.output_qparams(quantizer, args, kwargs, out)
