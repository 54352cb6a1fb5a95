"""The statistical fault space of a systolic array, as seed 003's campaign samples it.

A campaign's ``systolic:`` section runs a model's layers on one array and gives every trial one
register fault: an output channel, a PE (over the full PE set), a line, a bit and a polarity. The
population is N = channels x PEs x (bits of the chosen lines) x polarities (the seed's
6 x 841 x 3 x 32 x 2 for its 29 x 29 x 161 float32 array), and trial ``r`` takes element
``r`` of a seeded permutation of it (sampling without replacement, as Leveugle et al.'s
sample size assumes; past N trials a fresh permutation starts).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from torch import nn

from .._errors import QFaultConfigError, check_choice
from ._array import ArrayConfig, ArrayFault, SystolicArray
from ._dataflow import LINES

BATCH_MODES = ("one", "all")
#: the keys of a campaign's ``systolic`` section
SECTION_KEYS = ("array", "layers", "channels", "bits", "lines", "polarities", "msb", "batches")


@dataclass(frozen=True)
class SystolicFaults:
    """A campaign's ``systolic`` section: the array, the layers on it and the fault space.

    Args:
        array: the :class:`ArrayConfig` (or its dict).
        layers: qualified names of the layers run on the array (default: every ``nn.Conv2d``
            and ``nn.Linear``).
        channels: output channels a fault may target (conv layers act on that channel only):
            an integer (the seed uses 6) or ``"auto"`` (the most output channels of a conv
            layer on the array).
        bits: bits per register: ``"auto"`` (every bit of each line's width: the input width
            for a and b, the mac width for c) or an integer (bits 0..bits-1 of every line).
        lines: the registers faulted, among ``a``, ``b``, ``c``.
        polarities: among 0 (stuck-at-0), 1 (stuck-at-1), 2 (bit flip).
        msb: bit numbering of the faults (``"first"``: bit 0 is the most significant).
        batches: ``"one"``: a trial evaluates one batch (batch ``r`` of a seeded order, reshuffled
            every pass over the data, as the seed's loader); ``"all"``: every batch.
    """

    array: Any
    layers: tuple[str, ...] | None = None
    channels: Any = "auto"
    bits: Any = "auto"
    lines: tuple[str, ...] = ("a", "b", "c")
    polarities: tuple[int, ...] = (0, 1)
    msb: str = "first"
    batches: str = "one"

    def __post_init__(self) -> None:
        array = self.array
        if isinstance(array, dict):
            unknown = [k for k in array if k not in ArrayConfig.__dataclass_fields__]
            if unknown:
                raise QFaultConfigError(f"systolic.array.{unknown[0]}", array[unknown[0]],
                                        "keys " + ", ".join(ArrayConfig.__dataclass_fields__), hint="unknown key")
            try:
                array = ArrayConfig(**array)
            except QFaultConfigError as exc:
                raise QFaultConfigError(f"systolic.array.{exc.field}", exc.value, exc.allowed, exc.hint) from None
        if not isinstance(array, ArrayConfig):
            raise QFaultConfigError("systolic.array", self.array, "a mapping of ArrayConfig fields (n1, n2, n3, ...)")
        object.__setattr__(self, "array", array)
        if self.layers is not None:
            layers = (self.layers,) if isinstance(self.layers, str) else self.layers
            if not isinstance(layers, (list, tuple)) or not layers or not all(isinstance(n, str) for n in layers):
                raise QFaultConfigError("systolic.layers", self.layers, "null (every Conv2d/Linear) or layer names")
            object.__setattr__(self, "layers", tuple(layers))
        if self.channels != "auto" and (isinstance(self.channels, bool) or not isinstance(self.channels, int)
                                        or self.channels < 1):
            raise QFaultConfigError("systolic.channels", self.channels, "'auto' or a positive integer")
        if self.bits != "auto" and (isinstance(self.bits, bool) or not isinstance(self.bits, int) or self.bits < 1):
            raise QFaultConfigError("systolic.bits", self.bits, "'auto' or a positive integer")
        for name, values, allowed in (("lines", self.lines, tuple(LINES)), ("polarities", self.polarities, (0, 1, 2))):
            values = (values,) if isinstance(values, (str, int)) else values
            if not isinstance(values, (list, tuple)) or not values or len(set(values)) != len(values) or any(
                    isinstance(v, bool) or v not in allowed for v in values):
                raise QFaultConfigError(f"systolic.{name}", values, "distinct values among " + ", ".join(map(repr, allowed)))
            object.__setattr__(self, name, tuple(values))
        check_choice("systolic.msb", self.msb, ("first", "last"))
        check_choice("systolic.batches", self.batches, BATCH_MODES)
        if self.bits != "auto":
            array = SystolicArray(self.array)
            for line in self.lines:
                if self.bits > array.widths[line]:
                    raise QFaultConfigError("systolic.bits", self.bits,
                                            f"'auto' or at most {array.widths[line]} (line {line}'s width)")

    def to_dict(self) -> dict:
        """Plain fields (YAML/JSON form)."""
        return {"array": self.array.to_dict(), "layers": None if self.layers is None else list(self.layers),
                "channels": self.channels, "bits": self.bits, "lines": list(self.lines),
                "polarities": list(self.polarities), "msb": self.msb, "batches": self.batches}

    def space(self, array: SystolicArray, model: nn.Module) -> "FaultSpace":
        """The fault space on ``array`` for ``model`` (whose layers run on it: ``channels="auto"``
        counts its conv layers' output channels)."""
        from ._layers import systolic_layers

        if self.channels == "auto":
            convs = [m.out_channels for m in systolic_layers(model).values() if m.is_conv and m.array is array]
            channels = max(convs, default=1)
        else:
            channels = self.channels
        bits = tuple((line, array.widths[line] if self.bits == "auto" else self.bits) for line in self.lines)
        return FaultSpace(channels, tuple(array.pes()), bits, self.polarities, self.msb)


@dataclass(frozen=True)
class FaultSpace:
    """Every single register fault of a campaign, numbered 0..size-1.

    Element ``index`` is, in mixed radix (last varies fastest): channel, PE (in
    :meth:`SystolicArray.pes` order), register bit (the lines in order, each with its bits),
    polarity.
    """

    channels: int
    pes: tuple[tuple[int, int], ...]
    bits: tuple[tuple[str, int], ...]
    polarities: tuple[int, ...]
    msb: str = "first"

    @property
    def size(self) -> int:
        """N = channels x PEs x (register bits of the chosen lines) x polarities."""
        return self.channels * len(self.pes) * sum(b for _, b in self.bits) * len(self.polarities)

    def fault(self, index: int) -> ArrayFault:
        """Fault number ``index`` (0 <= index < size)."""
        if not 0 <= index < self.size:
            raise QFaultConfigError("fault index", index, f"0..{self.size - 1}")
        index, polarity = divmod(index, len(self.polarities))
        register_bits = sum(b for _, b in self.bits)
        index, register_bit = divmod(index, register_bits)
        channel, pe = divmod(index, len(self.pes))
        for line, count in self.bits:
            if register_bit < count:
                break
            register_bit -= count
        x, y = self.pes[pe]
        return ArrayFault(line, x, y, register_bit, self.polarities[polarity], msb=self.msb, channel=channel)


def permuted_index(key: str | int, position: int, size: int) -> int:
    """Element ``position`` of a permutation of ``range(size)`` keyed by ``key``.

    A four-round Feistel network on the smallest even bit width holding ``size``, walked until it
    lands inside the range (a bijection on ``range(size)``): O(1) memory and time per element,
    whatever the size. Positions past ``size`` continue with a permutation of the next pass.
    """
    if size < 1:
        raise QFaultConfigError("size", size, "a positive integer")
    epoch, position = divmod(position, size)
    if size == 1:
        return 0
    half = max(1, ((size - 1).bit_length() + 1) // 2)
    mask = (1 << half) - 1
    value = position
    while True:
        left, right = value >> half, value & mask
        for round_ in range(4):
            digest = hashlib.blake2b(f"{key}:{epoch}:{round_}:{right}".encode(), digest_size=8).digest()
            left, right = right, left ^ (int.from_bytes(digest, "little") & mask)
        value = (left << half) | right
        if value < size:
            return value
