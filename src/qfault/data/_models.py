"""Registered demo models and the small training / evaluation loops the demo uses."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .._registry import Registry

MODELS: Registry = Registry("model")


def register_model(name: str):
    def wrap(fn: Callable[..., nn.Module]):
        MODELS.register(name, fn)
        return fn

    return wrap


@register_model("digits_cnn")
def digits_cnn(weight_bits: int = 8, act_bits: int = 8) -> nn.Module:
    """A small Brevitas CNN for 1x8x8 digits: 2 quantized convs, 1 quantized linear layer.

    Integer weights (``weight_bits``) and activations (``act_bits``); 3 QuantReLU and one input
    QuantIdentity are activation fault sites, 3 weight layers are weight fault sites.
    """
    import brevitas.nn as qnn

    return nn.Sequential(
        qnn.QuantIdentity(bit_width=act_bits),
        qnn.QuantConv2d(1, 16, 3, padding=1, bias=False, weight_bit_width=weight_bits),
        nn.BatchNorm2d(16),
        qnn.QuantReLU(bit_width=act_bits),
        qnn.QuantConv2d(16, 32, 3, padding=1, stride=2, bias=False, weight_bit_width=weight_bits),
        nn.BatchNorm2d(32),
        qnn.QuantReLU(bit_width=act_bits),
        nn.Flatten(),
        qnn.QuantLinear(32 * 4 * 4, 10, bias=True, weight_bit_width=weight_bits),
    )


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered demo model by name; an unknown name lists the valid ones."""
    return MODELS.get(name)(**kwargs)


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.list(pattern)


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 15,
                     batch_size: int = 64, lr: float = 0.01, seed: int = 0,
                     time_limit_s: float | None = None, progress=None) -> list[float]:
    """Adam + cross-entropy over shuffled mini-batches; returns the mean loss of each epoch."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    losses = []
    start = time.monotonic()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        total = 0.0
        for i in range(0, len(y), batch_size):
            idx = order[i:i + batch_size]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        scheduler.step()
        losses.append(total / len(y))
        if progress is not None:
            progress()
        if time_limit_s is not None and time.monotonic() - start > time_limit_s:
            break
    model.eval()
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    correct = 0
    for i in range(0, len(y), batch_size):
        logits = model(x[i:i + batch_size])
        logits = getattr(logits, "value", logits)
        correct += int((logits.argmax(dim=1) == y[i:i + batch_size]).sum())
    return 100.0 * correct / len(y)


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Where trained demo models are cached: ``explicit``, ``$QFAULT_CACHE`` or ``~/.cache/qfault``."""
    return Path(explicit or os.environ.get("QFAULT_CACHE") or Path.home() / ".cache" / "qfault")


def load_demo_model(name: str = "digits_cnn", *, epochs: int = 15, cache: str | os.PathLike | None = None,
                    retrain: bool = False, log: Callable[[str], None] = print,
                    progress: Callable[[], None] | None = None) -> tuple[nn.Module, bool]:
    """A trained demo model (eval mode), from the cache when a valid checkpoint is there.

    Trains on the digits training split otherwise (about 10 s on 2 cores) and caches the
    result atomically; a corrupt cache file is reported through ``log`` and rebuilt.

    Returns:
        ``(model, trained_now)``.
    """
    from ._digits import load_digits_split

    path = cache_dir(cache) / f"{name}_w8a8_e{epochs}.pt"
    model = build_model(name)
    if path.exists() and not retrain:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(checkpoint["model_state_dict"])
            log(f"Loaded cached model {path}")
            return model.eval(), False
        except Exception as exc:  # a corrupt cache is rebuilt, never trusted
            log(f"Cached model {path} is unreadable ({type(exc).__name__}: {exc}); retraining")
            model = build_model(name)
    x_train, y_train, _, _ = load_digits_split()
    start = time.monotonic()
    train_classifier(model, x_train, y_train, epochs=epochs, seed=0, time_limit_s=60.0, progress=progress)
    log(f"Trained {name} in {time.monotonic() - start:.1f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"model_state_dict": model.state_dict(), "model": name}, tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written cache
    return model.eval(), True
