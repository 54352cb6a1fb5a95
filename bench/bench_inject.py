"""Forward-time overhead of qfault's transient fault injection on a small ResNet (eval, inference_mode).

Rows (faults redrawn on every forward):
  act    one int8 activation bit flip per image over the whole network: BitFlip(count=1) on the
         ReLU outputs, per_image=True, layer_mode="random_per_forward" (one ReLU layer per forward)
  weight int8 weight bit flips at BER 1e-3 on every Conv2d/Linear weight

For each row the clean model (no injection) and the injected copy (same weights) are timed in
alternation; the table reports the medians and the ratio faulty/clean, plus the injected copy
with its handle disabled (hooks attached, no faults) to separate hook cost from fault cost.

Usage: .venv/bin/python bench/bench_inject.py [--quick] [--device cuda] [--profile]
"""

from __future__ import annotations

import copy
import cProfile
import importlib.util
import io
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import qfault  # noqa: E402
from _common import (  # noqa: E402
    fmt_time, loadavg, machine_line, median, paired_ratio, parse_args, print_table, time_interleaved,
)
from models import count_params, make_model  # noqa: E402

GOALS = {("act", 64): 1.05, ("act", 1): 1.15, ("weight", 64): 1.05, ("weight", 1): 1.5}


def spec_for(kind: str) -> qfault.InjectSpec:
    if kind == "act":
        return qfault.InjectSpec(fault=qfault.BitFlip(count=1), site="output", types=("ReLU",), format="int8",
                                 per_image=True, layer_mode="random_per_forward", track_statistics=False, seed=0)
    return qfault.InjectSpec(fault=qfault.BitFlip(ber=1e-3), site="weight", format="int8",
                             track_statistics=False, seed=0)


DESCRIPTION = {
    "act": "1 act bit flip/image (int8, ReLU out, random_per_forward)",
    "weight": "int8 weight bit flips, BER 1e-3 (Conv/Linear)",
}


def grad_context(mode: str):
    return torch.inference_mode() if mode == "inference_mode" else torch.no_grad()


def validate(kind: str, base: torch.nn.Module, x: torch.Tensor, mode: str) -> str:
    """Check faults are really applied (and weights restored); return a one-line summary."""
    model = copy.deepcopy(base)
    before = [p.detach().clone() for p in model.parameters()]
    flips, calls = [], []
    with qfault.inject(model, spec_for(kind)) as handle, grad_context(mode):
        handle.add_listener(lambda name, draw, old, new: (
            flips.append(len(draw.bit_sites) if draw.bit_sites is not None else len(draw)), calls.append(name)))
        clean = base(x)
        n_fwd, differs = 5, 0
        for _ in range(n_fwd):
            differs += int(not torch.equal(model(x), clean))
    restored = all(torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    per_fwd = sum(flips) / n_fwd
    layers = len(calls) / n_fwd
    extra = ""
    if kind == "weight":
        n_bits = sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))) * 8
        extra = f" (expected {n_bits * 1e-3:.0f})"
    else:
        extra = f" (expected {x.shape[0]})"
    return (f"  check {kind} b{x.shape[0]}: {per_fwd:.1f} bit flips/forward{extra} in {layers:.1f} faulted "
            f"tensors/forward; output differs from clean in {differs}/{n_fwd} forwards; "
            f"weights restored bit-exactly: {restored}")


def bench_qfault(kind: str, batch: int, base, device, args):
    x = torch.randn(batch, 3, 32, 32, device=device)
    clean = copy.deepcopy(base)
    faulty = copy.deepcopy(base)
    disabled = copy.deepcopy(base)
    h_faulty = qfault.inject(faulty, spec_for(kind))
    h_disabled = qfault.inject(disabled, spec_for(kind)).disable()
    if batch >= 64:
        rounds, iters = (5, 1) if args.quick else (15, 2)
    else:
        rounds, iters = (7, 10) if args.quick else (15, 40)
    warmup = 3 if batch >= 64 else 30
    with grad_context(args.grad_mode):
        s = time_interleaved({"clean": lambda: clean(x), "faulty": lambda: faulty(x),
                              "disabled": lambda: disabled(x)},
                             rounds=rounds, iters=iters, warmup=warmup, device=device)
    h_faulty.remove()
    h_disabled.remove()
    return s


def profile_rows(kind: str, batch: int, base, device, args, n: int = 200) -> None:
    """Where the time of a faulty forward goes: op counts (torch.profiler) and qfault functions (cProfile)."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(batch, 3, 32, 32, device=device)
    model = copy.deepcopy(base)
    clean = copy.deepcopy(base)
    with qfault.inject(model, spec_for(kind)), grad_context(args.grad_mode):
        s = time_interleaved({"clean": lambda: clean(x), "faulty": lambda: model(x)}, rounds=5, iters=n // 5,
                             warmup=20, device=device)
        t_clean, t_faulty = median(s["clean"]), median(s["faulty"])
        counts = {}
        for name, m in (("clean", clean), ("faulty", model)):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(20):
                    m(x)
            ka = prof.key_averages()
            counts[name] = (sum(e.count for e in ka) / 20, ka)
        cprof = cProfile.Profile()
        cprof.enable()
        for _ in range(n):
            model(x)
        cprof.disable()
    print(f"\n--- profile: {kind} b{batch}: clean {fmt_time(t_clean)}, faulty {fmt_time(t_faulty)} per forward "
          f"(overhead {fmt_time(t_faulty - t_clean)}, {t_faulty / t_clean:.2f}x); load average {loadavg()} ---")
    n_clean, n_faulty = counts["clean"][0], counts["faulty"][0]
    print(f"torch ops per forward (profiler events incl. nested): clean {n_clean:.0f}, faulty {n_faulty:.0f} "
          f"(+{n_faulty - n_clean:.0f}; overhead / extra op = {fmt_time((t_faulty - t_clean) / max(n_faulty - n_clean, 1))})")
    clean_ops = {e.key: e.count for e in counts["clean"][1]}
    extra_ops = sorted(((e.count - clean_ops.get(e.key, 0)) / 20, e.key) for e in counts["faulty"][1])
    extra_ops = [(c, k) for c, k in reversed(extra_ops) if c > 0][:14]
    print("extra ops per forward: " + ", ".join(f"{k.replace('aten::', '')} {c:g}" for c, k in extra_ops))
    out = io.StringIO()
    st = pstats.Stats(cprof, stream=out)
    st.sort_stats("cumulative").print_stats(r"qfault|_grad|_contextlib", 18)
    text = out.getvalue()
    print(f"cProfile (inflates Python time; {n} faulty forwards, {fmt_time(st.total_tt / n)}/forward profiled), "
          "qfault functions by cumulative time:")
    print(text[text.find("   ncalls"):].rstrip())


def third_party_rows(base, device, args) -> list[str]:
    lines = []
    for name in ("pytorchfi", "mrfi"):
        if importlib.util.find_spec(name) is None:
            lines.append(f"  {name}: not found (not importable in this environment) - no row")
            continue
        try:
            lines.append(_third_party_row(name, base, device, args))
        except Exception as exc:  # API drift across versions: report, do not fail the benchmark
            lines.append(f"  {name}: importable but its row failed: {type(exc).__name__}: {exc}")
    return lines


def _third_party_row(name: str, base, device, args) -> str:  # pragma: no cover - packages not installed here
    batch = 64
    x = torch.randn(batch, 3, 32, 32, device=device)
    clean = copy.deepcopy(base)
    if name == "pytorchfi":
        import pytorchfi.core as pfi_core
        from pytorchfi.neuron_error_models import random_neuron_inj_batched

        # the class is FaultInjection in newer releases and fault_injection in 0.6
        injector = getattr(pfi_core, "FaultInjection", None) or getattr(pfi_core, "fault_injection")
        pfi = injector(copy.deepcopy(base), batch, input_shape=[3, 32, 32], layer_types=[torch.nn.Conv2d],
                       use_cuda=device.type == "cuda")

        def faulty_step():  # one random-value neuron per image, redrawn every step (pytorchfi's nearest model)
            return random_neuron_inj_batched(pfi, min_val=-1, max_val=1)(x)
        what = "pytorchfi random_neuron_inj_batched (1 random value/image, conv outputs)"
    else:
        from mrfi import MRFI, EasyConfig
        fi_model = MRFI(copy.deepcopy(base), EasyConfig.load_preset("default_fi"))

        def faulty_step():
            return fi_model(x)
        what = "mrfi default_fi preset"
    with grad_context(args.grad_mode):
        s = time_interleaved({"clean": lambda: clean(x), "faulty": faulty_step}, rounds=5 if args.quick else 10,
                             iters=1, warmup=2, device=device)
    r = median(s["faulty"]) / median(s["clean"])
    return f"  {what}, b{batch}: clean {fmt_time(median(s['clean']))}, faulty {fmt_time(median(s['faulty']))}, ratio {r:.3f}x"


def main() -> None:
    def extra(p):
        p.add_argument("--profile", action="store_true",
                       help="also profile the faulty forwards at batch 1 (torch.profiler op counts + cProfile)")
        p.add_argument("--profile-only", action="store_true", help="only the profile, no timing table")
        p.add_argument("--grad-mode", choices=("inference_mode", "no_grad"), default="inference_mode")
        p.add_argument("--kinds", default="act,weight", help="comma list of act,weight")
        p.add_argument("--batches", default="64,1", help="comma list of batch sizes")
    args = parse_args(__doc__.splitlines()[0], extra)
    device = torch.device(args.device)
    base = make_model().to(device)
    kinds = args.kinds.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    print(machine_line(device))
    print(f"model: SmallResNet, {count_params(base):,} params; input 3x32x32; eval mode under {args.grad_mode}; "
          f"qfault {qfault.__version__}; {'quick' if args.quick else 'full'} run")
    t_start = time.perf_counter()
    if args.profile_only:
        for kind in kinds:
            profile_rows(kind, 1, base, device, args)
        return

    rows, checks = [], []
    for kind in kinds:
        for batch in batches:
            checks.append(validate(kind, base, torch.randn(batch, 3, 32, 32, device=device), args.grad_mode))
            s = bench_qfault(kind, batch, base, device, args)
            c, f, d = median(s["clean"]), median(s["faulty"]), median(s["disabled"])
            ratio = f / c
            goal = GOALS.get((kind, batch))
            verdict = "" if goal is None else ("PASS" if ratio <= goal else "MISS")
            rows.append([f"qfault {kind}", DESCRIPTION[kind], str(batch), fmt_time(c), fmt_time(f),
                         fmt_time(f - c), f"{ratio:.3f}x", f"{paired_ratio(s['faulty'], s['clean']):.3f}x",
                         f"{d / c:.3f}x", "-" if goal is None else f"<= {goal:.2f}x", verdict])
    print()
    print_table(["row", "fault", "batch", "clean", "faulty", "overhead", "ratio", "paired", "disabled",
                 "goal", "verdict"], rows)
    print("  ratio = median(faulty)/median(clean); paired = median of per-round ratios; "
          "disabled = hooks attached but handle.disable(), / clean")
    print("\n".join(checks))
    print("\nother injectors:")
    print("\n".join(third_party_rows(base, device, args)))
    print(f"\nload average at end {loadavg()}; total wall time {time.perf_counter() - t_start:.1f} s")
    if args.profile:
        for kind in kinds:
            profile_rows(kind, 1, base, device, args)


if __name__ == "__main__":
    main()
