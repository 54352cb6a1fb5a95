"""``inject(model, spec)``: attach faults to a model in place, reversibly."""

from __future__ import annotations

import fnmatch
import re
import secrets
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from .._errors import QFaultConfigError
from ..faults import BitFlip, FaultDraw, apply_to_codes, draw_faults, make_generator
from ..formats import FixedPoint, FloatFormat, IntFormat, NumberFormat, calibrate
from ..formats._base import gather_param
from ._grad import replace_at
from ._spec import InjectSpec, Mode, Site
from ._stats import SiteStats, Statistics

BREVITAS_ACT_TYPES = ("QuantIdentity", "QuantReLU", "QuantHardTanh")
_WEIGHT_TYPES = (nn.Linear, nn.modules.conv._ConvNd)


# --------------------------------------------------------------------------------------------
# selection


def _class_names(module: nn.Module) -> set[str]:
    return {cls.__name__ for cls in type(module).__mro__}


def _matches_type(module: nn.Module, types: Iterable) -> bool:
    names = _class_names(module)
    return any(isinstance(module, t) if isinstance(t, type) else t in names for t in types)


def _matches_name(name: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.fullmatch(pattern[3:], name):
                return True
        elif fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def _is_quant_proxy(module: Any) -> bool:
    return isinstance(module, nn.Module) and bool(getattr(module, "is_quant_enabled", False))


def select_modules(model: nn.Module, spec: InjectSpec) -> list[tuple[str, nn.Module]]:
    """The ``(qualified name, module)`` pairs that ``spec`` selects, in ``named_modules`` order."""
    site = spec.site
    candidates = []
    for name, module in model.named_modules():
        if site in (Site.WEIGHT, Site.BIAS):
            param = module._parameters.get(site.value)
            if param is None:
                continue
            if spec.types is None and not isinstance(module, _WEIGHT_TYPES):
                continue
        elif spec.types is None and spec.names is None and not _matches_type(module, BREVITAS_ACT_TYPES):
            continue
        if spec.types is not None and not _matches_type(module, spec.types):
            continue
        if spec.names is not None and not _matches_name(name, spec.names):
            continue
        candidates.append((name, module))
    if not candidates:
        available = sorted({type(m).__name__ for _, m in model.named_modules()})
        default = ("Conv/Linear layers" if site in (Site.WEIGHT, Site.BIAS)
                   else "Brevitas " + "/".join(BREVITAS_ACT_TYPES))
        raise QFaultConfigError(
            "types/names", {"site": site.value, "types": spec.types, "names": spec.names},
            f"a selection matching at least one module (default: {default}); "
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


# --------------------------------------------------------------------------------------------
# the per-site runtime


def _quant_params(qt: Any) -> tuple[IntFormat, torch.Tensor, torch.Tensor]:
    bits = int(round(float(qt.bit_width)))
    signed = bool(qt.signed)
    return IntFormat(bits=bits, signed=signed), qt.scale, qt.zero_point


def _replace_value(qt: Any, value: torch.Tensor) -> Any:
    if hasattr(qt, "set"):
        return qt.set(value=value)
    return qt._replace(value=value)  # pragma: no cover - older Brevitas


def _is_quant_tensor(x: Any) -> bool:
    return not isinstance(x, torch.Tensor) and all(hasattr(x, a) for a in ("value", "scale", "zero_point", "bit_width"))


class _SiteRuntime:
    """State of one (spec, module) pair: draws, counters, statistics."""

    def __init__(self, handle: "InjectionHandle", spec: InjectSpec, spec_id: int, name: str,
                 module: nn.Module, position: int, layer_id: int):
        self.handle = handle
        self.spec = spec
        self.spec_id = spec_id
        self.name = name
        self.module = module
        self.position = position  # index among the spec's selected modules
        self.stats = SiteStats(name=f"{name or '<model>'}:{spec.site.value}", layer_id=layer_id)
        self.counter = 0
        self.permanent_draws: dict[tuple, FaultDraw] = {}
        self.weight_qparams: tuple | None = None
        self.last_record = None

    # -- when --------------------------------------------------------------------------------
    def active(self, training: bool) -> bool:
        handle, spec = self.handle, self.spec
        if not handle.enabled:
            return False
        if spec.active_in is Mode.TRAIN and not training:
            return False
        if spec.active_in is Mode.EVAL and training:
            return False
        if spec.layer_mode != "all" and handle.chosen.get(self.spec_id) != self.position:
            return False
        return True

    # -- what --------------------------------------------------------------------------------
    def _generator(self, kind: str, counter: int) -> torch.Generator:
        seed = self.handle.seeds[self.spec_id]
        return make_generator(seed, self.spec_id, self.name, self.spec.site.value, kind, counter)

    def draw(self, shape: tuple[int, ...], fmt: NumberFormat, device: torch.device, batched: bool) -> FaultDraw:
        """Faults for a tensor of ``shape``; ``batched`` tensors have the batch in dim 0."""
        spec = self.spec
        if spec.permanent:
            domain = shape[1:] if batched and len(shape) > 1 else shape
            key = (tuple(domain), fmt)
            draw = self.permanent_draws.get(key)
            if draw is None:
                gen = self._generator("permanent", self.handle.generation)
                draw = draw_faults(spec.fault, domain, fmt, gen).to(device)
                self.permanent_draws[key] = draw
            if domain != shape:
                draw = _expand_over_batch(draw, shape[0], _numel(domain))
            return draw
        self.counter += 1
        gen = self._generator("transient", self.counter)
        if spec.per_image and batched and len(shape) > 1:
            return _per_image_draw(spec.fault, shape, fmt, gen).to(device)
        return draw_faults(spec.fault, shape, fmt, gen).to(device)

    def faulty_values(self, x: torch.Tensor, fmt: NumberFormat, scale, zero_point, axis, draw: FaultDraw):
        """``(values at index, faulty values at index)`` for ``x`` viewed in ``fmt``."""
        index = draw.index
        values = x.detach().reshape(-1)[index]
        if isinstance(fmt, FloatFormat):
            old = fmt.encode(values)
            new = apply_to_codes(fmt, old, draw)
            faulty = fmt.decode(new, dtype=x.dtype)
        else:
            scale_at = gather_param(scale, tuple(x.shape), index, axis)
            zero_at = gather_param(zero_point, tuple(x.shape), index, axis)
            old = fmt.encode(values, scale_at, zero_at)
            new = apply_to_codes(fmt, old, draw)
            new = torch.where(torch.isfinite(values), new, old)  # NaN/inf have no integer code
            faulty = fmt.decode(new, scale_at, zero_at, dtype=x.dtype)
        faulty = torch.where(new != old, faulty, values)
        if self.spec.track_statistics:
            self._record(x, fmt, scale, zero_point, axis, old, new, values, faulty)
        self.handle._notify(self, draw, old, new)
        return values, faulty

    def _record(self, x, fmt, scale, zero_point, axis, old, new, values, faulty) -> None:
        with torch.no_grad():
            changed = new != old
            n_changed = int(changed.sum())
            if isinstance(fmt, FloatFormat):  # value units
                clean_all = x.detach().double()
                c, f = values.double(), faulty.double()
            else:
                clean_all = fmt.encode(x.detach(), scale, zero_point, axis).double()
                c, f = old.double(), new.double()
            clean_sq = float(clean_all.square().sum())
            delta = f - c
            self.stats.record(
                numel=x.numel(), changed=n_changed,
                sq_err_sum=float(delta[changed].square().sum()) if n_changed else 0.0,
                clean_sq=clean_sq, dot_delta=float((c * delta).sum()),
                faulty_sq=clean_sq - float(c.square().sum()) + float(f.square().sum()),
            )

    def corrupt(self, x: torch.Tensor, fmt: NumberFormat, scale, zero_point, axis, batched: bool) -> torch.Tensor:
        """A faulty copy of ``x`` (autograd per the spec's gradient mode)."""
        draw = self.draw(tuple(x.shape), fmt, x.device, batched)
        if len(draw) == 0:
            if self.spec.track_statistics:
                self.stats.record(x.numel(), 0, 0.0, 0.0, 0.0, 0.0)
            return x
        _, faulty = self.faulty_values(x, fmt, scale, zero_point, axis, draw)
        return replace_at(x, draw.index, faulty, self.spec.gradient)

    # -- float tensors need a format ---------------------------------------------------------
    def float_qparams(self, x: torch.Tensor, fmt: NumberFormat, is_weight: bool):
        if not isinstance(fmt, IntFormat):
            return None, None, None
        if self.spec.scale is not None:
            return self.spec.scale, 0, None
        if is_weight:
            if self.weight_qparams is None:
                axis = 0 if x.dim() > 1 else None
                scale, zero = calibrate(fmt, x, axis)
                self.weight_qparams = (scale.to(x.device), zero.to(x.device), axis)
            return self.weight_qparams
        scale, zero = calibrate(fmt, x, None)
        return scale, zero, None


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _expand_over_batch(draw: FaultDraw, batch: int, per_image: int) -> FaultDraw:
    offsets = torch.arange(batch, device=draw.index.device).unsqueeze(1) * per_image
    repeat = lambda t: None if t is None else t.unsqueeze(0).expand(batch, -1).reshape(-1)  # noqa: E731
    return FaultDraw((offsets + draw.index.unsqueeze(0)).reshape(-1), draw.op, repeat(draw.mask),
                     repeat(draw.value), None)


def _per_image_draw(fault, shape: tuple[int, ...], fmt: NumberFormat, gen: torch.Generator) -> FaultDraw:
    """Independent draws for each image of a batch (dim 0)."""
    batch, per_image = shape[0], _numel(shape[1:])
    if isinstance(fault, BitFlip) and fault.count is not None and fault.bits is None \
            and fault.count * fault.count * 4 <= per_image * fmt.bits:
        population = per_image * fmt.bits
        picks = torch.randint(population, (batch, fault.count), generator=gen)
        if fault.count > 1:  # redraw whole rows that repeat a site: uniform over distinct tuples
            while True:
                ordered = picks.sort(dim=1).values
                bad = (ordered[:, 1:] == ordered[:, :-1]).any(dim=1)
                if not bool(bad.any()):
                    break
                picks[bad] = torch.randint(population, (int(bad.sum()), fault.count), generator=gen)
        elements = (picks // fmt.bits + torch.arange(batch).unsqueeze(1) * per_image).reshape(-1)
        bits = (picks % fmt.bits).reshape(-1)
        index, inverse = torch.unique(elements, return_inverse=True)
        mask = torch.zeros(index.numel(), dtype=torch.int64).index_add_(0, inverse, torch.ones_like(bits) << bits)
        return FaultDraw(index, "xor", mask, None, torch.stack([elements, bits], 1))
    draws = [draw_faults(fault, shape[1:], fmt, gen).offset(b * per_image) for b in range(batch)]
    return FaultDraw.cat(draws)


# --------------------------------------------------------------------------------------------
# the handle


class InjectionHandle:
    """Returned by :func:`inject`: switch faults on and off, redraw them, undo the injection.

    Use as a context manager to remove the injection on exit.
    """

    def __init__(self, model: nn.Module, specs: Sequence[InjectSpec]):
        self.model = model
        self.specs = list(specs)
        self.enabled = True
        self.generation = 0
        self.forward_count = 0
        #: one seed per spec: its own ``seed``, or a random one drawn now
        self.seeds = [s.seed if s.seed is not None else secrets.randbits(63) for s in self.specs]
        self.sites: list[_SiteRuntime] = []
        self.chosen: dict[int, int] = {}
        self._undo: list = []
        self._listeners: list = []
        self._removed = False

    # -- public ------------------------------------------------------------------------------
    def enable(self) -> "InjectionHandle":
        """Turn faults on (the default after :func:`inject`)."""
        self.enabled = True
        return self

    def disable(self) -> "InjectionHandle":
        """Turn faults off; the model computes cleanly, hooks stay attached."""
        self.enabled = False
        return self

    def reset(self) -> "InjectionHandle":
        """Redraw permanent faults (and the random layer of ``random_per_run``)."""
        self.generation += 1
        for site in self.sites:
            site.permanent_draws.clear()
            site.weight_qparams = None
        self._choose_layers(self.generation)
        return self

    def remove(self) -> None:
        """Detach every hook and wrapper; the model is bit-exactly as before :func:`inject`."""
        if self._removed:
            return
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

    def __enter__(self) -> "InjectionHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"InjectionHandle(sites={len(self.sites)}, enabled={self.enabled}, seeds={self.seeds})"

    # -- internals ---------------------------------------------------------------------------
    def add_listener(self, fn) -> None:
        """``fn(site_name, draw, old_codes, new_codes)`` is called for every faulted tensor."""
        self._listeners.append(fn)

    def _notify(self, site: _SiteRuntime, draw: FaultDraw, old, new) -> None:
        for fn in self._listeners:
            fn(site.stats.name, draw, old, new)

    def _choose_layers(self, counter: int) -> None:
        for spec_id, spec in enumerate(self.specs):
            if spec.layer_mode == "all":
                continue
            count = sum(1 for s in self.sites if s.spec_id == spec_id)
            gen = make_generator(self.seeds[spec_id], spec_id, "layer", spec.layer_mode, counter)
            self.chosen[spec_id] = int(torch.randint(count, (1,), generator=gen))

    def _on_model_forward(self, module, args) -> None:
        self.forward_count += 1
        if any(s.layer_mode == "random_per_forward" for s in self.specs):
            for spec_id, spec in enumerate(self.specs):
                if spec.layer_mode == "random_per_forward":
                    count = sum(1 for s in self.sites if s.spec_id == spec_id)
                    gen = make_generator(self.seeds[spec_id], spec_id, "layer", "forward", self.forward_count)
                    self.chosen[spec_id] = int(torch.randint(count, (1,), generator=gen))


def _attach(handle: InjectionHandle, site: _SiteRuntime) -> None:
    spec, module = site.spec, site.module
    if spec.site is Site.WEIGHT and spec.format is None and _is_quant_proxy(getattr(module, "weight_quant", None)):
        _attach_quant_output(handle, site, module.weight_quant, batched=False)
    elif spec.site in (Site.WEIGHT, Site.BIAS):
        if spec.format is None:
            raise QFaultConfigError(
                "format", None, "a number format (int<b>, uint<b>, fixed, float32, float16, bfloat16) "
                f"for the float {spec.site.value} of module '{site.name}' ({type(module).__name__})",
                hint="only Brevitas quantized weights carry their own format",
            )
        _attach_param(handle, site, spec.site.value)
    elif spec.site is Site.OUTPUT:
        if spec.format is None and _is_quant_proxy(getattr(module, "act_quant", None)):
            _attach_quant_output(handle, site, module.act_quant, batched=True)
        else:
            _require_format_or_quant(site)
            hook = module.register_forward_hook(lambda m, args, out: _fault_any(site, m, out))
            handle._undo.append(hook.remove)
    else:  # INPUT
        _require_format_or_quant(site)

        def pre_hook(m, args):
            if not args:
                return None
            return (_fault_any(site, m, args[0]),) + tuple(args[1:])

        hook = module.register_forward_pre_hook(pre_hook)
        handle._undo.append(hook.remove)


def _format_error(site: _SiteRuntime) -> QFaultConfigError:
    return QFaultConfigError(
        "format", None, "a number format (int<b>, uint<b>, fixed, float32, float16, bfloat16) "
        f"for the float {site.spec.site.value} of module '{site.name}' ({type(site.module).__name__})",
        hint="only Brevitas quantized tensors carry their own format",
    )


def _require_format_or_quant(site: _SiteRuntime) -> None:
    """Float sites need a format; Brevitas modules may pass QuantTensors (checked per forward)."""
    if site.spec.format is None and not type(site.module).__module__.startswith("brevitas"):
        raise _format_error(site)


def _fault_any(site: _SiteRuntime, module: nn.Module, x: Any) -> Any:
    if not site.active(module.training):
        return x
    fmt = site.spec.format
    if _is_quant_tensor(x):
        own_fmt, scale, zero = _quant_params(x)
        if fmt is None:
            fmt = own_fmt
        elif not isinstance(fmt, IntFormat):
            scale = zero = None
        return _replace_value(x, site.corrupt(x.value, fmt, scale, zero, None, batched=True))
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        if fmt is None:
            raise _format_error(site)
        scale, zero, axis = site.float_qparams(x, fmt, is_weight=False)
        return site.corrupt(x, fmt, scale, zero, axis, batched=True)
    return x


def _attach_quant_output(handle: InjectionHandle, site: _SiteRuntime, proxy: nn.Module, batched: bool) -> None:
    owner = site.module

    def hook(m, args, out):
        if not site.active(owner.training) or not _is_quant_tensor(out):
            return None
        fmt, scale, zero = _quant_params(out)
        return _replace_value(out, site.corrupt(out.value, fmt, scale, zero, None, batched=batched))

    handle._undo.append(proxy.register_forward_hook(hook).remove)


def _attach_param(handle: InjectionHandle, site: _SiteRuntime, pname: str) -> None:
    """Fault a parameter for the duration of each forward (pre-hook on, post-hook off).

    The hooks act on the module they are called for (a deep copy of the model faults its own
    weights). In inference only the faulted entries are written in place and restored exactly
    (O(number of faults)); with gradients a faulty copy shadows the parameter in the instance
    dict, so parameter order and identity never change.
    """
    pending: dict[int, tuple] = {}

    def restore(m: nn.Module) -> None:
        entry = pending.pop(id(m), None)
        if entry is None:
            return
        kind, param, index, clean = entry
        if kind == "shadow":
            m.__dict__.pop(pname, None)
        else:
            param.data.view(-1)[index] = clean

    def pre_hook(m, args):
        restore(m)  # a forward that raised before its post-hook ran
        param = m._parameters.get(pname)
        if param is None or not site.active(m.training):
            return None
        fmt = site.spec.format
        scale, zero, axis = site.float_qparams(param, fmt, is_weight=True)
        draw = site.draw(tuple(param.shape), fmt, param.device, batched=False)
        if len(draw) == 0:
            if site.spec.track_statistics:
                site.stats.record(param.numel(), 0, 0.0, 0.0, 0.0, 0.0)
            return None
        clean, faulty = site.faulty_values(param, fmt, scale, zero, axis, draw)
        if (torch.is_grad_enabled() and param.requires_grad) or not param.is_contiguous():
            m.__dict__[pname] = replace_at(param, draw.index, faulty, site.spec.gradient)
            pending[id(m)] = ("shadow", param, None, None)
        else:
            param.data.view(-1)[draw.index] = faulty
            pending[id(m)] = ("inplace", param, draw.index, clean)
        return None

    def post_hook(m, args, out):
        restore(m)
        return None

    module = site.module
    pre = module.register_forward_pre_hook(pre_hook)
    post = module.register_forward_hook(post_hook, always_call=True)

    def undo():
        pre.remove()
        post.remove()
        restore(module)

    handle._undo.append(undo)


def inject(model: nn.Module, spec: "InjectSpec | dict | Sequence[InjectSpec | dict]") -> InjectionHandle:
    """Attach faults to ``model`` in place and return a handle to control and undo them.

    Args:
        model: any ``nn.Module`` (plain float, Brevitas-quantized, or mixed).
        spec: one :class:`InjectSpec` (or its dict form), or a list of them.

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
    specs = spec if isinstance(spec, (list, tuple)) else [spec]
    specs = [s if isinstance(s, InjectSpec) else InjectSpec.from_dict(s) for s in specs]
    if not specs:
        raise QFaultConfigError("spec", [], "at least one InjectSpec")
    handle = InjectionHandle(model, specs)
    try:
        layer_id = 0
        for spec_id, s in enumerate(specs):
            for position, (name, module) in enumerate(select_modules(model, s)):
                site = _SiteRuntime(handle, s, spec_id, name, module, position, layer_id)
                layer_id += 1
                _attach(handle, site)
                handle.sites.append(site)
        handle._undo.append(model.register_forward_pre_hook(handle._on_model_forward).remove)
        handle._choose_layers(0)
    except Exception:
        handle.remove()
        raise
    return handle
