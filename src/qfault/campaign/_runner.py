"""Running a campaign: golden run, trials per sweep point, stop rules, results in the store."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

import torch
from torch import nn

from .._errors import QFaultConfigError
from ..faults import derive_seed
from ..injection import InjectSpec, quantizer_name, select_modules
from ._outcomes import golden_run
from ._prefix import PrefixCache, reusable_prefix, trace_order
from ._spec import CampaignSpec, point_faults
from ._stats import leveugle_sample_size, mean_ci, population_std, wilson_interval
from ._store import CampaignStore, TrialRow


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
        except Exception as exc:
            raise QFaultConfigError("model.path", source.path, f"a state dict for {type(model).__name__}",
                                    hint=str(exc).splitlines()[0]) from None
    return model.eval()


def load_batches(spec: CampaignSpec) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The evaluation batches, in a fixed order (held in memory for the whole campaign)."""
    from ..data import build_dataset, make_loader

    dataset = build_dataset(spec.dataset)
    loader = make_loader(dataset, batch_size=spec.batch_size, limit=spec.limit)
    return [(x, y) for x, y in loader]


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
            prefix: PrefixCache | None = None) -> torch.Tensor:
    """Concatenated output logits ``[N, C]`` (float32, CPU)."""
    outputs = []
    for i, (x, _) in enumerate(batches):
        if prefix is not None:
            prefix.batch = i
        out = model(x)
        outputs.append(getattr(out, "value", out).detach().float().cpu())
    return torch.cat(outputs)


# --------------------------------------------------------------------------------------------
# executors


class Executor(Protocol):
    """Runs trial functions; results come back as an iterator in any order. An optional
    ``parallelism`` attribute (default 1) says how many items it runs at once."""

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterable[Any]: ...


class LocalExecutor:
    """In-process, one trial after another."""

    def map(self, fn, items):
        for item in items:
            yield fn(item)


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
# running


def _repetitions(spec: CampaignSpec, population: int | None = None) -> int | None:
    """Trials per point for the fixed and Leveugle rules; None for the adaptive CI rule.
    ``population`` is the point's fault population when the Leveugle rule says ``auto``."""
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


def _format_bits(fmt, module: nn.Module, site: str, tensor) -> int:
    """Bits per value at a site: the spec's format, else the Brevitas tensor's own width."""
    if fmt is not None:
        return int(fmt.bits)
    width = getattr(tensor, "bit_width", None)
    if width is None:  # a float output of a Brevitas layer: its quantizer's width
        proxy = getattr(module, "weight_quant" if site in ("weight", "bias") else "act_quant", None)
        width = proxy.bit_width() if proxy is not None and hasattr(proxy, "bit_width") else None
    if width is None:
        raise QFaultConfigError("stop.population", "auto", "an explicit population for faults on "
                                f"{type(module).__name__} without a format (its width is unknown)")
    return int(round(float(width)))


@torch.no_grad()
def fault_population(model: nn.Module, spec: CampaignSpec, point: dict, sample: torch.Tensor) -> int:
    """The number of bits the faults of one sweep point can hit: the population of single-bit
    faults of Leveugle et al. (DATE 2009) that ``stop.population: auto`` uses.

    Weights and biases: elements x bits of every selected parameter. Activations (outputs,
    inputs): elements x bits per image, measured on one forward of ``sample`` (a batch; only
    its first image is used). Summed over the point's fault specs.
    """
    total = 0
    for data in point_faults(spec.faults, point):
        inject_spec = InjectSpec.from_dict(data)
        site = inject_spec.site.value
        selected = select_modules(model, inject_spec)
        if site in ("weight", "bias"):
            for _, module in selected:
                param = module._parameters[site]
                tensor = None
                if inject_spec.format is None and site == "weight" and hasattr(module, "quant_weight"):
                    tensor = module.quant_weight()
                total += param.numel() * _format_bits(inject_spec.format, module, site, tensor)
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
            value = getattr(tensor, "value", tensor)
            if isinstance(value, torch.Tensor):
                total += value.numel() * _format_bits(inject_spec.format, module, site, tensor)
    return max(1, total)


def _prepare_prefix(spec: CampaignSpec, model: nn.Module, batches: list, points: list[dict],
                    clean_pass: Callable[[], Any] | None = None):
    """Record the clean outputs that trials may replay (see ``_prefix.py``).

    ``clean_pass`` runs the fault-free model over ``batches`` (default: :func:`predict`); the
    runner passes its golden run, so one pass both computes the golden logits and records.
    Returns ``(prefix, names per point, clean_pass's result or None if it did not run)``.
    """
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
    names, constants = {}, {}
    for index, point in enumerate(points):
        faulted, float_params, sites = set(), set(), set()
        for data in point_faults(spec.faults, point):
            inject_spec = InjectSpec.from_dict(data)
            selected = {name for name, _ in select_modules(model, inject_spec)}
            faulted.update(selected)
            sites.add((inject_spec.site.value, inject_spec.layer_mode))
            if inject_spec.site.value in ("weight", "bias") and inject_spec.format is not None:
                float_params.update(selected)  # their float weights change: requantize them
        if spec.mitigation is not None:
            from ..mitigation import stuck_layers

            faulted.update(name for name, _ in stuck_layers(model))
        names[index] = reusable_prefix(order, faulted)
        if sites == {("output", "all")} and spec.mitigation is None:
            names[index] += _clean_faulted_output(model, order, faulted)
        constants[index] = [proxy for owner, proxy in proxies.items() if owner not in float_params]
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


def trial_seed(spec: CampaignSpec, point: dict, repetition: int) -> int:
    """Seed of one trial: from the campaign seed, the point's values and the repetition only,
    so results do not depend on the executor, the order or the number of workers."""
    return derive_seed(spec.seed, json.dumps(point, sort_keys=True), repetition) >> 1


#: trials of a fixed count handed to the executor at once (a crash loses at most these, unstored)
TRIALS_PER_TASK = 8


def run_campaign(spec: CampaignSpec, *, executor: Executor | None = None, progress: bool = True,
                 log: Callable[[str], None] = print, model: nn.Module | None = None,
                 batches: list | None = None) -> CampaignResult:
    """Run (or resume) a campaign; every completed trial is committed to the store at once.

    Args:
        spec: the campaign.
        executor: where trials run (default: in this process).
        progress: show a progress bar with ETA.
        model, batches: override the spec's model / data (mainly for tests and notebooks).

    Returns:
        The :class:`CampaignResult` read back from the store.
    """
    executor = executor or LocalExecutor()
    if spec.store_path().exists():  # refuse a foreign store or another spec before any work
        CampaignStore(spec.store_path(), spec, create=False).close()
    # data and model before a new store is created: a bad path leaves no store behind
    batches = batches if batches is not None else load_batches(spec)
    model = model if model is not None else build_campaign_model(spec.model, log=log)
    with CampaignStore(spec.store_path(), spec) as store:
        num_layers = None
        if spec.sweep.get("indices") == "each":
            first = {k: v for k, v in spec.faults[0].items() if k != "indices"}
            num_layers = len(select_modules(model, InjectSpec.from_dict(first)))
        points = spec.points(num_layers)
        golden = store.golden()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        # the golden pass also records what trials replay (one pass, not two)
        clean_pass = (lambda: golden_run(model, batches, device)) if golden is None else None
        prefix, prefix_names, clean = _prepare_prefix(spec, model, batches, points, clean_pass)
        if golden is None:
            clean = clean if clean is not None else golden_run(model, batches, device)
            golden = {"logits": clean.logits, "labels": clean.labels, "accuracy": 100.0 * clean.accuracy}
            if spec.mitigation is not None:  # seed 000 reports the float baseline beside the quantized one
                from ..mitigation import float_mode

                with float_mode(model):
                    golden["float_accuracy"] = 100.0 * golden_run(model, batches, device).accuracy
            store.save_golden(golden)
        if spec.stop.rule == "leveugle" and spec.stop.population == "auto":
            sample = batches[0][0] if batches else None
            per_point = [_repetitions(spec, fault_population(model, spec, point, sample)) for point in points]
        else:
            per_point = [_repetitions(spec)] * len(points)
        fixed = max(per_point) if per_point[0] is not None else None
        done = store.done()
        planned = sum(n if n is not None else spec.stop.max_repetitions for n in per_point)

        from ._executors import TrialContext, TrialFunction, stackable

        # trials per forward: at most a point's repetitions, 1 where faults are not per image
        stack_cap = (fixed if fixed is not None else spec.stop.max_repetitions) if stackable(spec, points) else 1
        stack = min(spec.trials_per_forward(device), stack_cap)
        # one picklable trial function for every executor (a Ray worker gets it once)
        run_trial = TrialFunction(TrialContext(spec, model, batches, golden, prefix, prefix_names, stack,
                                               stack_cap=stack_cap))

        workers = max(1, int(getattr(executor, "parallelism", 1)))  # stacks the ci rule runs ahead
        bar = _Progress(progress, total=planned, completed=len(done))
        try:
            for index, point in enumerate(points):
                if fixed is not None:
                    todo = [(index, point, r) for r in range(per_point[index]) if (index, r) not in done]
                    # several trials per task: classified in one pass, their rows stored when it returns
                    group = max(stack, TRIALS_PER_TASK)
                    chunks = [todo[i:i + group] for i in range(0, len(todo), group)]
                    for rows in executor.map(run_trial, chunks):
                        for row in rows:
                            store.add_trial(row)
                            bar.advance()
                    continue
                # adaptive: repeat until the CI of the accuracy is narrow enough. Trials run ahead,
                # `stack` per forward and one stack per worker, but the rule decides before each row
                # is kept, in repetition order, as if they ran one by one (extra rows are dropped)
                stop = spec.stop
                accs = [r.accuracy for r in store.trials() if r.point == index]
                repetition = len(accs)
                pending: list = []
                while repetition < stop.max_repetitions:
                    if repetition >= stop.min_repetitions and mean_ci(accs, stop.confidence)[1] <= stop.half_width:
                        break
                    if not pending:
                        ahead = min(stack * workers, stop.max_repetitions - repetition)
                        upcoming = [(index, point, r) for r in range(repetition, repetition + ahead)]
                        chunks = [upcoming[i:i + stack] for i in range(0, ahead, stack)]
                        rows = [row for done_rows in executor.map(run_trial, chunks) for row in done_rows]
                        pending = sorted(rows, key=lambda r: r.repetition)
                    row = pending.pop(0)
                    store.add_trial(row)
                    accs.append(row.accuracy)
                    repetition += 1
                    bar.advance()
        finally:
            bar.close()
        return summarize(spec, store)


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
        fixed = _repetitions(spec)  # None: decided per point (ci rule, or population auto)
        return {"store": str(store.path), "fingerprint": spec.fingerprint(), "completed": store.count(),
                "per_point": fixed, "golden": store.golden() is not None}
