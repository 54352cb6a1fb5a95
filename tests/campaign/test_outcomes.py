"""Outcome classes (Li et al. SC'17) checked on hand-built logits and against a per-image
pure-Python reference; the golden run's collection, accuracy and file round trip."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qfault import QFaultConfigError
from qfault.campaign._outcomes import (
    OUTCOMES,
    GoldenRun,
    OutcomeBatch,
    classify,
    golden_run,
    merge_counts,
    pct_key,
)

DEFAULT_KEYS = [
    "images", "masked", "non_critical", "sdc1", "sdc1_critical", "sdc5", "due", "sdc10pct",
    "sdc20pct", "correct_golden", "correct_faulty", "top5_correct_faulty",
]


# --------------------------------------------------------------------------------------------
# independent per-image reference (plain Python floats, no torch ranking)


def softmax(row: list[float]) -> list[float]:
    m = max(row)
    ex = [math.exp(v - m) for v in row]
    s = math.fsum(ex)
    return [v / s for v in ex]


def order(row: list[float]) -> list[int]:
    """Classes by decreasing logit, lower index first among equal logits."""
    return sorted(range(len(row)), key=lambda j: (-row[j], j))


def ref_counts(g, f, y, *, atol=0.0, rtol=0.0, thresholds=(10.0, 20.0), ks=(5,)):
    keys = (["images", "masked", "non_critical", "sdc1", "sdc1_critical"] + [f"sdc{k}" for k in ks]
            + ["due"] + [pct_key(x) for x in thresholds]
            + ["correct_golden", "correct_faulty"] + [f"top{k}_correct_faulty" for k in ks])
    out = dict.fromkeys(keys, 0)
    per_image = []
    for i, (gi, fi) in enumerate(zip(g.tolist(), f.tolist())):
        c = len(gi)
        out["images"] += 1
        due = any(not math.isfinite(v) for v in fi)
        masked = not due and all(abs(a - b) <= atol + rtol * abs(b) for a, b in zip(fi, gi))
        gtop = order(gi)[0]
        ftop = None if due else order(fi)[0]
        changed = not due and not masked
        sdc1 = changed and ftop != gtop
        primary = "due" if due else "masked" if masked else "sdc1" if sdc1 else "non_critical"
        out[primary] += 1
        per_image.append(primary)
        for k in ks:
            out[f"sdc{k}"] += changed and gtop not in order(fi)[: min(k, c)]
        if changed:
            pg, pf = softmax(gi)[gtop], softmax(fi)[gtop]
            for x in thresholds:
                out[pct_key(x)] += abs(pf - pg) / pg > x / 100
        if y is not None:
            label = int(y[i])
            out["correct_golden"] += gtop == label
            out["sdc1_critical"] += sdc1 and gtop == label
            out["correct_faulty"] += not due and ftop == label
            for k in ks:
                out[f"top{k}_correct_faulty"] += not due and label in order(fi)[: min(k, c)]
    return {k: int(v) for k, v in out.items()}, per_image


def random_case(n: int, c: int, seed: int, device: str = "cpu"):
    """Integer-valued logits (many ties) with every kind of corruption mixed in."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randint(-3, 4, (n, c), generator=gen).float()
    f = g.clone()
    kind = torch.randint(0, 7, (n,), generator=gen)
    col = torch.randint(0, c, (n,), generator=gen)
    rows = torch.arange(n)
    new = torch.randint(-4, 6, (n,), generator=gen).float()
    tiny = torch.rand(n, generator=gen) * 1e-3
    for k, sel in ((1, kind == 1), (2, kind == 2), (3, kind == 3), (4, kind == 4), (5, kind == 5)):
        r, cc = rows[sel], col[sel]
        if k == 1:
            f[r, cc] = new[sel]
        elif k == 2:
            f[r, cc] += tiny[sel]  # small change: masked only with a tolerance
        elif k == 3:
            f[r, cc] = float("nan")
        elif k == 4:
            f[r, cc] = float("inf") * torch.where(new[sel] > 0, 1.0, -1.0)
        elif k == 5:
            f[r] = g[r] * 0.5 + new[sel, None] * 0.3  # whole row rescaled
    labels = torch.randint(0, c, (n,), generator=gen)
    return g.to(device), f.to(device), labels.to(device)


# --------------------------------------------------------------------------------------------
# hand-built logits, one image per class and flag

G = [4.0, 2.0, 1.0, 0.0, -1.0, -2.0]  # golden top-1 = class 0, C = 6 (top-5 is not everything)


def p0(row):
    return softmax(row)[0]


def rel_change(row):
    return abs(p0(row) - p0(G)) / p0(G)


def hand_case():
    rows = {
        "masked": list(G),
        "nc_small": G[:5] + [-2.5],                   # tiny probability change
        "nc_10pct": [4.0, 2.9, 1.0, 0.0, -1.0, -2.0],  # top-1 kept, p0 drops 10..20 %
        "nc_20pct": [4.0, 3.5, 1.0, 0.0, -1.0, -2.0],  # top-1 kept, p0 drops > 20 %
        "sdc1": [4.0, 5.0, 1.0, 0.0, -1.0, -2.0],      # class 1 wins, class 0 second
        "sdc5": [-3.0, 2.0, 1.0, 0.0, -1.0, -2.0],     # class 0 last of six: out of the top-5
        "due_nan": [4.0, float("nan"), 1.0, 0.0, -1.0, -2.0],
        "due_inf": [4.0, 2.0, float("inf"), 0.0, -1.0, -2.0],
        "due_ninf": [float("-inf")] + G[1:],
    }
    # the design of the rows, checked independently
    assert rel_change(rows["nc_small"]) < 0.10
    assert 0.10 < rel_change(rows["nc_10pct"]) < 0.20
    assert rel_change(rows["nc_20pct"]) > 0.20
    assert rel_change(rows["sdc1"]) > 0.20 and order(rows["sdc1"])[1] == 0
    names = list(rows)
    g = torch.tensor([G] * len(rows))
    f = torch.tensor([rows[k] for k in names])
    # labels: golden correct (0) except for "sdc5", whose label 1 is the faulty top-1
    labels = torch.tensor([1 if k == "sdc5" else 0 for k in names])
    return names, g, f, labels


def test_hand_built_every_class_and_flag():
    names, g, f, labels = hand_case()
    out = classify(g, f, labels)
    idx = {k: i for i, k in enumerate(names)}

    def flags(t):
        return {names[i] for i in torch.nonzero(t).flatten().tolist()}

    assert flags(out.masked) == {"masked"}
    assert flags(out.non_critical) == {"nc_small", "nc_10pct", "nc_20pct"}
    assert flags(out.sdc1) == {"sdc1", "sdc5"}
    assert flags(out.due) == {"due_nan", "due_inf", "due_ninf"}
    assert flags(out.sdc5) == {"sdc5"}
    assert flags(out.sdc_pct[10.0]) == {"nc_10pct", "nc_20pct", "sdc1", "sdc5"}
    assert flags(out.sdc_pct[20.0]) == {"nc_20pct", "sdc1", "sdc5"}
    assert flags(out.sdc1_critical) == {"sdc1"}  # "sdc5" was wrong in the golden run already
    assert flags(out.golden_correct) == set(names) - {"sdc5"}
    # faulty top-1 == label: unchanged rows with label 0, and "sdc5" (faulty top-1 = 1 = label)
    assert flags(out.faulty_correct) == {"masked", "nc_small", "nc_10pct", "nc_20pct", "sdc5"}
    # label in the faulty top-5: all finite rows ("sdc1": class 0 is second)
    assert flags(out.faulty_topk_correct[5]) == {"masked", "nc_small", "nc_10pct", "nc_20pct",
                                                 "sdc1", "sdc5"}
    assert out.faulty_top1[idx["due_nan"]] == -1 and out.faulty_top1[idx["sdc1"]] == 1
    assert torch.equal(out.golden_top1, torch.zeros(len(names), dtype=torch.long))
    assert [OUTCOMES[i] for i in out.outcome_index().tolist()] == [
        "masked", "non_critical", "non_critical", "non_critical", "sdc1", "sdc1", "due", "due", "due"]

    counts = out.counts()
    assert list(counts) == DEFAULT_KEYS
    assert counts == {
        "images": 9, "masked": 1, "non_critical": 3, "sdc1": 2, "sdc1_critical": 1, "sdc5": 1,
        "due": 3, "sdc10pct": 4, "sdc20pct": 3, "correct_golden": 8, "correct_faulty": 5,
        "top5_correct_faulty": 6,
    }
    assert counts == ref_counts(g, f, labels)[0]


def test_primary_classes_are_exclusive_and_flags_are_nested():
    g, f, y = random_case(500, 7, seed=3)
    out = classify(g, f, y, sdc_thresholds=(5.0, 10.0, 20.0), topk=(1, 3, 5))
    primary = torch.stack([out.masked, out.non_critical, out.sdc1, out.due]).int()
    assert torch.equal(primary.sum(0), torch.ones(500, dtype=torch.int))
    assert not (out.sdc_topk[5] & ~out.sdc_topk[3]).any()
    assert not (out.sdc_topk[3] & ~out.sdc1).any()
    assert not (out.sdc_pct[20.0] & ~out.sdc_pct[10.0]).any()
    assert not (out.sdc_pct[10.0] & ~out.sdc_pct[5.0]).any()
    for flag in [*out.sdc_topk.values(), *out.sdc_pct.values()]:
        assert not (flag & (out.due | out.masked)).any()  # DUE and masked images carry no flag
    assert not (out.faulty_correct & out.due).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("atol, rtol", [(0.0, 0.0), (1e-3, 0.0), (0.0, 1e-2), (0.6, 0.1)])
def test_matches_per_image_reference(seed, atol, rtol):
    g, f, y = random_case(300, 7, seed)
    thresholds = (10.0, 20.0, 12.5)
    ks = (2, 5, 7, 9)  # 7 = C and 9 > C: never an SDC-k
    out = classify(g, f, y, atol=atol, rtol=rtol, sdc_thresholds=thresholds, topk=(1, *ks))
    want, per_image = ref_counts(g, f, y, atol=atol, rtol=rtol, thresholds=thresholds, ks=ks)
    assert out.counts() == want
    assert [OUTCOMES[i] for i in out.outcome_index().tolist()] == per_image
    assert out.counts()["sdc7"] == out.counts()["sdc9"] == 0
    # without labels the correctness counts are zero, the rest unchanged
    no_labels = classify(g, f, None, atol=atol, rtol=rtol, sdc_thresholds=thresholds,
                         topk=(1, *ks)).counts()
    for key, value in no_labels.items():
        if "correct" in key or key == "sdc1_critical":
            assert value == 0
        else:
            assert value == want[key]


def test_tie_rule_is_first_maximal_index_like_argmax():
    g = torch.tensor([[1.0, 3.0, 3.0, 0.0],
                      [1.0, 3.0, 3.0, 0.0],
                      [2.0, 2.0, 2.0, 2.0],
                      [2.0, 2.0, 2.0, 2.0]])
    f = torch.tensor([[1.0, 3.0, 3.0, 0.5],   # tie kept: top-1 stays class 1 -> non-critical
                      [1.0, 2.9, 3.0, 0.0],   # tie broken towards class 2 -> SDC-1
                      [2.0, 2.0, 2.0, 2.5],   # class 3 wins -> SDC-1
                      [2.0, 2.0, 2.0, 1.0]])  # still tied among 0..2: top-1 stays 0
    out = classify(g, f)
    assert out.golden_top1.tolist() == torch.argmax(g, dim=1).tolist() == [1, 1, 0, 0]
    assert out.faulty_top1.tolist() == torch.argmax(f, dim=1).tolist() == [1, 2, 3, 0]
    assert out.non_critical.tolist() == [True, False, False, True]
    assert out.sdc1.tolist() == [False, True, True, False]


def test_tie_rule_in_top_k():
    # all seven faulty logits equal: the top-5 are classes 0..4 (lower index first)
    g = torch.tensor([[0.0, 0, 0, 0, 0, 0, 1], [0.0, 0, 1, 0, 0, 0, 0]])
    f = torch.full((2, 7), 5.0)
    out = classify(g, f, torch.tensor([6, 4]))
    assert out.sdc1.tolist() == [True, True]
    assert out.sdc5.tolist() == [True, False]  # golden class 6 is 7th, class 2 is 3rd
    assert out.faulty_topk_correct[5].tolist() == [False, True]


def test_top_k_is_capped_at_the_number_of_classes():
    g = torch.tensor([[3.0, 2.0, 1.0]])
    f = torch.tensor([[1.0, 2.0, 3.0]])  # golden top-1 is now last of three
    counts = classify(g, f, torch.tensor([0])).counts()
    assert counts["sdc1"] == 1 and counts["sdc5"] == 0 and counts["top5_correct_faulty"] == 1


def test_tolerances_decide_masked():
    eps = 2.0**-13  # exactly representable, so 1 + eps - 1 == eps in float32
    g = torch.tensor([[1.0, 0.0, -1.0], [100.0, 0.0, -1.0]])
    f = g + torch.tensor([[0.0, eps, 0.0], [0.0625, 0.0, 0.0]])  # rtol cannot absorb a change of 0
    assert classify(g, f).counts()["masked"] == 0  # default: exact equality
    assert classify(g, f, atol=eps).masked.tolist() == [True, False]
    assert classify(g, f, atol=eps / 2).masked.tolist() == [False, False]
    assert classify(g, f, rtol=1e-3).masked.tolist() == [False, True]  # 0.0625 <= 1e-3 * 100
    assert classify(g, f, rtol=6e-4).masked.tolist() == [False, False]
    assert classify(g, f, atol=eps, rtol=1e-3).masked.tolist() == [True, True]
    # -0.0 and 0.0 are equal logits
    z = torch.tensor([[0.0, 1.0]])
    assert classify(z, torch.tensor([[-0.0, 1.0]])).masked.tolist() == [True]


def test_masked_with_tolerance_overrides_a_top1_flip():
    # nearly tied logits swap within the tolerance: the image is masked and carries no flag
    g = torch.tensor([[1.0, 1.0005, -3.0, -3.0, -3.0, -3.0]])
    f = torch.tensor([[1.0005, 1.0, -3.0, -3.0, -3.0, -3.0]])
    out = classify(g, f, torch.tensor([1]), atol=1e-3)
    assert out.masked.tolist() == [True] and out.sdc1.tolist() == [False]
    assert out.faulty_correct.tolist() == [False]  # correctness uses the actual prediction
    assert classify(g, f).sdc1.tolist() == [True]


def test_counts_key_names_and_options():
    g, f, y = random_case(40, 5, seed=9)
    keys = list(classify(g, f, y, sdc_thresholds=(12.5, 30), topk=(3,)).counts())
    assert keys == ["images", "masked", "non_critical", "sdc1", "sdc1_critical", "sdc3", "due",
                    "sdc12.5pct", "sdc30pct", "correct_golden", "correct_faulty",
                    "top3_correct_faulty"]
    keys = list(classify(g, f, None, sdc_thresholds=(), topk=(1,)).counts())
    assert keys == ["images", "masked", "non_critical", "sdc1", "sdc1_critical", "due",
                    "correct_golden", "correct_faulty"]
    assert pct_key(10.0) == "sdc10pct" and pct_key(12.5) == "sdc12.5pct" and pct_key(5) == "sdc5pct"


def test_empty_batch_and_dtypes():
    out = classify(torch.zeros(0, 4), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert isinstance(out, OutcomeBatch) and len(out) == 0
    assert out.counts() == dict.fromkeys(DEFAULT_KEYS, 0)
    g, f, y = random_case(100, 6, seed=4)
    ref = classify(g, f, y).counts()
    assert classify(g.double(), f.double(), y.int()).counts() == ref
    # lower precisions are promoted exactly: same result as on their float32 values
    gh, fh = g.half(), f.half()
    assert classify(gh, fh, y).counts() == classify(gh.float(), fh.float(), y).counts()
    gb, fb = g.bfloat16(), f.bfloat16()
    assert classify(gb, fb, y).counts() == classify(gb.float(), fb.float(), y).counts()


def test_merge_counts():
    g, f, y = random_case(200, 6, seed=5)
    a = classify(g[:120], f[:120], y[:120]).counts()
    b = classify(g[120:], f[120:], y[120:]).counts()
    total = merge_counts(a, b)
    assert total == classify(g, f, y).counts()
    assert list(total) == DEFAULT_KEYS
    assert merge_counts({}, a) == a and merge_counts(a, {}) == a
    assert a == classify(g[:120], f[:120], y[:120]).counts()  # inputs untouched
    with pytest.raises(QFaultConfigError) as info:
        merge_counts(a, classify(g, f, y, topk=(1, 3)).counts())
    assert info.value.field == "counts"


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda g, f, y: classify(g, f[:, :3], y), "faulty_logits"),
        (lambda g, f, y: classify(g[0], f[0], None), "golden_logits"),
        (lambda g, f, y: classify(g, f.tolist(), y), "faulty_logits"),
        (lambda g, f, y: classify(g, f, y[:2]), "labels"),
        (lambda g, f, y: classify(g, f, y.float()), "labels"),
        (lambda g, f, y: classify(g, f, y + 100), "labels"),
        (lambda g, f, y: classify(g, f, y - 100), "labels"),
        (lambda g, f, y: classify(g, f, y, atol=-1.0), "atol"),
        (lambda g, f, y: classify(g, f, y, rtol=math.nan), "rtol"),
        (lambda g, f, y: classify(g, f, y, sdc_thresholds=(10.0, -5.0)), "sdc_thresholds"),
        (lambda g, f, y: classify(g, f, y, sdc_thresholds=(10, 10.0)), "sdc_thresholds"),
        (lambda g, f, y: classify(g, f, y, topk=(0, 5)), "topk"),
        (lambda g, f, y: classify(g, f, y, topk=(5, 5)), "topk"),
    ],
)
def test_classify_validation_names_field(call, field):
    g, f, y = random_case(10, 6, seed=0)
    with pytest.raises(QFaultConfigError) as info:
        call(g, f, y)
    assert info.value.field == field


def test_non_finite_golden_is_rejected():
    g = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    with pytest.raises(QFaultConfigError) as info:
        classify(g, torch.zeros(2, 2))
    assert info.value.field == "golden_logits"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    g, f, y = random_case(2000, 10, seed=7)
    cpu = classify(g, f, y, atol=1e-4, sdc_thresholds=(10.0, 20.0, 12.5), topk=(1, 3, 5))
    gpu = classify(g.cuda(), f.cuda(), y.cuda(), atol=1e-4, sdc_thresholds=(10.0, 20.0, 12.5),
                   topk=(1, 3, 5))
    assert gpu.masked.is_cuda and gpu.sdc5.is_cuda
    assert gpu.counts() == cpu.counts()
    assert torch.equal(gpu.outcome_index().cpu(), cpu.outcome_index())
    assert torch.equal(gpu.faulty_top1.cpu(), cpu.faulty_top1)
    # faulty logits on the CPU are moved to the golden device
    assert classify(g.cuda(), f, y).counts() == classify(g, f, y).counts()


# --------------------------------------------------------------------------------------------
# golden run


class FakeQuantTensor:
    """Stands in for a Brevitas QuantTensor: the logits are in ``.value``."""

    def __init__(self, value: torch.Tensor):
        self.value = value


class QuantOut(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return FakeQuantTensor(self.inner(x))


def make_data(n_batches=3, batch=8, features=5, classes=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(batch, features, generator=gen) for _ in range(n_batches)]
    ys = [torch.randint(0, classes, (batch,), generator=gen) for _ in range(n_batches)]
    return xs, ys


def test_golden_run_collects_logits_labels_and_accuracy():
    torch.manual_seed(0)
    model = nn.Linear(5, 7).eval()
    xs, ys = make_data()
    run = golden_run(model, zip(xs, ys), "cpu")
    with torch.no_grad():  # batch by batch, as the run computes (a kernel may round by batch size)
        want = torch.cat([model(x) for x in xs])
    assert run.logits.dtype == torch.float32 and run.logits.device.type == "cpu"
    assert torch.equal(run.logits, want)
    assert torch.equal(run.labels, torch.cat(ys)) and run.labels.dtype == torch.int64
    assert len(run) == 24 and run.num_classes == 7
    assert not run.logits.requires_grad
    pred = want.argmax(1).tolist()
    labels = torch.cat(ys).tolist()
    assert run.accuracy == pytest.approx(sum(p == t for p, t in zip(pred, labels)) / 24)
    top5 = [t in order(row)[:5] for row, t in zip(want.tolist(), labels)]
    assert run.top5 == pytest.approx(sum(top5) / 24)
    # the golden logits classify as all-masked against themselves
    assert classify(run.logits, want, run.labels).counts()["masked"] == 24


def test_golden_run_quant_tensor_lists_and_no_labels():
    torch.manual_seed(1)
    inner = nn.Linear(5, 3)
    xs, ys = make_data(classes=3)
    run = golden_run(QuantOut(inner), [(x, y.tolist()) for x, y in zip(xs, ys)], torch.device("cpu"))
    with torch.no_grad():
        assert torch.equal(run.logits, torch.cat([inner(x) for x in xs]))
    assert run.labels.tolist() == torch.cat(ys).tolist()
    assert run.top5 == 1.0  # three classes: the label is always in the top-3
    unlabeled = golden_run(inner, [(x, None) for x in xs], "cpu")
    assert unlabeled.labels is None
    with pytest.raises(QFaultConfigError) as info:
        unlabeled.accuracy
    assert info.value.field == "labels"


def test_golden_run_errors():
    model = nn.Linear(5, 3)
    xs, ys = make_data(classes=3)
    with pytest.raises(QFaultConfigError) as info:
        golden_run(model, [], "cpu")
    assert info.value.field == "batches"
    with pytest.raises(QFaultConfigError) as info:
        golden_run(model, [(xs[0], ys[0]), (xs[1], None)], "cpu")
    assert info.value.field == "batches"
    with pytest.raises(QFaultConfigError) as info:
        golden_run(model, [(xs[0], ys[0][:3])], "cpu")
    assert info.value.field == "batches"
    with pytest.raises(QFaultConfigError) as info:
        golden_run(nn.Flatten(0), [(xs[0], ys[0])], "cpu")
    assert info.value.field == "model output"
    with pytest.raises(QFaultConfigError) as info:
        GoldenRun(torch.zeros(4, 3), torch.tensor([0, 1, 2, 3]))
    assert info.value.field == "labels"


def test_golden_run_save_load_round_trip(tmp_path):
    gen = torch.Generator().manual_seed(2)
    run = GoldenRun(torch.randn(50, 10, generator=gen, dtype=torch.float64),
                    torch.randint(0, 10, (50,), generator=gen, dtype=torch.int32))
    assert run.logits.dtype == torch.float32 and run.labels.dtype == torch.int64
    path = tmp_path / "golden.pt"
    run.save(path)
    back = GoldenRun.load(str(path))
    assert torch.equal(back.logits, run.logits) and torch.equal(back.labels, run.labels)
    assert back.accuracy == run.accuracy and back.top5 == run.top5
    assert [p.name for p in tmp_path.iterdir()] == ["golden.pt"]  # no temp file left behind
    unlabeled = GoldenRun(run.logits)
    unlabeled.save(tmp_path / "u.pt")
    assert GoldenRun.load(tmp_path / "u.pt").labels is None


def test_golden_run_load_errors_name_the_path(tmp_path):
    run = GoldenRun(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    good = tmp_path / "good.pt"
    run.save(good)
    cases = {
        "garbage.pt": b"this is not a torch file at all",
        "truncated.pt": good.read_bytes()[:200],
        "empty.pt": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    torch.save({"format": "qfault.golden_run", "version": 99}, tmp_path / "future.pt")
    torch.save({"format": "qfault.golden_run", "version": 1, "labels": None}, tmp_path / "nolog.pt")
    torch.save({"format": "qfault.golden_run", "version": 1, "logits": torch.zeros(3),
                "labels": None}, tmp_path / "shape.pt")
    # arbitrary pickled objects are refused (weights_only=True)
    torch.save({"format": "qfault.golden_run", "version": 1, "logits": torch.zeros(2, 2),
                "labels": None, "obj": FakeQuantTensor(torch.zeros(1))}, tmp_path / "pickle.pt")
    for name in [*cases, "tensor.pt", "future.pt", "nolog.pt", "shape.pt", "pickle.pt"]:
        path = tmp_path / name
        with pytest.raises(QFaultConfigError) as info:
            GoldenRun.load(path)
        assert info.value.field == "path", name
        assert str(path) in str(info.value), name
    with pytest.raises(FileNotFoundError):
        GoldenRun.load(tmp_path / "missing.pt")


def test_golden_side_is_reused_only_while_the_golden_tensors_are_unchanged():
    from qfault.campaign import _outcomes

    golden = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    labels = torch.tensor([0, 1])
    faulty = torch.tensor([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
    first = classify(golden, faulty, labels)
    assert first.golden_top1.tolist() == [0, 1] and first.sdc1.tolist() == [False, True]
    side = _outcomes._last_golden["entry"][3]
    classify(golden, faulty, labels)
    assert _outcomes._last_golden["entry"][3] is side  # the same golden run: not recomputed
    golden[1, 2] = 5.0  # changed in place: recomputed
    again = classify(golden, faulty, labels)
    assert again.golden_top1.tolist() == [0, 2] and again.sdc1.tolist() == [False, False]
    labels[1] = 7  # an invalid label is caught on the next call as well
    with pytest.raises(QFaultConfigError, match="labels"):
        classify(golden, faulty, labels)
    other = torch.tensor([[0.0, 9.0, 0.0], [1.0, 0.0, 0.0]])
    assert classify(other, faulty).golden_top1.tolist() == [1, 0]  # another tensor, another side
    del golden, other, side, first, again
    import gc
    gc.collect()
    assert not _outcomes._last_golden  # nothing of a freed golden run is kept


def test_classify_several_trials_at_once_equals_one_at_a_time():
    gen = torch.Generator().manual_seed(5)
    golden = torch.randn(30, 7, generator=gen)
    labels = torch.randint(0, 7, (30,), generator=gen)
    runs = []
    for k in range(4):
        faulty = golden.clone()
        rows = torch.randperm(30, generator=gen)[:10 * k]
        faulty[rows] += torch.randn(len(rows), 7, generator=gen) * (0.5 * k)
        if k == 3:
            faulty[0, 2] = float("nan")  # a DUE image
        runs.append(faulty)
    together = classify(golden, torch.cat(runs), labels, trials=4).block_counts(4)
    assert together == [classify(golden, f, labels).counts() for f in runs]
    assert together[0]["masked"] == 30 and together[3]["due"] == 1
    with pytest.raises(QFaultConfigError, match="faulty_logits"):
        classify(golden, torch.cat(runs[:3]), labels, trials=4)
    with pytest.raises(QFaultConfigError, match="trials"):
        classify(golden, golden, labels, trials=0)
    with pytest.raises(QFaultConfigError, match="blocks"):
        classify(golden, golden, labels).block_counts(7)


def test_labels_that_are_not_a_tensor_are_refused_by_name():
    golden = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(QFaultConfigError, match="labels"):
        classify(golden, golden, [0, 1])
