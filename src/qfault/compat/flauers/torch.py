"""flauers' PyTorch wrappers (``flauers.torch``): run a model's conv and linear layers on a
(faulty) systolic array.

``replace_layers(model, names, hardware=hw)`` swaps the named ``nn.Conv2d`` / ``nn.Linear``
layers, in place, for :class:`SystolicConv2d` / :class:`SystolicLinear`: qfault's systolic
layers (:mod:`qfault.systolic`) on ``hw.core``, with flauers' ``add_fault(fault, channel=-1)``
and ``clear_faults()``. Every fault on the array applies to every systolic layer; ``channel``
limits it to that output channel of conv layers (linear layers ignore it). The layers of one
model share the array, so a fault added through two layers is put on it once, and
``clear_faults()`` on any layer clears the whole array (as in flauers).

Differences from flauers' code: linear layers always tile (flauers reads past the array's fault
masks once the batch exceeds N1 or the features exceed N2 / N3); a fault added with
``hw.add_fault`` reaches conv layers too (flauers' conv layers look only at faults added
through them); the layers have no progress bar.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..._errors import QFaultConfigError
from ...systolic import SystolicConv2d as _CoreConv2d
from ...systolic import SystolicLinear as _CoreLinear
from . import SystolicArray, fault_models, lowerings, projection_matrices

__all__ = ["compatible_layers", "replace_layers", "SystolicConv2d", "SystolicLinear"]

_GPU_OPTIONS = ("gpu_griddim", "gpu_blockdim", "multiprocessing")


def _default_hardware(device: Any) -> SystolicArray:
    """flauers' default array for a layer built without one: 100 x 100 x 150, output
    stationary, float32."""
    use_gpu = device is not None and torch.device(device).type == "cuda"
    return SystolicArray(100, 100, 150, projection_matrices.output_stationary, in_dtype=np.dtype(np.float32),
                         use_gpu=use_gpu)


class _FlauersLayer:
    """flauers' fault methods of a systolic layer (mixed into qfault's layers)."""

    hw: SystolicArray
    deeper_faults: bool

    def _setup(self, hardware: SystolicArray, deeper_faults: bool) -> None:
        self.hw = hardware
        self.deeper_faults = deeper_faults
        self.injecting = 0
        self.channel_fault_list: list[tuple[int, fault_models.Fault]] = []

    def add_fault(self, fault: fault_models.Fault, channel: int = -1) -> int:
        """Put ``fault`` on the shared array, limited to output ``channel`` of conv layers
        (-1: every channel; ``deeper_faults`` layers always use -1); returns its id. A fault
        another layer already added with the same channel is not added twice.

        Raises:
            InjectionError: a fault that does not fit the array.
        """
        channel = -1 if self.deeper_faults else channel
        fault_id = self.hw._add(fault, channel, reuse=True)
        self.injecting += 1
        self.channel_fault_list.append((channel, fault))
        return fault_id

    def clear_faults(self) -> None:
        """Take every fault off the shared array (every layer on it runs fault-free)."""
        self.channel_fault_list = []
        self.injecting = 0
        self.hw.clear_all_faults()


def _source(cls: type, args: tuple, kwargs: dict) -> nn.Module:
    """The layer to wrap: given as the first argument, or built from nn.Conv2d / nn.Linear args."""
    if args and isinstance(args[0], cls):
        if len(args) > 1 or kwargs:
            raise TypeError(f"give a {cls.__name__} or its constructor arguments, not both")
        return args[0]
    return cls(*args, **kwargs)


class SystolicConv2d(_FlauersLayer, _CoreConv2d):
    """An ``nn.Conv2d`` computed on a systolic array by single-channel im2col.

    Built like flauers' layer, ``SystolicConv2d(in_channels, out_channels, kernel_size, ...,
    hardware=hw)`` (``nn.Conv2d``'s arguments), or from an existing ``nn.Conv2d`` (its
    parameters are shared).

    Args:
        hardware: the :class:`~qfault.compat.flauers.SystolicArray` (default: a fresh
            100 x 100 x 150 output-stationary float32 array).
        tiling: run lowered products larger than the array tile by tile.
        deeper_faults: every fault added through this layer acts on all output channels.
        lowering: :class:`~.lowerings.S_Im2Col` (the only lowering).

    Example:
        >>> import numpy as np
        >>> from qfault.compat import flauers
        >>> hw = flauers.SystolicArray(8, 8, 32, flauers.projection_matrices.output_stationary,
        ...                            in_dtype=np.float32)
        >>> conv = SystolicConv2d(1, 2, 3, hardware=hw)
        >>> fault_id = conv.add_fault(flauers.fault_models.StuckAt("c", x=1, y=1, bit=1, polarity=1), channel=1)
        >>> tuple(conv(torch.ones(1, 1, 6, 6)).shape)
        (1, 2, 4, 4)
    """

    def __init__(self, *args: Any, hardware: SystolicArray | None = None, tiling: bool = False,
                 deeper_faults: bool = False, lowering: type = lowerings.S_Im2Col, **kwargs: Any) -> None:
        for name in _GPU_OPTIONS:
            kwargs.pop(name, None)
        if lowering is not lowerings.S_Im2Col:
            raise QFaultConfigError("lowering", lowering, "flauers.lowerings.S_Im2Col (the only lowering)")
        source = _source(nn.Conv2d, args, kwargs)
        hardware = _default_hardware(kwargs.get("device")) if hardware is None else hardware
        _CoreConv2d.__init__(self, source, hardware.core, bool(tiling))
        self._setup(hardware, deeper_faults)

    def load_weights(self, weights: torch.Tensor) -> None:
        """Replace the kernel (out_channels, in_channels, kh, kw)."""
        self.weight = nn.Parameter(weights)


class SystolicLinear(_FlauersLayer, _CoreLinear):
    """An ``nn.Linear`` computed on a systolic array: (batch, in) @ (in, out), then the bias.

    Built from ``nn.Linear``'s arguments plus ``hardware=hw``, or from an existing
    ``nn.Linear``. Always tiled (``tiling`` is accepted for flauers' signature): the batch and the
    features may exceed the array.
    """

    def __init__(self, *args: Any, hardware: SystolicArray | None = None, tiling: bool = True,
                 **kwargs: Any) -> None:
        for name in _GPU_OPTIONS:
            kwargs.pop(name, None)
        source = _source(nn.Linear, args, kwargs)
        hardware = _default_hardware(kwargs.get("device")) if hardware is None else hardware
        _CoreLinear.__init__(self, source, hardware.core, True)
        self._setup(hardware, False)

    def load_weights(self, weight: torch.Tensor) -> None:
        """Replace the weight (out_features, in_features)."""
        self.weight = nn.Parameter(weight)


def compatible_layers(model: nn.Module) -> list[str]:
    """Qualified names of the submodules that are ``nn.Conv2d`` or ``nn.Linear`` (or subclasses
    of them), in ``named_modules`` order; the root itself is not listed (it cannot be replaced
    in place).

    Example:
        >>> compatible_layers(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)))
        ['0', '3']
    """
    return [name for name, module in model.named_modules()
            if name and isinstance(module, (nn.Conv2d, nn.Linear))]


def replace_layers(model: nn.Module, names: str | list[str], hardware: SystolicArray, device: Any = None,
                   tiling: bool | list[bool] = False, deeper_faults: bool = False, gpu_griddim: int = 64,
                   gpu_blockdim: int = 128) -> nn.Module:
    """Replace, in place, the layers ``names`` of ``model`` by systolic layers on ``hardware``.

    Args:
        model: the model (changed in place).
        names: a qualified layer name or a list of them (``compatible_layers(model)``).
        hardware: the shared :class:`~qfault.compat.flauers.SystolicArray`.
        device: where the new layers go (default: CUDA if ``hardware.use_gpu``, else where the
            replaced layer is).
        tiling: for conv layers, one flag or one per name (linear layers always tile).
        deeper_faults: faults added through the conv layers act on every output channel.
        gpu_griddim, gpu_blockdim: accepted and unused.

    Returns:
        ``model``.

    Raises:
        QFaultConfigError: a name that is not a conv or linear layer of ``model``, a ``tiling``
            list of the wrong length, ``hardware`` that is not a flauers ``SystolicArray``.

    Example:
        >>> import numpy as np
        >>> from qfault.compat import flauers
        >>> hw = flauers.SystolicArray(8, 8, 64, flauers.projection_matrices.output_stationary,
        ...                            in_dtype=np.float32)
        >>> model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
        >>> model = replace_layers(model, compatible_layers(model), hardware=hw)
        >>> type(model[0]).__name__, type(model[2]).__name__
        ('SystolicConv2d', 'SystolicLinear')
    """
    if not isinstance(hardware, SystolicArray):
        raise QFaultConfigError("hardware", type(hardware).__name__, "a flauers.SystolicArray")
    names = [names] if isinstance(names, str) else list(names)
    tilings = [tiling] * len(names) if isinstance(tiling, bool) else list(tiling)
    if len(tilings) != len(names):
        raise QFaultConfigError("tiling", tiling, f"a bool or a list of {len(names)} bools (one per name)")
    if device is None and hardware.use_gpu:
        device = "cuda"
    for name, tile in zip(names, tilings):
        try:
            layer = model.get_submodule(name) if isinstance(name, str) else None
        except AttributeError:
            layer = None
        if not name or not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise QFaultConfigError("names", name, "conv / linear layers of the model: "
                                    + (", ".join(compatible_layers(model)) or "none"))
        parent_name, _, attribute = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if isinstance(layer, nn.Conv2d):
            new = SystolicConv2d(layer, hardware=hardware, tiling=tile, deeper_faults=deeper_faults)
        else:
            new = SystolicLinear(layer, hardware=hardware)
        if device is not None:
            new.to(device)
        setattr(parent, attribute, new)
    return model
