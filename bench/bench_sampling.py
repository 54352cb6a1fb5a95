"""O(#faults) fault sampling vs a Bernoulli draw per bit, at ViT-B scale.

BER 1e-6 over 86 M 8-bit codes (688 M bit sites, ~688 expected flips):
  qfault  bernoulli_positions(n_bits, ber, gen)                     (binomial count + distinct positions)
  qfault  draw_faults(BitFlip(ber), (86_000_000,), IntFormat(8), gen) (the full draw used by inject)
  naive   torch.rand(chunk) < ber, then nonzero, over 8 M-bit chunks   (one uniform per bit; time summed)

Usage: .venv/bin/python bench/bench_sampling.py [--quick] [--device cuda]
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import fmt_time, loadavg, machine_line, median, parse_args, print_table, sync  # noqa: E402
from qfault.faults import BitFlip, bernoulli_positions, draw_faults, make_generator  # noqa: E402
from qfault.formats import IntFormat  # noqa: E402

N_CODES = 86_000_000
BITS = 8
BER = 1e-6
CHUNK = 8_000_000
GOAL = 100.0


def naive_positions(n: int, p: float, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    """Reference: one uniform per bit, in chunks of CHUNK bits (bounded memory)."""
    found = []
    for start in range(0, n, CHUNK):
        size = min(CHUNK, n - start)
        hits = torch.rand(size, device=device, generator=gen) < p
        found.append(hits.nonzero().view(-1) + start)
    out = torch.cat(found)
    sync(device)
    return out


def timed(fn, reps: int, device: torch.device) -> tuple[list[float], list]:
    times, results = [], []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        r = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        results.append(r)
    return times, results


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    device = torch.device(args.device)
    n_bits = N_CODES * BITS
    expected = n_bits * BER
    sd = math.sqrt(n_bits * BER * (1 - BER))
    print(machine_line(device))
    print(f"BER {BER:g} over {N_CODES:,} int{BITS} codes = {n_bits:,} bit sites; expected flips {expected:.1f} "
          f"(sd {sd:.1f}); {'quick' if args.quick else 'full'} run")
    t_start = time.perf_counter()

    fast_reps = 20 if args.quick else 200
    naive_reps = 2 if args.quick else 5
    fmt = IntFormat(BITS)
    fault = BitFlip(ber=BER)
    seeds = iter(range(10**6))

    def qf_positions():
        pos = bernoulli_positions(n_bits, BER, make_generator("bench", next(seeds)))
        return pos.to(device)

    def qf_draw():
        return draw_faults(fault, (N_CODES,), fmt, make_generator("bench", next(seeds))).to(device)

    naive_gen = torch.Generator(device=device)
    naive_gen.manual_seed(0)

    # warm-up
    for _ in range(5):
        qf_positions()
        qf_draw()
    naive_positions(CHUNK * 2, BER, device, naive_gen)

    t_pos, r_pos = timed(qf_positions, fast_reps, device)
    t_draw, r_draw = timed(qf_draw, fast_reps, device)
    t_naive, r_naive = timed(lambda: naive_positions(n_bits, BER, device, naive_gen), naive_reps, device)

    m_naive = median(t_naive)
    rows = []
    for name, times, results, count_of in (
        ("qfault bernoulli_positions", t_pos, r_pos, lambda r: r.numel()),
        ("qfault draw_faults (BitFlip)", t_draw, r_draw, lambda r: len(r.bit_sites)),
        ("naive rand<ber + nonzero, 8M chunks", t_naive, r_naive, lambda r: r.numel()),
    ):
        counts = [count_of(r) for r in results]
        mean = sum(counts) / len(counts)
        m = median(times)
        speedup = m_naive / m
        is_naive = name.startswith("naive")
        verdict = "" if is_naive else ("PASS" if speedup >= GOAL else "MISS")
        rows.append([name, str(len(times)), fmt_time(m), fmt_time(min(times)), f"{speedup:,.0f}x" if not is_naive else "1x",
                     "-" if is_naive else f">= {GOAL:.0f}x", verdict,
                     f"{counts[0]} (mean {mean:.1f} over {len(counts)}, z {(mean - expected) / (sd / math.sqrt(len(counts))):+.2f})"])
    print()
    print_table(["method", "reps", "median", "min", "speed-up", "goal", "verdict", "drawn flips vs expected " + f"{expected:.0f}"], rows)
    print("  speed-up = median(naive) / median(method), measured in this run; z = (mean count - expected) / (sd / sqrt(reps))")

    # distribution checks on the positions (uniform over the range, distinct, sorted)
    pos = torch.cat([r.cpu() for r in r_pos])
    frac = pos.double() / n_bits
    print(f"  positions: {pos.numel()} drawn over {len(r_pos)} draws; mean position / n = {float(frac.mean()):.4f} "
          f"(uniform: 0.5000 +- {1 / math.sqrt(12 * pos.numel()):.4f}); each draw sorted & distinct: "
          f"{all(bool((r[1:] > r[:-1]).all()) for r in r_pos)}")
    print(f"load average at end: {loadavg()}")
    print(f"total wall time {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
