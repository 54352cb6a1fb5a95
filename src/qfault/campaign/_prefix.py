"""Reuse of the clean computation before the first faulted module of a trial.

On the golden run, the outputs of modules that execute before any module a trial can fault are
recorded per batch; during a trial those modules return their recorded output instead of
recomputing it. Results are bit-identical (eval mode is deterministic); only modules called
exactly once per forward are reused, so weight sharing and re-used activation modules are safe.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn


def trace_order(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, int, int]]:
    """``{name: (first start, last end, calls)}`` of every submodule in one forward of ``x``."""
    events: dict[str, list[int]] = {}
    counter = [0]
    hooks = []

    def pre(name):
        def hook(module, args):
            counter[0] += 1
            entry = events.setdefault(name, [counter[0], counter[0], 0])
            entry[2] += 1
        return hook

    def post(name):
        def hook(module, args, out):
            counter[0] += 1
            events[name][1] = counter[0]
        return hook

    for name, module in model.named_modules():
        if name:
            hooks.append(module.register_forward_pre_hook(pre(name)))
            hooks.append(module.register_forward_hook(post(name)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: (start, end, calls) for name, (start, end, calls) in events.items()}


def reusable_prefix(order: dict[str, tuple[int, int, int]], faulted: Iterable[str]) -> list[str]:
    """The maximal modules that finish before the first faulted module starts (called once)."""
    faulted = [name for name in faulted if name in order]
    if not faulted or "" in faulted:
        return []
    first = min(order[name][0] for name in faulted)
    candidates = sorted(name for name, (start, end, calls) in order.items() if end < first and calls == 1)
    maximal = []
    for name in candidates:
        if not any(name.startswith(parent + ".") for parent in maximal):
            maximal.append(name)
    return maximal


class PrefixCache:
    """Recorded outputs of chosen modules, per batch, and a context that replays them.

    Stacked copies of recorded outputs are kept for reuse, at most ``MAX_REPEATED_BYTES`` of them.

    ``constants`` are modules whose output does not depend on the batch (Brevitas weight
    quantizers of weights that no trial changes): recorded once, replayed for every batch.
    """

    MAX_REPEATED_BYTES = 256 * 2**20

    def __init__(self, model: nn.Module, names: Iterable[str], constants: Iterable[str] = ()):
        self.model = model
        self.names = sorted(set(names))
        self.outputs: dict[str, list] = {name: [] for name in self.names}
        self.constant_names = sorted(set(constants) - set(self.names))
        self.constants: dict[str, object] = {}
        self.batch = 0
        #: stacked trials: a replayed output is repeated this many times along the batch
        self.repeat = 1
        self._repeated: dict[tuple[int, int], object] = {}
        self._repeated_bytes = 0

    def without_model(self) -> "PrefixCache":
        """A copy holding only the recorded outputs, to ship to a worker that builds its own
        model (it sets ``model`` to it)."""
        shipped = copy.copy(self)
        shipped.model, shipped._repeated, shipped._repeated_bytes = None, {}, 0
        return shipped

    def record(self) -> list:
        """Hooks that record each chosen module's output; returns their handles."""
        handles = []
        for name in self.names:
            module = self.model.get_submodule(name)
            handles.append(module.register_forward_hook(
                lambda m, args, out, _name=name: self.outputs[_name].append(out)))
        for name in self.constant_names:
            module = self.model.get_submodule(name)
            handles.append(module.register_forward_hook(
                lambda m, args, out, _name=name: self.constants.setdefault(_name, out)))
        return handles

    @contextmanager
    def replay(self, names: Iterable[str]) -> Iterator[None]:
        """Within the context, ``names`` return their recorded output for batch ``self.batch``."""
        patched = []
        try:
            for name in names:
                module = self.model.get_submodule(name)
                if "forward" in module.__dict__:  # already patched by someone else: recompute it
                    continue
                if name in self.constants:
                    module.forward = lambda *args, _out=self.constants[name], **kwargs: _out
                elif name in self.outputs:
                    recorded = self.outputs[name]
                    module.forward = lambda *args, _rec=recorded, **kwargs: self._output(_rec[self.batch])
                else:  # never called on the golden run
                    continue
                patched.append(module)
            yield
        finally:
            for module in patched:
                module.__dict__.pop("forward", None)

    def _output(self, out):
        if self.repeat == 1:
            return out
        key = (id(out), self.repeat)  # trials of a point reuse the same stacked copies
        if key not in self._repeated:
            stacked = repeat_batch(out, self.repeat)
            size = _nbytes(stacked)
            if self._repeated_bytes + size > self.MAX_REPEATED_BYTES:
                self._repeated.clear()
                self._repeated_bytes = 0
            if size > self.MAX_REPEATED_BYTES:
                return stacked
            self._repeated[key] = stacked
            self._repeated_bytes += size
        return self._repeated[key]

    def repeatable(self, names: Iterable[str]) -> bool:
        """Whether every recorded output of ``names`` can be repeated along its batch."""
        return all(can_repeat_batch(out) for name in names for out in self.outputs.get(name, ()))


def _nbytes(x) -> int:
    value = x if isinstance(x, torch.Tensor) else x.value
    return value.numel() * value.element_size()


def can_repeat_batch(x) -> bool:
    """A tensor with a batch dimension, or a QuantTensor whose scale and zero point do not vary
    over the batch."""
    if isinstance(x, torch.Tensor):
        return x.dim() >= 1
    value = getattr(x, "value", None)
    if not isinstance(value, torch.Tensor) or value.dim() < 1:
        return False
    for attr in ("scale", "zero_point"):
        param = getattr(x, attr, None)
        if isinstance(param, torch.Tensor) and param.dim() >= value.dim() and param.shape[0] != 1:
            return False
    return True


def repeat_batch(x, times: int):
    """``times`` copies of ``x`` along dim 0 (tensors and QuantTensors, see ``can_repeat_batch``)."""
    if isinstance(x, torch.Tensor):
        return x.repeat(times, *([1] * (x.dim() - 1)))
    from ..injection import tensor_value, with_value

    value = tensor_value(x)
    return with_value(x, value.repeat(times, *([1] * (value.dim() - 1))))
