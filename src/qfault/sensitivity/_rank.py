"""``rank_bits(model, batches, config)``: which bits of a model's weights matter most.

Scores (``SensitivityConfig.method``, registry :data:`METHODS`), derivatives at the quantized
weights ``w`` with ``θ`` the float weights:

* ``hessian``: FKeras' "sum" score ``Σ_j λ_j² · |v_j · θ| · |v_j,i|`` over the ``eigenpairs``
  eigenpairs of the Hessian largest in ``|λ|``;
* ``gradient``: ``|g_i|``; ``taylor``: ``(g_i θ_i)²``;
* ``delta``: per bit, the first-order change of the loss when that bit flips alone,
  ``|g_i · Δ_i,b|`` with ``Δ`` the exact change of the value (from the format).

Parameter scores become a bit order by FKeras' MSB-first regrouping: every parameter's most
significant bit, in decreasing score, then every next bit, down to the LSBs. ``delta`` ranks the
bits by their own scores. Optionally, Hutchinson estimates of each tensor's Hessian trace, and
the first ``refine`` bits of the order measured: each flipped alone, the loss computed, and those
bits re-ordered by that exact change.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .._config import to_dict
from .._errors import QFaultConfigError, check_bool, check_range
from .._registry import Registry
from ..formats import NumberFormat, get_format
from ._curvature import EIGEN_TOL, Curvature
from ._views import LeafForward, weight_views

#: name -> ``fn(views, curvature, config) -> (param scores per view | None, bit scores per view | None, extras)``
METHODS: Registry = Registry("sensitivity method")


def register_method(name: str, *, per_bit: bool):
    """Register a scoring method: ``per_bit`` methods score every bit themselves, the others
    score parameters and rank bits MSB-first."""

    def wrap(fn: Callable):
        fn.per_bit = per_bit
        METHODS.register(name, fn)
        return fn

    return wrap


@dataclass(frozen=True)
class SensitivityConfig:
    """What :func:`rank_bits` scores and how.

    Args:
        method: ``"delta"``, ``"hessian"``, ``"gradient"`` or ``"taylor"`` (:data:`METHODS`).
        eigenpairs: Hessian eigenpairs of the ``hessian`` score (largest ``|λ|``).
        tol: relative residual tolerance of the eigen-solver (``||Hv - λv|| <= tol |λ|``;
            default sqrt of float32's epsilon, 3.45e-4: eigenvalues to float32 precision).
        trace_samples: Hutchinson samples of each tensor's Hessian trace (0: none).
        types, names, indices: the layers, as an ``InjectSpec`` with ``site="weight"`` selects them.
        format: the number format of float parameters (quantized layers use their own).
        include_bias: also rank the biases (they need ``format``).
        seed: the eigen-solver's start vector and the Hutchinson vectors.
        kept_graphs: batches whose gradient graphs are kept between Hessian-vector products
            (``hessian`` and ``trace_samples``): a product then costs one backward pass through
            them instead of a forward and two backward passes, for the memory of those graphs;
            the other batches are recomputed for every product. 0 recomputes all.
        refine: the first ``refine`` bits of the ranking are re-ordered by the measured change
            of the loss when each flips alone (largest increase first; one forward over the
            data per bit), which sees what a local model of the loss misses (the direction of a
            large flip, saturation). 0: none.
    """

    method: str = "delta"
    eigenpairs: int = 5
    tol: float = EIGEN_TOL
    trace_samples: int = 0
    types: tuple | None = None
    names: tuple | None = None
    indices: tuple | None = None
    format: Any = None
    include_bias: bool = False
    seed: int = 0
    kept_graphs: int = 4
    refine: int = 0

    type_name = "sensitivity"

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "method", METHODS.canonical(self.method))
        except QFaultConfigError:
            raise QFaultConfigError("method", self.method, "one of " + ", ".join(METHODS.list())) from None
        check_range("eigenpairs", self.eigenpairs, 1, 10_000, integer=True)
        check_range("tol", self.tol, 0.0, 1.0)
        check_range("trace_samples", self.trace_samples, 0, 10**6, integer=True)
        check_range("seed", self.seed, 0, 2**63 - 1, integer=True)
        check_range("kept_graphs", self.kept_graphs, 0, 10**6, integer=True)
        check_range("refine", self.refine, 0, 10**9, integer=True)
        check_bool("include_bias", self.include_bias)
        for key in ("types", "names", "indices"):
            value = getattr(self, key)
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                value = (value,)
            if value is not None:
                object.__setattr__(self, key, tuple(value))
        if self.format is not None and not isinstance(self.format, NumberFormat):
            object.__setattr__(self, "format", get_format(self.format))

    def to_dict(self) -> dict:
        out = to_dict(self)
        out["format"] = None if self.format is None else self.format.to_dict()
        return out


@dataclass
class BitRanking:
    """Bits of the scored tensors, most sensitive first.

    Attributes:
        tensors: ``[(name, shape, bits)]`` of the scored tensors, in model order.
        tensor: int64 ``[m]`` index into ``tensors`` of each ranked bit.
        element: int64 ``[m]`` flat (PyTorch) element index.
        bit: int64 ``[m]`` bit position (0 = LSB).
        score: float64 ``[m]``: the bit's score (``delta``), or its parameter's (other methods);
            for the first ``refined`` bits the measured change of the loss when it flips alone.
        param_scores: per tensor, float64 ``[numel]`` (None for per-bit methods).
        eigenvalues: the Hessian eigenvalues used (``hessian``), largest ``|λ|`` first.
        traces: Hutchinson trace estimate per tensor (empty unless asked for).
        seconds: time spent ranking; ``hvp_calls``: Hessian-vector products computed.
        refined: how many of the first bits were re-ordered by their measured loss change.
    """

    method: str
    tensors: list[tuple[str, tuple[int, ...], int]]
    tensor: np.ndarray
    element: np.ndarray
    bit: np.ndarray
    score: np.ndarray
    param_scores: list[np.ndarray] | None = None
    eigenvalues: list[float] = field(default_factory=list)
    traces: list[float] = field(default_factory=list)
    seconds: float = 0.0
    hvp_calls: int = 0
    refined: int = 0

    def __len__(self) -> int:
        return int(self.tensor.size)

    def top(self, k: int) -> list[tuple[str, int, int]]:
        """The ``k`` most sensitive bits as ``(tensor name, element, bit)``."""
        k = min(k, len(self))
        return [(self.tensors[t][0], int(e), int(b))
                for t, e, b in zip(self.tensor[:k].tolist(), self.element[:k].tolist(), self.bit[:k].tolist())]

    def rank_of(self) -> list[np.ndarray]:
        """Per tensor, int64 ``[numel, bits]``: each bit's position in the ranking (0 = first)."""
        out = [np.zeros((int(np.prod(shape, dtype=np.int64)), bits), dtype=np.int64) for _, shape, bits in self.tensors]
        positions = np.arange(len(self), dtype=np.int64)
        for t, ranks in enumerate(out):  # one scatter per tensor
            mine = self.tensor == t
            ranks[self.element[mine], self.bit[mine]] = positions[mine]
        return out

    def fault_specs(self, k: int, **spec_fields) -> list[dict]:
        """The ``k`` most sensitive bits as ``InjectSpec`` dicts, one per layer, each a
        ``bit_flip`` with explicit ``sites`` (usable as a campaign's ``faults``)."""
        per_tensor: dict[int, list[list[int]]] = {}
        for t, e, b in zip(self.tensor[:k].tolist(), self.element[:k].tolist(), self.bit[:k].tolist()):
            per_tensor.setdefault(t, []).append([e, b])
        specs = []
        for t in sorted(per_tensor):
            name = self.tensors[t][0]
            module, _, role = name.rpartition(".")
            spec = {"fault": {"type": "bit_flip", "sites": sorted(per_tensor[t])}, "site": role,
                    "names": [module], "persistence": "permanent"}
            spec.update(spec_fields)
            specs.append(spec)
        return specs

    def layer_table(self, top_share: float = 0.01) -> list[dict]:
        """Per tensor: numel, bits, the share of the ``top_share`` most sensitive bits it holds,
        its mean and max parameter score (or bit score) and its trace estimate."""
        top = max(1, int(math.ceil(len(self) * top_share)))
        counts = np.bincount(self.tensor[:top], minlength=len(self.tensors))
        rows = []
        for t, (name, shape, bits) in enumerate(self.tensors):
            scores = self.param_scores[t] if self.param_scores is not None else self.score[self.tensor == t]
            rows.append({"tensor": name, "numel": int(np.prod(shape, dtype=np.int64)), "bits": bits,
                         "top_share": float(counts[t]) / top, "mean_score": float(np.mean(scores)) if scores.size else 0.0,
                         "max_score": float(np.max(scores)) if scores.size else 0.0,
                         "trace": self.traces[t] if self.traces else None})
        return rows

    def bit_position_table(self, top_share: float = 0.01) -> list[dict]:
        """Per bit position from the MSB (0 = most significant): its share of the top bits."""
        top = max(1, int(math.ceil(len(self) * top_share)))
        widths = np.array([bits for _, _, bits in self.tensors])
        from_msb = widths[self.tensor[:top]] - 1 - self.bit[:top]
        counts = np.bincount(from_msb, minlength=int(widths.max()))
        return [{"from_msb": p, "top_share": float(c) / top} for p, c in enumerate(counts.tolist())]

    def to_dict(self, top: int = 1000) -> dict:
        return {"method": self.method, "bits": len(self), "seconds": self.seconds, "hvp_calls": self.hvp_calls,
                "refined": self.refined,
                "eigenvalues": list(self.eigenvalues), "tensors": [
                    {"name": n, "shape": list(s), "bits": b} for n, s, b in self.tensors],
                "layers": self.layer_table(), "bit_positions": self.bit_position_table(),
                "top": [{"tensor": n, "element": e, "bit": b, "score": float(s)}
                        for (n, e, b), s in zip(self.top(top), self.score[:top].tolist())]}

    def to_json(self, path, top: int = 1000) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(top), f, indent=1)


# -- methods ---------------------------------------------------------------------------------------

def _flat(parts: list[torch.Tensor]) -> list[np.ndarray]:
    return [p.detach().reshape(-1).double().numpy() for p in parts]


@register_method("gradient", per_bit=False)
def _gradient(views, curvature, config):
    return [np.abs(g) for g in _flat(curvature.gradient())], None, {}


@register_method("taylor", per_bit=False)
def _taylor(views, curvature, config):
    return [(g * v.theta.double().numpy()) ** 2 for g, v in zip(_flat(curvature.gradient()), views)], None, {}


@register_method("delta", per_bit=True)
def _delta(views, curvature, config):
    grads = _flat(curvature.gradient())
    return None, [np.abs(g[:, None] * v.flip_deltas().numpy()) for g, v in zip(grads, views)], {}


@register_method("hessian", per_bit=False)
def _hessian(views, curvature, config):
    values, vectors = curvature.eigenpairs(config.eigenpairs, config.tol, config.seed)
    theta = np.concatenate([v.theta.double().numpy() for v in views])
    weights = values**2 * np.abs(vectors.T @ theta)  # λ_j² |v_j · θ|
    scores = np.abs(vectors) @ weights  # Σ_j λ_j² |v_j · θ| |v_j,i|
    out, start = [], 0
    for view in views:
        out.append(scores[start:start + view.numel])
        start += view.numel
    return out, None, {"eigenvalues": values.tolist()}


def msb_first_order(param_scores: list[np.ndarray], widths: list[int]) -> tuple[np.ndarray, ...]:
    """FKeras' regrouping: parameters by decreasing score (ties: model order), then the bit
    planes from the most significant: ``(tensor, element, bit, param score)`` of every bit."""
    tensor = np.concatenate([np.full(s.size, t, dtype=np.int64) for t, s in enumerate(param_scores)])
    element = np.concatenate([np.arange(s.size, dtype=np.int64) for s in param_scores])
    score = np.concatenate(param_scores)
    order = np.argsort(-score, kind="stable")
    tensor, element, score = tensor[order], element[order], score[order]
    width = np.asarray(widths, dtype=np.int64)[tensor]
    planes = []
    for plane in range(int(width.max()) if width.size else 0):
        keep = width > plane
        planes.append((tensor[keep], element[keep], width[keep] - 1 - plane, score[keep]))
    return tuple(np.concatenate([p[i] for p in planes]) for i in range(4))


def _per_bit_order(bit_scores: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Every bit by decreasing score (ties: model order, then element, then MSB first)."""
    tensor = np.concatenate([np.full(s.size, t, dtype=np.int64) for t, s in enumerate(bit_scores)])
    element = np.concatenate([np.repeat(np.arange(s.shape[0], dtype=np.int64), s.shape[1]) for s in bit_scores])
    bit = np.concatenate([np.tile(np.arange(s.shape[1] - 1, -1, -1, dtype=np.int64), s.shape[0]) for s in bit_scores])
    score = np.concatenate([s[:, ::-1].reshape(-1) for s in bit_scores])
    order = np.argsort(-score, kind="stable")
    return tensor[order], element[order], bit[order], score[order]


def _measured_order(views, curvature: Curvature, tensor: np.ndarray, element: np.ndarray, bit: np.ndarray,
                   count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` bits of a ranking, each flipped alone as injection flips it (the
    element becomes the decoded flipped code; a float layer's other weights keep their float
    values, a quantized layer computes with its quantized ones): ``(their order by decreasing
    change of the loss, those changes)``; a flip that makes the loss NaN counts as an infinite
    increase."""
    leaves = [(view.value if view.quantizer is not None else view.theta).reshape(view.shape).clone()
              for view in views]
    clean = curvature.loss(leaves)
    deltas: dict[int, torch.Tensor] = {}
    changes = np.empty(count)
    for i, (t, e, b) in enumerate(zip(tensor[:count].tolist(), element[:count].tolist(), bit[:count].tolist())):
        if t not in deltas:
            deltas[t] = views[t].flip_deltas()
        flat = leaves[t].view(-1)
        kept = flat[e].clone()
        flat[e] = float(views[t].value[e].double() + deltas[t][e, b])  # exact: a float32 value
        changes[i] = curvature.loss(leaves) - clean
        flat[e] = kept
    changes[np.isnan(changes)] = np.inf
    return np.argsort(-changes, kind="stable"), changes


def _batches(data, batch_size: int = 256) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]
    batches = [(x, y) for x, y in data]
    if not batches:
        raise QFaultConfigError("data", "no batches", "(inputs, targets) tensors or an iterable of such batches")
    return batches


def rank_bits(model: nn.Module, data: "tuple[torch.Tensor, torch.Tensor] | Iterable",
              config: SensitivityConfig | None = None, **fields) -> BitRanking:
    """Rank every bit of the selected weights of ``model`` by sensitivity on ``data``.

    Args:
        model: a classifier (evaluated in eval mode; its training flag is restored).
        data: ``(inputs, targets)`` tensors, or an iterable of such batches (cross-entropy loss).
        config: a :class:`SensitivityConfig`; or its fields as keyword arguments.

    Returns:
        A :class:`BitRanking` of every bit of every selected tensor.

    Raises:
        QFaultConfigError: an unknown method, no selected layer, float weights without a format.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.randn(8, 1, 2, 2), torch.randint(0, 3, (8,))
        >>> ranking = rank_bits(model, (x, y), method="gradient", format="int8")
        >>> len(ranking), ranking.top(1)[0][0]
        (96, '1.weight')
    """
    config = config if config is not None else SensitivityConfig(**fields)
    batches = _batches(data)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        views = weight_views(model, batches[0][0], types=config.types, names=config.names, indices=config.indices,
                             fmt=config.format, include_bias=config.include_bias)
        curvature = Curvature(LeafForward(model, views), batches, kept_graphs=config.kept_graphs)
        method = METHODS.get(config.method)
        param_scores, bit_scores, extras = method(views, curvature, config)
        traces = curvature.hutchinson(config.trace_samples, config.seed) if config.trace_samples else []
        if method.per_bit:
            tensor, element, bit, score = _per_bit_order(bit_scores)
        else:
            tensor, element, bit, score = msb_first_order(param_scores, [v.bits for v in views])
        refined = min(config.refine, tensor.size)
        if refined:
            order, changes = _measured_order(views, curvature, tensor, element, bit, refined)
            for column in (tensor, element, bit):
                column[:refined] = column[:refined][order]
            score[:refined] = changes[order]
    finally:
        model.train(was_training)
    return BitRanking(config.method, [(v.name, v.shape, v.bits) for v in views], tensor, element, bit, score,
                      param_scores, extras.get("eigenvalues", []), traces, time.perf_counter() - start,
                      curvature.hvp_calls, refined)
