"""Where each value of a loaded configuration came from: a line of its YAML file, or an override.

:func:`~qfault.config.load_config` composes the file with PyYAML (``yaml.compose`` keeps the
line of every node) and records the paths its ``key=value`` overrides set. An error's dotted
field (``faults[0].fault.ber``, ``sweep.fault.ber``, ``stop.margin``) is then traced to the
override that set it or an ancestor of it, else to the deepest node of the file on its path:
the line of the key (a mapping entry) or of the item (a list); for a sweep value, the line of
the list item holding the bad value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ._coerce import NUMBER

_MISSING = object()
_HEAD = re.compile(r"[^\s:]+")  # "sweep {'fault.ber': 0.1}: faults[0].site" names "sweep"
_PART = re.compile(r"[^.\[\]]+")
_MAX_DEPTH = 200


@dataclass
class _Entry:
    """A node of the file: its line (1-based), its loaded value and its children by key or index."""

    line: int
    value: Any
    children: dict = field(default_factory=dict)


def _tokens(field_name: Any) -> list[str]:
    """``"faults[0].fault.ber"`` -> ``["faults", "0", "fault", "ber"]``."""
    head = _HEAD.match(str(field_name))
    return _PART.findall(head.group(0)) if head else []


def _same(loaded: Any, value: Any) -> bool:
    """Whether a loaded item is the value an error names (a numeric string read as its number)."""
    try:
        if isinstance(loaded, (list, dict)) or isinstance(value, (list, dict, tuple)):
            return False
        if type(loaded) is type(value) and loaded == value:
            return True
        if isinstance(loaded, str) and NUMBER.fullmatch(loaded.strip()):
            return not isinstance(value, bool) and isinstance(value, (int, float)) and float(loaded) == value
        return isinstance(loaded, (int, float)) and isinstance(value, (int, float)) \
            and not isinstance(loaded, bool) and not isinstance(value, bool) and loaded == value
    except Exception:  # an exotic value's comparison
        return False


def _build(node: Any, data: Any, line: int, depth: int = 0) -> _Entry:
    import yaml

    entry = _Entry(line, data)
    if depth > _MAX_DEPTH:
        return entry
    if isinstance(node, yaml.MappingNode) and isinstance(data, Mapping):
        by_text = {str(key): key for key in data}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value in by_text:
                key = by_text[key_node.value]
                entry.children[key] = _build(value_node, data[key], key_node.start_mark.line + 1, depth + 1)
    elif isinstance(node, yaml.SequenceNode) and isinstance(data, list):
        for i, (item, value) in enumerate(zip(node.value, data)):
            entry.children[i] = _build(item, value, item.start_mark.line + 1, depth + 1)
    return entry


class SourceMap:
    """The origins of the values of one loaded configuration.

    Args:
        source: the file as errors name it (the path given to :func:`load_config`).
        node: the file's root node from ``yaml.compose`` (None: no lines known).
        data: the file's values as loaded (before overrides), walked beside the nodes.

    Example:
        >>> import yaml
        >>> text = "seed: 1\\nfaults:\\n  - fault: {ber: x}\\n"
        >>> origins = SourceMap("spec.yaml", yaml.compose(text), yaml.safe_load(text))
        >>> origins.set_by_override(["seed"], "seed=abc")
        >>> origins.locate("faults[0].fault.ber"), origins.locate("seed")
        ('spec.yaml line 3', 'from override seed=abc')
    """

    def __init__(self, source: str, node: Any = None, data: Any = None):
        self.source = source
        self.overrides: list[tuple[list[str], str]] = []
        try:
            self.root: _Entry | None = _build(node, data, 0) if node is not None else None
        except RecursionError:  # lines are a courtesy
            self.root = None

    def set_by_override(self, parts: list[str], item: str) -> None:
        """Record that the override ``item`` set the value at the path ``parts``."""
        self.overrides.append(([t for part in parts for t in _tokens(part)], item))

    def locate(self, field_name: Any, value: Any = _MISSING) -> str | None:
        """Where the value of ``field_name`` came from: ``"spec.yaml line 9"``, ``"from override
        seed=abc"``, or None (a default, or a field the file does not hold).

        Args:
            field_name: a dotted path as errors name fields (``faults[0].fault.ber``).
            value: the bad value: under a list (a sweep axis), the line of the item equal to it.
        """
        tokens = _tokens(field_name)
        if not tokens:
            return None
        for parts, item in reversed(self.overrides):  # the last override of a path wins
            if parts and tokens[:len(parts)] == parts:
                return f"from override {item}"
        entry, i = self.root, 0
        if entry is None:
            return None
        while i < len(tokens):
            child = _child(entry, tokens, i)
            if child is None:
                break
            entry, i = child[0], i + child[1]
        if entry is self.root:
            return None
        line = entry.line
        if i == len(tokens) and isinstance(entry.value, list) and value is not _MISSING:
            line = next((c.line for c in entry.children.values() if _same(c.value, value)), line)
        return f"{self.source} line {line}"


def _child(entry: _Entry, tokens: list[str], i: int) -> tuple[_Entry, int] | None:
    """The child of ``entry`` that ``tokens[i:]`` starts with, and how many tokens it took
    (several for a key holding dots, such as a sweep path)."""
    if isinstance(entry.value, list):
        token = tokens[i]
        if not re.fullmatch(r"-?\d+", token):
            return None
        index = int(token)
        index = index + len(entry.value) if index < 0 else index
        return (entry.children[index], 1) if index in entry.children else None
    by_text = {str(key): child for key, child in entry.children.items()}
    for k in range(len(tokens) - i, 0, -1):  # the longest key first
        key = ".".join(tokens[i:i + k])
        if key in by_text:
            return by_text[key], k
    return None
