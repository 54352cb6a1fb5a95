"""Per-image outcomes of a faulty run compared with a golden (fault-free) run.

Definitions follow Li et al., "Understanding Error Propagation in Deep Learning Neural Network
(DNN) Accelerators and Applications", SC'17. Every image gets exactly one primary class
(:data:`OUTCOMES`), decided in this order:

1. ``due``: some faulty output of the image is NaN or +/-Inf (detected unrecoverable error);
2. ``masked``: the faulty logits equal the golden logits, elementwise
   ``|f - g| <= atol + rtol * |g|`` (exact equality with the defaults ``atol = rtol = 0``);
3. ``sdc1``: the top-1 class changed (silent data corruption);
4. ``non_critical``: the logits changed but the top-1 class did not.

Non-exclusive flags, set only for images whose output changed and stayed finite
(``sdc1 | non_critical``); ``masked`` and ``due`` images have none of them:

* ``sdc{k}`` for each ``k > 1`` of ``topk`` (``sdc5`` by default): the golden top-1 class is not
  among the faulty top-``k`` (``k`` capped at the number of classes, so with ``C <= k`` it is
  never set). ``sdc5`` implies ``sdc1``.
* ``sdc{x}pct`` for each ``x`` of ``sdc_thresholds`` (percent): ``|p_f - p_g| / p_g > x / 100``,
  where ``p_g`` and ``p_f`` are the golden and faulty softmax probabilities of the *golden* top-1
  class. This can be set without ``sdc1`` (confidence dropped, ranking kept).

Correctness against labels (when given) reflects the actual predictions:
``golden_correct`` (golden top-1 == label), ``faulty_correct`` (faulty top-1 == label; never for
a DUE image), ``top{k}_correct_faulty`` (label among the faulty top-``k``; never for a DUE image)
and ``sdc1_critical = sdc1 & golden_correct`` (a correct prediction turned wrong).

Ties: the top-1 class is the lowest index among the maximal logits (the documented rule of
:func:`torch.argmax`), for golden and faulty alike; top-``k`` membership uses the same order
(larger logit first, lower index first among equal logits), so it never depends on the
unspecified tie order of :func:`torch.topk`.
"""

from __future__ import annotations

import math
import os
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor

from .._errors import QFaultConfigError

__all__ = [
    "OUTCOMES",
    "OutcomeBatch",
    "classify",
    "merge_counts",
    "pct_key",
    "GoldenRun",
    "golden_run",
]

OUTCOMES: tuple[str, ...] = ("masked", "non_critical", "sdc1", "due")
"""The mutually exclusive primary classes, indexed by :meth:`OutcomeBatch.outcome_index`."""

_FILE_FORMAT = "qfault.golden_run"
_FILE_VERSION = 1


def pct_key(threshold: float) -> str:
    """Count key of a probability-change threshold in percent.

    ``10.0 -> "sdc10pct"``, ``12.5 -> "sdc12.5pct"``.
    """
    x = float(threshold)
    return f"sdc{int(x) if x.is_integer() else x}pct"


# --------------------------------------------------------------------------------------------
# ranking helpers (vectorized, device independent, deterministic under ties)


def _top1(logits: Tensor) -> Tensor:
    """Index of the first maximal logit per row, ``[N, C] -> [N]`` int64 (torch.argmax's rule)."""
    c = logits.shape[1]
    is_max = logits == logits.max(dim=1, keepdim=True).values
    idx = torch.arange(c, device=logits.device).expand_as(logits)
    return torch.where(is_max, idx, torch.full_like(idx, c)).min(dim=1).values


def _rank_of(logits: Tensor, cls: Tensor) -> Tensor:
    """0-based rank of class ``cls[i]`` in row ``i`` (larger logit first, lower index on ties).

    ``rank = #{j : x_j > x_c} + #{j < c : x_j == x_c}``, so rank 0 is :func:`_top1` and class
    ``c`` is in the top-``k`` iff ``rank < k``. Shapes: ``[N, C]``, ``[N] -> [N]`` int64.
    """
    x_c = logits.gather(1, cls.unsqueeze(1))
    idx = torch.arange(logits.shape[1], device=logits.device).unsqueeze(0)
    before = (logits > x_c) | ((logits == x_c) & (idx < cls.unsqueeze(1)))
    return before.sum(dim=1)


# --------------------------------------------------------------------------------------------
# outcome batch


@dataclass
class OutcomeBatch:
    """Outcomes of ``N`` images; every tensor is ``[N]`` on the device of the golden logits.

    Attributes:
        masked, non_critical, sdc1, due: Primary classes (bool); exactly one is True per image.
        sdc_topk: ``{k: bool [N]}`` for each ``k > 1`` of ``topk``: golden top-1 not in the
            faulty top-``k``.
        sdc_pct: ``{threshold_percent: bool [N]}``: relative change of the golden top-1 class's
            probability above the threshold.
        golden_top1, faulty_top1: Top-1 class indices (int64); ``faulty_top1`` is -1 for a DUE
            image.
        golden_correct, faulty_correct: Top-1 equals the label (bool), or None without labels.
        faulty_topk_correct: ``{k: bool [N]}``: label in the faulty top-``k`` for each ``k > 1``;
            empty without labels.
    """

    masked: Tensor
    non_critical: Tensor
    sdc1: Tensor
    due: Tensor
    sdc_topk: dict[int, Tensor]
    sdc_pct: dict[float, Tensor]
    golden_top1: Tensor
    faulty_top1: Tensor
    golden_correct: Tensor | None = None
    faulty_correct: Tensor | None = None
    faulty_topk_correct: dict[int, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.masked.shape[0])

    @property
    def has_labels(self) -> bool:
        """Whether labels were given (correctness fields are set)."""
        return self.golden_correct is not None

    @property
    def sdc1_critical(self) -> Tensor:
        """SDC-1 of an image the golden run got right (bool ``[N]``; all False without labels)."""
        if self.golden_correct is None:
            return torch.zeros_like(self.sdc1)
        return self.sdc1 & self.golden_correct

    @property
    def sdc5(self) -> Tensor:
        """The ``sdc_topk[5]`` flag (bool ``[N]``); KeyError if 5 was not in ``topk``."""
        return self.sdc_topk[5]

    def outcome_index(self) -> Tensor:
        """Primary class per image as an index into :data:`OUTCOMES` (int64 ``[N]``)."""
        out = torch.zeros_like(self.golden_top1)
        out[self.non_critical] = 1
        out[self.sdc1] = 2
        out[self.due] = 3
        return out

    def counts(self) -> dict[str, int]:
        """Number of images per class and flag (one device synchronization).

        Keys, in this order: ``images``, ``masked``, ``non_critical``, ``sdc1``,
        ``sdc1_critical``, ``sdc{k}`` per ``k > 1`` of ``topk``, ``due``, ``sdc{x}pct`` per
        threshold, ``correct_golden``, ``correct_faulty``, ``top{k}_correct_faulty`` per ``k > 1``.
        With the defaults: ``images, masked, non_critical, sdc1, sdc1_critical, sdc5, due,
        sdc10pct, sdc20pct, correct_golden, correct_faulty, top5_correct_faulty``. Correctness
        counts are 0 without labels.
        """
        items = self._count_items()
        if len(self) == 0:
            sums = [0] * len(items)
        else:
            sums = torch.stack([v for _, v in items]).sum(dim=1).tolist()
        out = {"images": len(self)}
        out.update({name: int(s) for (name, _), s in zip(items, sums)})
        return out

    def _count_items(self) -> list[tuple[str, Tensor]]:
        zeros = torch.zeros_like(self.sdc1)
        items: list[tuple[str, Tensor]] = [
            ("masked", self.masked),
            ("non_critical", self.non_critical),
            ("sdc1", self.sdc1),
            ("sdc1_critical", self.sdc1_critical),
        ]
        items += [(f"sdc{k}", v) for k, v in self.sdc_topk.items()]
        items.append(("due", self.due))
        items += [(pct_key(x), v) for x, v in self.sdc_pct.items()]
        for name, flag in (("correct_golden", self.golden_correct),
                           ("correct_faulty", self.faulty_correct)):
            items.append((name, zeros if flag is None else flag))
        for k in self.sdc_topk:
            items.append((f"top{k}_correct_faulty", self.faulty_topk_correct.get(k, zeros)))
        return items

    def block_counts(self, blocks: int) -> list[dict[str, int]]:
        """:meth:`counts` of each of ``blocks`` equal consecutive blocks of images (the trials of
        a ``classify(..., trials=blocks)`` call), with one device synchronization."""
        n = len(self)
        if blocks < 1 or n % blocks:
            raise QFaultConfigError("blocks", blocks, f"a divisor of the {n} images")
        items = self._count_items()
        per_block = n // blocks
        if n == 0:
            sums = [[0] * len(items) for _ in range(blocks)]
        else:
            sums = torch.stack([v for _, v in items]).view(len(items), blocks, per_block).sum(dim=2).t().tolist()
        return [{"images": per_block, **{name: int(s) for (name, _), s in zip(items, row)}} for row in sums]


def merge_counts(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    """Sum two count dicts key by key (e.g. of two batches, or a running total and a batch).

    Args:
        a, b: Count dicts as returned by :meth:`OutcomeBatch.counts`. An empty dict is the
            neutral element, so a running total can start at ``{}``.

    Returns:
        A new dict with the keys in the order of ``a`` (of ``b`` when ``a`` is empty).

    Raises:
        QFaultConfigError: Both are non-empty and their keys differ (counts of differently
            configured :func:`classify` calls must not be mixed).
    """
    if not a:
        return {k: int(v) for k, v in b.items()}
    if not b:
        return {k: int(v) for k, v in a.items()}
    if set(a) != set(b):
        raise QFaultConfigError(
            "counts", sorted(set(a) ^ set(b)), "two count dicts with the same keys",
            hint="the keys shown are in only one of them",
        )
    return {k: int(a[k]) + int(b[k]) for k in a}


# --------------------------------------------------------------------------------------------
# classify


def _check_options(atol: float, rtol: float, sdc_thresholds: tuple[float, ...],
                   topk: tuple[int, ...]) -> tuple[list[float], list[int]]:
    for name, val in (("atol", atol), ("rtol", rtol)):
        if isinstance(val, bool) or not isinstance(val, (int, float)) \
                or not (0.0 <= val < math.inf):
            raise QFaultConfigError(name, val, "a finite number >= 0")
    thresholds: list[float] = []
    for x in sdc_thresholds:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not (0.0 <= x < math.inf):
            raise QFaultConfigError("sdc_thresholds", sdc_thresholds,
                                    "finite percentages >= 0 (e.g. (10.0, 20.0))")
        thresholds.append(float(x))
    if len({pct_key(x) for x in thresholds}) != len(thresholds):
        raise QFaultConfigError("sdc_thresholds", sdc_thresholds, "distinct percentages")
    ks: list[int] = []
    for k in topk:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise QFaultConfigError("topk", topk, "distinct integers >= 1 (e.g. (1, 5))")
        ks.append(k)
    if len(set(ks)) != len(ks):
        raise QFaultConfigError("topk", topk, "distinct integers >= 1 (e.g. (1, 5))")
    return thresholds, sorted(k for k in ks if k > 1)


def _check_logits(field_name: str, t: Any) -> None:
    if not isinstance(t, Tensor) or t.dim() != 2 or t.shape[1] < 1:
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise QFaultConfigError(field_name, shape, "a tensor of shape [N, C] with C >= 1")
    if t.is_complex() or t.dtype == torch.bool:
        raise QFaultConfigError(field_name, t.dtype, "a real-valued tensor")


def classify(
    golden_logits: Tensor,
    faulty_logits: Tensor,
    labels: Tensor | None = None,
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
    sdc_thresholds: Iterable[float] = (10.0, 20.0),
    topk: Iterable[int] = (1, 5),
    trials: int = 1,
) -> OutcomeBatch:
    """Classify each image of a faulty run against the golden run (see the module docstring).

    Vectorized over images. Logits are compared as given, promoted to float64 (exact for
    float16/bfloat16/float32), so golden and faulty logits should come from the same output
    dtype: a float32 golden run against float64 faulty logits is rarely exactly equal.

    Args:
        golden_logits: Fault-free logits ``[N, C]``; must be finite. Defines the device on which
            everything is computed.
        faulty_logits: Logits of the faulty run on the same inputs ``[N, C]`` (moved to the
            golden device if needed).
        labels: Optional ground-truth class indices ``[N]`` (integer, in ``[0, C)``).
        atol: Absolute tolerance for ``masked``, in logit units (>= 0).
        rtol: Relative tolerance for ``masked`` (fraction of ``|golden|``, >= 0).
        sdc_thresholds: Probability-change thresholds in percent for the ``sdc{x}pct`` flags.
        topk: The ``k`` of the SDC-``k`` flags and top-``k`` accuracies; ``k == 1`` is the primary
            ``sdc1`` class and ``faulty_correct`` and adds nothing, each ``k > 1`` adds
            ``sdc{k}`` and ``top{k}_correct_faulty``.
        trials: ``faulty_logits`` may hold the runs of several trials on the same inputs, one
            after the other (``[trials * N, C]``); each is compared with the golden run (one
            vectorized pass; :meth:`OutcomeBatch.block_counts` splits the counts per trial).

    Returns:
        The :class:`OutcomeBatch`.

    Raises:
        QFaultConfigError: Shapes disagree, golden logits are not finite, labels are out of
            range, or an option is invalid; the message names the field.
    """
    thresholds, ks = _check_options(atol, rtol, tuple(sdc_thresholds), tuple(topk))
    _check_logits("golden_logits", golden_logits)
    _check_logits("faulty_logits", faulty_logits)
    if not isinstance(trials, int) or trials < 1:
        raise QFaultConfigError("trials", trials, "an integer >= 1")
    expected = (golden_logits.shape[0] * trials, golden_logits.shape[1])
    if tuple(faulty_logits.shape) != expected:
        raise QFaultConfigError("faulty_logits", tuple(faulty_logits.shape),
                                f"the shape of golden_logits{f' with {trials} trials' if trials > 1 else ''}, "
                                f"{expected}")
    device = golden_logits.device
    c = golden_logits.shape[1]
    golden = _golden_side(golden_logits, labels, bool(thresholds)).repeated(trials)
    g, y, g_top1, p_g = golden.logits, golden.labels, golden.top1, golden.top1_probability
    f = faulty_logits.detach().to(device=device, dtype=torch.float64)

    # primary classes
    due = ~torch.isfinite(f).all(dim=1)
    equal = ((f - g).abs() <= atol + rtol * g.abs()).all(dim=1) & ~due
    masked = equal
    f_top1 = torch.where(due, torch.full_like(g_top1, -1), _top1(f))
    changed = ~due & ~masked
    sdc1 = changed & (f_top1 != g_top1)
    non_critical = changed & ~sdc1

    # SDC-k: golden top-1 rank among the faulty logits
    g_rank_in_f = _rank_of(f, g_top1)
    sdc_topk = {k: changed & (g_rank_in_f >= min(k, c)) for k in ks}

    # probability change of the golden top-1 class
    if thresholds:
        f_safe = torch.where(due.unsqueeze(1), g, f)  # keep NaN out of the softmax of DUE rows
        p_f = torch.softmax(f_safe, dim=1).gather(1, g_top1.unsqueeze(1)).squeeze(1)
        rel = (p_f - p_g).abs() / p_g  # p_g >= 1/C > 0
        sdc_pct = {x: changed & (rel > x / 100.0) for x in thresholds}
    else:
        sdc_pct = {}

    golden_correct = faulty_correct = None
    faulty_topk_correct: dict[int, Tensor] = {}
    if y is not None:
        golden_correct = g_top1 == y
        faulty_correct = ~due & (f_top1 == y)
        y_rank_in_f = _rank_of(f, y)
        faulty_topk_correct = {k: ~due & (y_rank_in_f < min(k, c)) for k in ks}

    return OutcomeBatch(
        masked=masked, non_critical=non_critical, sdc1=sdc1, due=due,
        sdc_topk=sdc_topk, sdc_pct=sdc_pct, golden_top1=g_top1, faulty_top1=f_top1,
        golden_correct=golden_correct, faulty_correct=faulty_correct,
        faulty_topk_correct=faulty_topk_correct,
    )


@dataclass
class _GoldenSide:
    """What :func:`classify` derives from the golden run alone (float64 logits, checked labels,
    top-1 and its probability)."""

    logits: Tensor
    labels: Tensor | None
    top1: Tensor
    top1_probability: Tensor | None
    copies: dict = field(default_factory=dict, repr=False)

    def repeated(self, trials: int) -> "_GoldenSide":
        """The same for ``trials`` runs one after the other (kept once made)."""
        if trials == 1:
            return self
        if trials not in self.copies:
            rep = lambda t: None if t is None else t.repeat(trials, *([1] * (t.dim() - 1)))  # noqa: E731
            self.copies[trials] = _GoldenSide(rep(self.logits), rep(self.labels), rep(self.top1),
                                              rep(self.top1_probability))
        return self.copies[trials]


#: the last golden side with what it was computed from: weak references to the golden and label
#: tensors, their versions (in-place changes), and whether probabilities were needed
_last_golden: dict = {}


def _golden_side(golden_logits: Tensor, labels: Tensor | None, probability: bool) -> _GoldenSide:
    """The golden-only part of :func:`classify`, validated; reused while the same golden and
    label tensors come back unmodified (a campaign classifies every trial against one golden run)."""
    if labels is not None and not isinstance(labels, Tensor):
        return _compute_golden_side(golden_logits, labels, probability)  # refused there, by name
    versions = (golden_logits._version, None if labels is None else labels._version, probability)
    last = _last_golden.get("entry")
    if last is not None and last[0]() is golden_logits and last[2] == versions \
            and (last[1]() if last[1] is not None else None) is labels:
        return last[3]
    side = _compute_golden_side(golden_logits, labels, probability)
    forget = lambda _ref: _last_golden.clear()  # noqa: E731  (nothing outlives the golden tensor)
    label_ref = None if labels is None else weakref.ref(labels, forget)
    _last_golden["entry"] = (weakref.ref(golden_logits, forget), label_ref, versions, side)
    return side


def _compute_golden_side(golden_logits: Tensor, labels: Tensor | None, probability: bool) -> _GoldenSide:
    device = golden_logits.device
    n, c = golden_logits.shape
    g = golden_logits.detach().to(torch.float64)
    nonfinite_golden = int((~torch.isfinite(g)).sum())
    if nonfinite_golden:
        raise QFaultConfigError("golden_logits", f"<{nonfinite_golden} non-finite values>",
                                "finite values only", hint="the golden run itself is broken")
    y: Tensor | None = None
    if labels is not None:
        if not isinstance(labels, Tensor) or labels.shape != (n,) or labels.is_floating_point() \
                or labels.is_complex() or labels.dtype == torch.bool:
            shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise QFaultConfigError("labels", shape, f"an integer tensor of shape [{n}]")
        y = labels.detach().to(device=device, dtype=torch.int64)
        if n and bool(((y < 0) | (y >= c)).any()):
            raise QFaultConfigError("labels", f"<values outside [0, {c})>",
                                    f"class indices in [0, {c})")
    top1 = _top1(g)
    p_g = torch.softmax(g, dim=1).gather(1, top1.unsqueeze(1)).squeeze(1) if probability else None
    return _GoldenSide(g, y, top1, p_g)


# --------------------------------------------------------------------------------------------
# golden run


def _to_logits(out: Any) -> Tensor:
    """Model output to a plain tensor: Brevitas QuantTensor -> ``.value``."""
    value = getattr(out, "value", out)
    if not isinstance(value, Tensor):
        raise QFaultConfigError("model output", type(out).__name__,
                                "a tensor [B, C] or an object whose .value is one (QuantTensor)")
    return value


@dataclass
class GoldenRun:
    """Logits of the fault-free model on a fixed input set.

    Attributes:
        logits: ``[N, C]`` float32 on the CPU (converted on construction).
        labels: ``[N]`` int64 on the CPU, class indices in ``[0, C)``, or None when the inputs
            had no labels.
    """

    logits: Tensor
    labels: Tensor | None = None

    def __post_init__(self) -> None:
        _check_logits("logits", self.logits)
        self.logits = self.logits.detach().to(device="cpu", dtype=torch.float32).contiguous()
        if self.labels is not None:
            lab = self.labels
            if not isinstance(lab, Tensor) or lab.shape != (self.logits.shape[0],) \
                    or lab.is_floating_point() or lab.is_complex() or lab.dtype == torch.bool:
                shape = tuple(lab.shape) if isinstance(lab, Tensor) else type(lab).__name__
                raise QFaultConfigError("labels", shape,
                                        f"an integer tensor of shape [{self.logits.shape[0]}]")
            self.labels = lab.detach().to(device="cpu", dtype=torch.int64).contiguous()
            c = self.logits.shape[1]
            if self.labels.numel() and bool(((self.labels < 0) | (self.labels >= c)).any()):
                raise QFaultConfigError("labels", f"<values outside [0, {c})>",
                                        f"class indices in [0, {c})")

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes ``C``."""
        return int(self.logits.shape[1])

    @property
    def predictions(self) -> Tensor:
        """Golden top-1 class per image (int64 ``[N]``, first maximal logit on ties)."""
        return _top1(self.logits)

    def _need_labels(self, what: str) -> Tensor:
        if self.labels is None:
            raise QFaultConfigError("labels", None, "a label tensor", hint=f"{what} needs labels")
        return self.labels

    @property
    def correct(self) -> int:
        """Images whose top-1 class is their label.

        Raises:
            QFaultConfigError: The run has no labels.
        """
        return int((self.predictions == self._need_labels("correct")).sum())

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy as a fraction in [0, 1] (NaN for zero images).

        Raises:
            QFaultConfigError: The run has no labels.
        """
        self._need_labels("accuracy")
        return math.nan if len(self) == 0 else self.correct / len(self)

    @property
    def top5(self) -> float:
        """Top-5 accuracy as a fraction in [0, 1] (top-``C`` when ``C < 5``; NaN for zero images).

        Raises:
            QFaultConfigError: The run has no labels.
        """
        y = self._need_labels("top5")
        if len(self) == 0:
            return math.nan
        return float((_rank_of(self.logits, y) < min(5, self.num_classes)).double().mean())

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the run to ``path`` with :func:`torch.save` (atomically: temp file + rename)."""
        path = Path(path)
        payload = {"format": _FILE_FORMAT, "version": _FILE_VERSION,
                   "logits": self.logits, "labels": self.labels}
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(payload, fh)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "GoldenRun":
        """Read a run written by :meth:`save` (``torch.load(weights_only=True)``, onto the CPU).

        Raises:
            FileNotFoundError: ``path`` does not exist.
            QFaultConfigError: The file is corrupt or not a golden run; the message names the path.
        """
        path = Path(path)
        allowed = "a golden-run file written by GoldenRun.save"
        if not path.exists():
            raise FileNotFoundError(f"golden-run file not found: {str(path)!r}")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling, zip and EOF errors all mean "corrupt"
            raise QFaultConfigError("path", str(path), allowed,
                                    hint=f"cannot be read: {type(exc).__name__}: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != _FILE_FORMAT:
            raise QFaultConfigError("path", str(path), allowed, hint="not a golden-run file")
        if data.get("version") != _FILE_VERSION:
            raise QFaultConfigError("path", str(path), allowed,
                                    hint=f"unsupported version {data.get('version')!r}")
        try:
            return cls(logits=data["logits"], labels=data.get("labels"))
        except (KeyError, QFaultConfigError) as exc:
            raise QFaultConfigError("path", str(path), allowed,
                                    hint=f"malformed content: {exc}") from exc


def golden_run(model: torch.nn.Module, batches: Iterable[tuple[Any, Any]],
               device: str | torch.device) -> GoldenRun:
    """Run the fault-free model over ``batches`` and keep its logits.

    Runs under :func:`torch.no_grad`. The model is used as it is: put it on ``device`` and in
    ``eval()`` mode first (this function changes neither, so the faulty runs can use the very same
    model state).

    Args:
        model: The classifier; its output is ``[B, C]`` logits or a Brevitas QuantTensor (its
            ``.value`` is taken).
        batches: ``(x, y)`` pairs: ``x`` the input batch (moved to ``device``), ``y`` the labels
            ``[B]`` (anything :func:`torch.as_tensor` turns into integers) or None; either every
            batch has labels or none has.
        device: Where the inputs are sent (e.g. ``"cuda"``).

    Returns:
        The :class:`GoldenRun` with CPU float32 logits ``[N, C]`` in batch order.

    Raises:
        QFaultConfigError: No batches, an output that is not ``[B, C]``, labels of the wrong size,
            or labels given for some batches only.
    """
    logits: list[Tensor] = []
    labels: list[Tensor] = []
    with_labels: bool | None = None
    with torch.no_grad():
        for i, (x, y) in enumerate(batches):
            if isinstance(x, Tensor):
                x = x.to(device)
            out = _to_logits(model(x))
            if out.dim() != 2:
                raise QFaultConfigError("model output", tuple(out.shape),
                                        "logits of shape [B, C]", hint=f"batch {i}")
            has = y is not None
            if with_labels is None:
                with_labels = has
            elif has != with_labels:
                raise QFaultConfigError("batches", f"batch {i} labels={'given' if has else None}",
                                        "labels for every batch or for none")
            if has:
                yt = torch.as_tensor(y).detach().to("cpu").reshape(-1)
                if yt.shape[0] != out.shape[0]:
                    raise QFaultConfigError("batches", f"batch {i}: {yt.shape[0]} labels",
                                            f"{out.shape[0]} labels (one per output row)")
                labels.append(yt)
            logits.append(out.detach().to(device="cpu", dtype=torch.float32))
    if not logits:
        raise QFaultConfigError("batches", "<empty>", "at least one (x, y) batch")
    return GoldenRun(logits=torch.cat(logits), labels=torch.cat(labels) if with_labels else None)
