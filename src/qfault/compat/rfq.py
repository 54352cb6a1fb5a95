"""Seed 004's fault injector for LSQ mixed-precision QAT models, on qfault's core.

Scripts written for the seed's ``util.fault_injector`` (and ``util.qat.set_bit_width``) run with
their imports changed to ``from qfault.compat.rfq import ...``::

    injector = FaultInjector(model, mode="ber", ber=1e-6, enable_in_training=False,
                             enable_in_inference=True, seed=42)
    injector.enable()
    ...
    injector.disable()

What the seed's document promises holds: bit ``j`` of each layer's ``k``-bit two's-complement
weight code flips with probability ``ber`` (biases and activations untouched), ``k`` from
``fixed_bits`` or ``bits``; injection follows each module's ``training`` flag; with a ``seed``
every layer keeps one fault pattern for the injector's lifetime (seeded from the seed and the
layer's name, the same on CPU and CUDA), and the patterns of a lower BER are subsets of those of
a higher one; without a seed the pattern is redrawn every forward; the forward uses the faulty
weights and the backward the clean quantized ones. The differences (no dense per-bit mask, no
swallowed exceptions, no global ``torch.manual_seed``) are listed in docs/differences.md.
"""

from __future__ import annotations

import os
from collections import Counter

import torch
from torch import nn

from .._errors import QFaultConfigError, check_bool, check_choice, check_range
from ..faults import BitFlip
from ..injection import InjectSpec, inject, lsq_bit_widths
from ..layers import apply_bit_width_config, load_bit_width_config, lsq_layers, searchable_layers
from ..layers import set_bit_width as _set_bit_width

__all__ = ["FaultInjector", "load_bit_width_config_from_json", "setup_model_with_bit_width_config",
           "set_bit_width"]

MODES = ("ber",)


def _ber(value) -> float:
    if isinstance(value, str):  # the seed accepts "1e-2"
        try:
            value = float(value)
        except ValueError:
            raise QFaultConfigError("ber", value, "a number in [0, 1] (or a string holding one)") from None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = float(value)
    if isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    check_range("ber", value, 0.0, 1.0)
    return float(value)


def _found(model: nn.Module) -> str:
    kinds = Counter(type(m).__name__ for _, m in model.named_modules())
    return ", ".join(f"{count} {name}" for name, count in kinds.most_common(6))


class FaultInjector:
    """BER bit flips in the weight codes of every quantized LSQ layer of ``model``.

    Args:
        model: a model with ``QuanConv2d`` / ``QuanLinear`` layers (or any layer with
            ``quan_w_fn.get_scale`` and ``bits`` / ``fixed_bits``) whose bit widths are set.
        mode: ``"ber"`` (the only mode).
        ber: flip probability per bit, in [0, 1] (a string such as ``"1e-2"`` is accepted).
        device: accepted for compatibility; faults are drawn on the CPU (so a seed gives the
            same faults on every device) and applied on the weights' device.
        enable_in_training: inject while a layer is in training mode.
        enable_in_inference: inject while a layer is in eval mode.
        seed: fixes each layer's fault pattern for the injector's lifetime; None redraws it on
            every forward.
        activations: also flip the bits of each layer's quantized input activations (beyond the
            seed, which faults weights only).

    Raises:
        QFaultConfigError: an unknown ``mode``, a ``ber`` outside [0, 1] or not a number, a
            model without quantized LSQ layers (naming what it has).
    """

    def __init__(self, model: nn.Module, mode: str = "ber", ber: float | str = 0.0,
                 device: torch.device | str | None = None, enable_in_training: bool = True,
                 enable_in_inference: bool = True, seed: int | None = None, *, activations: bool = False) -> None:
        if not isinstance(model, nn.Module):
            raise QFaultConfigError("model", type(model).__name__, "an nn.Module")
        check_choice("mode", mode, MODES)
        self.ber = _ber(ber)
        for field, value in (("enable_in_training", enable_in_training),
                             ("enable_in_inference", enable_in_inference), ("activations", activations)):
            check_bool(field, value)
        if seed is not None:
            check_range("seed", seed, 0, 2**63 - 1, integer=True)
        if device is not None:
            try:
                torch.device(device)
            except (RuntimeError, TypeError):
                raise QFaultConfigError("device", device, "a torch device such as 'cpu' or 'cuda:0'") from None
        self.model, self.mode, self.device, self.seed = model, mode, device, seed
        self.enable_in_training, self.enable_in_inference = enable_in_training, enable_in_inference
        self.activations = activations
        self.layer_names()  # a model without quantized layers is an error now, not at enable()
        self._handle = None
        self._unseeded: int | None = None

    def layer_names(self) -> list[str]:
        """The layers faulted: LSQ layers whose bit widths are set, in module order."""
        names = [name for name, module in lsq_layers(self.model) if lsq_bit_widths(module) is not None]
        if not names:
            raise QFaultConfigError(
                "model", type(self.model).__name__,
                "a model with quantized QuanConv2d/QuanLinear layers (quan_w_fn.get_scale, bits or fixed_bits set)",
                hint=f"found {_found(self.model)}; convert with swap_modules(model, LsqConfig(...)) and set bit "
                     "widths with setup_model_with_bit_width_config")
        return names

    def specs(self) -> list[InjectSpec]:
        """The :class:`~qfault.injection.InjectSpec` list this injector applies."""
        if not (self.enable_in_training or self.enable_in_inference):
            return []
        active_in = "both" if self.enable_in_training and self.enable_in_inference else (
            "train" if self.enable_in_training else "eval")
        names = tuple(self.layer_names())
        seed = self.seed if self.seed is not None else self._unseeded
        # nesting across BER values matters for a fixed pattern; redrawn every forward, the
        # plain Bernoulli draw (the same distribution) is cheaper
        fault = BitFlip(ber=self.ber, nested=self.seed is not None)
        common = dict(fault=fault, names=names, active_in=active_in, gradient="ste",
                      persistence="permanent" if self.seed is not None else "transient", seed=seed,
                      track_statistics=False)
        sites = ("weight", "input") if self.activations else ("weight",)
        return [InjectSpec(site=site, **common) for site in sites]

    @property
    def enabled(self) -> bool:
        return self._handle is not None

    @property
    def handle(self):
        """The :class:`~qfault.injection.InjectionHandle` while enabled (listeners,
        statistics), else None."""
        return self._handle

    def enable(self) -> None:
        """Start injecting (again); the layers and their bit widths are read now. Without a
        ``seed``, the faults of every forward derive from one number drawn now from torch's
        global generator, so ``torch.manual_seed`` makes an unseeded run repeatable (as the seed
        tool's use of the global generator does)."""
        if self._handle is None:
            if self.seed is None:
                self._unseeded = int(torch.randint(1 << 62, (1,)))
            specs = self.specs()
            self._handle = inject(self.model, specs) if specs else None

    def disable(self) -> None:
        """Stop injecting: the model computes exactly as without the injector."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __repr__(self) -> str:
        return (f"FaultInjector(mode={self.mode!r}, ber={self.ber}, seed={self.seed}, "
                f"enabled={self.enabled})")


def load_bit_width_config_from_json(json_path: str | os.PathLike, config_index: int = 0) -> tuple[list[int], list[int]]:
    """``(weight_bits, act_bits)`` of ``configurations[config_index]`` in a search JSON."""
    return load_bit_width_config(json_path, config_index)


def setup_model_with_bit_width_config(model: nn.Module, json_path: str | os.PathLike, config_index: int = 0,
                                      verbose: bool = True) -> tuple[list[int], list[int]]:
    """Set the bit widths of ``configurations[config_index]`` onto the LSQ layers without fixed
    bits, in module order; prints the mapping when ``verbose``. Returns the two lists."""
    weight_bits, act_bits = apply_bit_width_config(model, json_path, config_index)
    if verbose:
        print(f"Bit widths from {json_path} (configuration {config_index}):")
        for (name, _), w, a in zip(searchable_layers(model), weight_bits, act_bits):
            print(f"  {name}: weight {w} bits, activation {a} bits")
    return weight_bits, act_bits


def set_bit_width(model: nn.Module, weight_bits, act_bits) -> None:
    """Seed 004's ``util.qat.set_bit_width``: ``bits = (w, a)`` per layer without fixed bits."""
    _set_bit_width(model, weight_bits, act_bits)
