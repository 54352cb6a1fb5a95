"""Bit-sensitivity ranking (seed 002, issue 13): does ``rank_bits`` find the bits whose flip hurts,
and what does ranking cost.

Model: the demo ``digits_cnn`` (8-bit Brevitas CNN; the ``digits`` campaign dataset is its 449
test images). Three parts:

1. Validation against exhaustive injection. Every bit of the first weight layer (module "1",
   QuantConv2d 1->16 3x3: 144 weights x 8 bits = 1,152 bits) is flipped alone in one campaign
   (``fault.sites`` swept over every ``[[element, bit]]``, permanent, 1 repetition, the 449 test
   images); a bit's measured damage is the golden accuracy minus the trial's (percentage
   points). The same bits are ranked by ``rank_bits(model, (x, y), method=m, names=("1",))`` on
   the first 512 images of the digits *training* split (never the test images) for m in delta,
   gradient, taylor, hessian (5 and 10 eigenpairs), hessian and delta with ``refine=144`` (their
   first 144 bits re-ordered by the measured loss change), and by a naive baseline: MSB first,
   each bit plane by decreasing |weight|. Per ranking: Spearman's rho between the bits' scores and the
   measured drop, and the share of the 1 % most damaging bits (12 of 1,152) in the ranking's
   first 1 %. A bit's score is minus its position in the ranking (``rank_of()``), so the
   MSB-first regrouping of the parameter-level methods is what is judged; ``delta`` is also
   judged by its own per-bit score (ties averaged). Ties in the measured drop are broken by the
   number of images whose top-1 class changed (more first), then by bit significance (MSB
   first), then by element index; "hits (tie-aware)" counts the ranking's first 12 bits whose
   drop is at least the 12th largest drop, which no tie-break changes. Goals: rho >= 0.7 and
   top 1 % >= 50 %. Extra columns: rho against the exact change of the training loss of each
   flip (what the scores estimate) and rho within the MSB plane. Three reference rows that are not
   library methods: "exact train-loss change" (one injected forward of the 512 training images
   per bit: the best any ranking from that data can do), "exact test-loss change" (the same on the
   449 test images the drop is measured on: no ranking may see them, so this bounds what any
   loss-based score can reach against the measured drop) and "2nd order" (``g Δ + H_ii Δ² / 2``
   with the exact Hessian diagonal of the layer, 144 Hessian-vector products: is the Taylor
   model the limit?).
2. Ranking cost: every bit of the whole model (3 weight layers, 9,872 weights, 78,976 bits) with
   each method, against one clean forward + backward (cross-entropy, eval mode) over the same
   512 images: the median over rounds of the ratio within a round. Goal <= 20x.
3. Campaign throughput: the exhaustive campaign's bits per second against a naive loop (for each
   bit: ``qfault.inject`` the flip, one forward over the 449 test images in the campaign's
   batches, accuracy), timed on a sample of 100 bits spread evenly over the layer and
   extrapolated to 1,152 (the full campaign runs twice, the faster counts); and, paired, the
   naive loop against a campaign over the same 100 bits (5 rounds alternated, the median of the
   per-round ratios). The accuracies of both are checked against the exhaustive campaign's.

Usage: .venv/bin/python bench/bench_sensitivity.py [--quick] [--train-images 512]
--quick: one timing round for the rankings, a 40-bit sample in 2 rounds and one full campaign run.
"""

from __future__ import annotations

import gc
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import fmt_time, loadavg, machine_line, parse_args, print_table  # noqa: E402
from qfault.campaign import CampaignSpec, CampaignStore, load_batches, predict, run_campaign  # noqa: E402
from qfault.data import load_demo_model, load_digits_split  # noqa: E402
from qfault.faults import BitFlip  # noqa: E402
from qfault.injection import InjectSpec, inject  # noqa: E402
from qfault.sensitivity import Curvature, LeafForward, rank_bits, weight_views  # noqa: E402

LAYER = "1"
METHODS = [("delta", {}), ("gradient", {}), ("taylor", {}), ("hessian k=5", {"eigenpairs": 5}),
           ("hessian k=10", {"eigenpairs": 10})]
#: validated on the layer only: the first REFINE bits (12 x the top 1 %) re-ordered by their measured loss change
REFINE = 144
REFINED = [(f"hessian k=5 refine={REFINE}", {"eigenpairs": 5, "refine": REFINE}),
           (f"delta refine={REFINE}", {"refine": REFINE})]
SHORT = {"hessian k=5": "hess k=5", "hessian k=10": "hess k=10", f"hessian k=5 refine={REFINE}": "hess+ref",
         f"delta refine={REFINE}": "delta+ref", "baseline MSB, |w|": "baseline",
         "ref: exact train-loss change": "exact dL", "ref: exact test-loss change": "test dL",
         "ref: 2nd order gΔ+H_iiΔ²/2": "2nd order"}
GOAL_RHO, GOAL_TOP, GOAL_COST = 0.7, 0.5, 20.0
TOP_SHARE = 0.01


def extra_args(parser) -> None:
    parser.add_argument("--train-images", type=int, default=512, help="training images the rankings see")


def flip_spec(element: int, bit: int) -> InjectSpec:
    return InjectSpec(fault=BitFlip(sites=((element, bit),)), site="weight", names=(LAYER,), persistence="permanent")


def campaign_spec(sites: list[tuple[int, int]], store: Path) -> CampaignSpec:
    """One sweep point per bit of ``sites`` (``(element, bit)``), each flipped alone."""
    return CampaignSpec.from_dict({
        "name": "exhaustive-layer-1", "seed": 0, "model": {"source": "demo", "name": "digits_cnn"},
        "dataset": "digits", "store": str(store),
        "faults": [{"fault": {"type": "bit_flip", "sites": [[0, 0]]}, "site": "weight", "names": [LAYER],
                    "persistence": "permanent"}],
        "sweep": {"fault.sites": [[[e, b]] for e, b in sites]}, "repetitions": 1, "stop": {"rule": "fixed"},
    })


def run_sites(model, batches, sites: list[tuple[int, int]], store: Path) -> tuple[dict, float, float, float]:
    """``({(element, bit): (accuracy %, images whose top-1 changed)}, golden accuracy, seconds,
    the trials' own seconds (sum of the store's elapsed_s))`` of a campaign flipping each bit of
    ``sites`` alone."""
    spec = campaign_spec(sites, store)
    gc.collect()
    start = time.perf_counter()
    result = run_campaign(spec, progress=False, log=lambda *_: None, model=model, batches=batches)
    seconds = time.perf_counter() - start
    out, trial_s = {}, 0.0
    for row in CampaignStore(spec.store, spec, create=False).trials():
        (e, b), = row.point_values["fault.sites"]
        out[(e, b)] = (row.accuracy, row.counts["sdc1"])
        trial_s += row.elapsed_s
    assert len(out) == len(sites), "a bit has no trial"
    return out, result.golden_accuracy, seconds, trial_s


def exhaustive(model, batches, elements: int, bits: int, store: Path) -> tuple[dict, float, float]:
    """``({"drop", "sdc1", "accuracy"}: [elements, bits] arrays, "trial_s"}, golden accuracy,
    seconds)``."""
    trials, golden, seconds, trial_s = run_sites(model, batches, [(e, b) for e in range(elements)
                                                                  for b in range(bits)], store)
    accuracy, sdc1 = np.zeros((elements, bits)), np.zeros((elements, bits))
    for (e, b), (acc, changed) in trials.items():
        accuracy[e, b], sdc1[e, b] = acc, changed
    return {"drop": golden - accuracy, "sdc1": sdc1, "accuracy": accuracy, "trial_s": trial_s}, \
        golden, seconds


def naive_loop(model, batches, sample: list[tuple[int, int]]) -> tuple[dict, float]:
    """Accuracy (percent) of each sampled bit's flip, and the loop's seconds."""
    labels = torch.cat([y for _, y in batches])
    out = {}
    gc.collect()
    start = time.perf_counter()
    with torch.no_grad():
        for e, b in sample:
            with inject(model, flip_spec(e, b)):
                logits = predict(model, batches)
            out[(e, b)] = 100.0 * int((logits.argmax(1) == labels).sum()) / len(labels)
    return out, time.perf_counter() - start


def exact_loss_changes(model, x, y, elements: int, bits: int) -> tuple[np.ndarray, float]:
    """``[elements, bits]`` change of the mean cross-entropy on ``(x, y)`` when each bit flips
    alone (one injected forward per bit), and the seconds it took."""
    out = np.zeros((elements, bits))
    start = time.perf_counter()
    with torch.no_grad():
        logits = model(x)
        clean = float(F.cross_entropy(getattr(logits, "value", logits), y))
        for e in range(elements):
            for b in range(bits):
                with inject(model, flip_spec(e, b)):
                    logits = model(x)
                out[e, b] = float(F.cross_entropy(getattr(logits, "value", logits), y)) - clean
    return out, time.perf_counter() - start


def second_order(model, x, y) -> tuple[np.ndarray, float]:
    """``[elements, bits]``: ``g Δ + H_ii Δ² / 2`` per bit with the exact diagonal of the layer's
    Hessian (one Hessian-vector product per weight), and the seconds it took."""
    start = time.perf_counter()
    views = weight_views(model, x[:1], names=(LAYER,))
    view = views[0]
    curvature = Curvature(LeafForward(model, views), [(x[i:i + 256], y[i:i + 256]) for i in range(0, len(y), 256)])
    grad = curvature.gradient()[0].reshape(-1).double().numpy()
    diag = np.zeros(view.numel)
    for i in range(view.numel):
        unit = torch.zeros(view.numel)
        unit[i] = 1.0
        diag[i] = float(curvature.hvp([unit.view(view.shape)])[0].reshape(-1)[i])
    delta = view.flip_deltas().numpy()
    return grad[:, None] * delta + 0.5 * diag[:, None] * delta**2, time.perf_counter() - start


def damage_order(measured: dict) -> np.ndarray:
    """Flat bit indices (element * bits + bit) by decreasing measured damage: accuracy drop, then
    top-1 changes, then bit significance (MSB first), then element index."""
    drop, sdc1 = measured["drop"], measured["sdc1"]
    elements, bits = drop.shape
    e, b = np.meshgrid(np.arange(elements), np.arange(bits), indexing="ij")
    # np.lexsort: the last key is the primary one
    return np.lexsort((e.ravel(), -b.ravel(), -sdc1.ravel(), -np.round(drop.ravel(), 9)))


def positions_of(scores: np.ndarray) -> np.ndarray:
    """``[numel, bits]`` ranking positions of per-bit scores (larger first; ties: element order,
    then MSB first, as ``rank_bits`` breaks them)."""
    elements, bits = scores.shape
    flat = scores[:, ::-1].reshape(-1)  # element-major, MSB first
    order = np.argsort(-flat, kind="stable")
    positions = np.empty(flat.size, dtype=np.int64)
    positions[order] = np.arange(flat.size)
    return positions.reshape(elements, bits)[:, ::-1]


def baseline_positions(theta: np.ndarray, bits: int) -> np.ndarray:
    """``[numel, bits]`` positions of the naive ranking: MSB plane first, each plane by
    decreasing |weight| (ties: element order)."""
    by_weight = np.argsort(-np.abs(theta), kind="stable")
    positions = np.zeros((theta.size, bits), dtype=np.int64)
    for plane in range(bits):  # plane 0 = MSB
        positions[by_weight, bits - 1 - plane] = plane * theta.size + np.arange(theta.size)
    return positions


def judge(name: str, positions: np.ndarray, measured: dict, order: np.ndarray, top: int,
          train_change: np.ndarray, scores: np.ndarray | None = None) -> dict:
    """Spearman and top-1 % recall of a ranking given as ``[numel, bits]`` positions (or, for
    Spearman, its own ``scores``)."""
    drop = measured["drop"]
    score = -positions.astype(np.float64) if scores is None else scores
    rho = spearmanr(score.ravel(), drop.ravel()).statistic
    truth = set(order[:top].tolist())
    mine = np.argsort(positions.ravel(), kind="stable")[:top]
    threshold = drop.ravel()[order[top - 1]]
    return {"ranking": name, "rho": float(rho), "top": len(truth & set(mine.tolist())) / top,
            "hits": int((drop.ravel()[mine] >= threshold - 1e-9).sum()), "positions": positions,
            "rho_train": float(spearmanr(score.ravel(), train_change.ravel()).statistic),
            "rho_msb": float(spearmanr(score[:, -1], drop[:, -1]).statistic), "mine": mine}


def fwd_bwd(model, x, y) -> None:
    model.zero_grad(set_to_none=True)
    out = model(x)
    F.cross_entropy(getattr(out, "value", out), y).backward()


def time_call(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    args = parse_args(__doc__, extra_args)
    print(machine_line(torch.device("cpu")))
    started = time.perf_counter()
    model, _ = load_demo_model("digits_cnn", log=lambda *_: None)
    model.eval()
    x_train, y_train, _, _ = load_digits_split()
    x, y = x_train[:args.train_images], y_train[:args.train_images]
    view = weight_views(model, x[:1], names=(LAYER,))[0]
    elements, bits = view.numel, view.bits
    theta, codes = view.value.double().numpy(), view.codes.numpy()
    top = max(1, math.ceil(elements * bits * TOP_SHARE))

    with tempfile.TemporaryDirectory() as tmp:
        batches = load_batches(campaign_spec([(0, 0)], Path(tmp) / "probe.db"))
        images = sum(len(b) for _, b in batches)
        # warm every code path up: a short campaign, one ranking per method
        run_sites(model, batches, [(0, b) for b in range(bits)], Path(tmp) / "warm.db")
        for name, kw in METHODS[:4]:
            rank_bits(model, (x, y), method=name.split()[0], names=(LAYER,), **kw)

        # -- 1. validation ------------------------------------------------------------------------
        measured, golden, campaign_s = exhaustive(model, batches, elements, bits, Path(tmp) / "exhaustive.db")
        train_change, exact_s = exact_loss_changes(model, x, y, elements, bits)
        test_change, test_s = exact_loss_changes(model, torch.cat([b for b, _ in batches]),
                                                 torch.cat([labels for _, labels in batches]), elements, bits)
        quadratic, quadratic_s = second_order(model, x, y)
        order = damage_order(measured)
        results = []
        for name, kw in METHODS + REFINED:
            ranking = rank_bits(model, (x, y), method=name.split()[0], names=(LAYER,), **kw)
            positions = ranking.rank_of()[0]
            mine = [judge(name, positions, measured, order, top, train_change)]
            if ranking.param_scores is None and not ranking.refined:
                scores = np.zeros((elements, bits))
                scores[ranking.element, ranking.bit] = ranking.score
                mine.append(judge(f"{name} (own score)", positions, measured, order, top, train_change, scores))
            for r in mine:
                r["seconds"], r["hvp"] = ranking.seconds, ranking.hvp_calls
            results += mine
        results.append(judge("baseline MSB, |w|", baseline_positions(theta, bits), measured, order, top, train_change))
        references = [judge("ref: exact train-loss change", positions_of(train_change), measured, order, top,
                            train_change, train_change),
                      judge("ref: exact test-loss change", positions_of(test_change), measured, order, top,
                            train_change, test_change),
                      judge("ref: 2nd order gΔ+H_iiΔ²/2", positions_of(quadratic), measured, order, top,
                            train_change, quadratic)]
        for reference, seconds in zip(references, (exact_s, test_s, quadratic_s)):
            reference["seconds"] = seconds
        references[-1]["hvp"] = elements

        drop = measured["drop"]
        print(f"\n1. {LAYER}.weight {tuple(view.shape)}: {elements} weights x {bits} bits = {elements * bits} bits "
              f"({view.fmt.name}); exhaustive campaign over {images} test images, rankings on {len(y)} training "
              f"images")
        print(f"golden accuracy {golden:.2f} %; campaign {campaign_s:.1f} s; flips that lower accuracy: "
              f"{(drop > 1e-9).sum()}, raise it: {(drop < -1e-9).sum()}, change no top-1 class: "
              f"{(measured['sdc1'] == 0).sum()}; largest drop {drop.max():.2f} points; top 1 % = {top} bits, "
              f"threshold drop {drop.ravel()[order[top - 1]]:.2f}")
        planes = "  ".join(f"{b}: {drop[:, b].mean():+.3f}/{drop[:, b].max():.2f}" for b in range(bits - 1, -1, -1))
        print(f"drop per bit position (bit: mean/max, MSB first): {planes}")
        negative = codes < 0
        print(f"MSB flips: mean drop {drop[negative, -1].mean():.2f} for the {negative.sum()} negative codes "
              f"(Δ = +{2 ** (bits - 1)} steps), {drop[~negative, -1].mean():.2f} for the {(~negative).sum()} "
              f"others (Δ = -{2 ** (bits - 1)} steps); "
              f"{sum(codes[f // bits] < 0 and f % bits == bits - 1 for f in order[:top])} of the top {top} are MSBs "
              f"of negative codes")
        rows = []
        for r in results + references:
            reference = r["ranking"].startswith("ref:")
            rho_verdict = "" if reference else ("PASS" if r["rho"] >= GOAL_RHO else "MISS")
            rows.append([r["ranking"], f"{r['rho']:.3f}", rho_verdict,
                         f"{r['top'] * 100:.0f} % ({round(r['top'] * top)}/{top})", f"{r['hits']}/{top}",
                         "" if reference else ("PASS" if r["top"] >= GOAL_TOP else "MISS"),
                         f"{r['rho_train']:.3f}", f"{r['rho_msb']:.3f}",
                         str(sum(codes[f // bits] < 0 and f % bits == bits - 1 for f in r["mine"])),
                         f"{r['seconds']:.2f} s" if "seconds" in r else "", str(r.get("hvp", ""))])
        print_table(["ranking", "rho (drop)", f"goal {GOAL_RHO}", "top 1 %", "hits (tie-aware)",
                     f"goal {GOAL_TOP * 100:.0f} %", "rho (train dL)", "rho (MSBs)", "neg MSBs in top", "time",
                     "hvp"], rows)

        print(f"\nthe {max(top, 16)} most damaging bits (measured) and their positions in each ranking:")
        shown = [r for r in results + references if "(own score)" not in r["ranking"]]
        rows = []
        for flat in order[:max(top, 16)].tolist():
            e, b = divmod(flat, bits)
            rows.append([str(e), str(b), str(int(codes[e])), f"{theta[e]:+.4f}", f"{drop[e, b]:.2f}",
                         str(int(measured["sdc1"][e, b])), f"{train_change[e, b]:+.4f}"]
                        + [str(int(r["positions"][e, b])) for r in shown])
        print_table(["elem", "bit", "code", "weight", "drop", "top-1 chg", "train dL"]
                    + [SHORT.get(r["ranking"], r["ranking"]) for r in shown], rows)

        # -- 2. ranking cost on the whole model ---------------------------------------------------
        rounds = 1 if args.quick else 3
        base_samples, paired, whole = [], {}, {}
        for _ in range(3):
            fwd_bwd(model, x, y)
        for _ in range(rounds):
            base = statistics.median(time_call(lambda: fwd_bwd(model, x, y)) for _ in range(7))
            base_samples.append(base)
            for name, kw in METHODS:
                gc.collect()
                ranking = rank_bits(model, (x, y), method=name.split()[0], **kw)
                whole.setdefault(name, []).append(ranking)
                paired.setdefault(name, []).append(ranking.seconds / base)
        base = statistics.median(base_samples)
        n_bits = len(whole["delta"][0])
        print(f"\n2. ranking every bit of the model ({len(whole['delta'][0].tensors)} weight tensors, {n_bits} bits) "
              f"on {len(y)} training images; clean forward + backward {fmt_time(base)} (median of 7 per round, "
              f"{rounds} round(s))")
        rows = []
        for name, _ in METHODS:
            seconds = statistics.median(rk.seconds for rk in whole[name])
            ratio = statistics.median(paired[name])
            rows.append([name, fmt_time(seconds), f"{ratio:.1f}x", f"<= {GOAL_COST:.0f}x",
                         "PASS" if ratio <= GOAL_COST else "MISS", str(whole[name][0].hvp_calls),
                         f"{n_bits / seconds:,.0f}"])
        print_table(["method", "time", "vs fwd+bwd (paired)", "goal", "verdict", "hvp calls", "bits/s"], rows)
        print("  eigenvalues (k=10): " + ", ".join(f"{v:.3g}" for v in whole["hessian k=10"][0].eigenvalues))

        # -- 3. campaign throughput --------------------------------------------------------------
        n_sample = 40 if args.quick else 100
        sample = [divmod(int(f), bits) for f in np.linspace(0, elements * bits - 1, n_sample).round()]
        naive_runs, sample_runs = [], []
        for r in range(2 if args.quick else 5):  # alternate the two, rotating which goes first
            for which in (("naive", "campaign") if r % 2 == 0 else ("campaign", "naive")):
                if which == "naive":
                    naive, seconds = naive_loop(model, batches, sample)
                    naive_runs.append(seconds)
                else:
                    trials, _, seconds, _ = run_sites(model, batches, sample, Path(tmp) / f"sample{r}.db")
                    sample_runs.append(seconds)
        agree = sum(abs(naive[s] - measured["accuracy"][s]) < 1e-9 and abs(trials[s][0] - measured["accuracy"][s])
                    < 1e-9 for s in sample)
        full = [(campaign_s, measured["trial_s"])]
        if not args.quick:  # the full campaign once more: the VM's speed drifts by 2x and more
            again, _, seconds = exhaustive(model, batches, elements, bits, Path(tmp) / "again.db")
            full.append((seconds, again["trial_s"]))
    n_all = elements * bits
    per_bit = statistics.median(naive_runs) / n_sample
    paired = statistics.median(n / c for n, c in zip(naive_runs, sample_runs))
    print(f"\n3. exhaustive single-bit campaign, {n_all} bits x {images} images; naive loop timed on {n_sample} "
          f"bits spread over the layer, {len(naive_runs)} rounds alternated with a campaign over the same bits")
    best = min(seconds for seconds, _ in full)
    rows = [[f"campaign, all {n_all} bits", ", ".join(f"{s:.2f} s (trials {t:.2f} s)" for s, t in full),
             f"{n_all / best:.1f}", f"{per_bit * n_all / best:.2f}x (vs extrapolated)"],
            [f"naive loop, {n_sample} bits", f"{fmt_time(per_bit * n_sample)} (median) -> {per_bit * n_all:.1f} s for "
             f"{n_all} (extrapolated)", f"{1 / per_bit:.1f}", "1.00x"],
            [f"campaign, same {n_sample} bits", f"{fmt_time(statistics.median(sample_runs))} (median)",
             f"{n_sample / statistics.median(sample_runs):.1f}", f"{paired:.2f}x (paired)"]]
    print_table(["runner", "time", "bits/s", "speed-up"], rows)
    print("  full campaign: bits/s and speed-up from its faster run; 'trials': the sum of the trials' own "
          "elapsed_s in the store (the rest: golden run, planning, store writes)")
    print(f"  naive loop and sample campaign equal to the exhaustive campaign's accuracy on {agree}/{n_sample} "
          f"bits; the exact train-loss reference above took {exact_s:.1f} s for {n_all} forwards of {len(y)} images")
    print(f"total {time.perf_counter() - started:.0f} s; load average at end {loadavg()}")


if __name__ == "__main__":
    main()
