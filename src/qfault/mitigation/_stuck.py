"""Permanent stuck-at cells under the weights of ``SeedQuantLinear`` layers, with write-side
mitigation (seed 000's experiment): draw a fault map per layer, store the codes the chosen method
writes, read back what the faulty memory returns; undone by the handle.

The verb is ``qfault.inject(model, StuckAtSpec(...))``: this module registers the handler for
:class:`StuckAtSpec` with ``qfault.injection.register_config`` when it is imported."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .._errors import QFaultConfigError, check_choice, check_range
from .._handle import RemovableHandle
from ..faults import derive_seed
from ..formats import IntFormat
from ..injection import inject, register_config
from ..layers import SeedQuantLinear
from ._remap import METHODS, SEED_ALIASES, draw_stuck_map, remap

#: ``"raw"`` stores the codes as they are: stuck cells simply override their bits
STUCK_METHODS = ("raw",) + METHODS


@dataclass(frozen=True)
class StuckAtSpec:
    """Stuck-at faults in the stored weight codes of every ``SeedQuantLinear`` of a model.

    Args:
        rate: percentage in [0, 100]: each bit cell is stuck with probability ``rate / 100``
            (at 1 or 0 with probability 1/2, as in seed 000).
        method: ``"raw"`` (no mitigation), ``"cvm"`` (the seed's ``none``), ``"sign_flip"``
            (``flip``) or ``"bit_flip"`` (``flip-bitwise``).
        tile: group width of ``sign_flip``/``bit_flip`` (input features per group).
        seed: fixes every fault map (None: random).

    Example:
        >>> from qfault.layers import SeedQuantConfig, swap_modules
        >>> from qfault.testing import tiny_digits_mlp
        >>> model = tiny_digits_mlp()
        >>> swap = swap_modules(model, SeedQuantConfig(skip=(), freeze=True))
        >>> with qfault.inject(model, StuckAtSpec(rate=2.0, method="sign_flip", seed=0)) as handle:
        ...     handle.layers, handle.changed_weights > 0
        (['1', '3'], True)
    """

    rate: float = 1.0
    method: str = "cvm"
    tile: int = 64
    seed: int | None = None

    def __post_init__(self) -> None:
        check_range("rate", self.rate, 0.0, 100.0)
        method = SEED_ALIASES.get(self.method, self.method) if isinstance(self.method, str) else self.method
        check_choice("method", method, STUCK_METHODS + tuple(SEED_ALIASES))
        object.__setattr__(self, "method", method)
        check_range("tile", self.tile, 1, 2**31, integer=True)
        if self.seed is not None:
            check_range("seed", self.seed, 0, 2**63 - 1, integer=True)


class StuckAtHandle(RemovableHandle):
    """Returned by ``inject(model, StuckAtSpec(...))``: the faulty codes are in the layers.

    ``remove()`` (or leaving the ``with`` block) restores every layer exactly (and unfreezes the
    layers it had to freeze); ``disable()`` writes the clean codes back, ``enable()`` the faulty
    ones again (the fault maps are kept). Remove (or disable) nested handles last-in first-out.

    Attributes:
        layers: qualified names of the faulted ``SeedQuantLinear`` layers.
        stuck_cells: number of stuck bit cells over all layers.
        changed_weights: number of codes read back different from the clean codes.
        enabled: whether the faulty codes are in the layers now.
    """

    def __init__(self) -> None:
        super().__init__()
        self.layers: list[str] = []
        self.stuck_cells = 0
        self.changed_weights = 0
        self.enabled = True
        self._codes: list[tuple[SeedQuantLinear, torch.Tensor, torch.Tensor]] = []  # layer, clean, faulty

    def enable(self) -> "StuckAtHandle":
        """Put the faulty codes (read back from the stuck cells) in the layers."""
        if not self.removed:
            for layer, _, faulty in self._codes:
                layer.weight_codes = faulty
            self.enabled = True
        return self

    def disable(self) -> "StuckAtHandle":
        """Put the clean codes back; the layers stay frozen and the fault maps are kept."""
        if not self.removed:
            for layer, clean, _ in self._codes:
                layer.weight_codes = clean
            self.enabled = False
        return self

    def remove(self) -> None:
        """Restore every layer exactly as before; idempotent."""
        super().remove()
        self._codes.clear()
        self.enabled = False


def stuck_layers(model: nn.Module) -> list[tuple[str, SeedQuantLinear]]:
    """The ``SeedQuantLinear`` layers whose stored codes ``inject(model, StuckAtSpec(...))`` faults."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SeedQuantLinear)]


@register_config(StuckAtSpec)
@torch.no_grad()
def _inject_stuck_at(model: nn.Module, spec: StuckAtSpec) -> StuckAtHandle:
    """Fault the stored weight codes of every ``SeedQuantLinear`` in ``model``, in place (the
    handler of ``qfault.inject(model, StuckAtSpec(...))``).

    Layers that are not frozen are frozen first (and unfrozen by ``remove()``). Each layer's map
    comes from ``derive_seed(seed, layer name)``, so methods compared at one seed see the same maps.
    """
    layers = stuck_layers(model)
    if not layers:
        raise QFaultConfigError("model", type(model).__name__, "a model with SeedQuantLinear layers",
                                hint="swap them in first: qfault.layers.swap_modules(model, SeedQuantConfig())")
    handle = StuckAtHandle()
    base = spec.seed if spec.seed is not None else int(torch.randint(2**62, (1,)))
    try:
        for name, layer in layers:
            was_frozen = layer.frozen
            if not was_frozen:
                layer.freeze()
            clean = layer.weight_codes
            mask, value = draw_stuck_map(tuple(clean.shape), spec.rate, bits=layer.weight_bits,
                                         generator=derive_seed(base, name) >> 1)
            mask, value = mask.to(clean.device), value.to(clean.device)
            if spec.method == "raw":
                read = IntFormat(layer.weight_bits).set_bits(clean, mask, value)
            else:
                read = remap(clean, mask, value, bits=layer.weight_bits, method=spec.method, tile=spec.tile)
            faulty = read.to(torch.int32)
            layer.weight_codes = faulty
            handle.layers.append(name)
            handle._codes.append((layer, clean, faulty))
            handle.stuck_cells += sum(int(((mask >> b) & 1).sum()) for b in range(layer.weight_bits))
            handle.changed_weights += int((read != clean).sum())

            def undo(layer=layer, clean=clean, was_frozen=was_frozen):
                layer.weight_codes = clean
                if not was_frozen:
                    layer.unfreeze()

            handle._undo.append(undo)
    except Exception:
        handle.remove()
        raise
    return handle


def apply_stuck_at(model: nn.Module, spec: StuckAtSpec) -> StuckAtHandle:
    """Deprecated: use ``qfault.inject(model, spec)`` (same faults, same handle).

    Example:
        >>> with qfault.inject(model, StuckAtSpec(rate=2.0, method="sign_flip", seed=0)):  # doctest: +SKIP
        ...     accuracy = evaluate(model)
    """
    warnings.warn("qfault.mitigation.apply_stuck_at(model, spec) is deprecated: use qfault.inject(model, spec)",
                  FutureWarning, stacklevel=2)
    return inject(model, spec)
