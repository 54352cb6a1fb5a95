"""``swap_modules(model, config)``: replace matching modules by simulated layers, undone by a handle.

Each family of simulated layers registers a frozen config dataclass under a name (usable from
YAML) with two functions, in the style of torchao's ``quantize_(model, config)`` handlers:
``matches(qualified_name, module, config) -> bool`` (is this module replaced?) and
``build(module, config) -> nn.Module`` (its replacement). :func:`swap_modules` resolves the
config through the registry (the only dispatch), walks the model, puts the replacements in place
and returns a :class:`SwapHandle` whose ``remove()`` puts the original module objects back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from .._config import from_dict
from .._errors import QFaultConfigError
from .._handle import RemovableHandle
from .._registry import Registry

#: ``matches(qualified_name, module, config)``: whether ``module`` is replaced at that name
MatchFn = Callable[[str, nn.Module, Any], bool]
#: ``build(module, config, name)``: the new module that takes ``module``'s place at qualified
#: ``name`` (the first name of a module reached through several)
BuildFn = Callable[[nn.Module, Any, str], nn.Module]
#: ``prepare(model, config)``: the config with its model-dependent defaults filled in (e.g. the
#: names of a model's first and last layer)
PrepareFn = Callable[[nn.Module, Any], Any]


@dataclass(frozen=True)
class LayerSwap:
    """A registered family of simulated layers: its name, config type, which modules it
    replaces (``matches``), how it builds a replacement (``build``) and fills in model-dependent config
    defaults (``prepare``)."""

    name: str
    config_type: type
    matches: MatchFn
    build: BuildFn
    prepare: PrepareFn | None = None


LAYERS: Registry[LayerSwap] = Registry("layer")
_BY_CONFIG: dict[type, str] = {}


class _ConfigTypes:
    """``LAYERS`` seen as a registry of config classes (what ``_config.from_dict`` resolves)."""

    kind = "layer"

    @staticmethod
    def get(name: str) -> type:
        return LAYERS.get(name).config_type


def register_layer_swap(name: str, config_type: type, *, matches: MatchFn, aliases: tuple[str, ...] = (),
                        prepare: PrepareFn | None = None):
    """Decorator registering ``build(module, config, name) -> nn.Module`` for ``config_type``
    under ``name``: ``swap_modules(model, config_type(...))`` replaces every submodule for which
    ``matches(qualified_name, module, config)`` is true by ``build(module, config,
    qualified_name)``.
    ``prepare(model, config) -> config``, where given, first fills in the defaults that depend
    on the model (the handle keeps the prepared config).

    ``config_type`` must be a frozen dataclass; it gets ``type_name = name`` (its YAML ``type``).

    Example:
        >>> @register_layer_swap("my_linear", MyConfig,                          # doctest: +SKIP
        ...                      matches=lambda name, module, config: type(module) is nn.Linear)
        ... def _build(module, config, name):
        ...     return MyLinear.from_linear(module, bits=config.bits)
    """
    if not (isinstance(config_type, type) and dataclasses.is_dataclass(config_type)
            and config_type.__dataclass_params__.frozen):
        raise QFaultConfigError("config_type", getattr(config_type, "__name__", config_type), "a frozen dataclass")
    if config_type in _BY_CONFIG:
        raise ValueError(f"a layer swap for {config_type.__name__} is already registered")
    if not callable(matches):
        raise QFaultConfigError("matches", matches, "a function (qualified_name, module, config) -> bool")

    def wrap(build: BuildFn) -> BuildFn:
        LAYERS.register(name, LayerSwap(name, config_type, matches, build, prepare), aliases=aliases)
        _BY_CONFIG[config_type] = LAYERS.canonical(name)
        config_type.type_name = name
        return build

    return wrap


def get_layer_swap(name: str) -> LayerSwap:
    """The registered layer swap ``name`` (an unknown name lists the valid ones)."""
    return LAYERS.get(name)


def list_layer_swaps(pattern: str = "*") -> list[str]:
    """Sorted names of the registered layer swaps matching a shell-style ``pattern``."""
    return LAYERS.list(pattern)


def layer_config(config: Any) -> Any:
    """Resolve ``config`` once: a registered config instance (returned as is), a registered name
    (its defaults) or a dict ``{"type": name, **fields}`` (YAML form)."""
    if isinstance(config, str):
        return LAYERS.get(config).config_type()
    if isinstance(config, dict):
        return from_dict(_ConfigTypes, config)
    if type(config) not in _BY_CONFIG:
        names = ", ".join(f"{LAYERS.get(n).config_type.__name__} ({n})" for n in LAYERS.list())
        raise QFaultConfigError("config", type(config).__name__,
                                f"a layer config, its name or its dict form: one of {names}")
    return config


class SwapHandle(RemovableHandle):
    """Returned by :func:`swap_modules`: what was swapped, and ``remove()`` to put it back.

    Attributes:
        config: the resolved config (with the defaults ``prepare`` fills in from the model).
        swapped: qualified names replaced, the first name of each replaced module, in
            ``named_modules`` order.
        modules: ``{name: new module}`` for the names in ``swapped``.
    """

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.swapped: list[str] = []
        self.modules: dict[str, nn.Module] = {}

    def __repr__(self) -> str:
        state = "removed" if self.removed else f"{len(self.swapped)} modules"
        return f"SwapHandle({type(self.config).__name__}, {state})"


def swap_modules(model: nn.Module, config: Any) -> SwapHandle:
    """Replace, in place, the submodules of ``model`` that the layer swap of ``config`` matches.

    Args:
        model: any ``nn.Module``; the root itself cannot be replaced in place.
        config: a registered layer config (e.g. ``SeedQuantConfig(weight_bits=8, skip=("head",))``),
            its registered name (``"seed_quant_linear"``: the defaults) or its dict form
            (``{"type": "seed_quant_linear", "weight_bits": 4}``).

    Returns:
        A :class:`SwapHandle` listing the names swapped; ``remove()`` (or leaving its ``with``
        block) puts the original module objects back, so the model is bit-exactly as before.

    Raises:
        QFaultConfigError: an unknown config type or name (the valid ones are listed), invalid
            config fields, a model that is not an ``nn.Module``, or a root module that matches.

    ``matches`` is asked once per attribute slot (so a skip rule by name applies per name);
    ``build`` once per distinct module: a module reached through several matching attributes
    gets one replacement, shared the same way. The children of a replaced module are not
    visited. Nothing is replaced until every replacement is built, so a failing ``build`` leaves
    the model unchanged.

    Example:
        >>> from qfault.layers import SeedQuantConfig, swap_modules
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> with swap_modules(model, SeedQuantConfig(weight_bits=4, skip=())) as handle:
        ...     handle.swapped
        ['0', '2']
    """
    config = layer_config(config)
    if not isinstance(model, nn.Module):
        raise QFaultConfigError("model", type(model).__name__, "an nn.Module")
    entry = LAYERS.get(_BY_CONFIG[type(config)])
    if entry.prepare is not None:
        config = entry.prepare(model, config)
    if entry.matches("", model, config):
        raise QFaultConfigError("model", type(model).__name__, f"a module containing layers that {entry.name} replaces",
                                hint="the root module cannot be replaced in place; swap it inside a container")
    handle = SwapHandle(config)
    new: dict[int, nn.Module] = {}
    targets: list[tuple[nn.Module, str, nn.Module]] = []

    def visit(parent: nn.Module, prefix: str) -> None:
        # parent._modules, not named_children(): that drops a module's second attribute name,
        # and every attribute slot must be swapped (the order is named_modules' pre-order)
        for key, child in parent._modules.items():
            if child is None:
                continue
            name = f"{prefix}.{key}" if prefix else key
            if not entry.matches(name, child, config):
                visit(child, name)
                continue
            if id(child) not in new:
                new[id(child)] = entry.build(child, config, name)
                handle.swapped.append(name)
                handle.modules[name] = new[id(child)]
            targets.append((parent, key, child))

    visit(model, "")
    for parent, key, child in targets:
        setattr(parent, key, new[id(child)])
        handle._undo.append(lambda parent=parent, key=key, child=child: setattr(parent, key, child))
    return handle
