"""``inject(model, spec)``: attach faults to a model in place, reversibly; the handle."""

from __future__ import annotations

import secrets
import sys
from typing import Any, Sequence

import torch
from torch import nn

from .._errors import QFaultConfigError
from .._handle import RemovableHandle
from ..faults import FaultDraw, uniform_index
from ._grad import replace_at
from ._runtime import ParamGroup, SiteRuntime
from ._select import select_modules
from ._sites import SITES
from ._spec import InjectSpec, Site
from ._stats import SiteStats, Statistics


class InjectionHandle(RemovableHandle):
    """Returned by :func:`inject`: switch faults on and off, redraw them, undo the injection.

    Use as a context manager to remove the injection on exit. Deep copies of an injected model
    share the handle (and fault their own tensors).
    """

    def __init__(self, model: nn.Module, specs: Sequence[InjectSpec]):
        super().__init__()
        self.model = model
        self.specs = list(specs)
        self.enabled = True
        self.generation = 0
        self.forward_count = 0
        #: one seed per spec: its own ``seed``, or a random one drawn now
        self.seeds = [s.seed if s.seed is not None else secrets.randbits(63) for s in self.specs]
        self.sites: list[SiteRuntime] = []
        self.chosen: dict[int, int] = {}
        self.param_groups: list[ParamGroup] = []
        self._param_sites: list[SiteRuntime] = []
        self._listeners: list = []
        self._depth = 0
        #: the frame that called the injected model's outermost running forward (None between forwards)
        self._outer_frame = None
        self._site_counts: list[int] = []
        self._per_forward: list[int] = []
        self._run_hooks: dict[int, list] = {}      # spec id -> hooks of its random_per_run layer
        self._forward_hooks: list = []              # hooks of this forward's random layers
        self._restore: list = []                    # undo of this forward's parameter faults
        #: stacked trials (see ``stack_trials``): per trial, one seed per spec; None when off
        self.trial_seeds: list[list[int]] | None = None
        self.trial_changed = torch.zeros(0, dtype=torch.int64)

    # -- public ------------------------------------------------------------------------------
    def enable(self) -> "InjectionHandle":
        """Turn faults on (the default after :func:`inject`)."""
        self._recover_interrupted()
        self.enabled = True
        return self

    def disable(self) -> "InjectionHandle":
        """Turn faults off; the model computes cleanly, hooks stay attached."""
        self._recover_interrupted()
        self.enabled = False
        return self

    def reset(self) -> "InjectionHandle":
        """Redraw permanent faults (and the random layer of ``random_per_run``)."""
        self._recover_interrupted()
        self.generation += 1
        for site in self.sites:
            site.permanent_draws.clear()
            site.weight_qparams = None
            site.forget_norm()
        for group in self.param_groups:
            group.invalidate()
        self._choose_layers(self.generation)
        return self

    def remove(self) -> None:
        """Detach every hook; the model is bit-exactly as before :func:`inject`."""
        if self._removed:
            return
        self._depth, self._outer_frame = 0, None
        self._undo_forward()
        for hooks in self._run_hooks.values():
            for hook in hooks:
                hook.remove()
        self._run_hooks.clear()
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        self._removed = True

    def statistics(self) -> Statistics:
        """Per-site statistics collected so far."""
        return Statistics([s.stats for s in self.sites])

    def reset_statistics(self) -> None:
        for site in self.sites:
            site.stats = SiteStats(name=site.stats.name, layer_id=site.stats.layer_id)

    @property
    def num_sites(self) -> int:
        return len(self.sites)

    def add_listener(self, fn) -> None:
        """``fn(site_name, draw, old_codes, new_codes)`` is called for every faulted tensor."""
        self._listeners.append(fn)

    def __enter__(self) -> "InjectionHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __deepcopy__(self, memo) -> "InjectionHandle":
        return self

    def __repr__(self) -> str:
        return f"InjectionHandle(sites={len(self.sites)}, enabled={self.enabled}, seeds={self.seeds})"

    # -- stacked trials (campaigns) -----------------------------------------------------------
    def stack_trials(self, seeds: Sequence[Sequence[int]]) -> None:
        """Evaluate several trials in one forward: the batch holds ``len(seeds)`` equal blocks,
        block ``k`` faulted exactly as a handle whose spec seeds are ``seeds[k]`` faults that block
        alone. Only for activation sites (outputs/inputs) of ``layer_mode="all"`` specs; the
        values changed per trial accumulate in ``trial_changed``."""
        for site in self.sites:
            if site.attach is None or site.spec.site not in (Site.OUTPUT, Site.INPUT) \
                    or site.spec.layer_mode != "all":
                raise ValueError(f"site {site.stats.name} cannot be stacked: only output/input sites "
                                 "with layer_mode='all' can")
        if any(len(row) != len(self.specs) for row in seeds):
            raise ValueError(f"each trial needs one seed per spec ({len(self.specs)})")
        self.trial_seeds = [list(row) for row in seeds]
        self.trial_changed = torch.zeros(len(self.trial_seeds), dtype=torch.int64)
        for site in self.sites:
            site.counter = 0
            site.permanent_draws.clear()

    # -- internals ---------------------------------------------------------------------------
    def _notify(self, site: SiteRuntime, draw: FaultDraw, old, new) -> None:
        for fn in self._listeners:
            fn(site.stats.name, draw, old, new)

    def _choose_layer(self, spec_id: int, kind: str, counter: int) -> int:
        count = self._site_counts[spec_id]
        self.chosen[spec_id] = uniform_index(count, self.seeds[spec_id], spec_id, "layer", kind, counter)
        return self.chosen[spec_id]

    def _site_of(self, spec_id: int, position: int) -> SiteRuntime:
        return self._by_position[spec_id, position]

    def _choose_layers(self, counter: int) -> None:
        self._site_counts = [sum(1 for s in self.sites if s.spec_id == i) for i in range(len(self.specs))]
        self._by_position = {(s.spec_id, s.position): s for s in self.sites}
        self._per_forward = [i for i, s in enumerate(self.specs) if s.layer_mode == "random_per_forward"]
        for spec_id, spec in enumerate(self.specs):
            if spec.layer_mode == "random_per_run":
                for hook in self._run_hooks.pop(spec_id, []):
                    hook.remove()
                site = self._site_of(spec_id, self._choose_layer(spec_id, "run", counter))
                self._run_hooks[spec_id] = site.attach() if site.attach else []

    def _modules_for(self, model: nn.Module) -> list[nn.Module]:
        """The modules of the parameter sites in ``model`` (the injected model or a deep copy)."""
        if model is self.model:
            return [site.module for site in self._param_sites]
        return [model.get_submodule(site.name) for site in self._param_sites]

    def _outer_forward_running(self) -> bool:
        """Whether the forward that set up this forward's faults is still on the call stack."""
        frame = sys._getframe(1)
        while frame is not None:
            if frame is self._outer_frame:
                return True
            frame = frame.f_back
        return False

    def _recover_interrupted(self) -> None:
        """Undo a forward that ended without its after-forward hook (a ``KeyboardInterrupt`` or
        other ``BaseException``: torch runs always-call hooks only for ``Exception``): restore
        the faulted parameters and drop its per-forward hooks, so nothing stale remains."""
        if self._depth and not self._outer_forward_running():
            self._depth, self._outer_frame = 0, None
            self._undo_forward()

    def _on_model_forward(self, model, args) -> None:
        self._recover_interrupted()
        self._depth += 1
        if self._depth > 1:  # a re-entrant call: the outer forward already set everything up
            return
        self._outer_frame = sys._getframe(1)
        self.forward_count += 1
        for spec_id in self._per_forward:
            site = self._site_of(spec_id, self._choose_layer(spec_id, "forward", self.forward_count))
            if site.attach and self.enabled:
                self._forward_hooks.extend(site.attach())
        if self.enabled and self._param_sites:
            self._apply_params(self._modules_for(model))

    def _after_model_forward(self, model, args, out) -> None:
        self._depth = max(0, self._depth - 1)
        if self._depth == 0:
            self._outer_frame = None
            self._undo_forward()

    def _undo_forward(self) -> None:
        for hook in self._forward_hooks:
            hook.remove()
        self._forward_hooks.clear()
        while self._restore:
            self._restore.pop()()

    def _apply_params(self, modules: list[nn.Module]) -> None:
        """Fault every active float-parameter site for the duration of this forward."""
        by_site = dict(zip(map(id, self._param_sites), modules))
        prepared: dict[int, tuple] = {}
        grad_enabled = torch.is_grad_enabled()
        for group in self.param_groups:
            prepared.update(group.prepare([by_site[id(s)] for s in group.sites], grad_enabled))
        for site, module in zip(self._param_sites, modules):
            pname = site.spec.site.value
            param = module._parameters.get(pname)
            if param is None or not site.active(module.training):
                continue
            if id(site) in prepared:
                entry = prepared[id(site)]
                if len(entry) == 4:  # numpy route: write through the parameter's own memory
                    index, clean, faulty, view = entry
                    if index.size:
                        view[index] = faulty
                        self._restore.append(lambda v=view, i=index, c=clean: v.__setitem__(i, c))
                    continue
                index, clean, faulty = entry
            else:
                fmt = site.spec.format
                scale, zero, axis = site.float_qparams(param, fmt, is_weight=True)
                draw = site.draw(tuple(param.shape), fmt, param.device, batched=False)
                if len(draw) == 0:
                    if site.spec.track_statistics:
                        site.stats.record(param.numel(), 0, 0.0, 0.0, 0.0, 0.0)
                    continue
                index = draw.index
                clean, faulty = site.faulty_values(param, fmt, scale, zero, axis, draw)
            if index.numel() == 0:
                continue
            if (torch.is_grad_enabled() and param.requires_grad) or not param.is_contiguous():
                # a faulty copy shadows the parameter; parameter order and identity never change
                # (on top of another spec's faulty copy of the same parameter in this forward)
                shadow = module.__dict__.get(pname, param)
                module.__dict__[pname] = replace_at(shadow, index, faulty, site.spec.gradient)
                self._restore.append(lambda m=module, n=pname: m.__dict__.pop(n, None))
            else:
                # inference: write the faulted entries in place, restore them exactly afterwards
                flat = param.data.view(-1)
                flat.index_copy_(0, index, faulty)
                self._restore.append(lambda f=flat, i=index, c=clean: f.index_copy_(0, i, c))


#: config type -> ``fn(model, config) -> handle``: the fault configs :func:`inject` accepts besides
#: :class:`InjectSpec` (capabilities register theirs, e.g. ``qfault.mitigation.StuckAtSpec``)
CONFIG_HANDLERS: dict[type, Any] = {}


def register_config(config_type: type):
    """Decorator: ``inject(model, config)`` with a ``config_type`` instance calls the decorated
    ``fn(model, config)``, which returns a handle (see :class:`qfault.Handle`)."""

    def wrap(fn):
        if config_type in CONFIG_HANDLERS:
            raise ValueError(f"a handler for {config_type.__name__} is already registered")
        CONFIG_HANDLERS[config_type] = fn
        return fn

    return wrap


def inject(model: nn.Module, spec: "InjectSpec | dict | Sequence[InjectSpec | dict]", *,
           selections: "Sequence[list[tuple[str, nn.Module]]] | None" = None) -> InjectionHandle:
    """Attach faults to ``model`` in place and return a handle to control and undo them.

    Args:
        model: any ``nn.Module`` (plain float, Brevitas-quantized, or mixed).
        spec: one :class:`InjectSpec` (or its dict form), or a list of them.
        selections: the modules of each spec as :func:`select_modules` returns them, for callers
            that inject the same selection many times (a campaign's trials select once).

    Returns:
        An :class:`InjectionHandle` with ``enable()``, ``disable()``, ``reset()``, ``remove()``
        and ``statistics()``; also a context manager.

    Raises:
        QFaultConfigError: a selection that matches no module, a float site without a format,
            or any invalid spec field.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> spec = InjectSpec(fault=BitFlip(ber=0.01), site="weight", format="int8", seed=0)
        >>> with inject(model, spec) as handle:
        ...     y = model(torch.ones(1, 4))
    """
    handler = CONFIG_HANDLERS.get(type(spec))
    if handler is not None:  # another kind of fault config (e.g. stuck-at cells with mitigation)
        if selections is not None:
            raise QFaultConfigError("selections", "given", f"None for a {type(spec).__name__}")
        return handler(model, spec)
    specs = spec if isinstance(spec, (list, tuple)) else [spec]
    specs = [s if isinstance(s, InjectSpec) else InjectSpec.from_dict(s) for s in specs]
    if not specs:
        raise QFaultConfigError("spec", [], "at least one InjectSpec")
    if selections is None:
        selections = [select_modules(model, s) for s in specs]
    elif len(selections) != len(specs):
        raise QFaultConfigError("selections", len(selections), f"one selection per spec ({len(specs)})")
    return _inject(model, specs, list(selections))


def _inject(model: nn.Module, specs: list[InjectSpec], selections: list[list[tuple[str, nn.Module]]]) -> InjectionHandle:
    """:func:`inject` with the modules of each spec already selected."""
    handle = InjectionHandle(model, specs)
    try:
        layer_id = 0
        for spec_id, (s, selected) in enumerate(zip(specs, selections)):
            kind = SITES.get(s.site.value)
            for position, (name, module) in enumerate(selected):
                site = SiteRuntime(handle, s, spec_id, name, module, position, layer_id)
                layer_id += 1
                kind.attach(handle, site)
                if site.attach is not None and s.layer_mode == "all":
                    for hook in site.attach():
                        handle._undo.append(hook.remove)
                handle.sites.append(site)
        handle.param_groups = ParamGroup.build(handle)
        handle._undo.append(model.register_forward_pre_hook(handle._on_model_forward).remove)
        handle._undo.append(model.register_forward_hook(handle._after_model_forward, always_call=True).remove)
        # a checkpoint written after an interrupted forward must hold the clean weights
        handle._undo.append(model.register_state_dict_pre_hook(
            lambda module, prefix, keep_vars: handle._recover_interrupted()).remove)
        handle._choose_layers(0)
    except Exception:
        handle.remove()
        raise
    return handle
