"""Systolic-array fault simulation (seed 003, issue 14): cost of the fast path, side by side.

Workload: the seed tutorial's LeNet-5 (conv1 1->6 5x5, relu, maxpool 2; conv2 6->16 5x5, relu,
maxpool 2; fc 256->120->84->10), random float32 weights and inputs (batch 100, 1x28x28), on the
seed's 29 x 29 x 161 float32 output-stationary array, one permanent stuck-at fault on one PE
register, applied to every output channel (channel=-1). Sections (never asserts on time):

  1 conv      the conv half of LeNet (both convs on the array) with one fault / the same layers
              in plain PyTorch, for lines a, b, c x PEs (1,1), (15,15), (29,29) x bits 0, 1, 9, 31
              x stuck-at 0/1; clean and faulty timed in alternation, the median of per-round
              ratios ("paired") per fault; median per line, and the worst: each line's 3 highest
              ratios timed again with 4x the rounds (goal <= 3x)
  2 naive     a per-element simulation written here (Python loops over i, j, k with numpy
              scalars, the fault's masks applied at every (i, j, k) as the reference tool's
              kernel does), on its own lowering and its own reach computation; timed on one image
              (conv1 whole, a few channel pairs of conv2) and extrapolated linearly to batch 100;
              checked against the fast path (reached outputs bit-exact). Speed-up goal >= 1000x
  3 add_fault the time of ``array.add_fault`` (goal <= 1 ms) and of the plan the first forward
              after a new fault builds (``array.plan`` for the conv1 / conv2 lowered shapes)
  4 lenet     the whole LeNet on the array (linears tiled: batch 100 > 29) clean vs one fault

Usage: .venv/bin/python bench/bench_systolic.py [--quick] [--threads N] [--device cpu|cuda]
The full run takes ~1 min on the idle 2-core VM (the naive simulation ~15 s of it), longer when the
machine is loaded (see the load column); --quick ~15-25 s.
"""

from __future__ import annotations

import copy
import importlib
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import qfault  # noqa: E402
from _common import (  # noqa: E402
    fmt_time, loadavg, machine_line, median, paired_ratio, parse_args, print_table, sync, time_interleaved,
)
from qfault.layers import swap_modules  # noqa: E402
from qfault.systolic import (  # noqa: E402
    ArrayConfig, ArrayFault, SystolicLayers, lower_activation, lower_kernel,
)

BATCH = 100
SEED_ARRAY = dict(n1=29, n2=29, n3=161, dataflow="output_stationary", in_dtype="float32")
PES = [(1, 1), (15, 15), (29, 29)]
BITS = [0, 1, 9, 31]          # msb first: sign, exponent MSB, mantissa MSB, mantissa LSB
POLARITIES = [0, 1]
GOAL_CONV = 3.0
GOAL_SPEEDUP = 1000.0
GOAL_ADD = 1e-3
# the faults the naive simulation runs (one per line) and the conv2 (co, ci) pairs it times
# (all three are also in the grid of section 1, so the speed-up compares the same fault)
NAIVE_FAULTS = [ArrayFault("a", 1, 1, bit=1, polarity=0), ArrayFault("b", 1, 1, bit=0, polarity=1),
                ArrayFault("c", 1, 1, bit=9, polarity=1)]
CONV2_PAIRS = [(0, 0), (3, 5), (7, 2), (10, 1), (15, 5), (12, 3), (1, 4), (5, 0), (8, 3), (11, 2), (14, 1), (2, 5)]


class LeNet(nn.Module):
    """The seed tutorial's LeNet-5."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding="valid")
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5, padding="valid")
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        return self.pool(F.relu(self.conv2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def systolic_copy(model: nn.Module, names: tuple[str, ...] | None, tiling: bool):
    """A deep copy of ``model`` with ``names`` (None: all convs and linears) on a fresh seed array."""
    twin = copy.deepcopy(model)
    handle = swap_modules(twin, SystolicLayers(ArrayConfig(**SEED_ARRAY, tiling=tiling), names=names))
    return twin, handle.config.array


# -- 1: conv layers, fast path vs plain PyTorch --------------------------------------------------

def bench_convs(model: LeNet, x: torch.Tensor, device: torch.device, rounds: int, iters: int):
    faulty, array = systolic_copy(model, ("conv1", "conv2"), tiling=False)
    shapes = conv_shapes(model)
    results = []  # (line, pe, bit, polarity, clean s, faulty s, paired ratio, reached per conv, load)
    with torch.no_grad():
        for line in "abc":
            for pe in PES:
                for bit in BITS:
                    for polarity in POLARITIES:
                        fault = ArrayFault(line, *pe, bit=bit, polarity=polarity)
                        handle = array.add_fault(fault)
                        reached = [array.plan(shape).rows.numel() for shape in shapes.values()]
                        s = time_interleaved({"clean": lambda: model.features(x), "faulty": lambda: faulty.features(x)},
                                             rounds=rounds, iters=iters, warmup=1, device=device)
                        handle.remove()
                        results.append((line, pe, bit, polarity, median(s["clean"]), median(s["faulty"]),
                                        paired_ratio(s["faulty"], s["clean"]), reached, loadavg()))
    return results


def confirm_worst(model: LeNet, x: torch.Tensor, device: torch.device, conv: list, rounds: int, iters: int,
                  per_line: int = 3) -> dict[str, list[tuple]]:
    """The ``per_line`` faults of each line with the highest ratio in ``conv``, timed again with
    ``rounds`` rounds: the largest of a grid's noisy medians overstates its worst fault, a
    second, longer measurement of the candidates does not. Per line: (fault, paired ratio)."""
    faulty, array = systolic_copy(model, ("conv1", "conv2"), tiling=False)
    out = {}
    with torch.no_grad():
        for line in "abc":
            candidates = sorted((r for r in conv if r[0] == line), key=lambda r: -r[6])[:per_line]
            for _, pe, bit, polarity, *_ in candidates:
                fault = ArrayFault(line, *pe, bit=bit, polarity=polarity)
                handle = array.add_fault(fault)
                s = time_interleaved({"clean": lambda: model.features(x), "faulty": lambda: faulty.features(x)},
                                     rounds=rounds, iters=iters, warmup=1, device=device)
                handle.remove()
                out.setdefault(line, []).append((fault, paired_ratio(s["faulty"], s["clean"])))
    return out


def conv_shapes(model: LeNet) -> dict[str, tuple[int, int, int]]:
    """The lowered product (m, k, n) = (oh, kh * W, ow) of each conv at 28x28 inputs."""
    return {"conv1": (24, 5 * 28, 24), "conv2": (8, 5 * 12, 8)}


# -- 2: the naive per-element simulation ---------------------------------------------------------

def signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >> 31 else value


def dense_masks(matrix: np.ndarray, fault: ArrayFault, shape: tuple[int, int, int], width: int = 32
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per line the (keep, xor) int32 masks (n1, n2, n3) of every iteration of an
    (n1 x n3) @ (n3 x n2) product that fits the array, from the spec's closed form: the fault
    reaches nu iff nu - h * e_line (h >= 0; h = 0 only for a stationary line) is inside the box,
    on the fault's PE and in its window. Identity masks elsewhere and on the other lines."""
    n1, n2, n3 = shape
    space, time_row = matrix[:2], matrix[2]
    step = np.array({"a": (0, 1, 0), "b": (1, 0, 0), "c": (0, 0, 1)}[fault.line], dtype=np.int64)
    grid = np.stack(np.meshgrid(np.arange(1, n1 + 1), np.arange(1, n2 + 1), np.arange(1, n3 + 1),
                                indexing="ij"), axis=-1)                           # (n1, n2, n3, 3)
    stationary = not (space @ step).any()
    reached = np.zeros(shape, dtype=bool)
    stop = np.inf if fault.t_stop is None else fault.t_stop
    axis = int(np.flatnonzero(step)[0])
    for h in range(1 if stationary else shape[axis]):
        source = grid - h * step
        pe = source @ space.T
        cycle = source @ time_row
        reached |= ((source >= 1).all(-1) & (source <= np.array([n1, n2, n3])).all(-1)
                    & (pe[..., 0] == fault.x) & (pe[..., 1] == fault.y) & (cycle >= fault.t_start) & (cycle <= stop))
    keep, xor = fault.masks(width)
    masks = {line: (np.full(shape, -1, dtype=np.int32), np.zeros(shape, dtype=np.int32)) for line in "abc"}
    masks[fault.line][0][reached] = signed32(keep)
    masks[fault.line][1][reached] = signed32(xor)
    return masks


def naive_lower_activation(x: np.ndarray, kh: int) -> np.ndarray:
    """(H, W) -> (oh, kh * W): row r is X[r : r + kh, :] flattened column-major (stride 1)."""
    height, width = x.shape
    out = np.zeros((height - kh + 1, kh * width), dtype=x.dtype)
    for r in range(height - kh + 1):
        for col in range(width):
            for u in range(kh):
                out[r, col * kh + u] = x[r + u, col]
    return out


def naive_lower_kernel(kernel: np.ndarray, width: int) -> np.ndarray:
    """(kh, kw) -> (kh * W, ow): column c holds the kernel column-major from row c * kh."""
    kh, kw = kernel.shape
    ow = width - kw + 1
    out = np.zeros((kh * width, ow), dtype=kernel.dtype)
    for c in range(ow):
        for v in range(kw):
            for u in range(kh):
                out[c * kh + v * kh + u, c] = kernel[u, v]
    return out


def naive_matmul(a: np.ndarray, b: np.ndarray, masks: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """C = A @ B element by element in float32 scalars: at every (i, j, k) the operands' bit
    patterns get their line's mask, then c = c + a * b (two roundings), then c's mask."""
    n1, n3 = a.shape
    n2 = b.shape[1]
    a_bits, b_bits = a.view(np.int32), b.view(np.int32)
    (keep_a, xor_a), (keep_b, xor_b), (keep_c, xor_c) = masks["a"], masks["b"], masks["c"]
    out = np.zeros((n1, n2), dtype=np.float32)
    for i in range(n1):
        for j in range(n2):
            c = np.float32(0)
            for k in range(n3):
                av = ((a_bits[i, k] & keep_a[i, j, k]) ^ xor_a[i, j, k]).view(np.float32)
                bv = ((b_bits[k, j] & keep_b[i, j, k]) ^ xor_b[i, j, k]).view(np.float32)
                c = c + av * bv
                c = ((c.view(np.int32) & keep_c[i, j, k]) ^ xor_c[i, j, k]).view(np.float32)
            out[i, j] = c
    return out


def naive_conv_pair(x: np.ndarray, kernel: np.ndarray, masks) -> np.ndarray:
    """One (image, output channel, input channel) product of a conv on the array, lifted (oh, ow)."""
    return naive_matmul(naive_lower_activation(x, kernel.shape[0]), naive_lower_kernel(kernel, x.shape[1]), masks)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise: identical float32 bit patterns (any two NaNs count as equal)."""
    return (a.view(torch.int32) == b.view(torch.int32)) | (torch.isnan(a) & torch.isnan(b))


def bench_naive(model: LeNet, x: torch.Tensor):
    """Naive time per image (conv1 whole, conv2 per channel pair), the checks against the fast path
    (on the CPU, whatever the benchmark's device)."""
    model, x = copy.deepcopy(model).cpu(), x.cpu()
    faulty, array = systolic_copy(model, ("conv1", "conv2"), tiling=False)
    matrix = array.matrix
    shapes = conv_shapes(model)
    image = x[:1]
    with torch.no_grad():
        mid = model.pool(F.relu(model.conv1(image))).cpu()       # conv2's (clean) input, (1, 6, 12, 12)
    x0 = image[0, 0].cpu().numpy()
    w1 = model.conv1.weight.detach().cpu().numpy()
    b1 = model.conv1.bias.detach().cpu().numpy()
    w2 = model.conv2.weight.detach().cpu().numpy()
    rows, checks = [], []

    # the own lowering equals the core's, and the own reach the core's reached iterations
    la, lk = naive_lower_activation(x0, 5), naive_lower_kernel(w1[0, 0], 28)
    lowering_ok = (np.array_equal(la, lower_activation(torch.from_numpy(x0), 5).numpy())
                   and np.array_equal(lk, lower_kernel(torch.from_numpy(w1[0, 0]), 28).numpy()))
    reach_ok, reach_n = True, 0
    for line in "abc":
        for pe in PES:
            fault = ArrayFault(line, *pe, bit=3)
            for m, k, n in shapes.values():
                mine = dense_masks(matrix, fault, (m, n, k))[line][1] != 0
                theirs = np.zeros_like(mine)
                it = array.reached_iterations(fault, (m, k, n)).numpy()
                theirs[it[:, 0], it[:, 1], it[:, 2]] = True
                reach_ok &= bool(np.array_equal(mine, theirs))
                reach_n += int(mine.sum())
    checks.append(f"  own lowering == core's lower_activation/lower_kernel: {lowering_ok}; own reach == core's "
                  f"reached_iterations for lines a, b, c x PEs {PES} x both convs: {reach_ok} "
                  f"({reach_n:,} reached iterations)")

    for fault in NAIVE_FAULTS:
        handle = array.add_fault(fault)
        with torch.no_grad():
            fast1 = faulty.conv1(image).cpu()[0]                                  # (6, 24, 24)
        m1, k1, n1 = shapes["conv1"]
        masks1 = dense_masks(matrix, fault, (m1, n1, k1))
        with np.errstate(all="ignore"):
            t0 = time.perf_counter()
            out1 = np.empty((6, m1, n1), dtype=np.float32)
            for co in range(6):
                out1[co] = b1[co] + naive_conv_pair(x0, w1[co, 0], masks1)     # bias, then += each ci (one)
            t_conv1 = time.perf_counter() - t0
        m2, k2, n2 = shapes["conv2"]
        masks2 = dense_masks(matrix, fault, (m2, n2, k2))
        products, fast_products = [], []
        with np.errstate(all="ignore"):
            t0 = time.perf_counter()
            for co, ci in CONV2_PAIRS:
                products.append(naive_conv_pair(mid[0, ci].numpy(), w2[co, ci], masks2))
            t_pair = (time.perf_counter() - t0) / len(CONV2_PAIRS)
        for co, ci in CONV2_PAIRS:
            fast_products.append(array.matmul(lower_activation(mid[0, ci], 5), lower_kernel(torch.from_numpy(w2[co, ci]), 12)))
        handle.remove()

        # reached outputs bit-exact; the rest (the fast path's clean conv / matmul) within rounding
        out1 = torch.from_numpy(out1)
        hit1 = torch.from_numpy(np.any((masks1[fault.line][0] != -1) | (masks1[fault.line][1] != 0), axis=-1))
        exact1 = same_bits(out1[:, hit1], fast1[:, hit1])
        close1 = torch.allclose(out1[:, ~hit1], fast1[:, ~hit1], rtol=1e-4, atol=1e-5, equal_nan=True)
        hit2 = torch.from_numpy(np.any((masks2[fault.line][0] != -1) | (masks2[fault.line][1] != 0), axis=-1))
        naive2, fast2 = torch.from_numpy(np.stack(products)), torch.stack(fast_products)
        exact2 = same_bits(naive2[:, hit2], fast2[:, hit2])
        close2 = torch.allclose(naive2[:, ~hit2], fast2[:, ~hit2], rtol=1e-4, atol=1e-5, equal_nan=True)
        with torch.no_grad():
            changed = int((~same_bits(out1, model.conv1(image).cpu()[0])).sum())
        checks.append(f"  check {fault.line} @ ({fault.x},{fault.y}) bit {fault.bit} stuck-at-{fault.polarity}: "
                      f"conv1 reached outputs bit-exact {int(exact1.sum())}/{exact1.numel()}, others close {close1}, "
                      f"{changed} outputs differ from clean; conv2 products reached bit-exact "
                      f"{int(exact2.sum())}/{exact2.numel()}, others close {close2}")
        per_image = t_conv1 + t_pair * model.conv2.out_channels * model.conv2.in_channels
        rows.append((fault, t_conv1, t_pair, per_image))
    return rows, checks


def flauers_line(model: LeNet, x: torch.Tensor, fault: ArrayFault) -> str:
    """The reference tool on the same conv layers and fault, when it is installed (as its tutorial
    calls it; untested here, where it cannot be imported)."""
    try:
        flauers = importlib.import_module("flauers")
        importlib.import_module("flauers.torch")
    except ImportError as error:
        return f"  flauers: not installed ({error.__class__.__name__}: {error}); not timed"
    try:
        hw = flauers.SystolicArray(SEED_ARRAY["n1"], SEED_ARRAY["n2"], SEED_ARRAY["n3"],
                                   flauers.projection_matrices.output_stationary, in_dtype=np.dtype(np.float32))
        twin = copy.deepcopy(model).cpu()
        flauers.torch.replace_layers(twin, ["conv1", "conv2"], hardware=hw)
        hw.add_fault(flauers.fault_models.StuckAt(fault.line, x=fault.x, y=fault.y, bit=fault.bit,
                                                  polarity=fault.polarity))
        with torch.no_grad():
            twin.features(x.cpu()[:2])                       # numba compilation
            t0 = time.perf_counter()
            twin.features(x.cpu())
            elapsed = time.perf_counter() - t0
    except Exception as error:  # the reference tool's API is not under test here
        return f"  flauers: importable but the timing failed ({error.__class__.__name__}: {error})"
    return f"  flauers {fault.line} @ ({fault.x},{fault.y}): conv layers at batch {x.shape[0]}: {fmt_time(elapsed)} (one run)"


# -- 3: add_fault and the first plan -------------------------------------------------------------

def bench_add_fault(model: LeNet, n_add: int, n_plan: int):
    _, array = systolic_copy(model, ("conv1", "conv2"), tiling=False)
    fault = ArrayFault("a", 15, 15, bit=1, polarity=1)
    samples = []
    for _ in range(n_add):
        t0 = time.perf_counter()
        handle = array.add_fault(fault)
        samples.append(time.perf_counter() - t0)
        handle.remove()
    rows = []
    for line in "abc":
        for pe in PES:
            for name, shape in conv_shapes(model).items():
                times = []
                for rep in range(n_plan):
                    handle = array.add_fault(ArrayFault(line, *pe, bit=rep % 32, polarity=rep % 2))  # cache cleared
                    t0 = time.perf_counter()
                    plan = array.plan(shape)
                    times.append(time.perf_counter() - t0)
                    handle.remove()
                rows.append((line, pe, name, shape, plan.rows.numel(), median(times)))
    return median(samples), min(samples), rows


# -- 4: the whole LeNet --------------------------------------------------------------------------

def bench_lenet(model: LeNet, x: torch.Tensor, device: torch.device, rounds: int, iters: int):
    faulty, array = systolic_copy(model, None, tiling=True)
    faults = [ArrayFault("a", 1, 1, bit=1, polarity=1), ArrayFault("b", 1, 1, bit=1, polarity=1),
              ArrayFault("c", 1, 1, bit=1, polarity=1), ArrayFault("a", 29, 29, bit=9, polarity=1),
              ArrayFault("c", 29, 29, bit=9, polarity=1)]
    rows = []
    with torch.no_grad():
        s = time_interleaved({"clean": lambda: model(x), "faulty": lambda: faulty(x)}, rounds=rounds, iters=iters,
                             warmup=1, device=device)
        rows.append(("no fault (systolic layers)", median(s["clean"]), median(s["faulty"]),
                     paired_ratio(s["faulty"], s["clean"]), ""))
        for fault in faults:
            handle = array.add_fault(fault)
            differs = int((faulty(x) != model(x)).any(1).sum())
            s = time_interleaved({"clean": lambda: model(x), "faulty": lambda: faulty(x)}, rounds=rounds,
                                 iters=iters, warmup=1, device=device)
            handle.remove()
            rows.append((f"{fault.line} @ ({fault.x},{fault.y}) bit {fault.bit} stuck-at-{fault.polarity}",
                         median(s["clean"]), median(s["faulty"]), paired_ratio(s["faulty"], s["clean"]),
                         f"{differs}/{x.shape[0]}"))
    return rows


def first_forward(model: LeNet, x: torch.Tensor, device: torch.device, n: int) -> float:
    """Seconds of the first conv forward after a new fault (plan build included), median of ``n``."""
    faulty, array = systolic_copy(model, ("conv1", "conv2"), tiling=False)
    times = []
    with torch.no_grad():
        faulty.features(x)
        for rep in range(n):
            handle = array.add_fault(ArrayFault("a", 1, 1, bit=rep % 32, polarity=1))
            sync(device)
            t0 = time.perf_counter()
            faulty.features(x)
            sync(device)
            times.append(time.perf_counter() - t0)
            handle.remove()
    return median(times)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    device = torch.device(args.device)
    t_start = time.perf_counter()
    print(machine_line(device))
    print(f"qfault {qfault.__version__}, numpy {np.__version__}; array {SEED_ARRAY['n1']}x{SEED_ARRAY['n2']}x"
          f"{SEED_ARRAY['n3']} {SEED_ARRAY['dataflow']} {SEED_ARRAY['in_dtype']}; LeNet-5, random weights, "
          f"batch {BATCH} of random 1x28x28; {'quick' if args.quick else 'full'} run")
    torch.manual_seed(0)
    model = LeNet().eval()
    x = torch.rand(BATCH, 1, 28, 28)
    model_dev, x_dev = model.to(device), x.to(device)
    if float(loadavg()) > 1.5:
        print(f"note: load average {loadavg()} at the start on {os.cpu_count()} cores: if other processes are "
              "running, the fault path's many small parallel ops suffer most (timings spike)")
    rounds, iters = (3, 1) if args.quick else (11, 3)

    # 1
    conv = bench_convs(model_dev, x_dev, device, rounds, iters)
    print("\n[1] conv layers (conv1 + relu + pool + conv2 + relu + pool), systolic with one fault / plain PyTorch, "
          f"batch {BATCH}, torch.no_grad; per (line, PE) over bits {BITS} x stuck-at {POLARITIES}")
    table, per_line = [], {}
    for line in "abc":
        for pe in PES:
            sel = [r for r in conv if r[0] == line and r[1] == pe]
            ratios = [r[6] for r in sel]
            worst = max(sel, key=lambda r: r[6])
            per_line.setdefault(line, []).extend(ratios)
            table.append([line, f"({pe[0]},{pe[1]})", "/".join(str(v) for v in sel[0][7]),
                          fmt_time(median([r[4] for r in sel])), fmt_time(median([r[5] for r in sel])),
                          f"{statistics.median(ratios):.2f}x", f"{worst[6]:.2f}x",
                          f"bit {worst[2]} sa{worst[3]}", f"{min(ratios):.2f}x", sel[-1][8]])
    print_table(["line", "PE", "outputs reached conv1/conv2", "clean", "faulty", "ratio median", "ratio worst",
                 "worst at", "ratio best", "load"], table)
    print("  ratio = median over interleaved rounds of faulty/clean (per fault); clean/faulty = median over the "
          f"faults of each fault's median time; {rounds} rounds x {iters} calls per fault; load {loadavg()}")
    print("  (29,29) is past conv1's 24x24 and conv2's 8x8 outputs: no conv product reaches it")
    confirm_rounds = rounds * 4
    confirmed = confirm_worst(model_dev, x_dev, device, conv, confirm_rounds, iters)
    print(f"  the 3 highest ratios of each line timed again ({confirm_rounds} rounds x {iters} calls): "
          + "; ".join(f"{line}: " + ", ".join(f"({f.x},{f.y}) bit {f.bit} sa{f.polarity} {r:.2f}x" for f, r in rows)
                      for line, rows in confirmed.items()))
    t_first = first_forward(model_dev, x_dev, device, 5 if args.quick else 15)
    print(f"  first conv forward after add_fault (line a @ (1,1), plan built inside): {fmt_time(t_first)} "
          f"(clean {fmt_time(median([r[4] for r in conv]))})")

    # 2
    naive_rows, checks = bench_naive(model, x)
    fast_all = [r[5] for r in conv]
    fast_worst, fast_med = max(fast_all), statistics.median(fast_all)
    print(f"\n[2] naive per-element simulation (Python loops over i, j, k, numpy float32 scalars, masks at every "
          f"(i, j, k)), one image: conv1 all {model.conv1.out_channels} channel pairs, conv2 {len(CONV2_PAIRS)} "
          f"of {model.conv2.out_channels * model.conv2.in_channels} pairs; EXTRAPOLATED linearly to batch {BATCH} "
          f"= {BATCH} x (conv1 time + 96 x the mean conv2 pair time)")
    table, speedups = [], []
    for fault, t_conv1, t_pair, per_image in naive_rows:
        batch_time = per_image * BATCH
        same = next(r[5] for r in conv if (r[0], r[1], r[2], r[3]) == (fault.line, (fault.x, fault.y), fault.bit,
                                                                        fault.polarity))
        speedups.append(batch_time / same)
        table.append([f"{fault.line} @ ({fault.x},{fault.y}) bit {fault.bit} sa{fault.polarity}", fmt_time(t_conv1),
                      fmt_time(t_pair), fmt_time(per_image), f"{batch_time:.0f} s (extrapolated)", fmt_time(same),
                      f"{batch_time / same:,.0f}x", f"{batch_time / fast_worst:,.0f}x"])
    print_table(["fault", "conv1 (1 image, measured)", "conv2 per pair (measured)", "per image (conv1 + 96 pairs)",
                 f"naive batch {BATCH}", "fast, same fault", "speed-up", "vs slowest fast fault"], table)
    print(f"  fast path at batch {BATCH} (from [1], over all faults): median {fmt_time(fast_med)}, "
          f"worst {fmt_time(fast_worst)}; the naive time covers the two convs only (no relu/pool)")
    print("\n".join(checks))
    print(flauers_line(model, x, NAIVE_FAULTS[0]))

    # 3
    add_med, add_min, plan_rows = bench_add_fault(model, 200 if args.quick else 2000, 5 if args.quick else 20)
    print(f"\n[3] array.add_fault(fault): median {fmt_time(add_med)} (min {fmt_time(add_min)}) over "
          f"{200 if args.quick else 2000} adds, remove() between")
    print("    plan of the first forward after a new fault, array.plan((m, k, n)), median over faults:")
    print_table(["line", "PE", "layer", "(m, k, n)", "outputs reached", "plan"],
                [[r[0], f"({r[1][0]},{r[1][1]})", r[2], str(r[3]), str(r[4]), fmt_time(r[5])] for r in plan_rows])

    # 4
    lenet = bench_lenet(model_dev, x_dev, device, rounds, iters)
    print(f"\n[4] whole LeNet-5 (2 convs + 3 linears on the array, tiling on), batch {BATCH}, vs plain PyTorch "
          "(for reference, no goal)")
    print_table(["fault", "clean", "systolic", "ratio", "images changed"],
                [[r[0], fmt_time(r[1]), fmt_time(r[2]), f"{r[3]:.2f}x", r[4]] for r in lenet])

    # goals
    print("\ngoals")
    goal_rows = []
    for line in "abc":
        ratios = per_line[line]
        worst = max(r for _, r in confirmed[line])
        goal_rows.append([f"conv faulty/clean, line {line}", f"worst {worst:.2f}x (timed again; grid "
                          f"{max(ratios):.2f}x), median {statistics.median(ratios):.2f}x",
                          f"<= {GOAL_CONV:.0f}x", "PASS" if worst <= GOAL_CONV else "MISS"])
    low = min(speedups)
    goal_rows.append(["speed-up vs naive (extrapolated)", f"{low:,.0f}x (lowest of the {len(speedups)} faults)",
                      f">= {GOAL_SPEEDUP:,.0f}x", "PASS" if low >= GOAL_SPEEDUP else "MISS"])
    goal_rows.append(["add_fault", fmt_time(add_med), f"<= {fmt_time(GOAL_ADD)}", "PASS" if add_med <= GOAL_ADD else "MISS"])
    print_table(["goal", "measured", "target", "verdict"], goal_rows)
    print(f"\nload average at end {loadavg()}; total wall time {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
