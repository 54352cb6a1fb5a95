"""Executors: where a campaign's trials run (in this process, or sharded across Ray actors).

An executor maps a trial function over items and yields the results in any order; the
campaign's single writer stays in the driver, so executors only compute
:class:`~qfault.campaign._store.TrialRow` objects and stream them back as they complete. Rows do
not depend on the executor: a trial's seed derives from the campaign seed, the point's values
and the repetition only (:func:`~qfault.campaign.trial_seed`).

:class:`RayExecutor` shards trials across Ray actors, one device each, shipping the trial
function (ideally a :class:`~qfault.campaign.TrialFunction`) once per actor. Ray is imported
only when a :class:`RayExecutor` starts.
"""

from __future__ import annotations

import itertools
import warnings
from collections import deque
from typing import Any, Callable, Iterable, Iterator, Protocol

import torch

from .._errors import QFaultConfigError
from ._trial import TrialFunction


class Executor(Protocol):
    """Runs trial functions; results come back as an iterator in any order. An optional
    ``parallelism`` attribute (default 1) says how many items it runs at once."""

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterable[Any]: ...


class LocalExecutor:
    """In-process, one item after another, results in order."""

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        for item in items:
            yield fn(item)


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
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0)
        if self.num_gpus_per_worker > 0 and gpus < self.num_gpus_per_worker * (workers or 1):
            # refuse now: Ray would wait for GPUs that the cluster does not have
            self.close()
            raise QFaultConfigError("num_gpus_per_worker", self.num_gpus_per_worker,
                                    f"at most the Ray cluster's GPUs ({gpus:g}) across {workers or 1} worker(s)",
                                    hint="no GPU here: run without GPUs per worker" if not gpus else None)
        if workers is None:
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
