"""Seed 001's Python API (``utils.fault_injection`` of its document), on qfault's core.

Scripts written for the seed's "Programmatic Usage" run with their import changed to
``from qfault.compat.fat import ...``::

    injector = FaultInjector()
    model = injector.inject(model, config)          # the same model object, changed in place
    stats = FaultStatistics(num_layers=injector.get_num_layers(model))
    injector.set_statistics(model, stats)
    for epoch in range(num_epochs):
        injector.update_epoch(model, epoch)
        injector.reset_counters(model)
        injector.set_condition_injector(model, len(train_loader), config.step_interval)
        ...
    stats.print_report()
    model = injector.remove(model)                  # bit-exactly as before

What the document states holds. Faults go into the integer codes of the outputs of every
``QuantIdentity``, ``QuantReLU`` and ``QuantHardTanh`` (layer ids 0, 1, ... in module order),
each element hit with ``probability`` percent, afresh on every faulty forward
(:func:`qfault.inject` with ``site="output"``; the specs of :func:`qfault.train.fault_specs`).
A *training step* is one forward of the model in training mode (or every forward after
``set_mode(model, "train")``): steps are faulty only in epochs 0, N, 2N, ... of
``epoch_interval``, and there with probability ``step_interval``, the faulty steps of an epoch
drawn at its start (:func:`qfault.train.faulty_steps`: from the seed and the epoch;
``set_condition_injector`` sets the share, else ``config.step_interval`` applies). Forwards in
eval mode are faulty whenever injection is enabled. ``apply_during`` is the caller's business
(``set_enabled``), as in the document's training loop. ``config.seed`` fixes everything (faults,
schedule, the random layer of ``mode="layer"``); without it a fresh seed is drawn from torch's
global generator at each :meth:`FaultInjector.inject`, so ``torch.manual_seed`` makes an
unseeded run repeatable. The differences from the seed's code are listed in
docs/differences.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import torch
from torch import nn

from .._errors import QFaultConfigError, check_bool, check_choice, check_range
from .._registry import Registry
from ..faults import FaultModel, corrupt, derive_seed, get_fault, uniform_index
from ..formats import IntFormat
from ..injection import InjectionHandle, InjectSpec, SiteStats, Statistics, inject, select_modules
from ..train import FAULT_MODELS, FaultInjectionConfig, fault_specs, faulty_steps

__all__ = [
    "FaultInjectionConfig", "FaultInjector", "FaultStatistics", "LayerStatistics", "InjectionStrategy",
    "RandomStrategy", "LSBFlipStrategy", "MSBFlipStrategy", "FullFlipStrategy", "get_strategy", "STRATEGIES",
]

#: the attribute of an injected model that holds what :meth:`FaultInjector.inject` did to it
_STATE = "_qfault_fat_injection"
USE_MODES = ("auto", "train", "eval")


def _random_seed() -> int:
    return int(torch.randint(1 << 62, (1,)))


# -- statistics --------------------------------------------------------------------------------


_COUNTS = ("total_values", "faulted_values", "forwards", "sample_count", "rmse_sum", "cosine_sum")


def _merged(layer_id: int, parts: list[SiteStats]) -> SiteStats:
    """One layer's statistics: the sums of its parts (exact: every average is a sum over
    forwards divided by a count)."""
    out = SiteStats(name=f"layer {layer_id}", layer_id=layer_id)
    for part in parts:
        for name in _COUNTS:
            setattr(out, name, getattr(out, name) + getattr(part, name))
    return out


def _zero(stats: SiteStats) -> None:
    for name in _COUNTS:
        setattr(stats, name, type(getattr(stats, name))())


class LayerStatistics:
    """The statistics of one injection layer (a snapshot; the seed's attribute names).

    Attributes:
        layer_id: the layer (0-based, model order).
        total_activations: values seen in the faulty forwards.
        injected_count: values whose code changed.
        injection_rate: ``100 * injected_count / total_activations`` (%).
        avg_rmse: mean over the forwards with a change of the RMSE between clean and faulty codes
            over the changed values (integer units).
        avg_cosine_similarity: mean over the same forwards of the cosine similarity of the whole
            clean and faulty code tensors (0-1; 1.0 when nothing changed).
        sample_count: forwards in which some value changed.
        forwards: faulty forwards seen (with or without a change).
    """

    def __init__(self, stats: SiteStats) -> None:
        self._stats = stats

    layer_id = property(lambda self: self._stats.layer_id)
    total_activations = property(lambda self: self._stats.total_values)
    injected_count = property(lambda self: self._stats.faulted_values)
    sample_count = property(lambda self: self._stats.sample_count)
    forwards = property(lambda self: self._stats.forwards)
    rmse_sum = property(lambda self: self._stats.rmse_sum)
    cosine_similarity_sum = property(lambda self: self._stats.cosine_sum)
    injection_rate = property(lambda self: self._stats.rate)
    avg_rmse = property(lambda self: self._stats.avg_rmse)
    avg_cosine_similarity = property(lambda self: self._stats.avg_cosine_similarity)

    def to_dict(self) -> dict[str, Any]:
        """The seed's per-layer keys."""
        return {"layer_id": self.layer_id, "total_activations": self.total_activations,
                "injected_count": self.injected_count, "injection_rate": self.injection_rate,
                "avg_rmse": self.avg_rmse, "avg_cosine_similarity": self.avg_cosine_similarity,
                "sample_count": self.sample_count}

    def __repr__(self) -> str:
        return (f"LayerStatistics(layer_id={self.layer_id}, injected_count={self.injected_count}, "
                f"total_activations={self.total_activations}, injection_rate={self.injection_rate:.4f})")


class FaultStatistics:
    """Per-layer injection statistics: counts, RMSE and cosine similarity (seed 001).

    Attached to an injected model with :meth:`FaultInjector.set_statistics`, it reads the
    statistics qfault's core collects per site (:class:`qfault.injection.SiteStats`), live:
    ``layer_stats``, :meth:`print_report` and :meth:`to_dict` always show everything recorded
    so far. :meth:`record` adds a forward by hand.

    Args:
        num_layers: the layers reported (ids ``0 .. num_layers - 1``); a higher id recorded or
            attached adds the layers up to it.
    """

    def __init__(self, num_layers: int = 0) -> None:
        check_range("num_layers", num_layers, 0, 10**6, integer=True)
        self.num_layers = num_layers
        self._own: dict[int, SiteStats] = {i: SiteStats(name=f"layer {i}", layer_id=i) for i in range(num_layers)}
        self._live: dict[int, list[SiteStats]] = {}

    # -- what the injector feeds -------------------------------------------------------------
    def _attach(self, layer_id: int, stats: SiteStats) -> None:
        self._layer(layer_id)
        self._live.setdefault(layer_id, []).append(stats)

    def _detach(self, layer_id: int, stats: SiteStats) -> None:
        """Keep what ``stats`` counted, stop reading it."""
        live = self._live.get(layer_id, [])
        if any(s is stats for s in live):
            live[:] = [s for s in live if s is not stats]
            self._own[layer_id] = _merged(layer_id, [self._own[layer_id], stats])

    def _layer(self, layer_id: int) -> SiteStats:
        """Layer ``layer_id``'s own counts (the layers up to it are added when missing)."""
        for i in range(self.num_layers, layer_id + 1):
            self._own[i] = SiteStats(name=f"layer {i}", layer_id=i)
        self.num_layers = max(self.num_layers, layer_id + 1)
        return self._own[layer_id]

    # -- the seed's API ----------------------------------------------------------------------
    @torch.no_grad()
    def record(self, clean_int: torch.Tensor, faulty_int: torch.Tensor, mask: torch.Tensor | None,
               layer_id: int) -> None:
        """Add one forward of layer ``layer_id``: its clean and faulty code tensors (same shape,
        any integer or float dtype holding codes). ``mask`` (the positions hit) is accepted for
        the seed's signature; as there, the values whose code changed are counted."""
        check_range("layer_id", layer_id, 0, 10**6, integer=True)
        clean = clean_int.detach().reshape(-1).double()
        faulty = faulty_int.detach().reshape(-1).to(clean.device).double()
        if clean.shape != faulty.shape:
            raise QFaultConfigError("faulty_int", tuple(faulty_int.shape),
                                    f"the shape of clean_int {tuple(clean_int.shape)}")
        delta = faulty - clean
        self._layer(layer_id).record(numel=clean.numel(), changed=int((delta != 0).sum()),
                                     sq_err_sum=float((delta * delta).sum()), clean_sq=float((clean * clean).sum()),
                                     dot_delta=float((clean * delta).sum()), faulty_sq=float((faulty * faulty).sum()))

    @property
    def layer_stats(self) -> dict[int, LayerStatistics]:
        """Layer id -> :class:`LayerStatistics` (a snapshot of everything recorded so far)."""
        return {i: LayerStatistics(_merged(i, [self._own[i], *self._live.get(i, [])])) for i in sorted(self._own)}

    def reset(self) -> None:
        """Forget everything recorded (the layers stay)."""
        for layer_id in self._own:
            self._own[layer_id] = SiteStats(name=f"layer {layer_id}", layer_id=layer_id)
        for live in self._live.values():
            for stats in live:
                _zero(stats)

    def _statistics(self) -> Statistics:
        return Statistics([layer._stats for layer in self.layer_stats.values()])

    def get_summary(self) -> dict[str, Any]:
        """``{"total_injected", "total_activations", "overall_injection_rate", "num_layers"}``."""
        return self._statistics().to_dict()["summary"]

    @property
    def overall_injection_rate(self) -> float:
        """Values changed per value seen, over every layer (%)."""
        return self.get_summary()["overall_injection_rate"]

    def to_dict(self) -> dict[str, Any]:
        """``{"summary": {...}, "layers": {"<id>": {layer_id, total_activations, injected_count,
        injection_rate, avg_rmse, avg_cosine_similarity, sample_count}}}`` (what the seed's code
        writes; ids as strings, as in the JSON file)."""
        return {"summary": self.get_summary(),
                "layers": {str(i): layer.to_dict() for i, layer in self.layer_stats.items()}}

    def save_to_file(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` as JSON."""
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    @classmethod
    def load_from_file(cls, path: str | os.PathLike) -> "FaultStatistics":
        """Statistics from a file :meth:`save_to_file` wrote (averages kept exactly)."""
        with open(path) as f:
            data = json.load(f)
        try:
            out = cls(num_layers=int(data["summary"]["num_layers"]))
            for key, layer in data["layers"].items():
                i, count = int(key), int(layer["sample_count"])
                out._own[i] = SiteStats(name=f"layer {i}", layer_id=i, total_values=int(layer["total_activations"]),
                                        faulted_values=int(layer["injected_count"]), sample_count=count,
                                        rmse_sum=float(layer["avg_rmse"]) * count,
                                        cosine_sum=float(layer["avg_cosine_similarity"]) * count)
        except (KeyError, TypeError, ValueError) as exc:
            raise QFaultConfigError("path", str(path), "a statistics file written by save_to_file",
                                    hint=f"{type(exc).__name__}: {exc}") from None
        return out

    def print_report(self) -> None:
        """Print the table of the seed's document: Layer, Injected, Total, Rate (%), RMSE,
        Cos Sim (%) and a TOTAL row."""
        print("\n" + "=" * 90)
        print("FAULT INJECTION STATISTICS")
        print("=" * 90)
        print(f"{'Layer':<8} {'Injected':<12} {'Total':<14} {'Rate (%)':<12} {'RMSE':<12} {'Cos Sim (%)':<12}")
        print("-" * 90)
        for i, s in self.layer_stats.items():
            print(f"{i:<8} {s.injected_count:<12} {s.total_activations:<14} {s.injection_rate:<12.4f} "
                  f"{s.avg_rmse:<12.4f} {s.avg_cosine_similarity * 100:<12.4f}")
        print("-" * 90)
        summary = self.get_summary()
        print(f"{'TOTAL':<8} {summary['total_injected']:<12} {summary['total_activations']:<14} "
              f"{summary['overall_injection_rate']:<12.4f}")
        print("=" * 90 + "\n")

    def __repr__(self) -> str:
        return (f"FaultStatistics(num_layers={self.num_layers}, "
                f"overall_injection_rate={self.overall_injection_rate:.4f})")


# -- strategies --------------------------------------------------------------------------------


class InjectionStrategy:
    """How a hit code changes: one of qfault's fault models (``fault_type``) on explicit codes.

    Codes are ``bit_width``-bit integers, two's complement when ``signed``; every result is a
    code of that format (signed flips wrap within the N bits).
    """

    #: the seed's name of the strategy
    name: str = ""
    #: the qfault fault model it is
    fault_type: str = ""

    def fault(self, probability: float = 5.0) -> FaultModel:
        """The qfault fault model, each element hit with ``probability`` percent."""
        return get_fault(self.fault_type, probability=probability)

    def inject(self, int_tensor: torch.Tensor, mask: torch.Tensor, bit_width: int | torch.Tensor,
               signed: bool | torch.Tensor, device: torch.device | str | None = None, *, seed: int | None = None,
               narrow_range: bool = False) -> torch.Tensor:
        """Faulty codes: ``int_tensor`` with the codes where ``mask`` is true changed.

        Args:
            int_tensor: integer codes (any shape).
            mask: bool, broadcastable to ``int_tensor``: the codes to change.
            bit_width: bits per code (1-16).
            signed: two's-complement codes if true, else unsigned ``0 .. 2**bit_width - 1``.
            device: where the result goes (default: ``int_tensor``'s device).
            seed: fixes the random values of ``random`` (None: drawn from torch's global generator).
            narrow_range: signed codes in ``[-(2**(b-1) - 1), 2**(b-1) - 1]`` (the range of
                ``random``'s values; flips act on the bits whatever the range).

        Returns:
            A new tensor of ``int_tensor``'s dtype and shape.

        Raises:
            QFaultConfigError: a float tensor, or codes outside the format.
        """
        x = torch.as_tensor(int_tensor)
        if device is not None:
            x = x.to(device)
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise QFaultConfigError("int_tensor", str(x.dtype), "an integer tensor of codes",
                                    hint="convert values to codes first, e.g. torch.round(value / scale).int()")
        bits = int(round(float(bit_width)))
        check_bool("narrow_range", narrow_range)
        fmt = IntFormat(bits=bits, signed=bool(signed), range="narrow" if narrow_range else "full")
        hit = torch.broadcast_to(torch.as_tensor(mask, dtype=torch.bool, device=x.device), x.shape)
        faulty, _ = corrupt(x[hit], fmt, self.fault(100.0), seed=_random_seed() if seed is None else seed)
        out = x.clone()
        out[hit] = faulty
        return out

    def apply(self, codes: torch.Tensor, bit_width: int, signed: bool, *, seed: int | None = None,
              narrow_range: bool = False) -> torch.Tensor:
        """Every code of ``codes`` changed (:meth:`inject` with a mask of all true)."""
        codes = torch.as_tensor(codes)
        return self.inject(codes, torch.ones(codes.shape, dtype=torch.bool, device=codes.device), bit_width, signed,
                           seed=seed, narrow_range=narrow_range)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RandomStrategy(InjectionStrategy):
    """``random``: ``((x + r - min) mod R) + min`` with ``r`` uniform on the code range: a
    uniform code of the range, independent of ``x``."""

    name, fault_type = "random", FAULT_MODELS["random"]


class LSBFlipStrategy(InjectionStrategy):
    """``lsb_flip``: ``x XOR 1``."""

    name, fault_type = "lsb_flip", FAULT_MODELS["lsb_flip"]


class MSBFlipStrategy(InjectionStrategy):
    """``msb_flip``: bit ``N-1`` flipped (the sign bit of signed codes: 4-bit ``3 -> -5``)."""

    name, fault_type = "msb_flip", FAULT_MODELS["msb_flip"]


class FullFlipStrategy(InjectionStrategy):
    """``full_flip``: every bit flipped (bitwise NOT within N bits: 4-bit ``3 -> -4``)."""

    name, fault_type = "full_flip", FAULT_MODELS["full_flip"]


#: the seed's ``injection_type`` names (the core's fault names as aliases)
STRATEGIES: Registry = Registry("injection_type")
for _cls in (RandomStrategy, LSBFlipStrategy, MSBFlipStrategy, FullFlipStrategy):
    STRATEGIES.register(_cls.name, _cls, aliases=(_cls.fault_type,) if _cls.fault_type != _cls.name else ())
del _cls


def get_strategy(name: str) -> InjectionStrategy:
    """The strategy of an ``injection_type`` (``random``, ``lsb_flip``, ``msb_flip``,
    ``full_flip``); an unknown name lists the valid ones.

    Example:
        >>> get_strategy("msb_flip").apply(torch.tensor([3, -3]), bit_width=4, signed=True).tolist()
        [-5, 5]
    """
    return STRATEGIES.get(name)()


# -- the injector ------------------------------------------------------------------------------


class _Injection:
    """What :meth:`FaultInjector.inject` did to one model: a handle per injecting layer (so one
    layer's probability changes alone), the schedule, the attached statistics."""

    def __init__(self, model: nn.Module, config: FaultInjectionConfig, seed: int, types: tuple[str, ...],
                 names: list[str], layers: list[int]) -> None:
        self.model = model
        self.config = config
        self.seed = seed
        self.types = types
        self.names = names
        self.layers = layers
        self.probability = [float(config.probability)] * len(names)
        self.generation = [0] * len(names)
        self.handles: dict[int, InjectionHandle] = {}
        self.statistics: FaultStatistics | None = None
        self.enabled = True
        self.use_mode = "auto"
        self.epoch = 0
        self.step = 0
        self.schedule: tuple[int, float, torch.Tensor] | None = None  # (epoch, step_interval, steps)
        self.hook = None

    def spec(self, layer: int) -> InjectSpec:
        base = fault_specs(self.config, 0)[0]  # the config's fault, gradient mode and persistence
        fault = dataclasses.replace(base.fault, probability=self.probability[layer])
        seed = derive_seed(self.seed, "fat", "layer", layer, self.generation[layer]) >> 1
        return dataclasses.replace(base, fault=fault, types=self.types, indices=(layer,), layer_mode="all",
                                   seed=seed, track_statistics=self.statistics is not None)

    def build(self, layer: int) -> None:
        """(Re)inject one layer; fresh fault streams when the old ones were used."""
        old = self.handles.pop(layer, None)
        if old is not None:
            if old.forward_count:
                self.generation[layer] += 1
            self.detach(layer, old)
            old.remove()
        handle = inject(self.model, self.spec(layer))
        handle.enable() if self.enabled else handle.disable()
        self.handles[layer] = handle
        if self.statistics is not None:
            self.statistics._attach(layer, handle.statistics().sites[0])

    def detach(self, layer: int, handle: InjectionHandle) -> None:
        if self.statistics is not None:
            self.statistics._detach(layer, handle.statistics().sites[0])

    def set_statistics(self, statistics: FaultStatistics) -> None:
        tracking = self.statistics is not None
        for layer, handle in self.handles.items():
            self.detach(layer, handle)
        self.statistics = statistics
        for layer, handle in list(self.handles.items()):
            if tracking:
                statistics._attach(layer, handle.statistics().sites[0])
            else:
                self.build(layer)  # the handles start collecting statistics

    def step_is_faulty(self, step: int) -> bool:
        """Whether training step ``step`` of the current epoch has faults."""
        epoch, share, steps = self.schedule if self.schedule is not None and self.schedule[0] == self.epoch \
            else (self.epoch, self.config.step_interval, None)
        if steps is None or step >= len(steps):  # drawn as far as needed, the prefix kept
            drawn = self.draw_steps(share, max(step + 1, 64, 2 * (0 if steps is None else len(steps))))
            steps = drawn if steps is None else torch.cat([steps, drawn[len(steps):]])
            self.schedule = (epoch, share, steps)
        return bool(steps[step])

    def draw_steps(self, share: float, count: int) -> torch.Tensor:
        config = dataclasses.replace(self.config, step_interval=share, apply_during="both")
        return faulty_steps(config, self.seed, self.epoch, count)

    def before_forward(self, module: nn.Module, args: Any) -> None:
        faulty = self.enabled
        if self.use_mode == "train" or (self.use_mode == "auto" and module.training):
            faulty = self.step_is_faulty(self.step) and faulty
            self.step += 1
        for handle in self.handles.values():
            handle.enable() if faulty else handle.disable()

    def remove(self) -> None:
        if self.hook is not None:
            self.hook.remove()
        for layer, handle in self.handles.items():
            self.detach(layer, handle)
            handle.remove()
        self.handles.clear()


def _found(model: nn.Module) -> str:
    kinds: dict[str, int] = {}
    for _, module in model.named_modules():
        kinds[type(module).__name__] = kinds.get(type(module).__name__, 0) + 1
    return ", ".join(f"{n} {name}" for name, n in sorted(kinds.items(), key=lambda kv: -kv[1])[:6])


class FaultInjector:
    """Adds fault injection after the Brevitas activation layers of a model, reversibly.

    The model keeps its structure (qfault's injection hooks the layers); :meth:`remove` makes
    it bit-exactly as before. The state of an injection travels with the model, so any
    ``FaultInjector`` can control it.

    Example:
        >>> from qfault.testing import tiny_digits_brevitas
        >>> config = FaultInjectionConfig(enabled=True, probability=10.0, seed=0)
        >>> injector = FaultInjector()
        >>> model = injector.inject(tiny_digits_brevitas(), config)
        >>> injector.get_num_layers(model)
        2
        >>> stats = FaultStatistics(num_layers=2)
        >>> injector.set_statistics(model, stats)
        >>> with torch.no_grad():
        ...     _ = model(torch.rand(16, 1, 8, 8))
        >>> stats.layer_stats[0].total_activations
        1024
        >>> model = injector.remove(model)
    """

    #: the activation layers faults follow (class names)
    QUANT_TARGET_LAYERS: set[str] = {"QuantIdentity", "QuantReLU", "QuantHardTanh"}

    @staticmethod
    def _state(model: nn.Module) -> _Injection | None:
        return model.__dict__.get(_STATE)

    def inject(self, model: nn.Module, config: FaultInjectionConfig | dict) -> nn.Module:
        """Fault the outputs of the target layers of ``model`` as ``config`` says.

        Args:
            model: a model with Brevitas ``QuantIdentity``/``QuantReLU``/``QuantHardTanh``
                layers; changed in place (an earlier injection is replaced).
            config: a :class:`FaultInjectionConfig` (or its dict). ``enabled=False`` leaves the
                model untouched. ``mode="layer"`` faults layer ``injection_layer`` only; -1 draws
                it from the seed at each call.

        Returns:
            ``model`` itself.

        Raises:
            QFaultConfigError: an invalid config, a model without target layers (naming what
                it has), ``injection_layer`` not a layer of the model.
        """
        if isinstance(config, dict):
            config = FaultInjectionConfig.from_dict(config)
        if not isinstance(config, FaultInjectionConfig):
            raise QFaultConfigError("config", type(config).__name__, "a FaultInjectionConfig or its dict")
        if not isinstance(model, nn.Module):
            raise QFaultConfigError("model", type(model).__name__, "an nn.Module")
        if not config.enabled:
            return model
        self.remove(model)
        types = tuple(sorted(self.QUANT_TARGET_LAYERS))
        spec = dataclasses.replace(fault_specs(config, 0)[0], types=types, indices=None, layer_mode="all")
        try:
            names = [name for name, _ in select_modules(model, spec)]
        except QFaultConfigError:
            raise QFaultConfigError("model", type(model).__name__, "a model with Brevitas "
                                    + "/".join(types) + " layers", hint=f"found {_found(model)}") from None
        seed = config.seed if config.seed is not None else _random_seed()
        if config.mode == "full_model":
            layers = list(range(len(names)))
        elif config.injection_layer == -1:
            layers = [uniform_index(len(names), seed, "fat", "layer")]
        elif config.injection_layer < len(names):
            layers = [config.injection_layer]
        else:
            raise QFaultConfigError("injection_layer", config.injection_layer,
                                    f"-1 or a layer id in [0, {len(names) - 1}] ({len(names)} injection layers)")
        state = _Injection(model, config, seed, types, names, layers)
        try:
            for layer in layers:
                state.build(layer)
        except Exception:
            state.remove()
            raise
        state.hook = model.register_forward_pre_hook(state.before_forward, prepend=True)
        model.__dict__[_STATE] = state
        if config.verbose:
            print(f"Fault injection enabled: {len(names)} injection layers added")
            print(f"  Mode: {config.mode}")
            print(f"  Probability: {config.probability}%")
            print(f"  Injection type: {config.injection_type}")
            print(f"  Apply during: {config.apply_during}")
            if config.mode == "layer" and config.injection_layer == -1:
                print(f"Randomly selected layer {layers[0]} for injection")
        return model

    def remove(self, model: nn.Module) -> nn.Module:
        """Undo :meth:`inject`: ``model`` computes bit-exactly as before. Attached statistics
        keep what they counted. Returns ``model``."""
        state = self._state(model)
        if state is not None:
            state.remove()
            del model.__dict__[_STATE]
        return model

    def get_num_layers(self, model: nn.Module) -> int:
        """The number of injection layers (target layers of the model; 0 when not injected)."""
        state = self._state(model)
        return 0 if state is None else len(state.names)

    def layer_names(self, model: nn.Module) -> list[str]:
        """The qualified module names of the injection layers, by layer id."""
        state = self._state(model)
        return [] if state is None else list(state.names)

    def set_enabled(self, model: nn.Module, enabled: bool) -> None:
        """Switch every injection layer on or off (off: the model computes cleanly)."""
        check_bool("enabled", enabled)
        state = self._state(model)
        if state is not None:
            state.enabled = enabled
            for handle in state.handles.values():
                handle.enable() if enabled else handle.disable()

    def update_probability(self, model: nn.Module, probability: float, layer_id: int | None = None) -> None:
        """Set the probability (%, 0-100) of every layer, or of layer ``layer_id`` only."""
        check_range("probability", probability, 0.0, 100.0)
        state = self._state(model)
        if state is None:
            return
        if layer_id is not None:
            check_range("layer_id", layer_id, 0, len(state.names) - 1, integer=True)
        for layer in range(len(state.names)) if layer_id is None else [layer_id]:
            state.probability[layer] = float(probability)
            if layer in state.handles:
                state.build(layer)

    def set_statistics(self, model: nn.Module, statistics: FaultStatistics) -> None:
        """Collect the statistics of every injection layer into ``statistics`` from now on."""
        if not isinstance(statistics, FaultStatistics):
            raise QFaultConfigError("statistics", type(statistics).__name__, "a FaultStatistics")
        state = self._state(model)
        if state is not None:
            state.set_statistics(statistics)

    def update_epoch(self, model: nn.Module, epoch: int) -> None:
        """Start epoch ``epoch`` (0-based): its training steps are counted from 0 and have
        faults only when ``epoch`` is a multiple of ``epoch_interval``."""
        check_range("epoch", epoch, 0, 2**62, integer=True)
        state = self._state(model)
        if state is not None and epoch != state.epoch:
            state.epoch, state.step = epoch, 0

    def reset_counters(self, model: nn.Module) -> None:
        """Count the training steps of the current epoch from 0 again."""
        state = self._state(model)
        if state is not None:
            state.step = 0

    def set_condition_injector(self, model: nn.Module, num_iterations: int, step_interval: float) -> None:
        """Draw which of the current epoch's training steps are faulty: each with probability
        ``step_interval`` (0-1), from the seed and the epoch. ``num_iterations`` steps are drawn
        now; further steps are drawn the same way. Call it after :meth:`update_epoch`."""
        check_range("num_iterations", num_iterations, 0, 2**31, integer=True)
        check_range("step_interval", step_interval, 0.0, 1.0)
        state = self._state(model)
        if state is not None:
            state.schedule = (state.epoch, float(step_interval), state.draw_steps(float(step_interval), num_iterations))

    def set_mode(self, model: nn.Module, mode: str) -> None:
        """Which forwards are training steps: ``"train"`` every forward, ``"eval"`` none (every
        forward faulty while enabled), ``"auto"`` (the default) those in training mode."""
        check_choice("mode", mode, USE_MODES)
        state = self._state(model)
        if state is not None:
            state.use_mode = mode

    def __repr__(self) -> str:
        return "FaultInjector()"
