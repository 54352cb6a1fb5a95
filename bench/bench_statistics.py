"""Cost of qfault's injection statistics on a small ResNet: ``track_statistics=True`` (the default) vs False.

Workloads (transient: faults redrawn on every forward), eval under inference_mode (or no_grad):
  f32-weight   float32 weight bit flips (raw IEEE bits), BER 1e-5, on the 13 Conv2d/Linear weights
  int8-weight  int8 weight bit flips, BER 1e-3, on the same weights (per-channel scales)
  int8-act     one int8 bit flip per image in each of the 10 ReLU outputs (BitFlip(count=1),
               per_image=True, types=("ReLU",), layer_mode "all"; per-tensor scale calibrated on
               every output)
Rows, each timed in alternation with the clean model (same weights, same input):
  qfault off / on  InjectSpec(..., track_statistics=False / True)
  plain            the plain vectorized injector of this file (PlainWeightFaults, PlainActFaults):
                   the same faults, no statistics, a reference for what injecting itself costs
  pytorchfi        pytorchfi 0.6 applying the same faults through declare_weight_fi (a bit-flip
                   function per fault) or declare_neuron_fi (its single_bit_flip_signed_across_batch,
                   static per-layer ranges); re-declared every step, as faults redrawn per forward
                   need (each declaration deep-copies the model)
  mrfi             mrfi 2.1 EasyConfig of the same fault kind (per-tensor scale for int8, Poisson
                   count of faulted values)
Third-party rows are timed in a second interleaved set with their own clean runs.
Goals ("qfault on" / clean, paired): <= 1.1x at batch 64, <= 1.3x at batch 1.

Usage: .venv/bin/python bench/bench_statistics.py [--quick] [--workloads f32-weight,int8-weight,int8-act]
       [--batches 64,1] [--grad-mode no_grad] [--no-others]
"""

from __future__ import annotations

import copy
import importlib.util
import random
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import qfault  # noqa: E402
from _common import (  # noqa: E402
    fmt_time, loadavg, machine_line, median, paired_ratio, parse_args, print_table, time_interleaved, verdict,
)
from models import count_params, make_model, relu_layers, weight_layers  # noqa: E402

F32_BER, INT8_BER = 1e-5, 1e-3
GOALS = {64: 1.1, 1: 1.3}
WORKLOADS = {
    "f32-weight": "float32 weight bit flips, BER 1e-5",
    "int8-weight": "int8 weight bit flips, BER 1e-3",
    "int8-act": "1 int8 flip/image in each ReLU output",
}
#: pytorchfi's activation flips use a static range per layer: the clean batch's maximum times this
#: margin (values faulted upstream can exceed the clean maximum; pytorchfi fails on codes past 127)
PFI_RANGE_MARGIN = 4.0


def grad_context(mode: str):
    return torch.inference_mode() if mode == "inference_mode" else torch.no_grad()


def qfault_spec(workload: str, stats: bool) -> qfault.InjectSpec:
    if workload == "f32-weight":
        return qfault.InjectSpec(fault=qfault.BitFlip(ber=F32_BER), site="weight", format="float32",
                                 track_statistics=stats, seed=0)
    if workload == "int8-weight":
        return qfault.InjectSpec(fault=qfault.BitFlip(ber=INT8_BER), site="weight", format="int8",
                                 track_statistics=stats, seed=0)
    return qfault.InjectSpec(fault=qfault.BitFlip(count=1), site="output", types=("ReLU",), format="int8",
                             per_image=True, track_statistics=stats, seed=0)


def expected_flips(workload: str, batch: int, base: nn.Module) -> float:
    n_weights = sum(m.weight.numel() for _, m in weight_layers(base))
    if workload == "f32-weight":
        return n_weights * 32 * F32_BER
    if workload == "int8-weight":
        return n_weights * 8 * INT8_BER
    return batch * len(relu_layers(base))


# --------------------------------------------------------------------------------------------
# the plain reference injector


def draw_bit_sites(rng: np.random.Generator, total_bits: int, ber: float) -> np.ndarray:
    """Sorted distinct faulty bit positions among ``total_bits``: a binomial count, then that many
    distinct positions (the exact distribution of independent flips with probability ``ber``)."""
    return np.sort(rng.choice(total_bits, rng.binomial(total_bits, ber), replace=False))


def int8_flip(values: np.ndarray, masks: np.ndarray, scales) -> np.ndarray:
    """XOR ``masks`` into the int8 codes of the float32 ``values`` (symmetric, at ``scales``)."""
    codes = np.clip(np.rint(values / scales), -128, 127).astype(np.int8)
    return (codes.view(np.uint8) ^ masks.astype(np.uint8)).view(np.int8).astype(np.float32) * scales


class PlainWeightFaults:
    """Transient bit flips in the Conv2d/Linear weights of ``model``, redrawn every forward.

    One binomial count over all bits of the concatenated weights, distinct positions, XOR in the
    codes (int8 with a per-channel or per-tensor scale, or the raw float32 bits), written into the
    weights' own memory before the model's forward and restored after it.
    """

    def __init__(self, model: nn.Module, ber: float, fmt: str, per_tensor: bool = False, seed: int = 0):
        modules = [m for _, m in weight_layers(model)]
        self.views = [m.weight.detach().view(-1).numpy() for m in modules]
        sizes = np.array([v.size for v in self.views], dtype=np.int64)
        self.ends = np.cumsum(sizes)
        self.starts = self.ends - sizes
        self.fmt, self.ber, self.bits = fmt, ber, (8 if fmt == "int8" else 32)
        self.total_bits = int(self.ends[-1]) * self.bits
        if fmt == "int8":
            scales = []
            for m in modules:
                w = m.weight.detach()
                amax = w.abs().amax() if per_tensor else w.abs().flatten(1).amax(1)
                scales.append(torch.where(amax > 0, amax / 127, 1.0).reshape(-1).numpy())
            counts = np.array([len(s) for s in scales], dtype=np.int64)
            self.scale = np.concatenate(scales).astype(np.float32)
            self.channel_start = np.cumsum(counts) - counts
            self.inner = sizes // counts
        self.rng = np.random.default_rng(seed)
        self.undo: list = []
        self.flips = 0  # bit flips drawn so far
        self.hooks = [model.register_forward_pre_hook(self.apply),
                      model.register_forward_hook(self.restore, always_call=True)]

    def apply(self, module, args) -> None:
        sites = draw_bit_sites(self.rng, self.total_bits, self.ber)
        self.flips += sites.size
        if sites.size == 0:
            return
        element, bit = np.divmod(sites, self.bits)
        first = np.flatnonzero(np.diff(element, prepend=-1))  # several bits of one element: one mask
        masks = np.add.reduceat(np.left_shift(1, bit), first)
        element = element[first]
        owner = np.searchsorted(self.ends, element, side="right")
        local = element - self.starts[owner]
        bounds = np.searchsorted(element, self.ends)
        parts = list(zip([0] + bounds[:-1].tolist(), bounds.tolist()))
        clean = np.concatenate([view[local[lo:hi]] for view, (lo, hi) in zip(self.views, parts)])
        if self.fmt == "int8":
            faulty = int8_flip(clean, masks, self.scale[self.channel_start[owner] + local // self.inner[owner]])
        else:
            faulty = (clean.view(np.uint32) ^ masks.astype(np.uint32)).view(np.float32)
        for view, (lo, hi) in zip(self.views, parts):
            if hi > lo:
                view[local[lo:hi]] = faulty[lo:hi]
                self.undo.append((view, local[lo:hi], clean[lo:hi]))

    def restore(self, module, args, out) -> None:
        while self.undo:
            view, index, clean = self.undo.pop()
            view[index] = clean

    def remove(self) -> None:
        self.restore(None, None, None)
        for hook in self.hooks:
            hook.remove()


class PlainActFaults:
    """One bit flip per image in every ReLU output of ``model``, in int8 codes with a per-tensor
    symmetric scale calibrated on that output, written into the output in place."""

    def __init__(self, model: nn.Module, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.flips = 0
        self.hooks = [m.register_forward_hook(self.hook) for _, m in relu_layers(model)]

    def hook(self, module, args, out: torch.Tensor) -> torch.Tensor:
        batch, per_image = out.shape[0], out[0].numel()
        low, high = torch.aminmax(out)
        amax = max(float(high), -float(low))
        scale = np.float32(amax / 127 if amax > 0 else 1.0)
        element, bit = np.divmod(self.rng.integers(0, per_image * 8, batch), 8)
        element += np.arange(batch) * per_image
        flat = out.view(-1).numpy()
        flat[element] = int8_flip(flat[element], np.left_shift(1, bit), scale)
        self.flips += batch
        return out

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


def plain_injector(workload: str, model: nn.Module):
    if workload == "f32-weight":
        return PlainWeightFaults(model, F32_BER, "float32")
    if workload == "int8-weight":
        return PlainWeightFaults(model, INT8_BER, "int8")
    return PlainActFaults(model)


# --------------------------------------------------------------------------------------------
# pytorchfi and mrfi


def _flip_int8_number(value: float, bit: int, scale: float) -> float:
    code = min(127, max(-128, round(value / scale)))
    code = (code & 0xFF) ^ (1 << bit)
    return (code - 256 if code >= 128 else code) * scale


def _flip_float32_number(value: float, bit: int) -> float:
    raw = struct.unpack("<I", struct.pack("<f", value))[0] ^ (1 << bit)
    return struct.unpack("<f", struct.pack("<I", raw))[0]


def pytorchfi_step(workload: str, base: nn.Module, x: torch.Tensor):
    """A step function: redraw the faults, declare them to pytorchfi, run its faulty model on ``x``."""
    batch = x.shape[0]
    if workload == "int8-act":
        from pytorchfi.neuron_error_models import random_neuron_location, single_bit_flip_func

        model = copy.deepcopy(base)
        for _, relu in relu_layers(model):
            relu.weight = torch.empty(0)  # pytorchfi records a weight shape for each layer it hooks
        pfi = single_bit_flip_func(model, batch, input_shape=list(x.shape[1:]), layer_types=[nn.ReLU],
                                   use_cuda=False, bits=8)
        ranges = []
        hooks = [m.register_forward_hook(lambda m, a, out: ranges.append(float(out.abs().max()) * PFI_RANGE_MARGIN))
                 for _, m in relu_layers(base)]
        with torch.no_grad():
            base(x)
        for hook in hooks:
            hook.remove()
        pfi.set_conv_max(ranges)
        random.seed(0)

        def step():
            images, layers, dim1, dim2, dim3 = [], [], [], [], []
            for layer in range(pfi.get_total_layers()):
                for image in range(batch):
                    _, c, h, w = random_neuron_location(pfi, layer)
                    images.append(image)
                    layers.append(layer)
                    dim1.append(c)
                    dim2.append(h)
                    dim3.append(w)
            faulty = pfi.declare_neuron_fi(batch=images, layer_num=layers, dim1=dim1, dim2=dim2, dim3=dim3,
                                           function=pfi.single_bit_flip_signed_across_batch)
            return faulty(x)
        return step

    import pytorchfi.core as pfi_core

    pfi = pfi_core.fault_injection(copy.deepcopy(base), batch, input_shape=list(x.shape[1:]),
                                   layer_types=[nn.Conv2d, nn.Linear], use_cuda=False)
    weights = [m.weight.detach() for _, m in weight_layers(base)]
    shapes = [tuple(w.shape) for w in weights]
    sizes = np.array([w.numel() for w in weights], dtype=np.int64)
    ends = np.cumsum(sizes)
    starts = ends - sizes
    int8 = workload == "int8-weight"
    bits, ber = (8, INT8_BER) if int8 else (32, F32_BER)
    scales = [(w.abs().flatten(1).amax(1) / 127).tolist() for w in weights]
    rng = np.random.default_rng(0)
    queue = iter(())

    def flip(data, location):  # pytorchfi calls it once per fault, in the order declared
        bit, scale = next(queue)
        value = data[location].item()
        return _flip_int8_number(value, bit, scale) if int8 else _flip_float32_number(value, bit)

    def step():
        nonlocal queue
        element, bit = np.divmod(draw_bit_sites(rng, int(ends[-1]) * bits, ber), bits)
        owner = np.searchsorted(ends, element, side="right")
        local = element - starts[owner]
        layer_num, k, dim1, dim2, dim3, params = [], [], [], [], [], []
        for layer in np.unique(owner).tolist():
            sel = owner == layer
            coords = np.unravel_index(local[sel], shapes[layer])
            n = int(sel.sum())
            layer_num += [layer] * n
            k += coords[0].tolist()
            dim1 += coords[1].tolist()
            dim2 += coords[2].tolist() if len(coords) > 2 else [None] * n
            dim3 += coords[3].tolist() if len(coords) > 3 else [None] * n
            chan_scales = scales[layer]
            params += [(b, chan_scales[ch]) for b, ch in zip(bit[sel].tolist(), coords[0].tolist())]
        queue = iter(params)
        faulty = pfi.declare_weight_fi(function=flip, layer_num=layer_num, k=k, dim1=dim1, dim2=dim2, dim3=dim3)
        return faulty(x)
    return step


def mrfi_config(workload: str) -> dict:
    quant = {"method": "SymmericQuantization", "dynamic_range": "auto", "bit_width": 8, "layerwise": False}
    if workload == "f32-weight":
        fi = {"type": "weight", "name": ["weight"], "module_type": ["Conv2d", "Linear"],
              "selector": {"method": "RandomPositionByRate", "poisson": True, "rate": F32_BER * 32},
              "error_mode": {"method": "FloatRandomBitFlip", "floattype": "float32"}}
    elif workload == "int8-weight":
        fi = {"type": "weight", "name": ["weight"], "module_type": ["Conv2d", "Linear"], "quantization": quant,
              "selector": {"method": "RandomPositionByRate", "poisson": True, "rate": INT8_BER * 8},
              "error_mode": {"method": "IntRandomBitFlip", "bit_width": 8}}
    else:
        fi = {"type": "activation_out", "module_type": ["ReLU"], "quantization": quant,
              "selector": {"method": "RandomPositionByNumber", "n": 1, "per_instance": True},
              "error_mode": {"method": "IntRandomBitFlip", "bit_width": 8}}
    return {"faultinject": [fi]}


def mrfi_step(workload: str, base: nn.Module, x: torch.Tensor):
    from mrfi import MRFI, EasyConfig

    fi_model = MRFI(copy.deepcopy(base), EasyConfig(mrfi_config(workload)))
    return lambda: fi_model(x)


OTHERS = {"pytorchfi": pytorchfi_step, "mrfi": mrfi_step}


# --------------------------------------------------------------------------------------------
# checks and timing


def differs_from(fn, clean: torch.Tensor, n: int) -> int:
    """In how many of ``n`` calls ``fn()`` differs from ``clean``."""
    return sum(int(not torch.equal(fn(), clean)) for _ in range(n))


def check_qfault(workload: str, stats: bool, base: nn.Module, x: torch.Tensor, mode: str, n_fwd: int = 5) -> str:
    """Faults really applied (bit flips per forward, outputs changed), statistics recorded only
    when on, weights restored bit-exactly after ``remove()``."""
    model = copy.deepcopy(base)
    before = [p.detach().clone() for p in model.parameters()]
    flips = []
    with qfault.inject(model, qfault_spec(workload, stats)) as handle, grad_context(mode):
        handle.add_listener(lambda name, draw, old, new: flips.append(
            len(draw.bit_sites) if draw.bit_sites is not None else len(draw)))
        differs = differs_from(lambda: model(x), base(x), n_fwd)
        summary = handle.statistics().to_dict()["summary"]
    restored = all(torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    return (f"  check qfault {'on ' if stats else 'off'} {workload} b{x.shape[0]}: {sum(flips) / n_fwd:.1f} "
            f"bit flips/forward (expected {expected_flips(workload, x.shape[0], base):.0f}); "
            f"output differs in {differs}/{n_fwd}; statistics: {summary['total_injected']} faulted of "
            f"{summary['total_activations']} seen; weights restored: {restored}")


def check_plain(workload: str, base: nn.Module, x: torch.Tensor, mode: str, n_fwd: int = 5) -> str:
    model = copy.deepcopy(base)
    before = [p.detach().clone() for p in model.parameters()]
    injector = plain_injector(workload, model)
    with grad_context(mode):
        differs = differs_from(lambda: model(x), base(x), n_fwd)
    injector.remove()
    restored = all(torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    return (f"  check plain      {workload} b{x.shape[0]}: {injector.flips / n_fwd:.1f} bit flips/forward; "
            f"output differs in {differs}/{n_fwd}; weights restored: {restored}")


def budget(batch: int, quick: bool, reference: bool = False) -> dict:
    if reference:  # third-party steps cost up to ~100x a forward: fewer samples
        return {"rounds": 3 if quick else 7, "iters": 1 if batch >= 64 or quick else 4, "warmup": 1}
    if batch >= 64:
        rounds, iters = (4, 1) if quick else (15, 2)
    else:
        rounds, iters = (4, 10) if quick else (15, 40)
    return {"rounds": rounds, "iters": iters, "warmup": 2 if batch >= 64 else 20}


def bench(workload: str, batch: int, base: nn.Module, device, args) -> tuple[list, list[str]]:
    x = torch.randn(batch, 3, 32, 32, device=device)
    n_fwd = 3 if args.quick else 5
    checks = [check_qfault(workload, False, base, x, args.grad_mode, n_fwd),
              check_qfault(workload, True, base, x, args.grad_mode, n_fwd),
              check_plain(workload, base, x, args.grad_mode, n_fwd)]
    clean, off, on, plain = (copy.deepcopy(base) for _ in range(4))
    handles = [qfault.inject(off, qfault_spec(workload, False)), qfault.inject(on, qfault_spec(workload, True))]
    injector = plain_injector(workload, plain)
    with grad_context(args.grad_mode):
        s = time_interleaved({"clean": lambda: clean(x), "qfault off": lambda: off(x), "qfault on": lambda: on(x),
                              "plain": lambda: plain(x)}, device=device, **budget(batch, args.quick))
    for handle in handles:
        handle.remove()
    injector.remove()
    rows = []
    goal = GOALS.get(batch)
    c = median(s["clean"])
    for name in ("qfault off", "qfault on", "plain"):
        paired = paired_ratio(s[name], s["clean"])
        is_goal = name == "qfault on"
        rows.append([workload, str(batch), name, fmt_time(median(s[name])), f"{median(s[name]) / c:.3f}x",
                     f"{paired:.3f}x",
                     f"{paired_ratio(s['qfault on'], s['qfault off']):.3f}x" if is_goal else "",
                     f"<= {goal:.2f}x" if is_goal and goal else "", verdict(paired, goal) if is_goal else ""])
    rows.insert(0, [workload, str(batch), "clean", fmt_time(c), "1.000x", "1.000x", "", "", ""])
    if not args.no_others:
        rows += other_rows(workload, batch, base, x, device, args, checks)
    return rows, checks


def other_rows(workload: str, batch: int, base: nn.Module, x: torch.Tensor, device, args, checks: list[str]) -> list:
    fns, rows = {}, []
    with grad_context(args.grad_mode):
        clean_out = base(x)
        for name, make in OTHERS.items():
            if importlib.util.find_spec(name) is None:
                rows.append([workload, str(batch), name, "not installed", "", "", "", "", ""])
                continue
            try:
                fn = make(workload, base, x)
                n_fwd = 2 if args.quick else 3
                checks.append(f"  check {name:10s} {workload} b{batch}: output differs in "
                              f"{differs_from(fn, clean_out, n_fwd)}/{n_fwd}")
                fns[name] = fn
            except Exception as exc:  # API drift across versions: report, do not fail the benchmark
                rows.append([workload, str(batch), name, f"failed: {type(exc).__name__}: {exc}", "", "", "", "", ""])
        if not fns:
            return rows
        clean = copy.deepcopy(base)
        s = time_interleaved({"clean": lambda: clean(x), **fns}, device=device, **budget(batch, args.quick, True))
    c = median(s["clean"])
    rows.append([workload, str(batch), "clean*", fmt_time(c), "1.000x", "1.000x", "", "", ""])
    for name in fns:
        rows.append([workload, str(batch), name, fmt_time(median(s[name])), f"{median(s[name]) / c:.3f}x",
                     f"{paired_ratio(s[name], s['clean']):.3f}x", "", "", ""])
    return rows


def main() -> None:
    def extra(p):
        p.add_argument("--grad-mode", choices=("inference_mode", "no_grad"), default="inference_mode")
        p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma list of " + ", ".join(WORKLOADS))
        p.add_argument("--batches", default="64,1", help="comma list of batch sizes")
        p.add_argument("--no-others", action="store_true", help="skip the pytorchfi and mrfi rows")
    args = parse_args(__doc__.splitlines()[0], extra)
    device = torch.device(args.device)
    if device.type != "cpu":
        raise SystemExit("bench_statistics.py measures the CPU paths (numpy views of parameters): use --device cpu")
    base = make_model().to(device)
    workloads = args.workloads.split(",")
    for w in workloads:
        if w not in WORKLOADS:
            raise SystemExit(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
    print(machine_line(device))
    print(f"model: SmallResNet, {count_params(base):,} params; input 3x32x32; eval mode under {args.grad_mode}; "
          f"qfault {qfault.__version__} ({Path(qfault.__file__).parent}); {'quick' if args.quick else 'full'} run")
    t_start = time.perf_counter()
    rows, checks = [], []
    for workload in workloads:
        for batch in (int(b) for b in args.batches.split(",")):
            r, c = bench(workload, batch, base, device, args)
            rows += r
            checks += c
    print()
    print_table(["workload", "batch", "row", "per forward", "ratio", "paired", "on/off", "goal", "verdict"], rows)
    print("  ratio = median(row)/median(clean); paired = median of per-round ratios (the verdict uses it); "
          "on/off = paired qfault on / qfault off (the statistics alone);\n  pytorchfi and mrfi are timed "
          "against clean* (a second interleaved set, fewer rounds)")
    print("  workloads: " + "; ".join(f"{k} = {v}" for k, v in WORKLOADS.items()))
    print("\n".join(checks))
    print(f"\nload average at end {loadavg()}; total wall time {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
