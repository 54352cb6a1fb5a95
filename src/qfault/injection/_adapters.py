"""Quantized-layer adapters: how a library's quantized modules expose integer codes.

An adapter translates only: where a module's quantizers are (the submodules whose outputs are
the quantized weight or activation tensors), whether a value is such a quantized tensor, and its
bit width, signedness, scale and zero point. The injection runtime faults the integer codes
``round(value / scale) + zero_point`` and hands the faulty values back through the adapter, so a
new quantization library (LSQ layers, simulated layers) plugs in by registering one adapter.

Brevitas is the first adapter (``QuantTensor`` with ``value``, ``scale``, ``zero_point``,
``bit_width``, ``signed``; proxies ``weight_quant`` / ``act_quant``).
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

    def bits(self, module: nn.Module, role: str, x: Any = None) -> int | None:
        if x is None and role == "weight" and hasattr(module, "quant_weight"):
            x = module.quant_weight()
        width = getattr(x, "bit_width", None)
        if width is None:  # a float output of a Brevitas layer: its quantizer's width
            proxy = getattr(module, self._ROLES.get(role, ""), None)
            width = proxy.bit_width() if proxy is not None and hasattr(proxy, "bit_width") else None
        return None if width is None else int(round(float(width)))


register_adapter("brevitas", BrevitasAdapter())


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
