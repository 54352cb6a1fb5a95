"""Write-side stuck-at mitigation (qfault.mitigation) against seed 000's own algorithm, at ViT-B scale.

Part 1, one int8 layer (768x768 [out, in]; --quick: 64x768), fault map
draw_stuck_map(shape, rate, bits=8, generator=0) at 1 % and 5 %, tile 64:
  seed    the seed's algorithm (WEBCRAFT inject_faults), re-implemented here from its description:
          a look-up table for weights with <= 2 stuck bits, a fallback that enumerates all 256 codes
          for the others, on W^T in blocks of 64 rows; sign flip per block; bit flip tries all 256
          inversion masks per block at once and copies the best column by column in a Python loop.
          The LUT build (once per process in the seed) is timed separately, not in the ratio.
  qfault  remap(codes, mask, value, bits=8, method=..., tile=64)
Both read-backs are compared with torch.equal before timing. Goals: bit_flip >= 50x, cvm and
sign_flip >= 1x (no slower).

Part 2, inject(model, StuckAtSpec) on seed_quant_vit("vit_base_patch16_224") (48 quantized Linear layers, 85 M
codes; --quick: vit_small_patch16_224 at 5 % only) with raw / cvm / sign_flip / bit_flip at 1 % and 5 %:
seconds per call (goal <= 60 s for bit_flip at 5 %) and the peak resident-memory growth during the
call (VmHWM after the call minus VmRSS before it, high-water mark reset through
/proc/self/clear_refs, or sampled every 2 ms by a thread where that is refused; goal <= 2 GB).

One torch thread by default (--threads to change it), as docs/mitigation.md measured: on the shared
2-core machine under load, 2 threads made qfault's many small operations 4-10x slower (the seed
algorithm's few huge operations ~1.3x faster). Both sides always run with the same setting.
The full run takes ~8-10 minutes under load (the seed's bit_flip alone ~2-3 min); --quick ~1-2 min.

Usage: .venv/bin/python bench/bench_mitigation.py [--quick] [--threads N]
"""

from __future__ import annotations

import ctypes
import gc
import sys
import threading
import time
from itertools import combinations, product
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    fmt_time,
    loadavg,
    machine_line,
    median,
    paired_ratio,
    parse_args,
    print_table,
    time_interleaved,
)

from qfault.injection import inject
from qfault.layers import seed_quant_vit, seed_quantize_weight
from qfault.mitigation import StuckAtSpec, draw_stuck_map, remap, stuck_layers

BITS = 8
TILE = 64
RATES = (1.0, 5.0)
METHODS = ("cvm", "sign_flip", "bit_flip")
SPEED_GOAL = {"cvm": 1.0, "sign_flip": 1.0, "bit_flip": 50.0}
MODEL_GOAL_S = 60.0  # bit_flip at 5 % on ViT-B
MEM_GOAL = 2 * 1024**3


# --------------------------------------------------------------------------------------------------
# Baseline: seed 000's algorithm (structure as in the seed: LUT + enumeration fallback, row blocks
# of W^T, 256 inversion masks at once per block, per-column Python copy). Faults are the seed's
# (bits, N) tensor in {0, +1 = stuck at 1, -1 = stuck at 0} over W^T flattened row-major.
# --------------------------------------------------------------------------------------------------

def seed_patterns(bits: int = BITS, max_forced: int = 2) -> list[tuple[int, int]]:
    """(forced mask, forced value) of every pattern with at most ``max_forced`` stuck bits."""
    pats = [(0, 0)]
    for k in range(1, max_forced + 1):
        for chosen in combinations(range(bits), k):
            for vals in product((0, 1), repeat=k):
                mask = sum(1 << b for b in chosen)
                val = sum(1 << b for b, v in zip(chosen, vals) if v)
                pats.append((mask, val))
    return pats


def seed_build_lut(bits: int = BITS, max_forced: int = 2):
    """lut[x + 128, p]: nearest code to x consistent with pattern p (first in unsigned order on a
    tie); pattern_id[(mask << 8) | val] = p, or -1 for patterns with more stuck bits."""
    pats = seed_patterns(bits, max_forced)
    n = 1 << bits
    all_u = torch.arange(n, dtype=torch.int64)
    all_s = torch.where(all_u >= n // 2, all_u - n, all_u).to(torch.int16)
    xs = torch.arange(-n // 2, n // 2, dtype=torch.int16)
    lut = torch.empty(n, len(pats), dtype=torch.int16)
    pattern_id = torch.full((1 << (2 * bits),), -1, dtype=torch.int16)
    for p, (mask, val) in enumerate(pats):  # vectorized over x (the seed also loops over x)
        valid = torch.nonzero((all_u & mask) == val).view(-1)
        dist = (all_s[valid].view(1, -1).to(torch.int32) - xs.view(-1, 1).to(torch.int32)).abs()
        lut[:, p] = all_s[valid[dist.argmin(dim=1)]]
        pattern_id[(mask << bits) | val] = p
    return lut, pattern_id


def seed_forced(faults: torch.Tensor):
    """Forced mask, forced value and count per item, through float matmuls as in the seed."""
    bits = faults.shape[0]
    pow2 = (1 << torch.arange(bits, dtype=torch.int64)).to(torch.float32)
    f = faults.to(torch.float32)
    forced = (f != 0.0).to(torch.float32)
    fm = (forced.T @ pow2).to(torch.int16)
    fv = ((f == 1.0).to(torch.float32).T @ pow2).to(torch.int16)
    fc = forced.sum(dim=0).to(torch.int16)
    return fm, fv, fc


def seed_fallback(targets: torch.Tensor, faults: torch.Tensor) -> torch.Tensor:
    """Enumerate all 2**bits codes for each item (M, 2**bits, bits): first nearest consistent code."""
    bits = faults.shape[0]
    n = 1 << bits
    all_u = torch.arange(n, dtype=torch.uint8 if bits <= 8 else torch.int32)
    all_s = all_u.to(torch.int16)
    all_s = torch.where(all_s >= n // 2, all_s - n, all_s)
    code_bits = ((all_u.unsqueeze(-1).to(torch.int32) >> torch.arange(bits).view(1, -1)) & 1).to(torch.int8)
    f_t = faults.to(torch.int8).T  # (M, bits)
    one, zero = (f_t == 1).unsqueeze(1), (f_t == -1).unsqueeze(1)
    cb = code_bits.unsqueeze(0).expand(f_t.shape[0], -1, -1)
    ok = ((~one) | (cb == 1)) & ((~zero) | (cb == 0))
    ok = ok.all(dim=-1)  # (M, 2**bits)
    dist = (all_s.to(torch.int32).view(1, -1) - targets.to(torch.int32).view(-1, 1)).abs()
    dist[~ok] = 999999
    return all_s[dist.argmin(dim=1)]


def seed_cvm_items(flat_w: torch.Tensor, faults: torch.Tensor, lut, pattern_id) -> torch.Tensor:
    """CVM of every item: LUT where <= 2 bits are stuck, enumeration fallback otherwise."""
    fm, fv, fc = seed_forced(faults)
    pat = pattern_id[(fm.to(torch.int64) << 8) | fv.to(torch.int64)].to(torch.int64)
    known = (pat >= 0) & (fc <= 2)
    out = torch.empty_like(flat_w, dtype=torch.int16)
    from_lut = lut[(flat_w.to(torch.int64) + 128).clamp(0, 255), pat.clamp_min(0)]
    out[known] = from_lut[known]
    bad = torch.nonzero(~known).view(-1)
    if bad.numel():
        out[bad] = seed_fallback(flat_w[bad], faults[:, bad])
    return out


def seed_none(weight_t: torch.Tensor, faults: torch.Tensor, lut, pattern_id) -> torch.Tensor:
    flat = weight_t.reshape(-1).to(torch.int16)
    return seed_cvm_items(flat, faults, lut, pattern_id).view(weight_t.shape)


def seed_flip(weight_t: torch.Tensor, faults: torch.Tensor, lut, pattern_id, block: int = TILE) -> torch.Tensor:
    n_in, n_out = weight_t.shape
    new = torch.empty(weight_t.shape, dtype=torch.int16)
    for r0 in range(0, n_in, block):
        r1 = min(r0 + block, n_in)
        blk = weight_t[r0:r1].to(torch.int16)
        bf = faults[:, r0 * n_out:r1 * n_out]
        flat = blk.reshape(-1)
        pos = seed_cvm_items(flat, bf, lut, pattern_id).view(blk.shape)
        neg = seed_cvm_items(-flat, bf, lut, pattern_id).view(blk.shape)
        e_pos = (pos - blk).abs().to(torch.int32).sum(dim=0)
        e_neg = (neg + blk).abs().to(torch.int32).sum(dim=0)
        keep = e_pos <= e_neg
        out = torch.empty_like(pos)
        out[:, keep] = pos[:, keep]
        out[:, ~keep] = -neg[:, ~keep]
        new[r0:r1] = out
    return new


def seed_flip_bitwise(weight_t: torch.Tensor, faults: torch.Tensor, lut, pattern_id,
                      block: int = TILE) -> torch.Tensor:
    bits = faults.shape[0]
    n_flips = 1 << bits
    n_in, n_out = weight_t.shape
    new = torch.empty(weight_t.shape, dtype=torch.int16)
    flip_bits = ((torch.arange(n_flips, dtype=torch.int16).unsqueeze(-1)
                  >> torch.arange(bits, dtype=torch.int16).view(1, -1)) & 1)
    flip_sign = (1 - 2 * flip_bits).unsqueeze(-1)  # (256, bits, 1) in {+1, -1}
    for r0 in range(0, n_in, block):
        r1 = min(r0 + block, n_in)
        h = r1 - r0
        n = h * n_out
        blk = weight_t[r0:r1].to(torch.int16)
        bf = faults[:, r0 * n_out:r1 * n_out]
        seed_forced(bf)  # computed (and unused) by the seed too
        # every inversion mask at once: (256, bits, N) -> (bits, 256 * N)
        all_f = bf.unsqueeze(0).to(torch.int16) * flip_sign
        all_f = all_f.permute(1, 0, 2).reshape(bits, -1)
        fm, fv, fc = seed_forced(all_f)
        pat = pattern_id[(fm.to(torch.int64) << 8) | fv.to(torch.int64)].to(torch.int32).view(n_flips, n)
        known = (pat >= 0) & (fc.view(n_flips, n) <= 2)
        w_rep = blk.reshape(1, -1)
        w_off = (w_rep.to(torch.int64) + 128).clamp(0, 255).expand(n_flips, -1)
        reads = torch.empty(n_flips, n, dtype=torch.int16)
        from_lut = lut[w_off.reshape(-1), pat.clamp_min(0).to(torch.int64).reshape(-1)].view(n_flips, n)
        reads[known] = from_lut[known]
        if (~known).any():
            which = torch.where(~known)
            lin = which[0] * n + which[1]
            reads.view(-1)[lin] = seed_fallback(w_rep.view(-1)[which[1]], all_f[:, lin])
        reads = reads.view(n_flips, h, n_out)
        err = (reads - blk.unsqueeze(0)).abs().to(torch.int32).sum(dim=1)  # (256, n_out)
        best = torch.argmin(err, dim=0)  # first minimum: the smallest mask
        col_best = torch.empty(h, n_out, dtype=torch.int16)
        for c in range(n_out):  # the seed's per-column copy
            col_best[:, c] = reads[best[c], :, c]
        new[r0:r1] = col_best
    return new


SEED_FN = {"cvm": seed_none, "sign_flip": seed_flip, "bit_flip": seed_flip_bitwise}


def seed_faults(mask: torch.Tensor, value: torch.Tensor, bits: int = BITS) -> torch.Tensor:
    """qfault's [out, in] map in the seed's layout: (bits, in*out) over W^T flattened row-major."""
    m, v = mask.t().reshape(-1), value.t().reshape(-1)
    planes = []
    for b in range(bits):
        stuck = (m >> b) & 1
        planes.append(torch.where(stuck == 1, 2 * ((v >> b) & 1) - 1, 0))
    return torch.stack(planes).to(torch.float32)


# --------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------

def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back so RSS-before is honest
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmHWM") <= _status_kb("VmRSS") + (1 << 20)
    except OSError:
        return False


class PeakRSS:
    """Peak resident-memory growth over a block: VmHWM (reset via clear_refs) or a 2 ms sampler."""

    how = None

    def __enter__(self):
        _trim()
        self.before = _status_kb("VmRSS")
        self.exact = _reset_hwm()
        PeakRSS.how = "VmHWM reset by /proc/self/clear_refs" if self.exact else "VmRSS sampled every 2 ms"
        self.peak = self.before
        if not self.exact:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _status_kb("VmRSS"))
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.exact:
            self.peak = _status_kb("VmHWM")
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _status_kb("VmRSS"))
        _trim()
        self.after = _status_kb("VmRSS")
        self.growth = self.peak - self.before
        self.kept = self.after - self.before


def fmt_mem(n: int) -> str:
    return f"{n / 1024**3:.2f} GB" if n >= 1024**3 else f"{n / 1024**2:.0f} MB"


# --------------------------------------------------------------------------------------------------

def layer_codes(out_f: int, in_f: int) -> torch.Tensor:
    """An 8-bit layer as SeedQuantLinear stores it: nn.Linear's default init, quantized per row."""
    gen = torch.Generator().manual_seed(0)
    bound = 1.0 / in_f ** 0.5
    w = torch.empty(out_f, in_f).uniform_(-bound, bound, generator=gen)
    return seed_quantize_weight(w, BITS)[0]


def part_layer(quick: bool) -> None:
    out_f, in_f = (64, 768) if quick else (768, 768)
    codes = layer_codes(out_f, in_f)
    smaller = " (quick: smaller than the 768x768 of the goal)" if quick else ""
    print(f"\n## 1. One int8 layer [{out_f} out x {in_f} in]{smaller}, "
          f"codes in [{int(codes.min())}, {int(codes.max())}], tile {TILE}; "
          f"map draw_stuck_map(({out_f}, {in_f}), rate, bits=8, generator=0)")
    t0 = time.perf_counter()
    lut, pattern_id = seed_build_lut()
    t_lut = time.perf_counter() - t0
    print(f"seed LUT ({lut.shape[1]} patterns x 256 codes) built in {fmt_time(t_lut)} "
          "(once per process in the seed; not counted below)")
    rows, notes = [], []
    qf_reps = 3 if quick else 5
    for rate in RATES:
        mask, value = draw_stuck_map((out_f, in_f), rate, bits=BITS, generator=0)
        faults = seed_faults(mask, value)
        weight_t = codes.t().contiguous()
        n_faulty = int((mask != 0).sum())
        notes.append(f"{rate:g} %: {n_faulty:,} of {codes.numel():,} weights have a stuck bit, "
                     f"{int(((mask != 0) & (torch.stack([(mask >> b) & 1 for b in range(BITS)]).sum(0) > 2)).sum()):,} "
                     "have > 2 (seed fallback)")
        for method in METHODS:
            seed_fn = SEED_FN[method]

            def run_seed(seed_fn=seed_fn, weight_t=weight_t, faults=faults):
                return seed_fn(weight_t, faults, lut, pattern_id)

            def run_qf(mask=mask, value=value, method=method):
                return remap(codes, mask, value, bits=BITS, method=method, tile=TILE)

            # the comparison run of the seed algorithm is also its timed sample for bit_flip
            # (tens of seconds per call; one sample per rate keeps the full run under ~10 min)
            with PeakRSS() as mem_seed:
                t0 = time.perf_counter()
                ref = run_seed()
                t_seed = [time.perf_counter() - t0]
            ref = ref.to(torch.int32).t()
            got = run_qf()
            same = torch.equal(ref, got)
            if not same:
                diff = int((ref != got).sum())
                notes.append(f"MISMATCH {method} {rate:g} %: {diff} of {codes.numel()} codes differ "
                             "between the seed algorithm and qfault")
            if method == "bit_flip":
                with PeakRSS() as mem_qf:
                    t_qf = []
                    for _ in range(qf_reps):
                        t0 = time.perf_counter()
                        run_qf()
                        t_qf.append(time.perf_counter() - t0)
                s_med, q_med = median(t_seed), median(t_qf)
                ratio = s_med / q_med
                reps = f"{len(t_seed)}/{len(t_qf)}"
            else:
                with PeakRSS() as mem_qf:
                    run_qf()
                rounds = 5 if quick else 9
                samples = time_interleaved({"seed": run_seed, "qfault": run_qf}, rounds=rounds, iters=1, warmup=1,
                                           device=torch.device("cpu"))
                s_med, q_med = median(samples["seed"]), median(samples["qfault"])
                ratio = paired_ratio(samples["seed"], samples["qfault"])
                reps = f"{rounds}/{rounds}"
            goal = SPEED_GOAL[method]
            rows.append([method, f"{rate:g} %", "yes" if same else "NO", reps, fmt_time(s_med), fmt_time(q_med),
                         f"{ratio:,.1f}x", f">= {goal:g}x", "PASS" if ratio >= goal and same else "MISS",
                         fmt_mem(mem_seed.growth), fmt_mem(mem_qf.growth)])
    print()
    print_table(["method", "rate", "equal", "reps seed/qf", "seed algorithm", "qfault", "ratio", "goal", "verdict",
                 "seed peak +RSS", "qfault peak +RSS"], rows)
    print("  equal: torch.equal of the codes read back, every weight of the layer (same map, same groups: "
          "64 input columns x 1 output row = the seed's 64-row block of W^T x 1 column; same tie rules)")
    print("  ratio = seed / qfault (median of per-round ratios for cvm/sign_flip, timed interleaved; "
          "ratio of medians for bit_flip); peak +RSS = peak resident growth during one call")
    for note in notes:
        print("  " + note)


def part_model(quick: bool) -> None:
    name = "vit_small_patch16_224" if quick else "vit_base_patch16_224"
    t0 = time.perf_counter()
    torch.manual_seed(0)  # random init (no download): fixed so that runs see the same codes
    model = seed_quant_vit(name)
    t_build = time.perf_counter() - t0
    layers = stuck_layers(model)
    n_codes = sum(m.weight_codes.numel() for _, m in layers)
    print(f"\n## 2. inject(model, StuckAtSpec) on seed_quant_vit({name!r}){' (quick: not ViT-B)' if quick else ''}: "
          f"{len(layers)} SeedQuantLinear layers, {n_codes:,} codes; built in {t_build:.1f} s; tile {TILE}, seed 0")
    rows = []
    for rate in ((5.0,) if quick else RATES):
        for method in ("raw",) + METHODS:
            spec = StuckAtSpec(rate=rate, method=method, tile=TILE, seed=0)
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                handle = inject(model, spec)
                dt = time.perf_counter() - t0
            stuck, changed = handle.stuck_cells, handle.changed_weights
            handle.remove()
            del handle
            is_goal = method == "bit_flip" and rate == 5.0
            t_goal = f"<= {MODEL_GOAL_S:g} s" if is_goal else "-"
            t_ok = ("PASS" if dt <= MODEL_GOAL_S else "MISS") if is_goal else ""
            m_ok = "PASS" if mem.growth <= MEM_GOAL else "MISS"
            rows.append([method, f"{rate:g} %", f"{dt:.2f} s", t_goal, t_ok, fmt_mem(mem.growth),
                         f"<= {fmt_mem(MEM_GOAL)}", m_ok, fmt_mem(mem.kept), f"{stuck:,}", f"{changed:,}"])
    print()
    print_table(["method", "rate", "seconds", "time goal", "", "peak +RSS", "mem goal", "", "kept +RSS",
                 "stuck cells", "weights changed"], rows)
    print(f"  one call each; peak +RSS = peak resident memory during the call minus resident before it "
          f"({PeakRSS.how}; malloc_trim before); kept +RSS = resident after minus before "
          "(after malloc_trim: the read-back int32 codes stay in the layers until remove())")
    if quick:
        print("  (the goals are stated for ViT-B; run without --quick to check them)")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], extra=lambda p: p.set_defaults(threads=1))
    if args.device != "cpu":
        sys.exit("bench_mitigation runs on CPU only (the seed baseline is CPU code here)")
    print(machine_line(torch.device("cpu")))
    print(f"{'quick' if args.quick else 'full'} run")
    t_start = time.perf_counter()
    with torch.no_grad():
        part_layer(args.quick)
        part_model(args.quick)
    print(f"\nload average at end: {loadavg()}")
    print(f"total wall time {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
