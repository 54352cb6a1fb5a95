"""flauers' fault models: a register fault of one PE, and the permanent stuck-at.

A fault is plain data with flauers' attributes (``line``, ``x``, ``y``, ``bit``, ``polarity``,
``t_start``, ``t_stop``, ``should_reverse_bits``); :meth:`Fault.to_array_fault` translates it,
as its attributes are at that moment, into qfault's :class:`qfault.systolic.ArrayFault`.
"""

from __future__ import annotations

import math

from ..._errors import QFaultConfigError
from ...systolic import ArrayFault
from .exceptions import InjectionError
from .utils import LineType

__all__ = ["Fault", "StuckAt"]


def _line(value) -> LineType:
    if isinstance(value, LineType):
        return value
    if isinstance(value, str) and value in LineType.__members__:
        return LineType[value]
    raise InjectionError("line", value, "'a', 'b', 'c' or a LineType")


def _window(time) -> tuple[int, float]:
    if isinstance(time, str) and time == "inf":
        return 0, math.inf
    if isinstance(time, (tuple, list)) and len(time) == 2:
        return time[0], time[1]
    raise InjectionError("time", time, "'inf' (the whole run) or a (t_start, t_stop) pair of cycles")


class Fault:
    """A fault on register ``line`` of PE (x, y).

    Args:
        line: ``"a"``, ``"b"``, ``"c"`` or a :class:`~.utils.LineType`.
        x, y: the PE (1-based, as ``SystolicArray.space_projection()`` lists them).
        time: ``"inf"`` (active from cycle 0 on, forever) or a ``(t_start, t_stop)`` pair of
            cycles, both inclusive (an extension: flauers parses only ``"inf"``).
        bit: the bit of the register (a and b: the input width, c: the mac width).
        polarity: 0 stuck-at-0, 1 stuck-at-1 (2, a bit flip, is a qfault extension).
        msb: ``"first"``: bit 0 is the most significant bit; ``"last"``: bit 0 is the LSB.
        mode: ``"input"`` or ``"output"``; accepted and unused, as in flauers.

    Raises:
        InjectionError: an unknown line, time string, msb or mode.

    Example:
        >>> f = Fault("c", x=1, y=1, time="inf", bit=5, polarity=1)
        >>> f.line.name, f.t_start, f.t_stop, f.should_reverse_bits
        ('c', 0, inf, True)
    """

    def __init__(self, line, x: int, y: int, time, bit: int, polarity: int, msb: str = "first",
                 mode: str = "input") -> None:
        if msb not in ("first", "last"):
            raise InjectionError("msb", msb, "'first' or 'last'")
        if mode not in ("input", "output"):
            raise InjectionError("mode", mode, "'input' or 'output'")
        self.line = _line(line)
        self.x = x
        self.y = y
        self.t_start, self.t_stop = _window(time)
        self.bit = bit
        self.polarity = polarity
        self.should_reverse_bits = msb == "first"
        self.mode = mode

    def to_array_fault(self, channel: int = -1) -> ArrayFault:
        """This fault as qfault's :class:`~qfault.systolic.ArrayFault` (an infinite ``t_stop``
        becomes ``None``; ``channel`` limits it to one output channel of conv layers).

        Raises:
            InjectionError: a field qfault refuses (non-integer PE or bit, bad polarity or window).
        """
        t_stop = None if self.t_stop == math.inf else self.t_stop
        try:
            return ArrayFault(self.line.name, self.x, self.y, self.bit, self.polarity, self.t_start, t_stop,
                              "first" if self.should_reverse_bits else "last", channel)
        except QFaultConfigError as error:
            raise InjectionError(error.field, error.value, error.allowed, error.hint) from None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(line={self.line.name}, PE=({self.x}, {self.y}), "
                f"cycles [{self.t_start}, {self.t_stop}], bit {self.bit} -> {self.polarity})")


class StuckAt(Fault):
    """A permanent stuck-at on register ``line`` (``"a"``, ``"b"`` or ``"c"``) of PE (x, y).

    Args:
        line, x, y, bit, polarity, msb, mode: as for :class:`Fault` (active for the whole run).

    Example:
        >>> StuckAt(x=1, y=1, line="c", bit=5, polarity=1).to_array_fault()
        ArrayFault(line='c', x=1, y=1, bit=5, polarity=1, t_start=0, t_stop=None, msb='first', channel=-1)
    """

    def __init__(self, line, x: int, y: int, bit: int, polarity: int, msb: str = "first",
                 mode: str = "input") -> None:
        super().__init__(line, x, y, "inf", bit, polarity, msb, mode)
