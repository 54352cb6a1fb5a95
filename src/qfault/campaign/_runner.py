"""Running a campaign: plan, golden run, trials per sweep point, stop rules, rows in the store.

``run_campaign`` orchestrates: it resolves the spec into a :class:`~qfault.campaign._plan.Plan`,
runs the golden pass (recording what trials may replay, ``_prefix.py``), hands trials
(:mod:`~qfault.campaign._trial`) to an executor (:mod:`~qfault.campaign._executors`) and is the
single writer of the store.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .._errors import QFaultConfigError, check_range
from ..injection import quantizer_name, select_modules
from ._executors import Executor, LocalExecutor
from ._outcomes import golden_run
from ._plan import Plan, PlannedPoint, plan_campaign, planned_repetitions, systolic_model
from ._prefix import PrefixCache, reusable_prefix, trace_order
from ._spec import CampaignSpec
from ._stats import mean_ci, population_std, wilson_interval
from ._store import CampaignStore, TrialRow
from ._trial import TrialContext, TrialFunction, predict


# --------------------------------------------------------------------------------------------
# model and data


def load_factory(path: str) -> Callable[..., Any]:
    """Resolve ``package.module:function``."""
    module_name, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise QFaultConfigError("model.factory", path, "an importable 'package.module:function'",
                                hint=f"{type(exc).__name__}: {exc}") from None


def build_campaign_model(source, log: Callable[[str], None] = print) -> nn.Module:
    """The model a campaign evaluates, in eval mode, on the CPU."""
    if source.source == "demo":
        from ..data import load_demo_model

        model, _ = load_demo_model(source.name, log=log, **source.kwargs)
        return model.eval()
    factory = load_factory(source.factory)
    try:
        model = factory(**source.kwargs)
    except QFaultConfigError as exc:  # name the field where the spec sets it
        if exc.field in source.kwargs:
            raise QFaultConfigError(f"model.kwargs.{exc.field}", exc.value, exc.allowed, hint=exc.hint) from None
        raise
    if source.source == "checkpoint":
        try:
            state = torch.load(source.path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise QFaultConfigError("model.path", source.path, "an existing checkpoint file") from None
        except Exception as exc:
            raise QFaultConfigError("model.path", source.path, "a readable PyTorch checkpoint",
                                    hint=f"{type(exc).__name__}: {exc}") from None
        if isinstance(state, dict) and "model_state_dict" in state:
            state = state["model_state_dict"]
        try:
            model.load_state_dict(state)
        except Exception as exc:  # name the first key that does not fit, with its shapes
            raise QFaultConfigError("model.path", source.path, f"a state dict for {type(model).__name__}",
                                    hint=_first_mismatch(model, state) or str(exc).splitlines()[0]) from None
    return model.eval()


def _first_mismatch(model: nn.Module, state: Any) -> str | None:
    """The first key where ``state`` does not fit ``model`` (missing, unexpected, another shape)."""
    if not isinstance(state, dict):
        return f"a mapping of tensors, not {type(state).__name__}"
    own = model.state_dict()
    for key, value in own.items():
        if key not in state:
            return f"missing key {key!r} (shape {tuple(value.shape)})"
        other = state[key]
        if isinstance(other, torch.Tensor) and tuple(other.shape) != tuple(value.shape):
            return f"key {key!r}: checkpoint shape {tuple(other.shape)}, model shape {tuple(value.shape)}"
    unexpected = [key for key in state if key not in own]
    if unexpected:
        return f"unexpected key {unexpected[0]!r}"
    return None


def load_batches(spec: CampaignSpec) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The evaluation batches of ``spec`` (``dataset``, ``batch_size``, ``limit``), in a fixed order.

    Returns:
        ``[(inputs [B, ...], labels [B]), ...]`` on the CPU, held in memory for the whole campaign.

    Example:
        >>> batches = load_batches(CampaignSpec(faults=[...], dataset="digits", limit=100))  # doctest: +SKIP
    """
    from ..data import build_dataset, make_loader

    dataset = build_dataset(spec.dataset)
    loader = make_loader(dataset, batch_size=spec.batch_size, limit=spec.limit)
    return [(x, y) for x, y in loader]


# --------------------------------------------------------------------------------------------
# results


@dataclass
class PointSummary:
    """Aggregate of the trials of one sweep point."""

    point: int
    values: dict
    trials: int
    accuracy_mean: float
    accuracy_std: float
    accuracy_ci: float
    counts: dict
    rates: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class CampaignResult:
    spec: CampaignSpec
    golden_accuracy: float
    points: list[PointSummary]
    store: str
    float_accuracy: float | None = None  # unquantized baseline (campaigns with a mitigation section)

    def to_dict(self) -> dict:
        return {"name": self.spec.name, "fingerprint": self.spec.fingerprint(), "store": self.store,
                "golden_accuracy": self.golden_accuracy, "float_accuracy": self.float_accuracy,
                "spec": self.spec.to_dict(),
                "points": [p.to_dict() for p in self.points]}


def summarize(spec: CampaignSpec, store: CampaignStore) -> CampaignResult:
    """Per-point aggregates with confidence intervals, from the store alone."""
    golden = store.golden()
    golden_acc = float(golden["accuracy"]) if golden else float("nan")
    float_acc = float(golden["float_accuracy"]) if golden and "float_accuracy" in golden else None
    by_point: dict[int, list[TrialRow]] = {}
    for row in store.trials():
        by_point.setdefault(row.point, []).append(row)
    points = []
    for index in sorted(by_point):
        rows = by_point[index]
        accs = [r.accuracy for r in rows]
        mean, half = mean_ci(accs, confidence=0.95)
        counts: dict[str, int] = {}
        for r in rows:
            for k, v in r.counts.items():
                counts[k] = counts.get(k, 0) + v
        images = counts.get("images", 0)
        rates = {}
        for key in ("masked", "non_critical", "sdc1", "sdc1_critical", "sdc5", "due") + tuple(
                k for k in counts if k.startswith("sdc") and k.endswith("pct")):
            if key in counts and images:
                low, high = wilson_interval(counts[key], images)
                rates[key] = {"rate": counts[key] / images, "low": low, "high": high}
        points.append(PointSummary(index, rows[0].point_values, len(rows), mean, population_std(accs),
                                   half, counts, rates))
    return CampaignResult(spec, golden_acc, points, str(store.path), float_acc)


# --------------------------------------------------------------------------------------------
# prefix reuse


def prepare_prefix(plan: Plan, model: nn.Module, batches: list, clean_pass: Callable[[], Any] | None = None):
    """Record the clean outputs that trials may replay (see ``_prefix.py``).

    ``clean_pass`` runs the fault-free model over ``batches`` (default: :func:`predict`); the
    runner passes its golden run, so one pass both computes the golden logits and records.
    Returns ``(prefix, names per point index, clean_pass's result or None if it did not run)``.
    """
    spec = plan.spec
    if not spec.reuse_prefix or not batches:
        return None, {}, None
    # the call order does not depend on the inputs (replay assumes as much): two images show it
    order = trace_order(model, batches[0][0][:2])
    # Brevitas weight quantizers recompute the same codes on every forward in eval mode
    proxies = {}
    for name, module in model.named_modules():
        attr = quantizer_name(module, "weight")
        if attr is not None:
            proxies[name] = f"{name}.{attr}" if name else attr
    stuck = set()
    if spec.mitigation is not None:
        from ..mitigation import stuck_layers

        stuck = {name for name, _ in stuck_layers(model)}
    if spec.systolic is not None:  # every layer on the array is faulted in every trial
        stuck |= set(_runs_on_array(model))
    names, constants = {}, {}
    for point in plan.points:
        faulted, float_params, sites = set(stuck), set(), set()
        for inject_spec in point.faults:
            selected = {name for name, _ in select_modules(model, inject_spec)}
            faulted.update(selected)
            sites.add((inject_spec.site.value, inject_spec.layer_mode))
            if inject_spec.site.value in ("weight", "bias") and inject_spec.format is not None:
                float_params.update(selected)  # their float weights change: requantize them
        names[point.index] = reusable_prefix(order, faulted)
        if sites == {("output", "all")} and spec.mitigation is None:
            names[point.index] += _clean_faulted_output(model, order, faulted)
        constants[point.index] = [proxy for owner, proxy in proxies.items() if owner not in float_params]
    needed = set().union(*names.values()) if names else set()
    constant_names = set().union(*constants.values()) if constants else set()
    if not needed and not constant_names:
        return None, {}, None
    prefix = PrefixCache(model, needed, constant_names)
    names = {index: names[index] + constants[index] for index in names}
    handles = prefix.record()
    try:
        result = clean_pass() if clean_pass is not None else predict(model, batches, prefix)
    finally:
        for handle in handles:
            handle.remove()
    return prefix, names, (result if clean_pass is not None else None)


def _runs_on_array(model: nn.Module) -> list[str]:
    """Names of the model's layers that run on a systolic array."""
    from ..systolic import systolic_layers

    return list(systolic_layers(model))


def _clean_faulted_output(model: nn.Module, order: dict, faulted: set[str]) -> list[str]:
    """The module whose clean output a trial may replay when a point faults the output of one
    module only: its input is clean, so the output before the fault hooks is the golden one; the
    hooks (on the module, or on its Brevitas ``act_quant`` proxy) still run on the replayed value."""
    if len(faulted) != 1:
        return []
    (name,) = faulted
    if not name or order.get(name, (0, 0, 0))[2] != 1:
        return []
    module = model.get_submodule(name)
    attr = quantizer_name(module, "output")
    if attr is not None:  # replay the proxy: its hook must run
        proxy = f"{name}.{attr}"
        return [proxy] if order.get(proxy, (0, 0, 0))[2] == 1 else []
    return [name]


# --------------------------------------------------------------------------------------------
# running


#: trials of a fixed count handed to the executor at once, by default (a crash loses at most
#: these, unstored)
TRIALS_PER_TASK = 8


def run_campaign(spec: CampaignSpec, *, executor: Executor | None = None, progress: bool = True,
                 log: Callable[[str], None] = print, model: nn.Module | None = None,
                 batches: list | None = None, trials_per_task: int = TRIALS_PER_TASK) -> CampaignResult:
    """Run (or resume) a campaign; every completed trial is committed to the store at once.

    Args:
        spec: the campaign.
        executor: where trials run (default: in this process).
        progress: show a progress bar with ETA.
        log: where messages go (e.g. training a demo model).
        model, batches: override the spec's model / data (mainly for tests and notebooks).
        trials_per_task: trials of a fixed count handed to the executor at once (classified
            together, their rows stored when the task returns: a crash loses at most the tasks
            in flight); at least the trials stacked per forward. Results do not depend on it.

    Returns:
        The :class:`CampaignResult` read back from the store.

    Example:
        >>> result = run_campaign(CampaignSpec.from_yaml("spec.yaml"))  # doctest: +SKIP
        >>> [p.accuracy_mean for p in result.points]  # doctest: +SKIP
    """
    check_range("trials_per_task", trials_per_task, 1, 10**7, integer=True)
    executor = executor or LocalExecutor()
    if spec.store_path().exists():  # refuse a foreign store or another spec before any work
        CampaignStore(spec.store_path(), spec, create=False).close()
    # data and model before a new store is created: a bad path leaves no store behind
    batches = batches if batches is not None else load_batches(spec)
    model = model if model is not None else build_campaign_model(spec.model, log=log)
    model = systolic_model(spec, model) if spec.systolic is not None and not _runs_on_array(model) else model
    with CampaignStore(spec.store_path(), spec) as store:
        plan = plan_campaign(spec, model, batches[0][0] if batches else None)
        golden = store.golden()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        # the golden pass also records what trials replay (one pass, not two)
        clean_pass = (lambda: golden_run(model, batches, device)) if golden is None else None
        prefix, prefix_names, clean = prepare_prefix(plan, model, batches, clean_pass)
        if golden is None:
            clean = clean if clean is not None else golden_run(model, batches, device)
            golden = {"logits": clean.logits, "labels": clean.labels, "accuracy": 100.0 * clean.accuracy}
            if spec.mitigation is not None:  # seed 000 reports the float baseline beside the quantized one
                from ..layers import float_mode

                with float_mode(model):
                    golden["float_accuracy"] = 100.0 * golden_run(model, batches, device).accuracy
            store.save_golden(golden)

        # trials per forward: at most a point's repetitions, 1 where faults are not per image
        stack = min(spec.trials_per_forward(device), plan.stack_cap)
        # one picklable trial function for every executor (a Ray worker gets it once)
        run_trial = TrialFunction(TrialContext(spec, model, batches, golden, prefix, prefix_names, stack,
                                               stack_cap=plan.stack_cap, plan=plan))
        workers = max(1, int(getattr(executor, "parallelism", 1)))  # stacks the ci rule runs ahead
        done = store.done()
        bar = _Progress(progress, total=plan.planned_trials, completed=len(done))
        try:
            for point in plan.points:
                if point.repetitions is not None:
                    rows = _fixed_rows(executor, run_trial, point, done, max(stack, trials_per_task))
                else:
                    rows = _adaptive_rows(executor, run_trial, point, store, stack * workers, stack)
                for row in rows:
                    store.add_trial(row)
                    bar.advance()
        finally:
            bar.close()
        return summarize(spec, store)


def _fixed_rows(executor: Executor, run_trial: TrialFunction, point: PlannedPoint, done: set,
                group: int) -> Iterator[TrialRow]:
    """The rows of a point's missing trials, ``group`` per task (classified in one pass, their
    rows stored when the task returns), in completion order."""
    todo = [(point.index, point.values, r) for r in range(point.repetitions) if (point.index, r) not in done]
    chunks = [todo[i:i + group] for i in range(0, len(todo), group)]
    for rows in executor.map(run_trial, chunks):
        yield from rows


def _adaptive_rows(executor: Executor, run_trial: TrialFunction, point: PlannedPoint, store: CampaignStore,
                   ahead: int, stack: int) -> Iterator[TrialRow]:
    """The ``ci`` rule: rows of a point until the CI of its accuracy is narrow enough.

    Trials run ahead, ``stack`` per forward and ``ahead`` in all (one stack per worker), but the
    rule decides before each row is kept, in repetition order, as if they ran one by one (extra
    rows are dropped). The caller stores each row before asking for the next.
    """
    stop = run_trial.context.spec.stop
    accs = [r.accuracy for r in store.trials() if r.point == point.index]
    repetition = len(accs)
    pending: list = []
    while repetition < stop.max_repetitions:
        if repetition >= stop.min_repetitions and mean_ci(accs, stop.confidence)[1] <= stop.half_width:
            break
        if not pending:
            count = min(ahead, stop.max_repetitions - repetition)
            upcoming = [(point.index, point.values, r) for r in range(repetition, repetition + count)]
            chunks = [upcoming[i:i + stack] for i in range(0, count, stack)]
            rows = [row for done_rows in executor.map(run_trial, chunks) for row in done_rows]
            pending = sorted(rows, key=lambda r: r.repetition)
        row = pending.pop(0)
        yield row
        accs.append(row.accuracy)
        repetition += 1


class _Progress:
    def __init__(self, enabled: bool, total: int, completed: int):
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("trials"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            self.bar.start()
            self.task = self.bar.add_task("trials", total=total, completed=completed)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def campaign_status(spec: CampaignSpec) -> dict:
    """Completed trials and the spec fingerprint of an existing store."""
    with CampaignStore(spec.store_path(), spec, create=False) as store:
        fixed = planned_repetitions(spec)  # None: decided per point (ci rule, or population auto)
        return {"store": str(store.path), "fingerprint": spec.fingerprint(), "completed": store.count(),
                "per_point": fixed, "golden": store.golden() is not None}
