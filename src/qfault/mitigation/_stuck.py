"""Permanent stuck-at cells under the weights of ``SeedQuantLinear`` layers, with write-side
mitigation (seed 000's experiment): draw a fault map per layer, store the codes the chosen method
writes, read back what the faulty memory returns; undone by the handle."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._errors import QFaultConfigError, check_choice, check_range
from ..faults import derive_seed
from ..formats import IntFormat
from ._linear import SeedQuantLinear
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


class StuckAtHandle:
    """Returned by :func:`apply_stuck_at`; ``remove()`` restores every layer exactly."""

    def __init__(self):
        self._undo: list = []
        self.stuck_cells = 0
        self.changed_weights = 0

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()

    def __enter__(self) -> "StuckAtHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def stuck_layers(model: nn.Module) -> list[tuple[str, SeedQuantLinear]]:
    """The ``SeedQuantLinear`` layers whose stored codes :func:`apply_stuck_at` faults."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SeedQuantLinear)]


@torch.no_grad()
def apply_stuck_at(model: nn.Module, spec: StuckAtSpec) -> StuckAtHandle:
    """Fault the stored weight codes of every ``SeedQuantLinear`` in ``model``, in place.

    Layers that are not frozen are frozen first (and unfrozen by ``remove()``).

    Example:
        >>> layers = swap_linear(model)                      # doctest: +SKIP
        >>> with apply_stuck_at(model, StuckAtSpec(rate=2.0, method="sign_flip", seed=0)):
        ...     accuracy = evaluate(model)                   # doctest: +SKIP
    """
    layers = stuck_layers(model)
    if not layers:
        raise QFaultConfigError("model", type(model).__name__, "a model with SeedQuantLinear layers",
                                hint="call qfault.mitigation.swap_linear(model) first")
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
            layer.weight_codes = read.to(torch.int32)
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
