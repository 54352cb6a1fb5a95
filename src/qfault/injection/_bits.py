"""One bit numbering for a whole model: the weights (and optionally biases) of its layers, in
module order, each tensor's bits numbered by layer bit index, as FKeras' ``FModelAlt`` does.

Global bit ``g`` falls in one tensor's range ``[start, start + numel * bits)``; within it,
``l = g - start`` is a layer bit index: bit ``bits - 1 - l % bits`` (0 = LSB) of element
``l // bits`` in ``layout`` order (``"keras"``: Keras kernel layout, ``"torch"``: the tensor's
own). Per layer the weight range comes first, then the bias range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from .._errors import QFaultConfigError, check_choice
from ..faults import LAYOUTS, lbi_to_site, to_torch_index
from ..formats import NumberFormat, get_format
from ._adapters import quantized_bits
from ._select import select_modules
from ._spec import InjectSpec


@dataclass(frozen=True)
class BitTensor:
    """One numbered tensor: ``module.role`` of ``shape``, ``bits`` per value, first global bit
    ``start``."""

    module: str
    role: str
    shape: tuple[int, ...]
    bits: int
    start: int

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def size(self) -> int:
        return self.numel * self.bits

    @property
    def name(self) -> str:
        return f"{self.module}.{self.role}" if self.module else self.role


class ModelBits:
    """The global bit numbering of ``model``'s selected weight tensors (and biases).

    Args:
        model: the model.
        format: the number format of float tensors (quantized layers use their own width);
            biases need it.
        include_bias: number each layer's bias bits after its weight bits.
        types, names: the layers, as a weight ``InjectSpec`` selects them (default: Conv/Linear).
        layout: element order within a tensor: ``"keras"`` (FKeras' numbers) or ``"torch"``.

    Example:
        >>> model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> bits = ModelBits(model, format="int8", include_bias=True)
        >>> bits.total, [(t.name, t.start) for t in bits.tensors]
        (88, [('0.weight', 0), ('0.bias', 48), ('2.weight', 64), ('2.bias', 80)])
        >>> bits.locate([49])
        [('0.bias', 0, 6)]
    """

    def __init__(self, model: nn.Module, *, format: "NumberFormat | str | dict | None" = None,
                 include_bias: bool = False, types=None, names=None, layout: str = "keras") -> None:
        check_choice("layout", layout, LAYOUTS)
        fmt = None if format is None else get_format(format)
        spec = InjectSpec(fault={"type": "bit_flip", "ber": 0.0}, site="weight", types=types, names=names, format=fmt)
        self.format, self.layout = fmt, layout
        self.tensors: list[BitTensor] = []
        start = 0
        for module_name, module in select_modules(model, spec):
            for role in ("weight", "bias") if include_bias else ("weight",):
                param = module._parameters.get(role)
                if param is None:
                    continue
                width = fmt.bits if fmt is not None else (quantized_bits(module, "weight") if role == "weight" else None)
                if width is None:
                    raise QFaultConfigError("format", None, f"a number format for the {role} of '{module_name}' "
                                            f"({type(module).__name__}): it has no quantizer of its own")
                tensor = BitTensor(module_name, role, tuple(param.shape), int(width), start)
                self.tensors.append(tensor)
                start += tensor.size
        self.total = start
        self._starts = np.array([t.start for t in self.tensors], dtype=np.int64)

    def locate(self, indices) -> list[tuple[str, int, int]]:
        """``(tensor name, element (flat PyTorch index), bit (0 = LSB))`` of global bits."""
        return [(self.tensors[t].name, e, b) for t, e, b in zip(*self._locate(indices))]

    def _locate(self, indices) -> tuple[list[int], list[int], list[int]]:
        g = np.asarray(indices, dtype=np.int64).reshape(-1)
        if g.size and (g.min() < 0 or g.max() >= self.total):
            bad = int(g[(g < 0) | (g >= self.total)][0])
            raise QFaultConfigError("bit index", bad, f"0 to {self.total - 1} (the model's {self.total} numbered bits)")
        which = np.searchsorted(self._starts, g, side="right") - 1
        tensors, elements, bits = [], [], []
        for t in np.unique(which).tolist():
            tensor = self.tensors[t]
            local = g[which == t] - tensor.start
            element, bit = lbi_to_site(local, tensor.bits)
            element = to_torch_index(element, tensor.shape, self.layout)
            tensors += [t] * len(local)
            elements += element.tolist()
            bits += bit.tolist()
        return tensors, elements, bits

    def fault_specs(self, indices, **spec_fields) -> list[dict]:
        """``InjectSpec`` dicts flipping the global bits ``indices`` (one per tensor, explicit
        ``sites``, permanent), usable as a campaign's ``faults``."""
        per: dict[int, set] = {}
        for t, e, b in zip(*self._locate(indices)):
            per.setdefault(t, set()).add((e, b))
        specs = []
        for t in sorted(per):
            tensor = self.tensors[t]
            spec = {"fault": {"type": "bit_flip", "sites": [list(s) for s in sorted(per[t])]}, "site": tensor.role,
                    "names": [tensor.module], "persistence": "permanent"}
            if self.format is not None:
                spec["format"] = self.format.to_dict()
            spec.update(spec_fields)
            specs.append(spec)
        return specs
