"""The model and data a campaign evaluates: built from the spec's source, and identified by content.

A campaign's trials depend on the model's weights and on the evaluated images, not only on the
spec: :func:`model_digest` and :func:`data_digest` name them by content, so that a store refuses
trials of a changed model or data set, and a worker that builds the model itself (Ray) proves it
built the driver's model.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .._errors import QFaultConfigError


def load_factory(path: str) -> Callable[..., Any]:
    """Resolve ``package.module:function``."""
    module_name, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # not found, a syntax error in it, or its import raised
        raise QFaultConfigError("model.factory", path, "an importable 'package.module:function'",
                                hint=f"{type(exc).__name__}: {exc}") from None


def build_campaign_model(source, log: Callable[[str], None] = print) -> nn.Module:
    """The model a campaign evaluates, in eval mode, on the CPU.

    Raises:
        QFaultConfigError: naming ``model.*``: an unknown demo argument, a factory that cannot
            be imported or raises, a checkpoint that is missing or does not fit.
    """
    if source.source == "demo":
        from ..data import load_demo_model

        # the arguments of load_demo_model a spec may set
        allowed = [key for key in inspect.signature(load_demo_model).parameters if key not in ("name", "log",
                                                                                                 "progress")]
        unknown = [key for key in source.kwargs if key not in allowed]
        if unknown:
            raise QFaultConfigError(f"model.kwargs.{unknown[0]}", source.kwargs[unknown[0]],
                                    "keys " + ", ".join(allowed) + " (for source: demo)", hint="unknown key")
        try:
            model, _ = load_demo_model(source.name, log=log, **source.kwargs)
        except QFaultConfigError as exc:  # its fields are under model.kwargs
            raise QFaultConfigError(f"model.kwargs.{exc.field}", exc.value, exc.allowed, hint=exc.hint) from None
        return model.eval()
    factory = load_factory(source.factory)
    try:
        model = factory(**source.kwargs)
    except QFaultConfigError as exc:  # name the field where the spec sets it
        if exc.field in source.kwargs:
            raise QFaultConfigError(f"model.kwargs.{exc.field}", exc.value, exc.allowed, hint=exc.hint) from None
        raise
    except Exception as exc:  # a factory that raises is a bad spec, not a crash
        raise QFaultConfigError("model.factory", source.factory, "a function that builds the model from "
                                "model.kwargs", hint=f"it raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise QFaultConfigError("model.factory", source.factory, "a function returning a torch.nn.Module",
                                hint=f"it returned {type(model).__name__}")
    if source.source == "checkpoint":
        try:
            state = torch.load(source.path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise QFaultConfigError("model.path", source.path, "an existing checkpoint file") from None
        except Exception as exc:
            raise QFaultConfigError("model.path", source.path, "a readable PyTorch checkpoint",
                                    hint=f"{type(exc).__name__}: {exc}") from None
        if isinstance(state, dict) and "model_state_dict" in state:
            state = state["model_state_dict"]
        try:
            model.load_state_dict(state)
        except Exception as exc:  # name the first key that does not fit, with its shapes
            raise QFaultConfigError("model.path", source.path, f"a state dict for {type(model).__name__}",
                                    hint=_first_mismatch(model, state) or str(exc).splitlines()[0]) from None
    return model.eval()


def _first_mismatch(model: nn.Module, state: Any) -> str | None:
    """The first key where ``state`` does not fit ``model`` (missing, unexpected, another shape)."""
    if not isinstance(state, dict):
        return f"a mapping of tensors, not {type(state).__name__}"
    own = model.state_dict()
    for key, value in own.items():
        if key not in state:
            return f"missing key {key!r} (shape {tuple(value.shape)})"
        other = state[key]
        if isinstance(other, torch.Tensor) and tuple(other.shape) != tuple(value.shape):
            return f"key {key!r}: checkpoint shape {tuple(other.shape)}, model shape {tuple(value.shape)}"
    unexpected = [key for key in state if key not in own]
    if unexpected:
        return f"unexpected key {unexpected[0]!r}"
    return None


def campaign_model(spec, log: Callable[[str], None] = print) -> nn.Module:
    """The model ``spec`` evaluates, built from its ``model`` source, its layers put on the systolic
    array of its ``systolic`` section (if any), in eval mode, on the CPU."""
    from ._plan import systolic_model

    return systolic_model(spec, build_campaign_model(spec.model, log=log))


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.is_quantized:  # pragma: no cover - no qfault model holds torch-quantized tensors
        flat = flat.int_repr()
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def model_digest(model: nn.Module) -> str:
    """SHA-256 of ``model.state_dict()``: every entry's name, dtype, shape and bytes, in order.

    Equal digests mean equal parameters and buffers (and the same architecture as far as its
    state names go); a retrained model, another checkpoint or a different data-dependent buffer
    gives another digest.
    """
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        digest.update(name.encode() + b"\0")
        _update(digest, value)
    return digest.hexdigest()


def data_digest(batches: Iterable[tuple[torch.Tensor, Any]]) -> str:
    """SHA-256 of the evaluation batches: inputs and labels, batch by batch, in order."""
    digest = hashlib.sha256()
    for x, y in batches:
        _update(digest, x)
        _update(digest, y)
    return digest.hexdigest()


def _update(digest, value: Any) -> None:
    """Feed a tensor (dtype, shape, bytes) or any other value (its repr) to ``digest``."""
    if isinstance(value, torch.Tensor):
        digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
        digest.update(_tensor_bytes(value))
    else:
        digest.update(repr(value).encode())
