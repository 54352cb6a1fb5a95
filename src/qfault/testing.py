"""Small, deterministic models and helpers for qfault's tests and examples (no training, no downloads)."""

from __future__ import annotations

import torch
from torch import nn


def tiny_digits_mlp(seed: int = 0, hidden: int = 32) -> nn.Module:
    """A float MLP for 1x8x8 digits with weights fixed by ``seed`` (untrained, eval mode)."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    return model.eval()


def tiny_digits_convnet(seed: int = 0, channels: int = 3) -> nn.Module:
    """A float CNN for 1x8x8 digits: a 3x3 conv (``channels`` outputs), ReLU, a linear layer,
    weights fixed by ``seed`` (untrained, eval mode); the small model of systolic tests."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, channels, 3), nn.ReLU(), nn.Flatten(), nn.Linear(channels * 36, 10))
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    return model.eval()


def tiny_digits_brevitas(seed: int = 0, hidden: int = 32) -> nn.Module:
    """A Brevitas-quantized MLP for 1x8x8 digits (8-bit weights and activations, weights fixed by
    ``seed``, untrained, eval mode)."""
    import brevitas.nn as qnn

    torch.manual_seed(seed)
    model = nn.Sequential(qnn.QuantIdentity(return_quant_tensor=True), nn.Flatten(),
                          qnn.QuantLinear(64, hidden, bias=True, return_quant_tensor=True),
                          qnn.QuantReLU(return_quant_tensor=True), qnn.QuantLinear(hidden, 10, bias=True))
    return model.eval()


def tiny_digits_seed_quant(seed: int = 0, weight_bits: int = 8, act_bits: int = 8) -> nn.Module:
    """:func:`tiny_digits_mlp` with both Linear layers swapped for frozen seed-000
    ``SeedQuantLinear`` layers (for stuck-at mitigation campaigns)."""
    from .layers import swap_linear

    model = tiny_digits_mlp(seed)
    swap_linear(model, skip=(), weight_bits=weight_bits, act_bits=act_bits)
    for module in model.modules():
        if hasattr(module, "freeze"):
            module.freeze()
    return model.eval()


class FaultRecorder:
    """An injection listener (``handle.add_listener(recorder)``) that keeps every
    ``(site name, draw, old codes, new codes)`` it is given."""

    def __init__(self):
        self.calls: list[tuple] = []

    def __call__(self, name, draw, old, new):
        self.calls.append((name, draw, old.clone(), new.clone()))

    def clear(self) -> None:
        self.calls = []

    @property
    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def signature(self) -> list[tuple]:
        """Hashable summary of the recorded faults (site, indices, patterns)."""
        return [(n, tuple(d.index.tolist()), tuple(d.mask.tolist())) for n, d, _, _ in self.calls]


def store_rows(store_path) -> list[tuple]:
    """The trial rows of a campaign store, read-only, in (point, repetition) order: ``(point,
    repetition, point_json, seed, accuracy, counts, faults)`` (what must not depend on where or
    when a trial ran; its time is left out)."""
    import sqlite3
    from pathlib import Path

    conn = sqlite3.connect(f"{Path(store_path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT point, repetition, point_json, seed, accuracy, counts, faults FROM trials "
                            "ORDER BY point, repetition").fetchall()
    finally:
        conn.close()
