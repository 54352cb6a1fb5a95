"""Planning a campaign: its spec resolved once into typed sweep points.

A :class:`Plan` holds, for every sweep point, the point's values, its fault specs as
:class:`~qfault.injection.InjectSpec` objects (parsed here, once, never again per trial), the
fields of its stuck-at mitigation and the number of trials its stop rule asks for: a fixed
count, the sample size of Leveugle et al. (DATE 2009) for its fault population, or none for the
``ci`` rule, which decides while the campaign runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .._errors import QFaultConfigError
from ..injection import InjectSpec, quantized_bits, select_modules, tensor_value
from ._spec import CampaignSpec, point_faults, point_mitigation
from ._stats import leveugle_sample_size

#: sites whose faults act on activations (stackable: one block of a stacked batch per trial)
ACTIVATION_SITES = ("output", "input")


@dataclass(frozen=True)
class PlannedPoint:
    """One sweep point, resolved.

    Attributes:
        index: position in the sweep (a trial row's ``point``).
        values: the point's sweep values ``{dotted path: value}`` (stored with every trial row).
        faults: its fault specs (the campaign's, with the point's values set); a trial replaces
            their ``seed``.
        mitigation: the fields of its :class:`~qfault.mitigation.StuckAtSpec` without the seed
            (a trial derives it), or None without a ``mitigation`` section.
        repetitions: trials of the point (``fixed`` and ``leveugle`` rules); None where the
            ``ci`` rule decides while running.
        population: bits its faults can hit (only with ``stop.population: auto``).
        systolic: the fault space of its systolic array (a
            :class:`~qfault.systolic.FaultSpace`: one register fault per trial), or None.
    """

    index: int
    values: dict
    faults: tuple[InjectSpec, ...]
    mitigation: dict | None = None
    repetitions: int | None = None
    population: int | None = None
    systolic: Any = None

    @property
    def stackable(self) -> bool:
        """Whether trials of this point may share a forward: every fault acts on activations
        (outputs/inputs) of a fixed layer set, no stuck-at mitigation changes weights and no
        systolic array holds a per-trial fault (systolic trials stack through the array's fault
        stacks instead, when they have no other faults)."""
        if self.systolic is not None:
            return self.mitigation is None and not self.faults
        return self.mitigation is None and all(
            f.site.value in ACTIVATION_SITES and f.layer_mode == "all" for f in self.faults)


@dataclass(frozen=True)
class Plan:
    """A campaign's sweep points, resolved once (see :func:`plan_campaign`)."""

    spec: CampaignSpec
    points: tuple[PlannedPoint, ...]

    @property
    def fixed(self) -> bool:
        """Whether every point's number of trials is known up front (not the ``ci`` rule)."""
        return all(p.repetitions is not None for p in self.points)

    @property
    def stackable(self) -> bool:
        """Whether trials of every point may share a forward (see :attr:`PlannedPoint.stackable`)."""
        return all(p.stackable for p in self.points)

    @property
    def stack_cap(self) -> int:
        """The most trials one forward may hold: a point's most trials where stackable, else 1."""
        if not self.stackable:
            return 1
        if self.fixed:
            return max(p.repetitions for p in self.points)
        return self.spec.stop.max_repetitions

    @property
    def planned_trials(self) -> int:
        """Trials of the whole campaign (the ``ci`` rule counts its ``max_repetitions``)."""
        most = self.spec.stop.max_repetitions
        return sum(p.repetitions if p.repetitions is not None else most for p in self.points)


def plan_campaign(spec: CampaignSpec, model: nn.Module, sample: torch.Tensor | None = None) -> Plan:
    """Resolve ``spec`` for ``model``: sweep points with typed fault specs and trial counts.

    Args:
        spec: the campaign.
        model: the model it evaluates (``indices: each`` counts its layers; ``population: auto``
            measures the faults' populations on it).
        sample: a batch of inputs ``[B, ...]`` for ``stop.population: auto`` with activation
            faults (its first image is used).

    Returns:
        The :class:`Plan`.
    """
    num_layers = None
    if spec.sweep.get("indices") == "each":
        first = {k: v for k, v in spec.faults[0].items() if k != "indices"}
        num_layers = len(select_modules(model, InjectSpec.from_dict(first)))
    auto = spec.stop.rule == "leveugle" and spec.stop.population == "auto"
    space = systolic_space(spec, model)
    points = []
    for index, values in enumerate(spec.points(num_layers)):
        faults = tuple(InjectSpec.from_dict(data) for data in point_faults(spec.faults, values))
        population = None
        if auto:
            population = point_population(model, faults, sample) if faults else 0
            population += space.size if space is not None else 0
        points.append(PlannedPoint(index, values, faults, point_mitigation(spec.mitigation, values),
                                   planned_repetitions(spec, population), population, space))
    return Plan(spec, tuple(points))


def systolic_space(spec: CampaignSpec, model: nn.Module):
    """The :class:`~qfault.systolic.FaultSpace` of a campaign's ``systolic`` section on
    ``model`` (whose layers already run on the array, see :func:`systolic_model`), or None."""
    if spec.systolic is None:
        return None
    from ..systolic import SystolicFaults, model_array

    return SystolicFaults(**spec.systolic).space(model_array(model), model)


def systolic_model(spec: CampaignSpec, model: nn.Module) -> nn.Module:
    """``model`` with the layers of the campaign's ``systolic`` section on one shared array (in
    place; unchanged without that section)."""
    if spec.systolic is None:
        return model
    from ..layers import swap_modules
    from ..systolic import SystolicFaults, SystolicLayers, compatible_layers

    section = SystolicFaults(**spec.systolic)
    if not compatible_layers(model):
        raise QFaultConfigError("systolic.layers", section.layers, "a model with nn.Conv2d / nn.Linear layers",
                                hint=f"{type(model).__name__} has none")
    try:
        swap_modules(model, SystolicLayers(section.array, section.layers))
    except QFaultConfigError as exc:
        name = "layers" if exc.field == "names" else exc.field
        raise QFaultConfigError(f"systolic.{name}", exc.value, exc.allowed, hint=exc.hint) from None
    return model


def planned_repetitions(spec: CampaignSpec, population: int | None = None) -> int | None:
    """Trials per point for the ``fixed`` and ``leveugle`` rules; None for the adaptive ``ci``
    rule, and for ``population: auto`` without the point's ``population``."""
    stop = spec.stop
    if stop.rule == "fixed":
        return spec.repetitions
    if stop.rule == "leveugle":
        if stop.population == "auto":
            if population is None:
                return None
            size = population
        else:
            size = float("inf") if stop.population == "inf" else stop.population
        return leveugle_sample_size(size, stop.margin, stop.confidence, stop.p)
    return None


# --------------------------------------------------------------------------------------------
# fault populations


def format_bits(fmt, module: nn.Module, site: str, tensor) -> int:
    """Bits per value at a site: the spec's format, else the quantized tensor's own width (or
    its quantizer's, through the layer adapters)."""
    if fmt is not None:
        return int(fmt.bits)
    width = quantized_bits(module, "weight" if site in ("weight", "bias") else "output", tensor)
    if width is None:
        raise QFaultConfigError("stop.population", "auto", "an explicit population for faults on "
                                f"{type(module).__name__} without a format (its width is unknown)")
    return width


@torch.no_grad()
def point_population(model: nn.Module, faults: Sequence[InjectSpec], sample: torch.Tensor | None) -> int:
    """The bits ``faults`` can hit in ``model`` (see :func:`fault_population`)."""
    total = 0
    for inject_spec in faults:
        site = inject_spec.site.value
        selected = select_modules(model, inject_spec)
        if site in ("weight", "bias"):
            for _, module in selected:
                param = module._parameters[site]
                total += param.numel() * format_bits(inject_spec.format, module, site, None)
            continue
        seen: list = []
        hooks = []
        for _, module in selected:
            if site == "output":
                hooks.append(module.register_forward_hook(
                    lambda m, args, out: seen.append((m, out))))
            else:
                hooks.append(module.register_forward_pre_hook(
                    lambda m, args: seen.append((m, args[0] if args else None))))
        try:
            model(sample[:1])
        finally:
            for hook in hooks:
                hook.remove()
        for module, tensor in seen:
            value = tensor_value(tensor)
            if isinstance(value, torch.Tensor):
                total += value.numel() * format_bits(inject_spec.format, module, site, tensor)
    return max(1, total)


def fault_population(model: nn.Module, spec: CampaignSpec, point: dict, sample: torch.Tensor) -> int:
    """The number of bits the faults of one sweep point can hit: the population of single-bit
    faults of Leveugle et al. (DATE 2009) that ``stop.population: auto`` uses.

    Weights and biases: elements x bits of every selected parameter. Activations (outputs,
    inputs): elements x bits per image, measured on one forward of ``sample`` (a batch; only
    its first image is used). Summed over the point's fault specs.

    Example:
        >>> spec = CampaignSpec(faults=[{"fault": {"type": "bit_flip", "count": 1}, "site": "weight",
        ...                              "format": "int8"}], stop={"rule": "leveugle", "population": "auto"})
        >>> fault_population(torch.nn.Linear(4, 2), spec, {}, torch.zeros(1, 4))
        64
    """
    faults = [InjectSpec.from_dict(data) for data in point_faults(spec.faults, point)]
    return point_population(model, faults, sample)
