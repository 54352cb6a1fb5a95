"""Which modules a spec selects: by class (any class in the MRO), qualified-name glob or regex,
and position among the matches. The default modules of each site come from the site registry."""

from __future__ import annotations

import fnmatch
import functools
import re
from typing import Iterable

from torch import nn

from .._errors import QFaultConfigError
from ._sites import SITES
from ._spec import InjectSpec


@functools.lru_cache(maxsize=None)
def _class_names(cls: type) -> frozenset[str]:
    return frozenset(base.__name__ for base in cls.__mro__)


def matches_type(module: nn.Module, types: Iterable) -> bool:
    """Whether ``module`` is an instance of one of ``types`` (classes or class names in its MRO)."""
    names = _class_names(type(module))
    return any(isinstance(module, t) if isinstance(t, type) else t in names for t in types)


def matches_name(name: str, patterns: Iterable[str]) -> bool:
    """Whether a qualified module name matches a shell glob or ``"re:<regex>"`` of ``patterns``."""
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.fullmatch(pattern[3:], name):
                return True
        elif fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def select_modules(model: nn.Module, spec: InjectSpec) -> list[tuple[str, nn.Module]]:
    """The ``(qualified name, module)`` pairs that ``spec`` selects, in ``named_modules`` order.

    Raises:
        QFaultConfigError: nothing matches (the message lists the model's module types), or an
            index outside the matches.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> spec = InjectSpec(fault={"type": "bit_flip", "ber": 0.01}, site="weight")
        >>> [name for name, _ in select_modules(model, spec)]
        ['0', '2']
    """
    kind = SITES.get(spec.site.value)
    candidates = []
    for name, module in model.named_modules():
        if not kind.selectable(module, spec):
            continue
        if spec.types is not None and not matches_type(module, spec.types):
            continue
        if spec.names is not None and not matches_name(name, spec.names):
            continue
        candidates.append((name, module))
    if not candidates:
        available = sorted({type(m).__name__ for _, m in model.named_modules()})
        raise QFaultConfigError(
            "types/names", {"site": spec.site.value, "types": spec.types, "names": spec.names},
            f"a selection matching at least one module (default: {kind.default_description()}); "
            f"module types in this model: {', '.join(available)}",
            hint="no injectable layer",
        )
    if spec.indices is not None:
        picked = []
        for i in spec.indices:
            if not -len(candidates) <= i < len(candidates):
                raise QFaultConfigError("indices", i, f"integers in [{-len(candidates)}, {len(candidates) - 1}] "
                                        f"({len(candidates)} matching modules)")
            picked.append(candidates[i])
        candidates = picked
    return candidates
