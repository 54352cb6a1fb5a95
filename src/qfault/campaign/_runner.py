"""Running a campaign: plan, golden run, trials per sweep point, stop rules, rows in the store.

``run_campaign`` orchestrates: it resolves the spec into a :class:`~qfault.campaign._plan.Plan`,
runs the golden pass (recording what trials may replay, ``_prefix.py``), hands trials
(:mod:`~qfault.campaign._trial`) to an executor (:mod:`~qfault.campaign._executors`) and is the
single writer of the store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .._errors import QFaultConfigError, check_range
from ..injection import quantizer_name, select_modules
from ._executors import Executor, LocalExecutor
from ._model import campaign_model, data_digest, model_digest
from ._outcomes import golden_run
from ._plan import Plan, PlannedPoint, plan_campaign, planned_repetitions, systolic_model
from ._prefix import PrefixCache, reusable_prefix, trace_order
from ._spec import CampaignSpec
from ._stats import mean_ci, population_std, wilson_interval
from ._store import CampaignStore, TrialRow
from ._trial import TrialContext, TrialFunction, predict


# --------------------------------------------------------------------------------------------
# model and data


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
    path = spec.store_path()
    # a foreign, damaged or other spec's store is refused before any work, every file untouched
    stored = CampaignStore.check(path, spec, writing=True) if path.exists() and path.stat().st_size > 0 else None
    recipe = model is None  # workers may build the model themselves from the spec
    # data, model and every model-dependent check before a store is created or changed
    batches = batches if batches is not None else load_batches(spec)
    model = model if model is not None else campaign_model(spec, log=log)
    if spec.systolic is not None and not _runs_on_array(model):
        model = systolic_model(spec, model)
    plan = check_campaign(spec, model, batches)
    digests = {"model_digest": model_digest(model), "data_digest": data_digest(batches)}
    if stored is not None:
        _check_digests(path, stored["meta"], digests)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    # the golden pass also records what trials replay (one pass, not two)
    prefix, prefix_names, clean = prepare_prefix(plan, model, batches, lambda: golden_run(model, batches, device))
    clean = clean if clean is not None else golden_run(model, batches, device)
    golden = stored["golden"] if stored is not None else None
    if golden is not None:  # resuming: the trials so far were classified against this golden run
        _check_golden(path, golden, clean)
    else:
        golden = {"logits": clean.logits, "labels": clean.labels, "accuracy": _percent_correct(clean)}
        if spec.mitigation is not None:  # seed 000 reports the float baseline beside the quantized one
            from ..layers import float_mode

            with float_mode(model):
                golden["float_accuracy"] = _percent_correct(golden_run(model, batches, device))
    with CampaignStore(path, spec, golden=golden, meta=digests) as store:
        if store.golden() is None:  # a store created without one (by hand or an older version)
            store.save_golden(golden)
        if store.extension:
            log(f"Extending {path}: " + "; ".join(store.extension))
        context = TrialContext(spec, model, batches, golden, prefix, prefix_names, 1, stack_cap=plan.stack_cap,
                               plan=plan, digest=digests["model_digest"] if recipe else None)
        # trials per forward: at most a point's repetitions, 1 where faults are not per image
        stack = context.stack = min(spec.trials_per_forward(device), plan.stack_cap)
        # one picklable trial function for every executor (a Ray worker gets it once)
        run_trial = TrialFunction(context)
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


def _percent_correct(run) -> float:
    """Top-1 accuracy in percent, computed as a trial's (``100 * correct / images``), so that a
    point without faults averages to exactly the golden accuracy."""
    return 100.0 * run.correct / max(1, len(run))


def _check_digests(path, meta: dict, digests: dict) -> None:
    """Refuse to add trials of another model or data set to a store (older stores lack digests)."""
    for key, what in (("model_digest", "model"), ("data_digest", "evaluated data")):
        if meta.get(key) is not None and meta[key] != digests[key]:
            raise QFaultConfigError("store", str(path), f"a store of the same {what}",
                                    hint=f"the {what} changed since the store was created ({key} "
                                         f"{meta[key][:12]} -> {digests[key][:12]}): its trials belong to the "
                                         "old one; restore it or use another store path (store=...)")


def _check_golden(path, golden: dict, clean) -> None:
    """Refuse to resume when a fresh fault-free run differs from the stored one, bit for bit."""
    same = (torch.equal(golden["logits"], clean.logits)
            and (golden["labels"] is None) == (clean.labels is None)
            and (golden["labels"] is None or torch.equal(golden["labels"], clean.labels)))
    if not same:
        raise QFaultConfigError("store", str(path), "a store whose golden run this model reproduces",
                                hint="a fault-free run now gives other logits than the stored golden run (the "
                                     "model, the data or the arithmetic changed): its trials would not compare; "
                                     "use another store path (store=...)")


def check_campaign(spec: CampaignSpec, model: nn.Module, batches: list) -> Plan:
    """The campaign's plan, after every check that needs the model, all errors at once.

    Every sweep point's fault specs must select modules of ``model``, be injected and meet the
    values in a forward of one image (where sites and bit widths are checked), ``CHECK_GROUP``
    specs per injection, the forward ended once the faulted modules ran; a mitigation section
    is injected once per distinct section. Nothing is written anywhere.

    Raises:
        QFaultConfigError: a :class:`~qfault.config.ConfigErrors` naming each bad field
            (``faults[i].<field>``, ``mitigation``), with the sweep point where it matters.
    """
    from ..config import ConfigErrors

    errors = ConfigErrors()
    try:
        plan = plan_campaign(spec, model, batches[0][0] if batches else None)
    except QFaultConfigError as exc:
        errors.append(exc)
        errors.raise_if_any()
    sample = batches[0][0][:1] if batches else None
    found: dict[tuple, list] = {}  # one entry per distinct error: (where, error, the points with it)
    was_training = model.training
    model.eval()
    try:
        for point, where, error in _model_errors(model, plan, sample):
            key = (where, error.field, repr(error.value), error.allowed)
            found.setdefault(key, [where, error, []])[2].append(point.values)
    finally:
        model.train(was_training)
    for where, error, points in sorted(found.values(), key=lambda entry: entry[0]):  # in spec order
        if len(points) < len(plan.points):  # name where it happens unless it happens everywhere
            more = f" and {len(points) - 1} more" if len(points) > 1 else ""
            hint = "; ".join(filter(None, [error.hint, f"at sweep point {points[0]}{more}"]))
            error = QFaultConfigError(error.field, error.value, error.allowed, hint=hint)
        errors.append(error, where)
    errors.raise_if_any()
    return plan


def validate_campaign(spec: CampaignSpec, log: Callable[[str], None] = print) -> Plan:
    """Build the campaign's data and model and run :func:`check_campaign` (what ``run`` checks
    before it writes anything); nothing is written (a demo model may be trained into its cache).

    Example:
        >>> plan = validate_campaign(CampaignSpec.from_yaml("spec.yaml"))  # doctest: +SKIP
    """
    batches = load_batches(spec)
    return check_campaign(spec, campaign_model(spec, log=log), batches)


#: fault specs checked together in one injection and one forward (a sweep over single bits has
#: thousands of points); a group with an error is checked again spec by spec
CHECK_GROUP = 64


def _model_errors(model: nn.Module, plan: Plan, sample) -> Iterator[tuple[PlannedPoint, str, QFaultConfigError]]:
    """``(point, where, error)`` for each fault spec (and mitigation) of the plan that ``model``
    refuses: selected, injected and run on ``sample`` (faults meet the values on a forward)."""
    from ..injection import InjectSpec, inject

    spec_fields = {f.name for f in fields(InjectSpec)}

    def where(i: int, exc: QFaultConfigError) -> str:  # a fault model's fields (bits, ber) sit under "fault"
        root = str(exc.field).split(".")[0]
        return f"faults[{i}]" + ("" if root in spec_fields or "/" in root else ".fault")

    checks = []  # (point, spec index, spec, selected (name, module) pairs)
    for point in plan.points:
        for i, inject_spec in enumerate(point.faults):
            try:
                selected = select_modules(model, inject_spec)
            except QFaultConfigError as exc:
                yield point, where(i, exc), exc
                continue
            checks.append((point, i, replace(inject_spec, seed=0, track_statistics=False), selected))

    def run(group: list) -> None:
        modules = {id(m): m for _, _, _, selected in group for _, m in selected}
        # hooks of a layer chosen per forward attach after the stopping hooks: run the whole forward
        whole = any(c[2].layer_mode == "random_per_forward" for c in group)
        with inject(model, [c[2] for c in group], selections=[c[3] for c in group]), torch.no_grad():
            if sample is not None:
                _checked_forward(model, sample, [] if whole else list(modules.values()))

    for start in range(0, len(checks), CHECK_GROUP):
        group = checks[start:start + CHECK_GROUP]
        try:
            run(group)
        except QFaultConfigError:
            for check in group:
                try:
                    run([check])
                except QFaultConfigError as exc:
                    yield check[0], where(check[1], exc), exc
    if any(point.mitigation is not None for point in plan.points):
        from ..mitigation import StuckAtSpec
    mitigations: dict[str, QFaultConfigError | None] = {}  # one check per distinct section
    for point in plan.points:
        if point.mitigation is None:
            continue
        key = json.dumps(point.mitigation, sort_keys=True, default=str)
        if key not in mitigations:
            mitigations[key] = None
            try:
                with inject(model, StuckAtSpec(**point.mitigation, seed=0)):
                    pass
            except QFaultConfigError as exc:
                mitigations[key] = exc
        if mitigations[key] is not None:
            yield point, "mitigation", mitigations[key]


class _FaultsMet(Exception):
    """Ends a checking forward once every faulted module has run."""


def _checked_forward(model: nn.Module, sample: torch.Tensor, modules: list[nn.Module]) -> None:
    """A forward of ``sample`` in which the injected faults meet the values, ended as soon as
    each of ``modules`` (the faulted ones) has run once: the rest checks nothing more (no
    ``modules``: the whole forward)."""
    waiting = {id(m) for m in modules}
    if not waiting:
        model(sample)
        return

    def ran(module, args, out) -> None:
        waiting.discard(id(module))
        if not waiting:
            raise _FaultsMet

    hooks = [m.register_forward_hook(ran) for m in modules]  # after the injection's own hooks
    try:
        model(sample)
    except _FaultsMet:
        pass
    finally:
        for hook in hooks:
            hook.remove()


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
