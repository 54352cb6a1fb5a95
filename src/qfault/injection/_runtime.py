"""The per-site runtime of an injection: draws, codecs, statistics, and the parameter groups.

A :class:`SiteRuntime` holds the state of one (spec, module) pair; the site kinds of
``_sites.py`` attach hooks that call into it. A :class:`ParamGroup` faults the float parameters
of every spec sharing a format and an operation in one pass per model forward, each spec keeping
its own draws (:class:`_DrawUnit`).
"""

from __future__ import annotations

import math
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .._errors import QFaultConfigError
from ..faults import (
    SCALAR, TORCH, XOR, FaultDraw, ScalarDraw, derive_seed, draw_faults, draw_per_image, fast_codec_for, fault_values,
    make_generator, scalar_param, to_float32,
)
from ..formats import NumberFormat, calibrate, gather_param
from ._adapters import adapter_of, owned_by_adapter, quantized_format, quantizer_output_format
from ._grad import replace_at
from ._spec import InjectSpec, Mode
from ._stats import SiteStats

if TYPE_CHECKING:  # pragma: no cover
    from ._api import InjectionHandle

#: at most this many faulted values of a CPU activation are coded by the fast (numpy) codec
NUMPY_DRAW = 1 << 16


def _array(values) -> np.ndarray:
    """Hit-element values (a tensor on any device, a numpy array or a list) as a numpy array."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        return (values.float() if values.dtype == torch.bfloat16 else values).numpy()
    return np.asarray(values)


def hit_sums(fmt: NumberFormat, old, new, values, faulty, ranges: list[tuple[int, int]]) -> list[tuple]:
    """Per range ``lo:hi`` of the hit elements: ``(codes changed, sum (f - c)**2 over them,
    sum c (f - c), sum c**2, sum f**2)`` with ``c, f`` the clean and faulty codes (IEEE formats:
    values), in a few numpy calls whatever the number of ranges."""
    c, f = (values, faulty) if fmt.encodes_non_finite else (old, new)
    if isinstance(c, list) and len(ranges) == 1:  # a few Python numbers (the scalar codec)
        changed = sq_err = dot = c_sq = f_sq = 0
        for o, n, cv, fv in zip(old, new, c, f):
            cv, fv = float(cv), float(fv)
            changed += o != n
            sq_err += (fv - cv) ** 2 if o != n else 0.0
            dot += cv * (fv - cv)
            c_sq += cv * cv
            f_sq += fv * fv
        return [(int(changed), float(sq_err), float(dot), float(c_sq), float(f_sq))]
    if len(ranges) == 1:  # torch's dot products (its own threads, never numpy's BLAS): a pass each
        part = slice(*ranges[0])
        c, f = _float64_tensor(c)[part], _float64_tensor(f)[part]
        delta = f - c
        if fmt.encodes_non_finite:
            changed = (_tensor(old) != _tensor(new)).cpu()[part]
            moved = torch.where(changed, delta, 0.0)
        else:  # integer codes: an unchanged code moves by exactly 0
            changed, moved = delta != 0, delta
        return [(int(torch.count_nonzero(changed)), float(torch.dot(moved, moved)), float(torch.dot(c, delta)),
                 float(torch.dot(c, c)), float(torch.dot(f, f)))]
    c, f = _float64(c), _float64(f)
    delta = f - c
    changed = _array(old) != _array(new)
    moved = np.where(changed, delta, 0.0)
    columns = np.stack([changed.astype(np.float64), moved * moved, c * delta, c * c, f * f])
    starts = np.array([lo for lo, _ in ranges], dtype=np.int64)
    padded = np.concatenate([columns, np.zeros((5, 1))], axis=1)  # reduceat needs starts < size
    totals = np.add.reduceat(padded, starts, axis=1).T
    totals[[hi == lo for lo, hi in ranges]] = 0.0  # reduceat gives an element for an empty range
    return [(int(row[0]), float(row[1]), float(row[2]), float(row[3]), float(row[4])) for row in totals]


def _operand(draw: FaultDraw) -> np.ndarray | None:
    """A CPU draw's per-element operands (random values) as a numpy array, or None."""
    return None if draw.value is None else draw.value.numpy()


def _float64(values) -> np.ndarray:
    return _array(values).astype(np.float64, copy=False)


def _tensor(values) -> torch.Tensor:
    return values if isinstance(values, torch.Tensor) else torch.from_numpy(np.asarray(values))


def _float64_tensor(values) -> torch.Tensor:
    """Hit-element values (a tensor on any device, a numpy array or a list) as a float64 CPU tensor."""
    return _tensor(values).detach().cpu().to(torch.float64)


class SiteRuntime:
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
        self._generator: torch.Generator | None = None  # reseeded for every draw (one per site)
        self._norm: tuple | None = None  # (tensor key, ||clean||^2) of the last recorded tensor
        #: the codec of CPU float32 values outside autograd, chosen once from the format and fault
        self.fast_codec = fast_codec_for(spec.format, spec.fault.op)
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
    def _generator_for(self, kind: str, counter: int, base: int | None = None) -> torch.Generator:
        """The site's generator seeded for one draw: the stream of ``make_generator`` of the same
        keys (one generator per site, reseeded, instead of a new one per draw)."""
        base = self.handle.seeds[self.spec_id] if base is None else base
        if self._generator is None:
            self._generator = torch.Generator()
        return self._generator.manual_seed(derive_seed(base, self.spec_id, self.name, self.spec.site.value, kind,
                                                       counter))

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
                gen = self._generator_for("permanent", self.handle.generation, base)
                draw = draw_faults(spec.fault, domain, fmt, gen).to(device)
                self.permanent_draws[key] = draw
            if domain != shape:
                draw = expand_over_batch(draw, shape[0], math.prod(domain))
            return draw
        gen = self._generator_for("transient", self.counter, base)
        if spec.per_image and batched and len(shape) > 1:
            return draw_per_image(spec.fault, shape, fmt, gen).to(device)
        return draw_faults(spec.fault, shape, fmt, gen).to(device)

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
        """Add one forward to the statistics, computed from the faults themselves (the hit
        elements' old and new codes, or their values for IEEE formats: tensors, numpy arrays or
        lists) plus one norm of the clean tensor (cached for unchanged weights)."""
        sums = hit_sums(fmt, old, new, values, faulty, [(0, len(old))])[0]
        self.record_sums(x, fmt, scale, zero_point, axis, *sums)

    def record_sums(self, x, fmt, scale, zero_point, axis, changed: int, sq_err: float, dot_delta: float,
                    clean_hit_sq: float, faulty_hit_sq: float) -> None:
        """Add one forward from the hit elements' sums (see :func:`hit_sums`)."""
        clean_sq = self._clean_square_norm(x, fmt, scale, zero_point, axis)
        self.stats.record(numel=x.numel(), changed=changed, sq_err_sum=sq_err,
                          clean_sq=clean_sq, dot_delta=dot_delta, faulty_sq=clean_sq - clean_hit_sq + faulty_hit_sq)

    @torch.no_grad()
    def _clean_square_norm(self, x: torch.Tensor, fmt: NumberFormat, scale, zero_point, axis) -> float:
        """``||clean||^2`` of ``x`` in value units (IEEE formats) or codes (exact for <= 16 bits).
        A weight is the same tensor forward after forward: its norm is kept while its storage,
        version (in-place updates such as an optimizer step change it; the injection's own
        faults go through ``.data`` and are restored exactly) and scale stay the same."""
        key = None
        if isinstance(x, nn.Parameter) and not x.is_inference():  # activations change every forward
            key = (x.data_ptr(), x._version, id(scale), id(zero_point))
            if self._norm is not None and self._norm[0] == key:
                return self._norm[1]
        x = x.detach()
        if (numbers := self._numpy_numbers(x, fmt, scale, zero_point, axis)) is not None:
            value = self.fast_codec.square_norm(fmt, x.numpy(), *numbers)
        else:
            value = TORCH.square_norm(fmt, x, scale, zero_point, axis)
        if key is not None:
            self._norm = (key, value)
        return value

    def forget_norm(self) -> None:
        self._norm = None

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
        numbers = self._fast_parameters(x, fmt, scale, zero_point, axis, draw)
        if numbers is not None:
            out = self._corrupt_fast(x, fmt, scale, zero_point, numbers, draw)
            if out is not None:
                return out
        _, faulty = self.faulty_values(x, fmt, scale, zero_point, axis, draw, finite)
        return replace_at(x, draw.index, faulty, self.spec.gradient)

    def _fast_parameters(self, x: torch.Tensor, fmt: NumberFormat, scale, zero_point, axis,
                         draw: FaultDraw) -> tuple | None:
        """``(scale, zero point)`` as Python numbers where :meth:`_corrupt_fast` applies: the site's
        fast codec serves the format and the draw's operation, on a float32 CPU tensor with a
        per-tensor scale, outside autograd and stacked trials. None otherwise."""
        if len(draw) > NUMPY_DRAW or (x.requires_grad and torch.is_grad_enabled()) \
                or self.handle.trial_seeds is not None:
            return None
        return self._numpy_numbers(x, fmt, scale, zero_point, axis)  # the codec serves the site's op

    def _numpy_numbers(self, x: torch.Tensor, fmt: NumberFormat, scale, zero_point, axis) -> tuple | None:
        """``(scale, zero point)`` as Python numbers where the site's fast codec can read ``x``
        through numpy: a float32 CPU tensor with per-tensor parameters. None otherwise."""
        if self.fast_codec is None or axis is not None or x.device.type != "cpu" or x.dtype != torch.float32 \
                or not self.fast_codec.supports(fmt, self.spec.fault.op):
            return None
        numbers = (scalar_param(scale), scalar_param(zero_point))
        if (scale is not None and numbers[0] is None) or (zero_point is not None and numbers[1] is None):
            return None  # per-channel parameters
        return numbers

    def _corrupt_fast(self, x: torch.Tensor, fmt: NumberFormat, scale, zero_point, numbers: tuple,
                      draw: FaultDraw) -> torch.Tensor | None:
        """:meth:`corrupt` with the ``numpy`` codec through numpy views of the tensor (``numbers``:
        the per-tensor scale and zero point as Python numbers), or the ``scalar`` codec for a
        :class:`ScalarDraw`. None when a faulted value is not finite or the zero point not an
        integer: the ``torch`` codec handles those."""
        scale_number, zero_number = numbers
        if isinstance(draw, ScalarDraw) and SCALAR.supports(fmt, XOR) \
                and (zero_number is None or float(zero_number).is_integer()):
            # outside autograd: a plain contiguous copy (as replace_at makes) that numpy may write
            out = x.clone(memory_format=torch.contiguous_format)
            target = out.numpy()
            values = [target.item(element) for element in draw.elements]
            if not all(map(math.isfinite, values)):
                return None
            zero_number = None if zero_number is None else int(zero_number)
            old, new, faulty = SCALAR.code(fmt, values, XOR, [1 << bit for bit in draw.bits], None, scale_number,
                                           zero_number)
            if self.spec.track_statistics:
                self._record(x, fmt, scale, zero_point, None, old, new, values, faulty)
            if self.handle._listeners:
                self.handle._notify(self, draw, torch.tensor(old, dtype=torch.int32),
                                    torch.tensor(new, dtype=torch.int32))
            target.put(draw.elements, faulty)
            return out
        source = (x.detach() if x.requires_grad else x).numpy()
        index, mask = draw.arrays if draw.arrays is not None else (draw.index.numpy(), draw.mask.numpy())
        values = source.reshape(-1)[index]
        if not np.isfinite(values.sum()) and not np.isfinite(values).all():  # the sum is one cheap check
            return None
        old, new, faulty = self.fast_codec.code(fmt, values, draw.op, mask, _operand(draw), scale_number, zero_number)
        if self.spec.track_statistics:
            self._record(x, fmt, scale, zero_point, None, old, new, values, faulty)
        if self.handle._listeners:
            self.handle._notify(self, draw, torch.from_numpy(old), torch.from_numpy(new))
        out = x.clone(memory_format=torch.contiguous_format)
        out.numpy().reshape(-1)[index] = faulty
        return out

    # -- float tensors need a format ---------------------------------------------------------
    def float_qparams(self, x: torch.Tensor, fmt: NumberFormat, is_weight: bool):
        """``(scale, zero point, axis)`` of float tensor ``x`` viewed in ``fmt`` (None for formats
        without them): the spec's fixed scale, else weights calibrated once per output channel
        (``granularity="per_tensor"``: per tensor) and activations per tensor on every forward."""
        if not fmt.needs_qparams:
            return None, None, None
        if self.spec.scale is not None:
            return self.spec.scale, 0, None
        if is_weight:
            if self.weight_qparams is None:
                axis = 0 if x.dim() > 1 and self.spec.granularity != "per_tensor" else None
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
                low, high = to_float32(low.item()), to_float32(high.item())
                finite = math.isfinite(low) and math.isfinite(high)
                scale = to_float32(max(high, -low) / fmt.code_max) if finite else math.nan
            else:
                scale = float(torch.maximum(high, -low).float() / fmt.code_max)
            if math.isfinite(scale):
                return (scale if scale > 0 else 1.0), None, None
        return self._calibrated(x, fmt)

    @staticmethod
    def _calibrated(x: torch.Tensor, fmt: NumberFormat):
        scale, zero = calibrate(fmt, x, None)
        return scale, (None if fmt.signed else zero), None


def expand_over_batch(draw: FaultDraw, batch: int, per_image: int) -> FaultDraw:
    offsets = torch.arange(batch, device=draw.index.device).unsqueeze(1) * per_image
    repeat = lambda t: None if t is None else t.unsqueeze(0).expand(batch, -1).reshape(-1)  # noqa: E731
    return FaultDraw((offsets + draw.index.unsqueeze(0)).reshape(-1), draw.op, repeat(draw.mask),
                     repeat(draw.value), None)


class _DrawUnit:
    """One stream of draws in a parameter pass: the sites of one spec drawn jointly (one binomial
    count and one set of distinct positions over their concatenation, for Bernoulli-type faults
    the distribution of independent draws per tensor), or one site drawn on its own. A spec's
    draws, and so its faults, do not depend on the other specs that share the pass."""

    #: once this many forwards ran in a row, the draws of the next PREFETCH forwards are made
    #: together: the same draws, computed back to back while the sampling code is in the caches
    #: (between model forwards each of its calls costs several times more)
    PREFETCH_AFTER = 4
    PREFETCH = 8
    #: only for draws expected to hold at most this many faults (they are overhead-bound)
    PREFETCH_MAX_FAULTS = 1 << 14

    def __init__(self, handle: "InjectionHandle", sites: list[SiteRuntime], first: int, joint: bool):
        self.handle = handle
        self.sites = sites
        self.first = first  # position of sites[0] among the pass's sites
        self.joint = joint
        self.spec = sites[0].spec
        self.spec_id = sites[0].spec_id
        self.permanent_draw: FaultDraw | None = None
        self._ahead: dict[int, FaultDraw] = {}  # transient draws of upcoming counters
        self._ahead_key: tuple | None = None
        self._last_counter = -1
        self._run = 0  # draws in a row, each the next counter

    def invalidate(self) -> None:
        self.permanent_draw = None
        self._ahead.clear()

    def draw(self, tables: dict, active: list[bool], params: list[torch.Tensor]) -> FaultDraw | None:
        """This forward's draw in the unit's own flat indices; None when none of its sites is active."""
        end = self.first + len(self.sites)
        if not any(active[self.first:end]):
            return None
        spec, fmt, device = self.spec, self.spec.format, tables["device"]
        if not self.joint:
            site, param = self.sites[0], params[self.first]
            if spec.permanent:
                return site.draw(tuple(param.shape), fmt, device, batched=False)
            site.counter += 1
            return self._transient(tuple(param.shape), site.counter, device)
        if spec.permanent:
            if self.permanent_draw is None:
                self.permanent_draw = self._make((sum(tables["sizes"][self.first:end]),), "permanent",
                                                 self.handle.generation, device)
            return self.permanent_draw
        return self._transient((sum(tables["sizes"][self.first:end]),), self.handle.forward_count, device)

    def _make(self, shape: tuple, kind: str, counter: int, device) -> FaultDraw:
        if self.joint:
            gen = make_generator(self.handle.seeds[self.spec_id], self.spec_id, "group", self.spec.site.value, kind,
                                 counter)
        else:
            gen = self.sites[0]._generator_for(kind, counter)
        return draw_faults(self.spec.fault, shape, self.spec.format, gen).to(device)

    def _transient(self, shape: tuple, counter: int, device) -> FaultDraw:
        """The draw of ``counter``; each depends on its counter alone, so making the next ones
        early changes nothing but when they are computed."""
        key = (self.handle.seeds[self.spec_id], shape, device)
        if self._ahead_key == key and counter in self._ahead:
            draw = self._ahead.pop(counter)
        else:
            self._ahead.clear()
            self._ahead_key = key
            self._run = self._run + 1 if counter == self._last_counter + 1 else 0
            draw = self._make(shape, "transient", counter, device)
            expected = self.spec.fault.expected_faults(math.prod(shape), self.spec.format.bits)
            if self._run >= self.PREFETCH_AFTER and expected <= self.PREFETCH_MAX_FAULTS:
                for upcoming in range(counter + 1, counter + self.PREFETCH):
                    self._ahead[upcoming] = self._make(shape, "transient", upcoming, device)
        self._last_counter = counter
        return draw


class ParamGroup:
    """The float-parameter sites of an injection that share a format and an operation, faulted
    in one pass per model forward, whatever the number of specs.

    Each spec keeps its own draws (:class:`_DrawUnit`); the pass joins them in one index space
    over the concatenated parameters and computes every faulted value in one codec call: the
    cost per forward is O(number of faults) plus a few operations per tensor.
    """

    def __init__(self, handle: "InjectionHandle", sites: list[SiteRuntime]):
        self.handle = handle
        self.sites = sites
        self.format = sites[0].spec.format
        self.tables: dict | None = None
        self.units: list[_DrawUnit] = []
        first = 0
        for spec_id in dict.fromkeys(site.spec_id for site in sites):
            own = [site for site in sites if site.spec_id == spec_id]
            spec = own[0].spec
            if spec.layer_mode == "all" and spec.fault.groupable and len(own) > 1:
                self.units.append(_DrawUnit(handle, own, first, joint=True))
            else:
                self.units.extend(_DrawUnit(handle, [site], first + i, joint=False) for i, site in enumerate(own))
            first += len(own)

    @staticmethod
    def build(handle: "InjectionHandle") -> list["ParamGroup"]:
        """One pass per (format, operation) over the handle's parameter sites, sites of one spec
        next to each other."""
        passes: dict[tuple, list[SiteRuntime]] = {}
        for site in handle._param_sites:
            passes.setdefault((site.spec.format, site.spec.fault.op), []).append(site)
        return [ParamGroup(handle, sites) for sites in passes.values()]

    def invalidate(self) -> None:
        self.tables = None
        for unit in self.units:
            unit.invalidate()

    def _tables(self, params: list[torch.Tensor]) -> dict | None:
        """Offsets of each tensor in the joint index space and per-element scale lookup tables."""
        device = params[0].device
        if self.tables is not None and self.tables["device"] == device:
            return self.tables
        if any(p.device != device for p in params):
            return None
        fmt = self.format
        sizes = [p.numel() for p in params]
        starts = [0]
        for size in sizes[:-1]:
            starts.append(starts[-1] + size)
        tables = {"device": device, "sizes": sizes, "total": sum(sizes), "offsets": starts,
                  "ends": torch.tensor([st + sz for st, sz in zip(starts, sizes)], dtype=torch.int64, device=device),
                  "starts": torch.tensor(starts, dtype=torch.int64, device=device), "scale": None, "zero": None}
        if fmt.needs_qparams:
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

    def _draw(self, tables: dict, active: list[bool], params: list[torch.Tensor]) -> FaultDraw:
        draws, offsets = [], []
        for unit in self.units:
            draw = unit.draw(tables, active, params)
            if draw is not None:
                draws.append(draw)
                offsets.append(tables["offsets"][unit.first])
        return FaultDraw.join(draws, offsets)

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
        params = [module._parameters[site.spec.site.value] for site, module in zip(self.sites, modules)]
        tables = self._tables(params)
        if tables is None:  # parameters on several devices: the sites draw one by one
            return {}
        fmt = self.format
        draw = self._draw(tables, active, params)
        if self._fast_route(params, draw, fmt, grad_enabled):
            out = self._prepare_numpy(params, active, draw, tables)
            if out is not None:
                return out
        index = draw.index
        # the draw's indices are sorted: a handful of searches splits them by parameter
        bounds = torch.searchsorted(index, tables["ends"])
        per_param = torch.diff(bounds, prepend=bounds.new_zeros(1))
        owner = torch.repeat_interleave(torch.arange(len(params), device=index.device), per_param)
        local = index - tables["starts"][owner]
        local_parts = local.split(per_param.tolist())
        clean = torch.cat([param.detach().reshape(-1).index_select(0, part) for param, part in zip(params, local_parts)])
        scale = zero = None
        if fmt.needs_qparams:
            channel = tables["channel_start"][owner] + local // tables["inner"][owner]
            scale = tables["scale"][channel]
            zero = None if tables["zero"] is None else tables["zero"][channel]
        old, new, faulty = fault_values(fmt, clean, draw, scale, zero)
        ranges = list(zip([0] + bounds[:-1].tolist(), bounds.tolist()))
        return self._finish(params, active, draw, tables, ranges, local, old, new, clean, faulty)

    def _finish(self, params: list[torch.Tensor], active: list[bool], draw: FaultDraw, tables: dict,
                ranges: list[tuple[int, int]], local, old, new, clean, faulty, views: list | None = None) -> dict:
        """The prepared entries of the active sites (``lo:hi`` of the joint arrays or tensors is
        each site's part), after their statistics (one :func:`hit_sums` call for all sites) and
        listeners."""
        tracked = [site.spec.track_statistics for site in self.sites]
        sums = hit_sums(self.format, old, new, clean, faulty, ranges) if any(tracked) else None
        out = {}
        for i, (site, param, is_active, (lo, hi)) in enumerate(zip(self.sites, params, active, ranges)):
            if not is_active:
                continue
            out[id(site)] = (local[lo:hi], clean[lo:hi], faulty[lo:hi]) + (() if views is None else (views[i],))
            if tracked[i]:
                site.record_sums(param, self.format, *site.float_qparams(param, self.format, is_weight=True), *sums[i])
            if self.handle._listeners and hi > lo:  # listeners hear of faulted tensors only
                site_draw = self._site_draw(draw, _tensor(local[lo:hi]), lo, hi, tables, site, param)
                self.handle._notify(site, site_draw, _tensor(old[lo:hi]), _tensor(new[lo:hi]))
        return out

    def _fast_route(self, params: list[torch.Tensor], draw: FaultDraw, fmt: NumberFormat, grad_enabled: bool) -> bool:
        """Whether this forward's faults can be computed with the sites' fast codec and written
        through numpy views of the parameters: contiguous float32 CPU parameters written in
        place. Never while autograd records: it would not see the in-place writes."""
        codec = self.sites[0].fast_codec
        if codec is None or not codec.supports(fmt, draw.op):
            return False
        if draw.arrays is None and draw.index.device.type != "cpu":
            return False
        if grad_enabled and any(p.requires_grad for p in params):
            return False
        return all(p.dtype == torch.float32 and p.device.type == "cpu" and p.is_contiguous() for p in params)

    def _prepare_numpy(self, params: list[torch.Tensor], active: list[bool], draw: FaultDraw,
                       tables: dict) -> dict[int, tuple] | None:
        """:meth:`prepare` in numpy (see :meth:`_fast_route`); None when a faulted value is not
        finite (the tensor codec keeps those as they are)."""
        fmt = self.format
        arrays = tables.get("numpy")
        if arrays is None:
            keys = ("ends", "starts") + (("channel_start", "inner", "scale") if fmt.needs_qparams else ())
            arrays = {key: tables[key].numpy() for key in keys}
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
        scale = zero = None
        if fmt.needs_qparams:
            channel = arrays["channel_start"][owner] + local // arrays["inner"][owner]
            scale = arrays["scale"][channel]
            zero = None if arrays["zero"] is None else arrays["zero"][channel]
        old, new, faulty = self.sites[0].fast_codec.code(fmt, clean, draw.op, mask, _operand(draw), scale, zero)
        return self._finish(params, active, draw, tables, ranges, local, old, new, clean, faulty, views)

    @staticmethod
    def _numpy_views(params: list[torch.Tensor], tables: dict) -> list[np.ndarray]:
        """Flat numpy views of the parameters' memory, kept while their storage stays the same."""
        key = tuple(param.data_ptr() for param in params)
        cached = tables.get("views")
        if cached is None or cached[0] != key:
            cached = (key, [param.detach().view(-1).numpy() for param in params])
            tables["views"] = cached
        return cached[1]

    def _site_draw(self, draw: FaultDraw, local: torch.Tensor, lo: int, hi: int, tables: dict, site: SiteRuntime,
                   param: torch.Tensor) -> FaultDraw:
        """The part of the joint draw that falls in one tensor, in its own flat indices."""
        offset = int(tables["starts"][self.sites.index(site)])
        sites = None
        if draw.bit_sites is not None:
            elements = draw.bit_sites[:, 0].contiguous()
            bounds = torch.tensor([offset, offset + param.numel()], device=elements.device)
            first, last = torch.searchsorted(elements, bounds).tolist()
            sites = draw.bit_sites[first:last] - torch.tensor([offset, 0], device=elements.device)
        return FaultDraw(local, draw.op, draw.mask[lo:hi], None if draw.value is None else draw.value[lo:hi], sites)


def format_error(site: SiteRuntime) -> QFaultConfigError:
    return QFaultConfigError(
        "format", None, "a number format (int<b>, uint<b>, fixed, float32, float16, bfloat16) "
        f"for the float {site.spec.site.value} of module '{site.name}' ({type(site.module).__name__})",
        hint="only quantized tensors (e.g. Brevitas QuantTensors) carry their own format",
    )


def require_format_or_quant(site: SiteRuntime) -> None:
    """Float sites need a format; Brevitas modules may pass QuantTensors (checked per forward)."""
    if site.spec.format is None and not owned_by_adapter(site.module):
        raise format_error(site)


def fault_any(site: SiteRuntime, module: nn.Module, x: Any) -> Any:
    if not site.active(module.training):
        return x
    fmt = site.spec.format
    adapter = adapter_of(x)
    if adapter is not None:
        if fmt is None:
            fmt, scale, zero = quantized_format(x, site.stats.name)
        elif fmt.needs_qparams:  # the tensor's own scale and zero point, the spec's codes
            scale, zero = adapter.scale_zero(x)
        else:
            scale = zero = None
        return adapter.with_value(x, site.corrupt(adapter.value(x), fmt, scale, zero, None, batched=True))
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        if fmt is None:
            raise format_error(site)
        scale, zero, axis = site.float_qparams(x, fmt, is_weight=False)
        # a per-tensor scale calibrated as a Python number proves the tensor finite
        finite = isinstance(scale, float) and site.spec.scale is None
        return site.corrupt(x, fmt, scale, zero, axis, batched=True, finite=finite)
    return x


def quant_output_hook(site: SiteRuntime, adapter, batched: bool):
    """A forward hook (``with_kwargs``) on a quantizer of ``site.module`` that faults the codes of
    what the quantizer returns, in the format ``adapter`` reads from the call."""
    owner = site.module

    def hook(m, args, kwargs, out):
        if not site.active(owner.training):
            return None
        qparams = quantizer_output_format(adapter, m, args, kwargs, out, site.stats.name)
        if qparams is None:
            return None
        fmt, scale, zero, axis = qparams
        value = adapter.value(out)
        reusable = (not batched and site.spec.permanent and not site.spec.track_statistics
                    and not (torch.is_grad_enabled() and value.requires_grad))
        cached = site.weight_cache
        if reusable and cached is not None and cached[0]() is value and cached[1] is scale \
                and cached[2] == site.handle.generation:
            # the very same quantized weights again (a replayed quantizer): the same faulty codes
            for draw, old, new in cached[4]:
                site.handle._notify(site, draw, old, new)
            return cached[3]
        notes: list = []
        if reusable:
            site.handle._listeners.append(lambda name, draw, old, new: notes.append((draw, old, new)))
        try:
            faulty = adapter.with_value(out, site.corrupt(value, fmt, scale, zero, axis, batched=batched))
        finally:
            if reusable:
                site.handle._listeners.pop()
        if reusable:
            site.weight_cache = (weakref.ref(value), scale, site.handle.generation, faulty, notes)
        return faulty

    return hook
