"""One trial of a campaign: its seed, its faulty pass over the evaluation batches, its row.

A trial is ``(point index, point values, repetition)``. Its seed derives from the campaign seed,
the point's values and the repetition only (:func:`trial_seed`), so its row does not depend on
where, in which order or on how many workers trials run. Its fault specs come from the
campaign's :class:`~qfault.campaign._plan.Plan` (parsed once), with seeds derived per spec.

:class:`TrialFunction` is the picklable form of one campaign's trial (model, evaluation batches,
golden run and spec in a :class:`TrialContext`, shipped once per worker). Trials of one point
whose faults act on activations may share a forward (:func:`execute_trials`): each evaluation
batch is repeated once per trial and block ``k`` gets the faults trial ``k`` alone would get.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

import torch
from torch import nn

from .._errors import QFaultConfigError
from ..faults import derive_seed
from ..injection import inject, select_modules
from ._outcomes import classify
from ._plan import Plan, PlannedPoint, plan_campaign
from ._spec import CampaignSpec
from ._store import TrialRow

#: a trial: (point index, point values, repetition)
Item = tuple[int, dict, int]


def trial_seed(spec: CampaignSpec, point: dict, repetition: int) -> int:
    """Seed of one trial: from the campaign seed, the point's values and the repetition only,
    so results do not depend on the executor, the order or the number of workers. Values of
    ``spec.paired`` paths are left out: such points share their trials' seeds."""
    if spec.paired:
        point = {k: v for k, v in point.items() if k not in spec.paired}
    return derive_seed(spec.seed, json.dumps(point, sort_keys=True), repetition) >> 1


def stuck_seed(spec: CampaignSpec, point: dict, repetition: int) -> int:
    """Seed of a trial's stuck-at fault maps: the trial seed of the point without its
    ``mitigation.method``, so every method of a sweep is compared on the same maps."""
    paired = {k: v for k, v in point.items() if k != "mitigation.method"}
    return derive_seed(trial_seed(spec, paired, repetition), "stuck") >> 1


# --------------------------------------------------------------------------------------------
# forwards


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
            prefix=None) -> torch.Tensor:
    """Concatenated output logits ``[N, C]`` (float32, CPU) of ``model`` over ``batches``.

    ``prefix`` (a ``PrefixCache``) is told the index of each batch, for recorded outputs it
    replays.

    Example:
        >>> batches = [(torch.ones(3, 4), torch.zeros(3)), (torch.ones(2, 4), torch.zeros(2))]
        >>> predict(torch.nn.Linear(4, 2), batches).shape
        torch.Size([5, 2])
    """
    outputs = []
    for i, (x, _) in enumerate(batches):
        if prefix is not None:
            prefix.batch = i
        out = model(x)
        outputs.append(getattr(out, "value", out).detach().float().cpu())
    return torch.cat(outputs)


@torch.no_grad()
def stacked_logits(model: nn.Module, batches: list, trials: int, prefix=None) -> torch.Tensor:
    """Logits ``[trials, N, C]``: every batch repeated ``trials`` times in one forward, the
    ``k``-th block of each output gathered into trial ``k`` (float32, CPU)."""
    outputs = []
    try:
        if prefix is not None:
            prefix.repeat = trials
        for i, (x, _) in enumerate(batches):
            if prefix is not None:
                prefix.batch = i
            out = model(x.repeat(trials, *([1] * (x.dim() - 1))))
            out = getattr(out, "value", out).detach().float().cpu()
            outputs.append(out.view(trials, x.shape[0], *out.shape[1:]))
    finally:
        if prefix is not None:
            prefix.repeat = 1
    return torch.cat(outputs, dim=1)


def stacking_is_exact(model: nn.Module, batches: list, golden_logits: torch.Tensor, trials: int) -> bool:
    """Whether a clean forward of ``trials`` stacked copies reproduces ``golden_logits`` bit for bit
    on the first and the last batch (kernels may pick other algorithms for other batch sizes)."""
    if trials <= 1 or not batches:
        return trials <= 1
    ends = sorted({0, len(batches) - 1})
    offsets = [0]
    for x, _ in batches:
        offsets.append(offsets[-1] + x.shape[0])
    for i in ends:
        stacked = stacked_logits(model, [batches[i]], trials)
        if not all(torch.equal(stacked[k], golden_logits[offsets[i]:offsets[i + 1]]) for k in range(trials)):
            return False
    return True


# --------------------------------------------------------------------------------------------
# the trial itself


@dataclass
class TrialContext:
    """Everything a trial needs besides its item: shipped once to every worker.

    ``golden`` is the dict stored by the campaign (``logits``, ``labels``, ``accuracy``);
    ``prefix``/``prefix_names`` optionally carry the runner's recorded clean outputs (a
    ``PrefixCache`` and, per point index, the module names a trial of that point may replay).
    ``plan`` is the campaign's :class:`~qfault.campaign._plan.Plan` (None: resolved from ``spec``
    and ``model`` on first use).
    """

    spec: Any
    model: nn.Module
    batches: list
    golden: dict
    prefix: Any = None
    prefix_names: dict = field(default_factory=dict)
    #: trials a forward may evaluate at once (1: one trial per forward; see ``Plan.stackable``)
    stack: int = 1
    #: the most trials a forward may hold (1 where faults are not per image): ``stack`` on
    #: another device is ``min(spec.trials_per_forward(device), stack_cap)``
    stack_cap: int = 1
    #: stack size -> whether a clean stacked forward reproduced the golden logits (checked once)
    exact_stacks: dict = field(default_factory=dict)
    #: point index -> the modules each of its fault specs selects (selected once per point)
    selections: dict = field(default_factory=dict)
    plan: Plan | None = None
    #: the model's :func:`~qfault.campaign._model.model_digest` when it was built from the spec:
    #: then a worker builds it from the spec itself (Brevitas models do not pickle) and must get
    #: this digest; None: the model object is shipped
    digest: str | None = None

    def point(self, index: int, values: dict) -> PlannedPoint:
        """The planned point ``index`` (whose values must be ``values``)."""
        if self.plan is None:
            self.plan = plan_campaign(self.spec, self.model, self.batches[0][0] if self.batches else None)
        planned = self.plan.points[index]
        if planned.values != values:
            raise ValueError(f"a trial of point {index} with values {values}; the campaign's point {index} "
                             f"has {planned.values}")
        return planned

    def inject(self, index: int, specs: list):
        """``inject(model, specs)`` for a trial of point ``index``, selecting modules once per point."""
        if index not in self.selections:
            self.selections[index] = [select_modules(self.model, s) for s in specs]
        return inject(self.model, specs, selections=self.selections[index])


def execute_trial(context: TrialContext, item: Item, *, golden_logits: torch.Tensor | None = None) -> TrialRow:
    """Run one trial ``(point index, point values, repetition)`` and return its ``TrialRow``.

    The trial seed comes from :func:`trial_seed`, one derived seed per fault spec of the planned
    point; the faults are injected for one pass over the batches and the outcomes classified
    against the golden run. ``golden_logits`` overrides the stored golden logits (a worker on
    another device compares against its own fault-free run).
    """
    return _rows(context, [_run_trial(context, item)], golden_logits)[0]


def execute_trials(context: TrialContext, items: list[Item], *,
                   golden_logits: torch.Tensor | None = None) -> list[TrialRow]:
    """Rows of several trials of one sweep point, ``context.stack`` of them per forward.

    Each block of a stacked forward is faulted exactly as its trial alone would be (same seeds,
    same draws), so the rows equal those of :func:`execute_trial` one by one, provided stacking
    leaves the fault-free logits bit-identical: that is checked once per stack size (on the first
    and last batch, on this worker's device); where it fails, the trials run one by one.
    """
    if context.stack <= 1 or len(items) <= 1:  # one forward per trial, one classification for all
        return _rows(context, [_run_trial(context, item) for item in items], golden_logits)
    if len(items) > context.stack:
        return [row for start in range(0, len(items), context.stack)
                for row in execute_trials(context, items[start:start + context.stack], golden_logits=golden_logits)]
    index, values, _ = items[0]
    if any(item[0] != index for item in items):
        raise ValueError("stacked trials must belong to one sweep point")
    point = context.point(index, values)
    golden = context.golden["logits"] if golden_logits is None else golden_logits
    if point.systolic is not None:
        return _systolic_stacked_rows(context, items, point, golden, golden_logits)
    exact = context.exact_stacks.get(len(items))
    if exact is None:  # some kernels pick another algorithm for another batch size: check each size once
        exact = context.exact_stacks[len(items)] = stacking_is_exact(context.model, context.batches, golden,
                                                                     len(items))
    if not exact:
        return _rows(context, [_run_trial(context, item) for item in items], golden_logits)
    seeds = [trial_seed(context.spec, values, repetition) for _, _, repetition in items]
    prefix = context.prefix
    names = context.prefix_names.get(index, ())
    if prefix is not None and not prefix.repeatable(names):
        prefix, names = None, ()
    start = time.monotonic()
    specs = [replace(f, seed=0, track_statistics=False) for f in point.faults]
    with context.inject(index, specs) as handle:
        handle.stack_trials([[derive_seed(seed, i) >> 1 for i in range(len(specs))] for seed in seeds])
        with prefix.replay(names) if prefix is not None else contextlib.nullcontext():
            logits = stacked_logits(context.model, context.batches, len(items), prefix)
        changed = handle.trial_changed.tolist()
    seconds = (time.monotonic() - start) / len(items)
    runs = [(item, seeds[k], logits[k], changed[k], seconds, {}) for k, item in enumerate(items)]
    return _rows(context, runs, golden_logits)


def systolic_fault(spec: CampaignSpec, point: PlannedPoint, repetition: int, batches: int) -> tuple:
    """The register fault of one trial of a systolic campaign, and the batch it evaluates.

    Trial ``r`` of a point takes element ``r`` of a permutation of the point's fault space keyed by
    the campaign seed and the point's values (sampling without replacement), and batch ``r`` of a
    permutation of the batches redrawn every pass over them (``batches: one``; None: all).

    Returns:
        ``(fault index, ArrayFault, batch index or None)``.
    """
    from ..systolic import permuted_index

    key = derive_seed(spec.seed, json.dumps(point.values, sort_keys=True), "systolic")
    index = permuted_index(key, repetition, point.systolic.size)
    batch = None
    if spec.systolic["batches"] == "one":
        batch = permuted_index(f"{key}:batches", repetition, batches)
    return index, point.systolic.fault(index), batch


def _run_trial(context: TrialContext, item: Item) -> tuple:
    """One trial's faulty pass: ``(item, seed, logits [N, C], values changed, seconds, extra)``;
    ``extra`` holds what a systolic trial adds: the golden rows it compares with and its details."""
    spec = context.spec
    index, values, repetition = item
    point = context.point(index, values)
    seed = trial_seed(spec, values, repetition)
    if point.systolic is not None:
        return _run_systolic_trial(context, item, point, seed)
    # statistics are not part of a trial's row: skip their cost
    specs = [replace(f, seed=derive_seed(seed, i) >> 1, track_statistics=False) for i, f in enumerate(point.faults)]
    faulted = [0]
    prefix = context.prefix
    replay = prefix.replay(context.prefix_names.get(index, ())) if prefix is not None else contextlib.nullcontext()
    start = time.monotonic()
    stuck = contextlib.nullcontext()
    if point.mitigation is not None:
        from ..injection import inject
        from ..mitigation import StuckAtSpec  # importing it registers its handler with inject

        stuck = inject(context.model, StuckAtSpec(**point.mitigation, seed=stuck_seed(spec, values, repetition)))
        faulted[0] += stuck.changed_weights
    injected = context.inject(index, specs) if specs else contextlib.nullcontext()
    def count(name, draw, old, new) -> None:  # values a fault changed
        faulted[0] += int((old != new).sum())

    with stuck, injected as handle, replay:
        if handle is not None:
            handle.add_listener(count)
        logits = predict(context.model, context.batches, prefix)
    return item, seed, logits, faulted[0], time.monotonic() - start, {}


def _run_systolic_trial(context: TrialContext, item: Item, point: PlannedPoint, seed: int) -> tuple:
    from ..systolic import model_array

    spec = context.spec
    index, values, repetition = item
    fault_index, fault, batch = systolic_fault(spec, point, repetition, len(context.batches))
    array = model_array(context.model)
    batches = context.batches if batch is None else [context.batches[batch]]
    if batch is None:
        rows = None
    else:
        start_row = sum(x.shape[0] for x, _ in context.batches[:batch])
        rows = (start_row, start_row + context.batches[batch][0].shape[0])
    specs = [replace(f, seed=derive_seed(seed, i) >> 1, track_statistics=False) for i, f in enumerate(point.faults)]
    start = time.monotonic()
    injected = context.inject(index, specs) if specs else contextlib.nullcontext()
    with array.add_fault(fault), injected:
        logits = predict(context.model, batches)
    details = _systolic_details(fault_index, fault, batch, repetition, len(context.batches))
    return item, seed, logits, 1, time.monotonic() - start, {"rows": rows, "details": details}


def _systolic_stacked_rows(context: TrialContext, items: list[Item], point: PlannedPoint, golden: torch.Tensor,
                           golden_logits: torch.Tensor | None) -> list[TrialRow]:
    """Systolic trials of one point in shared forwards: each trial's batch (or all batches) is a
    block of the stacked input and runs with its own register fault (``stack_faults``), so every
    block is computed exactly as its trial alone. Trials are grouped by batch size; a group whose
    fault-free stacked forward does not reproduce the golden logits bit for bit (kernels may
    change with the batch size) runs one trial at a time."""
    from ..systolic import model_array

    spec = context.spec
    array = model_array(context.model)
    drawn = [systolic_fault(spec, point, item[2], len(context.batches)) for item in items]
    offsets = [0]
    for x, _ in context.batches:
        offsets.append(offsets[-1] + x.shape[0])
    groups: dict[int, list[int]] = {}
    for k, (_, _, batch) in enumerate(drawn):
        size = offsets[-1] if batch is None else context.batches[batch][0].shape[0]
        groups.setdefault(size, []).append(k)
    rows: list = [None] * len(items)
    for size, members in groups.items():
        batches = [[context.batches[drawn[k][2]]] if drawn[k][2] is not None else context.batches for k in members]
        key = ("systolic", len(members), size)  # kernels depend on the stacked batch size only
        stacked_inputs = [torch.cat([trial[i][0] for trial in batches]) for i in range(len(batches[0]))]
        if key not in context.exact_stacks:
            expected = [golden[offsets[drawn[k][2]]:offsets[drawn[k][2] + 1]] if drawn[k][2] is not None else golden
                        for k in members]
            clean = predict(context.model, [(x, None) for x in stacked_inputs])
            per_trial = clean.view(len(members), -1, *clean.shape[1:]) if len(batches[0]) == 1 else None
            context.exact_stacks[key] = per_trial is not None and all(
                torch.equal(per_trial[j], expected[j]) for j in range(len(members)))
        if not context.exact_stacks[key]:
            for k in members:
                rows[k] = _rows(context, [_run_trial(context, items[k])], golden_logits)[0]
            continue
        start = time.monotonic()
        with array.stack_faults([[drawn[k][1]] for k in members]):
            logits = predict(context.model, [(x, None) for x in stacked_inputs])
        seconds = (time.monotonic() - start) / len(members)
        logits = logits.view(len(members), -1, *logits.shape[1:])
        for j, k in enumerate(members):
            item = items[k]
            fault_index, fault, batch = drawn[k]
            seed = trial_seed(spec, item[1], item[2])
            start_row = 0 if batch is None else offsets[batch]
            extra = {"rows": (start_row, start_row + logits.shape[1]),
                     "details": _systolic_details(fault_index, fault, batch, item[2], len(context.batches))}
            rows[k] = _rows(context, [(item, seed, logits[j], 1, seconds, extra)], golden_logits)[0]
    return rows


def _systolic_details(fault_index: int, fault, batch: int | None, repetition: int, batches: int) -> dict:
    return {"fault_index": fault_index, "fault": {"line": fault.line, "channel": fault.channel, "x": fault.x,
                                                  "y": fault.y, "bit": fault.bit, "polarity": fault.polarity},
            "batch": batch, "epoch": None if batch is None else repetition // batches}


def _rows(context: TrialContext, runs: list[tuple], golden_logits: torch.Tensor | None) -> list[TrialRow]:
    """The ``TrialRow`` of each run of :func:`_run_trial` (or of a stacked forward), all
    classified in one vectorized pass; classification time is shared out among them."""
    spec = context.spec
    golden = context.golden["logits"] if golden_logits is None else golden_logits
    labels = context.golden["labels"]
    if any(run[5].get("rows") is not None for run in runs):  # trials of one batch each: one by one
        rows = []
        for run in runs:
            start_row, stop_row = run[5]["rows"] or (0, golden.shape[0])
            rows.extend(_classified(spec, [run], golden[start_row:stop_row],
                                    None if labels is None else labels[start_row:stop_row]))
        return rows
    return _classified(spec, runs, golden, labels)


def _classified(spec: CampaignSpec, runs: list[tuple], golden: torch.Tensor, labels) -> list[TrialRow]:
    start = time.monotonic()
    logits = runs[0][2] if len(runs) == 1 else torch.cat([run[2] for run in runs])
    outcome = classify(golden, logits, labels, atol=spec.atol, sdc_thresholds=spec.sdc_thresholds, trials=len(runs))
    share = (time.monotonic() - start) / len(runs)
    per_image = outcome.outcome_index().view(len(runs), -1) if any(run[5].get("details") for run in runs) else None
    rows = []
    for k, (((index, point, repetition), seed, _, changed, seconds, extra), counts) in enumerate(
            zip(runs, outcome.block_counts(len(runs)))):
        accuracy = 100.0 * counts["correct_faulty"] / max(1, counts["images"])
        details = extra.get("details")
        if details is not None:
            details = {**details, "outcomes": per_image[k].tolist()}
        rows.append(TrialRow(index, repetition, point, seed, accuracy, counts, int(changed), seconds + share, details))
    return rows


class TrialFunction:
    """Picklable ``item -> TrialRow`` for one campaign (what ``run_campaign`` maps over trials).

    Use it instead of a closure so that remote executors ship the model, batches and golden run
    once per worker. :meth:`to` moves the model and batches to a worker's device; on a device other
    than the CPU the golden logits are recomputed there once, so ``masked`` keeps meaning
    "bit-equal to the fault-free run on the same hardware".

    Example:
        >>> function = TrialFunction(TrialContext(spec, model, batches, golden))  # doctest: +SKIP
        >>> rows = function([(0, spec.points()[0], 0), (0, spec.points()[0], 1)])  # doctest: +SKIP
    """

    def __init__(self, context: TrialContext):
        self.context = context
        self.device = torch.device("cpu")
        self._golden_logits: torch.Tensor | None = None

    def to(self, device: str | torch.device) -> "TrialFunction":
        device = torch.device(device)
        if device == self.device:
            return self
        ctx = self.context
        model = ctx.model.to(device)
        batches = [(x.to(device), y) for x, y in ctx.batches]
        # recorded clean outputs stay on the CPU: a worker on another device recomputes them
        keep = device.type == "cpu"
        stack = min(ctx.spec.trials_per_forward(device), ctx.stack_cap)  # checked again on first use
        self.context = TrialContext(ctx.spec, model, batches, ctx.golden, ctx.prefix if keep else None,
                                    ctx.prefix_names if keep else {}, stack, stack_cap=ctx.stack_cap, plan=ctx.plan)
        self.device = device
        self._golden_logits = None if device.type == "cpu" else predict(model, batches)
        return self

    def __call__(self, item: Item | list[Item]):
        """One trial's row for an item ``(point index, point values, repetition)``; the list of
        rows for a list of items of one point (stacked per forward where the context allows)."""
        if isinstance(item, list):
            return execute_trials(self.context, item, golden_logits=self._golden_logits)
        return execute_trial(self.context, item, golden_logits=self._golden_logits)

    def __getstate__(self) -> dict:
        # always ship the CPU form; the receiving worker moves it to its own device
        if self.device.type != "cpu":
            raise RuntimeError("ship a TrialFunction from the CPU (call .to(device) on the worker)")
        ctx = self.context
        if ctx.digest is None:
            return {"context": ctx}
        # what builds the model travels, never the model: the worker builds it from the spec
        prefix = ctx.prefix.without_model() if ctx.prefix is not None else None
        return {"context": replace(ctx, model=None, prefix=prefix, selections={}, exact_stacks={})}

    def __setstate__(self, state: dict) -> None:
        ctx = state["context"]
        if ctx.model is None:
            ctx = replace(ctx, model=_rebuilt_model(ctx))
            if ctx.prefix is not None:
                ctx.prefix.model = ctx.model
        self.__init__(ctx)


def _rebuilt_model(context: TrialContext) -> nn.Module:
    """The campaign's model built on this worker from the spec, proven equal to the driver's."""
    from ._model import campaign_model, model_digest

    model = campaign_model(context.spec, log=lambda *_: None)
    digest = model_digest(model)
    if digest != context.digest:
        raise QFaultConfigError("model", context.spec.model.source, "the model the campaign's driver built",
                                hint=f"this worker built another one (model digest {digest[:12]}, the driver's "
                                     f"{context.digest[:12]}): give every node the same model files, demo cache "
                                     "(QFAULT_CACHE) and library versions")
    return model
