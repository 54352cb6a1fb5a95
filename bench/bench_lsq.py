"""Cost of BER weight faults on an LSQ mixed-precision ResNet-18 (seed 004, issue 12): time and memory.

Model: torchvision ``resnet18(num_classes=1000)`` (random init), converted with
``swap_modules(model, LsqConfig(weight_bits=None, act_bits=None))`` (first conv and fc keep
``fixed_bits = (8, 8)``), then ``set_bit_width`` with weight bits cycling 2, 3, ..., 8 over the 19
inner layers (activation bits 4 up to 4 weight bits, else 8) and one eval forward to initialise
the LSQ steps. Faults through seed 004's API, ``qfault.compat.rfq.FaultInjector(model,
mode="ber", ber=1e-3, seed=None)``: every bit of every weight code flips with probability 1e-3,
redrawn on every forward.

Rows (faulty and clean copies of one model timed in alternation; never asserts on time):
  infer b64 / infer b1   eval forward under torch.no_grad(), 3x224x224 (goals <= 1.05x, <= 1.5x)
  train b32              QAT step (forward, cross entropy, backward, SGD step) in train mode,
                         3x112x112, ``enable_in_training=True`` (goal <= 1.1x)

Memory: the extra memory of the fault path, ours measured (peak resident growth) against the
seed's dense [N, k] per-bit mask computed from its code (REFERENCE_NOTES 2.4), for ViT-B-sized
weights (86 M weights at 8 bits; the dense mask is never allocated here) and for the ResNet-18.

Usage: .venv/bin/python bench/bench_lsq.py [--quick] [--profile] [--rows b64,b1,train] [--skip-memory]
The full run takes ~2 min on the 2-core VM at load ~3 (batch 64 at 224x224: ~3 s per forward);
--quick (112x112 inference, a batch-16 64x64 training step, fewer rounds) 15-80 s depending on the load.
"""

from __future__ import annotations

import copy
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import qfault  # noqa: E402
from _common import (  # noqa: E402
    fmt_time, loadavg, machine_line, median, paired_ratio, parse_args, print_table, time_interleaved, verdict,
)
from bench_mitigation import PeakRSS  # noqa: E402
from qfault.compat.rfq import FaultInjector  # noqa: E402
from qfault.faults import BitFlip, apply_draw, draw_faults, make_generator  # noqa: E402
from qfault.formats import IntFormat  # noqa: E402
from qfault.injection import lsq_bit_widths  # noqa: E402
from qfault.layers import LsqConfig, lsq_layers, set_bit_width, swap_modules  # noqa: E402

BER = 1e-3
GOALS = {"infer b64": 1.05, "infer b1": 1.5, "train": 1.1}
VIT_B_WEIGHTS = 86_000_000  # ViT-B/16: 85 M Linear weights + patch embedding, rounded as in REFERENCE_NOTES 2.4


def build_model() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=1000)
    swap_modules(model, LsqConfig(weight_bits=None, act_bits=None))
    inner = [name for name, m in lsq_layers(model) if m.fixed_bits is None]
    weight_bits = [2 + i % 7 for i in range(len(inner))]
    set_bit_width(model, weight_bits, [4 if w <= 4 else 8 for w in weight_bits])
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))  # initialises each quantizer's step at its bit width
    return model


def weight_bit_sites(model: nn.Module) -> list[tuple[str, int, int]]:
    """``(layer, weights, weight bits)`` of every LSQ layer with bit widths."""
    return [(name, m.weight.numel(), lsq_bit_widths(m)[0]) for name, m in lsq_layers(model)
            if lsq_bit_widths(m) is not None]


def validate(model: nn.Module, x: torch.Tensor) -> str:
    """Faults really applied: bit flips per forward (through the injector's own specs), outputs
    changed on every forward, bit-exactly clean again after ``disable()``."""
    injector = FaultInjector(model, mode="ber", ber=BER, seed=None, enable_in_training=False)
    flips, n_fwd = [], 4
    with torch.no_grad():
        clean = model(x)
        with qfault.inject(model, injector.specs()) as handle:
            handle.add_listener(lambda name, draw, old, new: flips.append(
                len(draw.bit_sites) if draw.bit_sites is not None else len(draw)))
            outs = [model(x) for _ in range(n_fwd)]
        differs = sum(int(not torch.equal(o, clean)) for o in outs)
        redrawn = sum(int(not torch.equal(a, b)) for a, b in zip(outs, outs[1:]))
        injector.enable()
        model(x)
        injector.disable()
        restored = torch.equal(model(x), clean)
    expected = sum(n * k for _, n, k in weight_bit_sites(model)) * BER
    return (f"  check: {sum(flips) / n_fwd:,.0f} bit flips/forward (expected {expected:,.0f} = "
            f"sum(weights x bits) x BER) in {len(flips) / n_fwd:.0f} layers; output differs from clean in "
            f"{differs}/{n_fwd} forwards, from the previous faulty forward in {redrawn}/{n_fwd - 1} (redrawn); "
            f"after disable() equal to clean: {restored}")


def bench_inference(base: nn.Module, batch: int, size: int, rounds: int, iters: int):
    x = torch.randn(batch, 3, size, size)
    clean, faulty = copy.deepcopy(base), copy.deepcopy(base)
    injector = FaultInjector(faulty, mode="ber", ber=BER, seed=None, enable_in_training=False)
    injector.enable()
    with torch.no_grad():
        s = time_interleaved({"clean": lambda: clean(x), "faulty": lambda: faulty(x)}, rounds=rounds, iters=iters,
                             warmup=1 if batch > 1 else 5, device=torch.device("cpu"))
    injector.disable()
    return s


def bench_training(base: nn.Module, batch: int, size: int, rounds: int):
    x = torch.randn(batch, 3, size, size)
    target = torch.randint(1000, (batch,))
    clean, faulty = copy.deepcopy(base).train(), copy.deepcopy(base).train()
    steps = {}
    for name, model in (("clean", clean), ("faulty", faulty)):
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def step(model=model, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), target).backward()
            optimizer.step()
        steps[name] = step
    injector = FaultInjector(faulty, mode="ber", ber=BER, seed=None, enable_in_training=True)
    injector.enable()
    s = time_interleaved(steps, rounds=rounds, iters=1, warmup=1, device=torch.device("cpu"))
    injector.disable()
    return s


def toggle_cost(base: nn.Module, n: int = 20) -> float:
    """Seconds per ``enable()`` + ``disable()`` pair (the injector reads the layers at enable)."""
    model = copy.deepcopy(base)
    injector = FaultInjector(model, mode="ber", ber=BER, seed=None, enable_in_training=False)
    t0 = time.perf_counter()
    for _ in range(n):
        injector.enable()
        injector.disable()
    return (time.perf_counter() - t0) / n


# -- memory ----------------------------------------------------------------------------------------

def fmt_mem(n: int) -> str:
    """Decimal units (1 GB = 1e9 B), as REFERENCE_NOTES 2.4 counts the seed's 5.5 GB."""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def seed_dense_bytes(n: int, k: int) -> tuple[int, int]:
    """Seed 004's dense mask path for one layer of ``n`` weights at ``k`` bits (REFERENCE_NOTES 2.4,
    ``util/fault_injector.py``): ``(bytes allocated, bytes live at its peak)``.

    Per [n, k] entry: ``torch.rand((n, k))`` float32 4 B, ``< ber`` bool 1 B,
    ``u[:, None] >> arange(k)`` int64 8 B, ``& 1`` int64 8 B, XOR with the mask int64 8 B,
    ``* (1 << arange(k))`` int64 8 B before the sum: 37 B allocated. Live at once at the peak
    (the shift's ``& 1``): mask 1 B + shifted 8 B + bits 8 B = 17 B. The per-weight tensors
    (codes, offset-binary int64 u, the sum, the float result: ~4 + 8 + 8 + 4 B) are left out,
    as is the faulty float tensor every injector returns.
    """
    return 37 * n * k, 17 * n * k


def memory_rows(model: nn.Module, quick: bool) -> tuple[list[list[str]], list[str]]:
    rows, notes = [], []
    n, k = VIT_B_WEIGHTS, 8
    alloc, peak = seed_dense_bytes(n, k)
    # int64 [N, k] bit tensor alone: 8 * 86e6 * 8 = 5.50e9 B, the 5.5 GB of REFERENCE_NOTES 2.4
    # (one such tensor per forward summed over the layers, freed layer by layer)
    int64_bits = 8 * n * k
    fault = BitFlip(ber=BER, nested=True)
    fmt = IntFormat(bits=k)
    draw_faults(fault, (4096,), fmt, make_generator(0))  # import-time and first-call costs out of the way
    with PeakRSS() as mem_draw:
        t0 = time.perf_counter()
        draw = draw_faults(fault, (n,), fmt, make_generator(1))
        t_draw = time.perf_counter() - t0
    draw_bytes = sum(a.nbytes for a in draw.arrays + draw.pairs)  # an ArrayDraw: numpy index, mask, pairs
    n_faults = len(draw.pairs[0])
    del draw
    rows.append(["ViT-B-sized (86 M x 8 bits)", "seed: int64 [N, k] bit tensor", fmt_mem(int64_bits),
                 "computed (8 B x N x k)"])
    rows.append(["", "seed: all [N, k] temporaries", f"{fmt_mem(alloc)} allocated, {fmt_mem(peak)} live",
                 "computed (37 / 17 B x N x k, if one tensor)"])
    vit_largest = 768 * 3072  # ViT-B's MLP layers; the seed's temporaries live one layer at a time
    rows.append(["", "seed: peak live (largest layer)", fmt_mem(seed_dense_bytes(vit_largest, k)[1]),
                 f"computed, an MLP layer: {vit_largest:,} x {k} bits"])
    rows.append(["", "qfault: nested draw, arrays kept", fmt_mem(draw_bytes),
                 f"{n_faults:,} bit flips (expected {n * k * BER:,.0f})"])
    rows.append(["", "qfault: nested draw, peak +RSS", fmt_mem(mem_draw.growth),
                 f"measured ({PeakRSS.how}); {fmt_time(t_draw)}"])

    if not quick:
        # draw + application on a float32 tensor of 86 M weights (344 MB; its faulty copy another 344 MB)
        codes = torch.randint(-128, 128, (n,), dtype=torch.int8)
        x = codes.float().mul_(0.01)
        del codes
        scale = torch.tensor(0.01)
        with PeakRSS() as mem_apply:
            faulty, _ = apply_draw(x, fmt, draw_faults(fault, (n,), fmt, make_generator(2)), scale=scale)
            del _
        out_bytes = faulty.numel() * faulty.element_size()
        del faulty, x
        rows.append(["", "qfault: draw + apply_draw, peak +RSS", fmt_mem(mem_apply.growth),
                     f"measured; {fmt_mem(mem_apply.growth - out_bytes)} beyond the faulty copy "
                     f"({fmt_mem(out_bytes)})"])

    sites = weight_bit_sites(model)
    total_bits = sum(n_ * k_ for _, n_, k_ in sites)
    name_big, n_big, k_big = max(sites, key=lambda s: s[1] * s[2])
    x = torch.randn(1, 3, 224, 224)
    faulty = copy.deepcopy(model)
    with torch.no_grad():
        model(x)
        with PeakRSS() as mem_clean:
            model(x)
        injector = FaultInjector(faulty, mode="ber", ber=BER, seed=None, enable_in_training=False)
        injector.enable()
        faulty(x)
        with PeakRSS() as mem_faulty:
            faulty(x)
        injector.disable()
    rows.append([f"ResNet-18 ({sum(s[1] for s in sites) / 1e6:.1f} M weights, {total_bits / 1e6:.1f} M bits)",
                 "seed: int64 [N, k] per forward", fmt_mem(8 * total_bits), "computed, summed over the 21 layers"])
    rows.append(["", "seed: peak live (largest layer)", fmt_mem(seed_dense_bytes(n_big, k_big)[1]),
                 f"computed, {name_big}: {n_big:,} x {k_big} bits"])
    gen = make_generator(3)
    draws = [draw_faults(fault, (n_,), IntFormat(bits=k_), gen) for _, n_, k_ in sites]
    draw_bytes = sum(a.nbytes for d in draws for a in d.arrays + d.pairs)
    rows.append(["", "qfault: one forward's draws, arrays", fmt_mem(draw_bytes),
                 f"{sum(len(d.pairs[0]) for d in draws):,} bit flips over the {len(sites)} layers"])
    del draws
    rows.append(["", "qfault: faulty forward b1, peak +RSS", fmt_mem(mem_faulty.growth),
                 f"measured; clean forward {fmt_mem(mem_clean.growth)}: "
                 f"{fmt_mem(max(mem_faulty.growth - mem_clean.growth, 0))} extra"])
    notes.append(f"  memory measured with {PeakRSS.how}; +RSS = peak resident during the call minus resident "
                 "before; 1 GB = 1e9 B")
    return rows, notes


def profile_faulty(base: nn.Module, batch: int, size: int, n: int) -> None:
    """Where a faulty forward's time goes (cProfile, qfault functions by cumulative time)."""
    x = torch.randn(batch, 3, size, size)
    model = copy.deepcopy(base)
    injector = FaultInjector(model, mode="ber", ber=BER, seed=None, enable_in_training=False)
    injector.enable()
    with torch.no_grad():
        model(x)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(n):
            model(x)
        prof.disable()
    injector.disable()
    # the draws alone, outside a forward (warm caches): nested as the injector draws, and plain
    sites = weight_bit_sites(base)
    gen = make_generator(4)
    for label, fault in (("nested", BitFlip(ber=BER, nested=True)), ("plain", BitFlip(ber=BER))):
        t0 = time.perf_counter()
        for _ in range(n):
            for _, numel, k in sites:
                draw_faults(fault, (numel,), IntFormat(bits=k), gen)
        print(f"  draws alone ({label} BitFlip(ber={BER:g}), {len(sites)} layers, warm): "
              f"{fmt_time((time.perf_counter() - t0) / n)} per forward")
    out = io.StringIO()
    st = pstats.Stats(prof, stream=out)
    st.sort_stats("cumulative").print_stats(r"qfault", 16)
    text = out.getvalue()
    print(f"\n--- cProfile: {n} faulty forwards at batch {batch}, {fmt_time(st.total_tt / n)}/forward profiled ---")
    print(text[text.find("   ncalls"):].rstrip())


def timing_row(label: str, workload: str, s: dict[str, list[float]], goal: float) -> list[str]:
    c, f = median(s["clean"]), median(s["faulty"])
    paired = paired_ratio(s["faulty"], s["clean"])
    overhead = ("-" if f < c else "") + fmt_time(abs(f - c))
    return [label, workload, fmt_time(c), fmt_time(f), overhead, f"{f / c:.3f}x", f"{paired:.3f}x",
            f"<= {goal:.2f}x", verdict(paired, goal), loadavg()]


def main() -> None:
    def extra(p):
        p.add_argument("--profile", action="store_true", help="also cProfile faulty forwards at batch 1")
        p.add_argument("--skip-memory", action="store_true", help="no memory rows")
        p.add_argument("--rows", default="b64,b1,train", help="comma list of b64,b1,train (default: all)")
    args = parse_args(__doc__.splitlines()[0], extra)
    if args.device != "cpu":
        print("note: this benchmark runs on the CPU only (the draws are CPU-side); --device ignored")
    device = torch.device("cpu")
    t_start = time.perf_counter()
    base = build_model()
    sites = weight_bit_sites(base)
    size = 112 if args.quick else 224
    print(machine_line(device))
    print(f"model: torchvision resnet18 -> LSQ ({len(sites)} layers, {sum(s[1] for s in sites):,} weights; "
          f"weight bits {[k for _, _, k in sites]}); BER {BER:g} redrawn every forward "
          f"(~{sum(n * k for _, n, k in sites) * BER:,.0f} flips); qfault {qfault.__version__}; "
          f"{'quick' if args.quick else 'full'} run")

    mem_rows, mem_notes = ([], []) if args.skip_memory else memory_rows(base, args.quick)
    checks = [validate(base, torch.randn(1, 3, size, size))]

    plan = [("infer b64", 64, size, (2, 1) if args.quick else (4, 1)),
            ("infer b1", 1, size, (7, 5) if args.quick else (20, 5))]
    wanted = set(args.rows.split(","))
    rows, samples = [], {}
    for label, batch, sz, (rounds, iters) in plan:
        if label.split()[1] not in wanted:
            continue
        samples[label] = s = bench_inference(base, batch, sz, rounds, iters)
        rows.append(timing_row(label, f"eval, no_grad, 3x{sz}x{sz}", s, GOALS[label]))
    train_batch, train_size = (16, 64) if args.quick else (32, 112)
    if "train" in wanted:
        s = bench_training(base, train_batch, train_size, 3 if args.quick else 6)
        rows.append(timing_row(f"train b{train_batch}", f"QAT step (fwd + CE bwd + SGD), 3x{train_size}x{train_size}",
                               s, GOALS["train"]))

    print()
    print_table(["row", "workload", "clean", "faulty", "overhead", "ratio", "paired", "goal", "verdict", "load"], rows)
    print("  ratio = median(faulty)/median(clean); paired = median of per-round ratios (the verdict uses it); "
          "load = 1-minute load average after the row")
    if len(samples) == 2:
        # the fault path's cost per forward does not depend on the batch (weights only); at batch 64
        # it is far below this VM's noise over a few multi-second rounds, so derive the ratio as well
        s1, s64 = samples["infer b1"], samples["infer b64"]
        extra = median(s1["faulty"]) - median(s1["clean"])
        print(f"  implied batch-64 ratio from the batch-1 overhead ({fmt_time(extra)} per forward): "
              f"{1 + extra / median(s64['clean']):.3f}x")
    print("\n".join(checks))
    print(f"  enable() + disable(): {fmt_time(toggle_cost(base))} per pair")
    if mem_rows:
        print()
        print_table(["memory", "what", "bytes", "how"], mem_rows)
        print("\n".join(mem_notes))
    print(f"\nload average at end {loadavg()}; total wall time {time.perf_counter() - t_start:.1f} s")
    if args.profile:
        profile_faulty(base, 1, size, 10 if args.quick else 30)


if __name__ == "__main__":
    main()
