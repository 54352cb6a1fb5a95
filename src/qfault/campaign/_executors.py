"""Executors beyond the in-process one: trial contexts and a Ray executor.

A campaign's trials are independent: a trial is ``(point index, point values, repetition)`` and
its seed derives from the campaign seed, the point's values and the repetition only
(:func:`~qfault.campaign.trial_seed`), so the rows do not depend on where, in which order or on how
many workers the trials run. The single writer stays in the driver: executors only compute
:class:`~qfault.campaign._store.TrialRow` objects and stream them back as they complete.

:class:`TrialFunction` is the picklable form of one campaign's trial (model, evaluation batches,
golden run and spec, shipped once per worker); :class:`RayExecutor` shards trials across Ray
actors, one device each. Ray is imported only when a :class:`RayExecutor` starts.
"""

from __future__ import annotations

import contextlib
import itertools
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from .._errors import QFaultConfigError


# --------------------------------------------------------------------------------------------
# the trial itself


@dataclass
class TrialContext:
    """Everything a trial needs besides its item: shipped once to every worker.

    ``golden`` is the dict stored by the campaign (``logits``, ``labels``, ``accuracy``);
    ``prefix``/``prefix_names`` optionally carry the runner's recorded clean outputs (a
    ``PrefixCache`` and, per point index, the module names a trial of that point may replay).
    """

    spec: Any
    model: nn.Module
    batches: list
    golden: dict
    prefix: Any = None
    prefix_names: dict = field(default_factory=dict)
    #: trials a forward may evaluate at once (1: one trial per forward; see ``stackable``)
    stack: int = 1
    #: the most trials a forward may hold (1 where faults are not per image): ``stack`` on
    #: another device is ``min(spec.trials_per_forward(device), stack_cap)``
    stack_cap: int = 1
    #: stack size -> whether a clean stacked forward reproduced the golden logits (checked once)
    exact_stacks: dict = field(default_factory=dict)
    #: point index -> the modules each of its fault specs selects (selected once per point)
    selections: dict = field(default_factory=dict)

    def inject(self, index: int, specs: list):
        """``inject(model, specs)`` for a trial of point ``index``, selecting modules once per point."""
        from ..injection import inject, select_modules

        if index not in self.selections:
            self.selections[index] = [select_modules(self.model, s) for s in specs]
        return inject(self.model, specs, selections=self.selections[index])


def execute_trial(context: TrialContext, item: tuple[int, dict, int], *, golden_logits: torch.Tensor | None = None):
    """Run one trial ``(point index, point values, repetition)`` and return its ``TrialRow``.

    The same computation as the in-process runner: the trial seed from
    :func:`~qfault.campaign.trial_seed`, one derived seed per fault spec, the faults injected for one
    pass over the batches, outcomes against the golden run. ``golden_logits`` overrides the stored
    golden logits (a worker on another device compares against its own fault-free run).
    """
    return _rows(context, [_run_trial(context, item)], golden_logits)[0]


def _run_trial(context: TrialContext, item: tuple[int, dict, int]) -> tuple:
    """One trial's faulty pass: ``(item, seed, logits [N, C], values changed, seconds)``."""
    from ..faults import derive_seed
    from ..injection import InjectSpec
    from ._runner import predict, trial_seed
    from ._spec import point_faults, point_mitigation

    spec = context.spec
    index, point, repetition = item
    seed = trial_seed(spec, point, repetition)
    # statistics are not part of a trial's row: skip their cost
    specs = [InjectSpec.from_dict({**f, "seed": derive_seed(seed, i) >> 1, "track_statistics": False})
             for i, f in enumerate(point_faults(spec.faults, point))]
    faulted = [0]
    prefix = context.prefix
    replay = prefix.replay(context.prefix_names.get(index, ())) if prefix is not None else contextlib.nullcontext()
    start = time.monotonic()
    stuck = contextlib.nullcontext()
    mitigation = point_mitigation(spec.mitigation, point)
    if mitigation is not None:
        from ..mitigation import StuckAtSpec, apply_stuck_at

        # the fault maps depend on the point without its method: methods are compared on the same maps
        paired = {k: v for k, v in point.items() if k != "mitigation.method"}
        stuck_seed = derive_seed(trial_seed(spec, paired, repetition), "stuck") >> 1
        stuck_handle = apply_stuck_at(context.model, StuckAtSpec(**mitigation, seed=stuck_seed))
        faulted[0] += stuck_handle.changed_weights
        stuck = stuck_handle
    injected = context.inject(index, specs) if specs else contextlib.nullcontext()
    with stuck, injected as handle, replay:
        if handle is not None:
            handle.add_listener(lambda name, draw, old, new: faulted.__setitem__(0, faulted[0] + int((old != new).sum())))
        if prefix is not None:
            logits = predict(context.model, context.batches, prefix)
        else:
            logits = predict(context.model, context.batches)
    return item, seed, logits, faulted[0], time.monotonic() - start


def _rows(context: TrialContext, runs: list[tuple], golden_logits: torch.Tensor | None) -> list:
    """The ``TrialRow`` of each run of :func:`_run_trial` (or of a stacked forward), all
    classified in one vectorized pass; classification time is shared out among them."""
    from ._outcomes import classify
    from ._store import TrialRow

    spec = context.spec
    golden = context.golden["logits"] if golden_logits is None else golden_logits
    start = time.monotonic()
    logits = runs[0][2] if len(runs) == 1 else torch.cat([run[2] for run in runs])
    outcome = classify(golden, logits, context.golden["labels"], atol=spec.atol,
                       sdc_thresholds=spec.sdc_thresholds, trials=len(runs))
    share = (time.monotonic() - start) / len(runs)
    rows = []
    for ((index, point, repetition), seed, _, changed, seconds), counts in zip(runs, outcome.block_counts(len(runs))):
        accuracy = 100.0 * counts["correct_faulty"] / max(1, counts["images"])
        rows.append(TrialRow(index, repetition, point, seed, accuracy, counts, int(changed), seconds + share))
    return rows


def stackable(spec, points: list[dict]) -> bool:
    """Whether trials of ``spec`` may share a forward: every fault of every point acts on
    activations (outputs/inputs) of a fixed layer set, and no stuck-at mitigation changes weights."""
    from ..injection import InjectSpec
    from ._spec import point_faults

    if spec.mitigation is not None:
        return False
    for point in points:
        for data in point_faults(spec.faults, point):
            inject_spec = InjectSpec.from_dict(data)
            if inject_spec.site.value not in ("output", "input") or inject_spec.layer_mode != "all":
                return False
    return True


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


def execute_trials(context: TrialContext, items: list[tuple[int, dict, int]], *,
                   golden_logits: torch.Tensor | None = None) -> list:
    """Rows of several trials of one sweep point, ``context.stack`` of them per forward.

    Each block of a stacked forward is faulted exactly as its trial alone would be (same seeds,
    same draws), so the rows equal those of :func:`execute_trial` one by one, provided stacking
    leaves the fault-free logits bit-identical: that is checked once per stack size (on the first
    and last batch, on this worker's device); where it fails, the trials run one by one.
    """
    from ..faults import derive_seed
    from ..injection import InjectSpec
    from ._runner import trial_seed
    from ._spec import point_faults

    if context.stack <= 1 or len(items) <= 1:  # one forward per trial, one classification for all
        return _rows(context, [_run_trial(context, item) for item in items], golden_logits)
    if len(items) > context.stack:
        return [row for start in range(0, len(items), context.stack)
                for row in execute_trials(context, items[start:start + context.stack], golden_logits=golden_logits)]
    spec = context.spec
    index, point, _ = items[0]
    if any(item[0] != index for item in items):
        raise ValueError("stacked trials must belong to one sweep point")
    golden = context.golden["logits"] if golden_logits is None else golden_logits
    exact = context.exact_stacks.get(len(items))
    if exact is None:  # some kernels pick another algorithm for another batch size: check each size once
        exact = context.exact_stacks[len(items)] = stacking_is_exact(context.model, context.batches, golden,
                                                                     len(items))
    if not exact:
        return _rows(context, [_run_trial(context, item) for item in items], golden_logits)
    faults = point_faults(spec.faults, point)
    seeds = [trial_seed(spec, point, repetition) for _, _, repetition in items]
    prefix = context.prefix
    names = context.prefix_names.get(index, ())
    if prefix is not None and not prefix.repeatable(names):
        prefix, names = None, ()
    start = time.monotonic()
    specs = [InjectSpec.from_dict({**f, "seed": 0, "track_statistics": False}) for f in faults]
    with context.inject(index, specs) as handle:
        handle.stack_trials([[derive_seed(seed, i) >> 1 for i in range(len(faults))] for seed in seeds])
        with prefix.replay(names) if prefix is not None else contextlib.nullcontext():
            logits = stacked_logits(context.model, context.batches, len(items), prefix)
        changed = handle.trial_changed.tolist()
    seconds = (time.monotonic() - start) / len(items)
    runs = [(item, seeds[k], logits[k], changed[k], seconds) for k, item in enumerate(items)]
    return _rows(context, runs, golden_logits)


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


class TrialFunction:
    """Picklable ``item -> TrialRow`` for one campaign (what ``run_campaign`` maps over trials).

    Use it instead of a closure so that remote executors ship the model, batches and golden run
    once per worker. :meth:`to` moves the model and batches to a worker's device; on a device other
    than the CPU the golden logits are recomputed there once, so ``masked`` keeps meaning
    "bit-equal to the fault-free run on the same hardware".
    """

    def __init__(self, context: TrialContext):
        self.context = context
        self.device = torch.device("cpu")
        self._golden_logits: torch.Tensor | None = None

    def to(self, device: str | torch.device) -> "TrialFunction":
        from ._runner import predict

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
                                    ctx.prefix_names if keep else {}, stack, stack_cap=ctx.stack_cap)
        self.device = device
        self._golden_logits = None if device.type == "cpu" else predict(model, batches)
        return self

    def __call__(self, item: "tuple[int, dict, int] | list[tuple[int, dict, int]]"):
        """One trial's row for an item ``(point index, point values, repetition)``; the list of
        rows for a list of items of one point (stacked per forward where the context allows)."""
        if isinstance(item, list):
            return execute_trials(self.context, item, golden_logits=self._golden_logits)
        return execute_trial(self.context, item, golden_logits=self._golden_logits)

    def __getstate__(self) -> dict:
        # always ship the CPU form; the receiving worker moves it to its own device
        if self.device.type != "cpu":
            raise RuntimeError("ship a TrialFunction from the CPU (call .to(device) on the worker)")
        return {"context": self.context}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["context"])


# --------------------------------------------------------------------------------------------
# Ray


class _TrialWorker:
    """Body of a Ray actor: holds the deserialized trial functions, runs one item per call."""

    def __init__(self, num_threads: int, use_gpu: bool):
        torch.set_num_threads(max(1, num_threads))
        if use_gpu and torch.cuda.is_available():
            self.device = torch.device("cuda", 0)  # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU
        else:
            self.device = torch.device("cpu")
        self.functions: dict[int, Callable] = {}

    def device_name(self) -> str:
        return str(self.device)

    def load(self, token: int, fn: Callable) -> None:
        if isinstance(fn, TrialFunction):
            fn = fn.to(self.device)
        self.functions = {token: fn}  # one campaign at a time; drop older functions

    def run(self, token: int, item: Any) -> Any:
        return self.functions[token](item)


class RayExecutor:
    """Shard trials across Ray actors (one device each) and stream results back as they complete.

    Args:
        address: an existing cluster (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``); ``None``
            joins the cluster this process is already connected to, or starts a local one.
        num_workers: actors to start (default: as many as the cluster's CPUs, or GPUs when
            ``num_gpus_per_worker > 0``, allow).
        num_cpus_per_worker, num_gpus_per_worker: Ray resources of each actor; an actor with a GPU
            runs its trials on it.
        max_in_flight: trials queued per actor (2 keeps every actor busy while results return).
        init_kwargs: extra ``ray.init`` arguments (e.g. ``runtime_env``) when this executor connects.
        start_timeout_s: how long the actors may wait for resources before :meth:`start` fails
            (``None``: wait forever, e.g. for an autoscaling cluster).

    ``map(fn, items)`` ships ``fn`` (a picklable callable, ideally a :class:`TrialFunction`, else
    anything cloudpickle handles, such as ``run_campaign``'s closure) once per actor and only the
    items per call; results are yielded in completion order. Use it as a context manager, or call
    :meth:`close`, to stop the actors (and Ray itself if this executor started it).
    """

    def __init__(self, address: str | None = None, num_workers: int | None = None, num_cpus_per_worker: float = 1,
                 num_gpus_per_worker: float = 0, *, max_in_flight: int = 2, init_kwargs: dict | None = None,
                 start_timeout_s: float | None = 300.0):
        if num_workers is not None and num_workers < 1:
            raise QFaultConfigError("num_workers", num_workers, "an integer >= 1")
        if num_cpus_per_worker < 0 or num_gpus_per_worker < 0:
            raise QFaultConfigError("num_cpus_per_worker/num_gpus_per_worker",
                                    (num_cpus_per_worker, num_gpus_per_worker), "values >= 0")
        self.address = address
        self.num_workers = num_workers
        self.num_cpus_per_worker = num_cpus_per_worker
        self.num_gpus_per_worker = num_gpus_per_worker
        self.max_in_flight = max(1, int(max_in_flight))
        self.init_kwargs = dict(init_kwargs or {})
        self.start_timeout_s = start_timeout_s
        self._ray = None
        self._started_ray = False
        self._actors: list = []
        self._fn: Callable | None = None
        self._token = 0
        self._tokens = itertools.count(1)

    # -- lifecycle ---------------------------------------------------------------------------
    def _import_ray(self):
        try:
            import ray
        except ImportError:
            raise QFaultConfigError("executor", "ray", "an installed Ray",
                                    hint="pip install 'qfault[ray]'") from None
        return ray

    def start(self) -> "RayExecutor":
        """Connect to (or start) Ray and create the actors; called by the first :meth:`map`."""
        if self._actors:
            return self
        ray = self._ray = self._import_ray()
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": False, **self.init_kwargs}
            ray.init(address=self.address, **kwargs)
            self._started_ray = True
        workers = self.num_workers
        if workers is None:
            resources = ray.cluster_resources()
            if self.num_gpus_per_worker > 0:
                workers = int(resources.get("GPU", 0) // self.num_gpus_per_worker)
            elif self.num_cpus_per_worker > 0:
                workers = int(resources.get("CPU", 1) // self.num_cpus_per_worker)
            else:
                workers = int(resources.get("CPU", 1))
            workers = max(1, workers)
        actor = ray.remote(num_cpus=self.num_cpus_per_worker, num_gpus=self.num_gpus_per_worker)(_TrialWorker)
        threads = max(1, int(self.num_cpus_per_worker or 1))
        actors = [actor.remote(threads, self.num_gpus_per_worker > 0) for _ in range(workers)]
        probes = [a.device_name.remote() for a in actors]
        ready, _ = ray.wait(probes, num_returns=len(probes), timeout=self.start_timeout_s)
        if len(ready) < len(probes):
            hint = (f"only {len(ready)} of {workers} started within {self.start_timeout_s} s "
                    f"({self.num_cpus_per_worker} CPU and {self.num_gpus_per_worker} GPU each); "
                    f"cluster resources: {ray.cluster_resources()}")
            for a in actors:
                ray.kill(a)
            self.close()
            raise QFaultConfigError("num_workers", workers, "workers the Ray cluster can place", hint=hint)
        ray.get(ready)  # raise a worker's start-up error here
        self._actors = actors
        return self

    @property
    def parallelism(self) -> int:
        """Trials (or stacks of trials) that run at once: one per actor (starts them)."""
        self.start()
        return len(self._actors)

    def devices(self) -> list[str]:
        """The device of every actor (starts them)."""
        self.start()
        return self._ray.get([a.device_name.remote() for a in self._actors])

    def close(self) -> None:
        """Stop the actors, and Ray if this executor started it."""
        ray = self._ray
        if ray is None:
            return
        for a in self._actors:
            try:
                ray.kill(a)
            except Exception:  # pragma: no cover - already dead
                pass
        self._actors = []
        self._fn = None
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False
        self._ray = None

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- running -----------------------------------------------------------------------------
    def _ship(self, fn: Callable) -> int:
        """Send ``fn`` to every actor once (again only when a different function comes)."""
        if fn is self._fn:
            return self._token
        if self.num_gpus_per_worker > 0 and not isinstance(fn, TrialFunction):
            warnings.warn("RayExecutor: the trial function cannot move to a GPU (not a TrialFunction); "
                          "its trials run on the workers' CPUs", RuntimeWarning, stacklevel=3)
        ray = self._ray
        token = next(self._tokens)
        ref = ray.put(fn)
        ray.get([a.load.remote(token, ref) for a in self._actors])
        self._fn, self._token = fn, token
        return token

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        self.start()
        ray = self._ray
        token = self._ship(fn)
        pending = iter(items)
        queue: dict = {}  # object ref -> actor
        idle = deque(i for _ in range(self.max_in_flight) for i in range(len(self._actors)))
        try:
            while True:
                while idle:
                    item = next(pending, _END)
                    if item is _END:
                        idle.clear()  # nothing left to submit; drain what is in flight
                        break
                    slot = idle.popleft()
                    ref = self._actors[slot].run.remote(token, item)
                    queue[ref] = slot
                if not queue:
                    return
                done, _ = ray.wait(list(queue), num_returns=1)
                for ref in done:
                    idle.append(queue.pop(ref))
                    yield ray.get(ref)
        finally:
            for ref in queue:
                try:
                    ray.cancel(ref)
                except Exception:  # pragma: no cover
                    pass


_END = object()
