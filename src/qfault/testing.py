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
