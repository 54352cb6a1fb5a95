"""``inject(model, spec)``: attach faults to a model in place, reversibly."""

from __future__ import annotations

import fnmatch
import functools
import math
import re
import secrets
import weakref
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .._errors import QFaultConfigError
from ..faults import (
    BitFlip, FaultDraw, FullFlip, LSBFlip, MSBFlip, RandomValue, StuckAt, derive_seed, draw_faults,
    fault_values, make_generator, uniform_index,
)
from ..formats import FloatFormat, IntFormat, NumberFormat, calibrate
from ..faults._apply import (
    XOR, ArrayDraw, ScalarDraw, _float32, _group_bit_sites, _scalar, xor_scalars, xor_values_numpy,
)
from ..formats._base import gather_param
from ._grad import replace_at
from ._spec import InjectSpec, Mode, Site
from ._stats import SiteStats, Statistics

BREVITAS_ACT_TYPES = ("QuantIdentity", "QuantReLU", "QuantHardTanh")
_WEIGHT_TYPES = (nn.Linear, nn.modules.conv._ConvNd)


# --------------------------------------------------------------------------------------------
# selection


@functools.lru_cache(maxsize=None)
def _class_names(cls: type) -> frozenset[str]:
    return frozenset(base.__name__ for base in cls.__mro__)


def _matches_type(module: nn.Module, types: Iterable) -> bool:
    names = _class_names(type(module))
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
        self._scratch_generator: torch.Generator | None = None  # reseeded for every draw that uses it
        self.permanent_draws: dict[tuple, FaultDraw] = {}
        self.weight_qparams: tuple | None = None
        self.block_numel = 0  # elements per trial block of the last stacked draw
        #: (weakref to quantized weights, their scale, generation, faulty output, notifications):
        #: a Brevitas weight site's last result, reused while the quantizer returns the same tensor
        self.weight_cache: tuple | None = None
        #: registers this site's hooks and returns their handles (None for parameter sites)
        self.attach = None

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
    def _seed(self, kind: str, counter: int, base: int | None = None) -> int:
        base = self.handle.seeds[self.spec_id] if base is None else base
        return derive_seed(base, self.spec_id, self.name, self.spec.site.value, kind, counter)

    def _generator(self, kind: str, counter: int, base: int | None = None) -> torch.Generator:
        base = self.handle.seeds[self.spec_id] if base is None else base
        return make_generator(base, self.spec_id, self.name, self.spec.site.value, kind, counter)

    def draw(self, shape: tuple[int, ...], fmt: NumberFormat, device: torch.device, batched: bool) -> FaultDraw:
        """Faults for a tensor of ``shape``; ``batched`` tensors have the batch in dim 0."""
        if not self.spec.permanent:
            self.counter += 1
        stacked = self.handle.trial_seeds
        if stacked is None or not batched or len(shape) < 2:
            return self._draw(shape, fmt, device, batched)
        # stacked trials: block k of the batch gets exactly the faults trial k alone would get
        trials = len(stacked)
        if shape[0] % trials:
            raise RuntimeError(f"a stacked batch of {shape[0]} is not {trials} equal trial blocks")
        block = (shape[0] // trials,) + tuple(shape[1:])
        self.block_numel = math.prod(block)
        draws = [self._draw(block, fmt, device, batched, seeds[self.spec_id], k).offset(k * self.block_numel)
                 for k, seeds in enumerate(stacked)]
        return FaultDraw.cat(draws)

    def _draw(self, shape: tuple[int, ...], fmt: NumberFormat, device: torch.device, batched: bool,
              base: int | None = None, trial: int = 0) -> FaultDraw:
        spec = self.spec
        if spec.permanent:
            domain = shape[1:] if batched and len(shape) > 1 else shape
            key = (tuple(domain), fmt, trial)
            draw = self.permanent_draws.get(key)
            if draw is None:
                gen = self._generator("permanent", self.handle.generation, base)
                draw = draw_faults(spec.fault, domain, fmt, gen).to(device)
                self.permanent_draws[key] = draw
            if domain != shape:
                draw = _expand_over_batch(draw, shape[0], math.prod(domain))
            return draw
        if spec.per_image and batched and len(shape) > 1:
            if self._scratch_generator is None:
                self._scratch_generator = torch.Generator()
            fast = _one_flip_per_image(spec.fault, shape, fmt,
                                       self._scratch_generator.manual_seed(self._seed("transient", self.counter, base)))
            if fast is not None:
                return fast.to(device)
            return _per_image_draw(spec.fault, shape, fmt, self._generator("transient", self.counter, base)).to(device)
        return draw_faults(spec.fault, shape, fmt, self._generator("transient", self.counter, base)).to(device)

    def faulty_values(self, x: torch.Tensor, fmt: NumberFormat, scale, zero_point, axis, draw: FaultDraw,
                      finite: bool = False):
        """``(values at index, faulty values at index)`` for ``x`` viewed in ``fmt``; ``finite``
        says the caller knows ``x`` has no NaN/inf."""
        index = draw.index
        values = x.detach().reshape(-1)[index]
        scale_at = gather_param(scale, tuple(x.shape), index, axis)
        zero_at = gather_param(zero_point, tuple(x.shape), index, axis)
        old, new, faulty = fault_values(fmt, values, draw, scale_at, zero_at, finite)
        if self.spec.track_statistics:
            self._record(x, fmt, scale, zero_point, axis, old, new, values, faulty)
        self.handle._notify(self, draw, old, new)
        if self.handle.trial_seeds is not None:
            changed = draw.index[new != old] // self.block_numel
            self.handle.trial_changed += torch.bincount(changed.cpu(), minlength=len(self.handle.trial_seeds))
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

    def corrupt(self, x: torch.Tensor, fmt: NumberFormat, scale, zero_point, axis, batched: bool,
                finite: bool = False) -> torch.Tensor:
        """A faulty copy of ``x`` (autograd per the spec's gradient mode)."""
        if x.numel() == 0:  # an empty batch has nothing to fault
            return x
        draw = self.draw(tuple(x.shape), fmt, x.device, batched)
        if len(draw) == 0:
            if self.spec.track_statistics:
                self.stats.record(x.numel(), 0, 0.0, 0.0, 0.0, 0.0)
            return x
        numbers = self._numpy_parameters(x, fmt, scale, zero_point, axis, draw)
        if numbers is not None:
            out = self._corrupt_numpy(x, fmt, scale, zero_point, numbers, draw)
            if out is not None:
                return out
        _, faulty = self.faulty_values(x, fmt, scale, zero_point, axis, draw, finite)
        return replace_at(x, draw.index, faulty, self.spec.gradient)

    def _numpy_parameters(self, x: torch.Tensor, fmt: NumberFormat, scale, zero_point, axis,
                          draw: FaultDraw) -> tuple | None:
        """``(scale, zero point)`` as Python numbers where :meth:`_corrupt_numpy` applies: XOR
        faults in a float32 CPU tensor with a per-tensor scale, outside autograd and stacked
        trials. None otherwise."""
        if not (len(draw) <= NUMPY_DRAW and draw.op == XOR and axis is None and isinstance(fmt, IntFormat)
                and x.device.type == "cpu" and x.dtype == torch.float32
                and not (x.requires_grad and torch.is_grad_enabled()) and self.handle.trial_seeds is None):
            return None
        numbers = (_scalar(scale), _scalar(zero_point))
        if (scale is not None and numbers[0] is None) or (zero_point is not None and numbers[1] is None):
            return None  # per-channel parameters
        return numbers

    def _corrupt_numpy(self, x: torch.Tensor, fmt: IntFormat, scale, zero_point, numbers: tuple,
                       draw: FaultDraw) -> torch.Tensor | None:
        """:meth:`corrupt` through numpy views (``numbers``: the per-tensor scale and zero point
        as Python numbers). A tensor operation costs more than the arithmetic of a few thousand
        faulted values, so read, code, flip and write them in numpy (or, for a
        :class:`ScalarDraw`, in Python numbers). None when a faulted value is not finite or the
        zero point not an integer: the tensor codec handles those."""
        observed = self.spec.track_statistics or self.handle._listeners
        scale_number, zero_number = numbers
        if isinstance(draw, ScalarDraw) and (zero_number is None or float(zero_number).is_integer()):
            # outside autograd: a plain contiguous copy (as replace_at makes) that numpy may write
            out = x.clone(memory_format=torch.contiguous_format)
            target = out.numpy()
            values = [target.item(element) for element in draw.elements]
            if not all(map(math.isfinite, values)):
                return None
            zero_number = None if zero_number is None else int(zero_number)
            old, new, faulty = xor_scalars(fmt, values, [1 << bit for bit in draw.bits], scale_number, zero_number)
            if observed:
                old_t, new_t = torch.tensor(old, dtype=torch.int32), torch.tensor(new, dtype=torch.int32)
                if self.spec.track_statistics:
                    self._record(x, fmt, scale, zero_point, None, old_t, new_t, torch.tensor(values),
                                 torch.tensor(faulty))
                self.handle._notify(self, draw, old_t, new_t)
            target.put(draw.elements, faulty)
            return out
        source = (x.detach() if x.requires_grad else x).numpy()
        index, mask = draw.arrays if draw.arrays is not None else (draw.index.numpy(), draw.mask.numpy())
        values = source.reshape(-1)[index]
        if not np.isfinite(values.sum()) and not np.isfinite(values).all():  # the sum is one cheap check
            return None
        old, new, faulty = xor_values_numpy(fmt, values, mask, scale_number, zero_number)
        if observed:
            old_t, new_t = torch.from_numpy(old), torch.from_numpy(new)
            if self.spec.track_statistics:
                self._record(x, fmt, scale, zero_point, None, old_t, new_t, torch.from_numpy(values),
                             torch.from_numpy(faulty))
            self.handle._notify(self, draw, old_t, new_t)
        out = x.clone(memory_format=torch.contiguous_format)
        out.numpy().reshape(-1)[index] = faulty
        return out

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
                zero = None if fmt.signed else zero.to(x.device)
                self.weight_qparams = (scale.to(x.device), zero, axis)
            return self.weight_qparams
        trials = len(self.handle.trial_seeds) if self.handle.trial_seeds is not None else 1
        if trials > 1 and x.dim() > 1 and x.numel() and x.shape[0] % trials == 0:
            # stacked trials: one scale per trial block, as each trial alone would calibrate it
            scale, zero = calibrate(fmt, x.detach().reshape(trials, -1), 0)
            per_image = x.shape[0] // trials
            zero = None if fmt.signed else zero.to(x.device).repeat_interleave(per_image)
            return scale.to(x.device).repeat_interleave(per_image), zero, 0
        if fmt.signed and x.numel() and fmt.code_max > 0:  # per-tensor symmetric scale as a Python number
            low, high = torch.aminmax(x.detach())
            if x.device.type == "cpu":
                # calibrate()'s float32 steps on two scalars: its values in float32, then max and
                # negation (exact) and a quotient computed in double and rounded once to float32
                # (which is the float32 quotient)
                low, high = _float32(low.item()), _float32(high.item())
                finite = math.isfinite(low) and math.isfinite(high)
                scale = _float32(max(high, -low) / fmt.code_max) if finite else math.nan
            else:
                scale = float(torch.maximum(high, -low).float() / fmt.code_max)
            if math.isfinite(scale):
                return (scale if scale > 0 else 1.0), None, None
        return self._calibrated(x, fmt)

    @staticmethod
    def _calibrated(x: torch.Tensor, fmt: IntFormat):
        scale, zero = calibrate(fmt, x, None)
        return scale, (None if fmt.signed else zero), None



#: a flip per image in a batch of at most this many images is drawn as a :class:`ScalarDraw`
SCALAR_FAULTS = 4
#: at most this many faulted values of a CPU activation are coded in numpy (single-threaded)
NUMPY_DRAW = 1 << 16


def _expand_over_batch(draw: FaultDraw, batch: int, per_image: int) -> FaultDraw:
    offsets = torch.arange(batch, device=draw.index.device).unsqueeze(1) * per_image
    repeat = lambda t: None if t is None else t.unsqueeze(0).expand(batch, -1).reshape(-1)  # noqa: E731
    return FaultDraw((offsets + draw.index.unsqueeze(0)).reshape(-1), draw.op, repeat(draw.mask),
                     repeat(draw.value), None)


def _one_flip_per_image(fault, shape: tuple[int, ...], fmt: NumberFormat, gen: torch.Generator) -> FaultDraw | None:
    """``BitFlip(count=1)`` in each image of a batch: one draw of ``batch`` integers from the
    seeded ``gen``, then Python or numpy on the few picks (cheaper than a dozen tiny tensor
    operations). None when the fault is not of that kind."""
    if not (isinstance(fault, BitFlip) and fault.count == 1 and fault.bits is None):
        return None
    batch, per_image = shape[0], math.prod(shape[1:])
    picks = torch.randint(per_image * fmt.bits, (batch,), generator=gen, dtype=torch.int64)
    if batch <= SCALAR_FAULTS:
        elements, bits = [], []
        for image, pick in enumerate(picks.tolist()):  # at most SCALAR_FAULTS images
            element, bit = divmod(pick, fmt.bits)
            elements.append(image * per_image + element)
            bits.append(bit)
        return ScalarDraw(elements, bits)
    elements, bits = np.divmod(picks.numpy(), fmt.bits)
    if batch > 1:
        elements += np.arange(0, batch * per_image, per_image, dtype=np.int64)
    return ArrayDraw(elements, np.left_shift(1, bits), elements, bits)


def _per_image_draw(fault, shape: tuple[int, ...], fmt: NumberFormat, gen: torch.Generator) -> FaultDraw:
    """Independent draws for each image of a batch (dim 0)."""
    batch, per_image = shape[0], math.prod(shape[1:])
    if isinstance(fault, BitFlip) and fault.count is not None and fault.bits is None \
            and fault.count * fault.count * 4 <= per_image * fmt.bits:
        population = per_image * fmt.bits
        picks = torch.randint(population, (batch, fault.count), generator=gen)
        if fault.count > 1:  # redraw whole rows that repeat a site: uniform over distinct tuples
            while True:
                picks = picks.sort(dim=1).values
                bad = (picks[:, 1:] == picks[:, :-1]).any(dim=1)
                if not bool(bad.any()):
                    break
                picks[bad] = torch.randint(population, (int(bad.sum()), fault.count), generator=gen)
        elements = (picks // fmt.bits + torch.arange(batch).unsqueeze(1) * per_image).reshape(-1).numpy()
        bits = (picks % fmt.bits).reshape(-1).numpy()
        index, mask, _ = _group_bit_sites(elements, bits)
        return ArrayDraw(index, mask, elements, bits)
    draws = [draw_faults(fault, shape[1:], fmt, gen).offset(b * per_image) for b in range(batch)]
    return FaultDraw.cat(draws)


def _groupable(fault) -> bool:
    """Faults whose joint draw over several tensors equals independent draws per tensor."""
    if isinstance(fault, BitFlip):
        return fault.ber is not None
    if isinstance(fault, StuckAt):
        return fault.rate is not None
    return isinstance(fault, (RandomValue, LSBFlip, MSBFlip, FullFlip))


class _ParamGroup:
    """All float-parameter sites of one spec, drawn and faulted together once per model forward.

    One binomial count and one set of distinct positions over the concatenated parameters
    (for Bernoulli-type faults the same distribution as independent per-tensor draws), then one
    vectorized codec pass over every faulted value: the cost per forward is O(number of faults)
    plus a few operations per tensor, whatever the number of tensors.
    """

    def __init__(self, handle: "InjectionHandle", spec_id: int, sites: list[_SiteRuntime]):
        self.handle = handle
        self.spec_id = spec_id
        self.spec = sites[0].spec
        self.sites = sites
        self.permanent_draw: FaultDraw | None = None
        self.tables: dict | None = None
        # transient draws of upcoming forwards (see _transient_draw), for which seed and size
        self._ahead: dict[int, FaultDraw] = {}
        self._ahead_key: tuple | None = None
        self._last_counter = -1
        self._run = 0  # forwards in a row, each the next counter

    @staticmethod
    def build(handle: "InjectionHandle") -> list["_ParamGroup"]:
        groups = []
        for spec_id, spec in enumerate(handle.specs):
            if spec.site not in (Site.WEIGHT, Site.BIAS) or spec.layer_mode != "all" or not _groupable(spec.fault):
                continue
            sites = [s for s in handle._param_sites if s.spec_id == spec_id]
            if len(sites) > 1:
                groups.append(_ParamGroup(handle, spec_id, sites))
        return groups

    def invalidate(self) -> None:
        self.permanent_draw = None
        self.tables = None
        self._ahead.clear()

    def _tables(self, params: list[torch.Tensor]) -> dict | None:
        """Offsets of each tensor in the joint index space and per-element scale lookup tables."""
        device = params[0].device
        if self.tables is not None and self.tables["device"] == device:
            return self.tables
        if any(p.device != device for p in params):
            return None
        fmt = self.spec.format
        sizes = [p.numel() for p in params]
        starts = [0]
        for size in sizes[:-1]:
            starts.append(starts[-1] + size)
        tables = {"device": device, "sizes": sizes, "total": sum(sizes),
                  "ends": torch.tensor([st + sz for st, sz in zip(starts, sizes)], dtype=torch.int64, device=device),
                  "starts": torch.tensor(starts, dtype=torch.int64, device=device), "scale": None, "zero": None}
        if isinstance(fmt, IntFormat):
            scales, zeros, channel_start, inner = [], [], [], []
            first_channel = 0
            for site, param in zip(self.sites, params):
                scale, zero, axis = site.float_qparams(param, fmt, is_weight=True)
                scale = torch.as_tensor(scale, dtype=torch.float32, device=device).reshape(-1)
                zero = torch.as_tensor(0 if zero is None else zero, dtype=torch.int32, device=device).reshape(-1)
                channels = scale.numel()
                zeros.append(zero.expand(channels))
                scales.append(scale)
                channel_start.append(first_channel)
                inner.append(param.numel() // channels)
                first_channel += channels
            tables["scale"] = torch.cat(scales)
            tables["zero"] = None if fmt.signed else torch.cat(zeros)
            tables["channel_start"] = torch.tensor(channel_start, dtype=torch.int64, device=device)
            tables["inner"] = torch.tensor(inner, dtype=torch.int64, device=device)
        self.tables = tables
        return tables

    #: once this many forwards ran in a row, the draws of the next PREFETCH forwards are made
    #: together: the same draws, computed back to back while the sampling code is in the caches
    #: (between model forwards each of its calls costs several times more)
    PREFETCH_AFTER = 4
    PREFETCH = 8
    #: only for draws expected to hold at most this many faults (they are overhead-bound)
    PREFETCH_MAX_FAULTS = 1 << 14

    def _draw(self, tables: dict) -> FaultDraw:
        spec, handle = self.spec, self.handle
        if not spec.permanent:
            return self._transient_draw(tables, handle.forward_count)
        if self.permanent_draw is None:
            self.permanent_draw = self._make_draw(tables, "permanent", handle.generation)
        return self.permanent_draw

    def _make_draw(self, tables: dict, kind: str, counter: int) -> FaultDraw:
        spec = self.spec
        gen = make_generator(self.handle.seeds[self.spec_id], self.spec_id, "group", spec.site.value, kind, counter)
        return draw_faults(spec.fault, (tables["total"],), spec.format, gen).to(tables["device"])

    def _transient_draw(self, tables: dict, counter: int) -> FaultDraw:
        """The draw of forward ``counter``; each depends on its counter alone, so making the
        next ones early changes nothing but when they are computed."""
        key = (self.handle.seeds[self.spec_id], tables["total"], tables["device"])
        if self._ahead_key == key and counter in self._ahead:
            draw = self._ahead.pop(counter)
        else:
            self._ahead.clear()
            self._ahead_key = key
            self._run = self._run + 1 if counter == self._last_counter + 1 else 0
            draw = self._make_draw(tables, "transient", counter)
            if self._run >= self.PREFETCH_AFTER and self._expected_faults(tables) <= self.PREFETCH_MAX_FAULTS:
                for upcoming in range(counter + 1, counter + self.PREFETCH):
                    self._ahead[upcoming] = self._make_draw(tables, "transient", upcoming)
        self._last_counter = counter
        return draw

    def _expected_faults(self, tables: dict) -> float:
        fault, bits = self.spec.fault, self.spec.format.bits
        if isinstance(fault, BitFlip):
            return tables["total"] * bits * fault.ber
        if isinstance(fault, StuckAt):
            return tables["total"] * bits * fault.rate / 100.0
        return tables["total"] * fault.probability / 100.0

    @torch.no_grad()
    def prepare(self, modules: list[nn.Module], grad_enabled: bool = False) -> dict[int, tuple]:
        """Draw this forward's faults and compute every faulted value (O(number of faults)).

        ``grad_enabled`` is the caller's grad mode (this method runs under ``no_grad``).
        Returns ``{id(site): (index, clean values, faulty values)}`` for the active sites, plus
        the parameter's numpy view as a fourth item where the values are numpy arrays.
        """
        active = [site.active(module.training) for site, module in zip(self.sites, modules)]
        if not any(active):
            return {}
        pname = self.spec.site.value
        params = [module._parameters[pname] for module in modules]
        tables = self._tables(params)
        if tables is None:  # parameters on several devices: the sites draw one by one
            return {}
        fmt = self.spec.format
        draw = self._draw(tables)
        observe = self.spec.track_statistics or bool(self.handle._listeners)
        if self._numpy_route(params, draw, fmt, grad_enabled):
            out = self._prepare_numpy(params, active, draw, tables, observe)
            if out is not None:
                return out
        index = draw.index
        # the draw's indices are sorted: a handful of searches splits them by parameter
        bounds = torch.searchsorted(index, tables["ends"])
        per_param = torch.diff(bounds, prepend=bounds.new_zeros(1))
        owner = torch.repeat_interleave(torch.arange(len(params), device=index.device), per_param)
        local = index - tables["starts"][owner]
        counts = per_param.tolist()
        local_parts = local.split(counts)
        clean = torch.cat([param.detach().reshape(-1).index_select(0, part) for param, part in zip(params, local_parts)])
        scale = zero = None
        if isinstance(fmt, IntFormat):
            channel = tables["channel_start"][owner] + local // tables["inner"][owner]
            scale = tables["scale"][channel]
            zero = None if tables["zero"] is None else tables["zero"][channel]
        old, new, faulty = fault_values(fmt, clean, draw, scale, zero)
        ends = torch.tensor(counts).cumsum(0).tolist() if observe else [0] * len(counts)
        parts = zip(self.sites, params, active, local_parts, clean.split(counts), faulty.split(counts),
                    old.split(counts), new.split(counts), ends)
        out = {}
        for site, param, is_active, part, c, f, o, n, end in parts:
            if not is_active:
                continue
            out[id(site)] = (part, c, f)
            if observe:
                self._report(site, param, draw, part, end - len(part), end, tables, o, n, c, f)
        return out

    def _report(self, site: _SiteRuntime, param: torch.Tensor, draw: FaultDraw, local: torch.Tensor, lo: int,
                hi: int, tables: dict, old, new, clean, faulty) -> None:
        """Statistics and listeners of one tensor's part ``lo:hi`` of the joint draw."""
        fmt = self.spec.format
        site_draw = self._site_draw(draw, local, lo, hi, draw.index, tables, site, param)
        if site.spec.track_statistics:
            scale, zero, axis = site.float_qparams(param, fmt, is_weight=True)
            site._record(param, fmt, scale, zero, axis, old, new, clean, faulty)
        self.handle._notify(site, site_draw, old, new)

    @staticmethod
    def _numpy_route(params: list[torch.Tensor], draw: FaultDraw, fmt: NumberFormat, grad_enabled: bool) -> bool:
        """Whether this forward's faults can be computed and written through numpy views: XOR
        faults in an int format on contiguous float32 CPU parameters written in place (a few
        thousand faults cost a few numpy calls instead of ~30 torch operations per tensor).
        Never while autograd records: it would not see the in-place writes."""
        if not (isinstance(fmt, IntFormat) and draw.op == XOR):
            return False
        if draw.arrays is None and draw.index.device.type != "cpu":
            return False
        if grad_enabled and any(p.requires_grad for p in params):
            return False
        return all(p.dtype == torch.float32 and p.device.type == "cpu" and p.is_contiguous() for p in params)

    def _prepare_numpy(self, params: list[torch.Tensor], active: list[bool], draw: FaultDraw, tables: dict,
                       observe: bool) -> dict[int, tuple] | None:
        """:meth:`prepare` in numpy (see :meth:`_numpy_route`); None when a faulted value is not
        finite (the tensor codec keeps those as they are)."""
        fmt = self.spec.format
        arrays = tables.get("numpy")
        if arrays is None:
            arrays = {key: tables[key].numpy() for key in ("ends", "starts", "channel_start", "inner", "scale")}
            zero = tables["zero"]
            arrays["zero"] = None if zero is None else zero.numpy().astype(np.float32)
            tables["numpy"] = arrays
        index, mask = draw.arrays if draw.arrays is not None else (draw.index.numpy(), draw.mask.numpy())
        bounds = index.searchsorted(arrays["ends"])
        owner = arrays["ends"].searchsorted(index, side="right")
        local = index - arrays["starts"][owner]
        views = self._numpy_views(params, tables)
        ranges = list(zip([0] + bounds[:-1].tolist(), bounds.tolist()))
        clean = np.concatenate([view[local[lo:hi]] for view, (lo, hi) in zip(views, ranges)])
        if not np.isfinite(clean.sum()) and not np.isfinite(clean).all():  # the sum is one cheap check
            return None
        channel = arrays["channel_start"][owner] + local // arrays["inner"][owner]
        zero = None if arrays["zero"] is None else arrays["zero"][channel]
        old, new, faulty = xor_values_numpy(fmt, clean, mask, arrays["scale"][channel], zero)
        out = {}
        for site, param, view, is_active, (lo, hi) in zip(self.sites, params, views, active, ranges):
            if not is_active:
                continue
            out[id(site)] = (local[lo:hi], clean[lo:hi], faulty[lo:hi], view)
            if observe:
                self._report(site, param, draw, torch.from_numpy(local[lo:hi]), lo, hi, tables,
                             *(torch.from_numpy(a[lo:hi]) for a in (old, new, clean, faulty)))
        return out

    @staticmethod
    def _numpy_views(params: list[torch.Tensor], tables: dict) -> list[np.ndarray]:
        """Flat numpy views of the parameters' memory, kept while their storage stays the same."""
        key = tuple(param.data_ptr() for param in params)
        cached = tables.get("views")
        if cached is None or cached[0] != key:
            cached = (key, [param.detach().view(-1).numpy() for param in params])
            tables["views"] = cached
        return cached[1]

    def _site_draw(self, draw: FaultDraw, local: torch.Tensor, lo: int, hi: int, index: torch.Tensor,
                   tables: dict, site: _SiteRuntime, param: torch.Tensor) -> FaultDraw:
        """The part of the joint draw that falls in one tensor, in its own flat indices."""
        offset = int(tables["starts"][self.sites.index(site)])
        sites = None
        if draw.bit_sites is not None:
            elements = draw.bit_sites[:, 0].contiguous()
            bounds = torch.tensor([offset, offset + param.numel()], device=elements.device)
            first, last = torch.searchsorted(elements, bounds).tolist()
            sites = draw.bit_sites[first:last] - torch.tensor([offset, 0], device=elements.device)
        return FaultDraw(local, draw.op, draw.mask[lo:hi], None if draw.value is None else draw.value[lo:hi], sites)


# --------------------------------------------------------------------------------------------
# the handle


class InjectionHandle:
    """Returned by :func:`inject`: switch faults on and off, redraw them, undo the injection.

    Use as a context manager to remove the injection on exit. Deep copies of an injected model
    share the handle (and fault their own tensors).
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
        self.param_groups: list[_ParamGroup] = []
        self._param_sites: list[_SiteRuntime] = []
        self._undo: list = []
        self._listeners: list = []
        self._removed = False
        self._depth = 0
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
        for group in self.param_groups:
            group.invalidate()
        self._choose_layers(self.generation)
        return self

    def remove(self) -> None:
        """Detach every hook; the model is bit-exactly as before :func:`inject`."""
        if self._removed:
            return
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

    # -- internals ---------------------------------------------------------------------------
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

    def _notify(self, site: _SiteRuntime, draw: FaultDraw, old, new) -> None:
        for fn in self._listeners:
            fn(site.stats.name, draw, old, new)

    def _choose_layer(self, spec_id: int, kind: str, counter: int) -> int:
        count = self._site_counts[spec_id]
        self.chosen[spec_id] = uniform_index(count, self.seeds[spec_id], spec_id, "layer", kind, counter)
        return self.chosen[spec_id]

    def _site_of(self, spec_id: int, position: int) -> _SiteRuntime:
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

    def _on_model_forward(self, model, args) -> None:
        self._depth += 1
        if self._depth > 1:  # a re-entrant call: the outer forward already set everything up
            return
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
                module.__dict__[pname] = replace_at(param, index, faulty, site.spec.gradient)
                self._restore.append(lambda m=module, n=pname: m.__dict__.pop(n, None))
            else:
                # inference: write the faulted entries in place, restore them exactly afterwards
                flat = param.data.view(-1)
                flat.index_copy_(0, index, faulty)
                self._restore.append(lambda f=flat, i=index, c=clean: f.index_copy_(0, i, c))


def _attach(handle: InjectionHandle, site: _SiteRuntime) -> None:
    """Prepare how ``site`` is faulted; hooks of ``layer_mode="all"`` sites are attached now."""
    spec, module = site.spec, site.module
    if spec.site is Site.WEIGHT and spec.format is None and _is_quant_proxy(getattr(module, "weight_quant", None)):
        proxy = module.weight_quant
        site.attach = lambda: [proxy.register_forward_hook(_quant_output_hook(site, batched=False))]
    elif spec.site in (Site.WEIGHT, Site.BIAS):
        if spec.format is None:
            raise _format_error(site)
        handle._param_sites.append(site)
        site.attach = None
        return
    elif spec.site is Site.OUTPUT:
        if spec.format is None and _is_quant_proxy(getattr(module, "act_quant", None)):
            proxy = module.act_quant
            site.attach = lambda: [proxy.register_forward_hook(_quant_output_hook(site, batched=True))]
        else:
            _require_format_or_quant(site)
            site.attach = lambda: [module.register_forward_hook(lambda m, args, out: _fault_any(site, m, out))]
    else:  # INPUT
        _require_format_or_quant(site)

        def pre_hook(m, args):
            if not args:
                return None
            return (_fault_any(site, m, args[0]),) + tuple(args[1:])

        site.attach = lambda: [module.register_forward_pre_hook(pre_hook)]
    if spec.layer_mode == "all":
        for hook in site.attach():
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
        if fmt is None:
            fmt, scale, zero = _site_quant_params(site, x)
        elif isinstance(fmt, IntFormat):  # the tensor's own scale and zero point, the spec's codes
            scale, zero = x.scale, x.zero_point
        else:
            scale = zero = None
        return _replace_value(x, site.corrupt(x.value, fmt, scale, zero, None, batched=True))
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        if fmt is None:
            raise _format_error(site)
        scale, zero, axis = site.float_qparams(x, fmt, is_weight=False)
        # a per-tensor scale calibrated as a Python number proves the tensor finite
        finite = isinstance(scale, float) and site.spec.scale is None
        return site.corrupt(x, fmt, scale, zero, axis, batched=True, finite=finite)
    return x


def _site_quant_params(site: _SiteRuntime, qt: Any) -> tuple[IntFormat, torch.Tensor, torch.Tensor]:
    """The QuantTensor's own format; one wider than 16 bits (an accumulator) needs the spec's."""
    try:
        return _quant_params(qt)
    except QFaultConfigError:
        raise QFaultConfigError(
            "format", None, f"a number format for the {float(qt.bit_width):g}-bit QuantTensor at "
            f"{site.stats.name} (own formats are used up to 16 bits)",
            hint="give the spec a format, e.g. int8, or select other layers") from None


def _quant_output_hook(site: _SiteRuntime, batched: bool):
    owner = site.module

    def hook(m, args, out):
        if not site.active(owner.training) or not _is_quant_tensor(out):
            return None
        reusable = (not batched and site.spec.permanent and not site.spec.track_statistics
                    and not (torch.is_grad_enabled() and out.value.requires_grad))
        cached = site.weight_cache
        if reusable and cached is not None and cached[0]() is out.value and cached[1] is out.scale \
                and cached[2] == site.handle.generation:
            # the very same quantized weights again (a replayed quantizer): the same faulty codes
            for draw, old, new in cached[4]:
                site.handle._notify(site, draw, old, new)
            return cached[3]
        fmt, scale, zero = _site_quant_params(site, out)
        notes: list = []
        if reusable:
            site.handle._listeners.append(lambda name, draw, old, new: notes.append((draw, old, new)))
        try:
            faulty = _replace_value(out, site.corrupt(out.value, fmt, scale, zero, None, batched=batched))
        finally:
            if reusable:
                site.handle._listeners.pop()
        if reusable:
            site.weight_cache = (weakref.ref(out.value), out.scale, site.handle.generation, faulty, notes)
        return faulty

    return hook


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
    """:func:`inject` with the modules of each spec already selected (callers that inject the
    same selection many times, like a campaign's trials, select once)."""
    handle = InjectionHandle(model, specs)
    try:
        layer_id = 0
        for spec_id, (s, selected) in enumerate(zip(specs, selections)):
            for position, (name, module) in enumerate(selected):
                site = _SiteRuntime(handle, s, spec_id, name, module, position, layer_id)
                layer_id += 1
                _attach(handle, site)
                handle.sites.append(site)
        handle.param_groups = _ParamGroup.build(handle)
        handle._undo.append(model.register_forward_pre_hook(handle._on_model_forward).remove)
        handle._undo.append(model.register_forward_hook(handle._after_model_forward, always_call=True).remove)
        handle._choose_layers(0)
    except Exception:
        handle.remove()
        raise
    return handle
