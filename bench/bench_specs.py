"""Several specs vs one: an int8 weight campaign with per-tensor scales takes one InjectSpec per layer.

Workload: transient int8 weight bit flips, BER 1e-3, on the 13 Conv2d/Linear weights of the small
ResNet (eval under inference_mode or no_grad, faults redrawn every forward, track_statistics=False:
bench_statistics.py measures the statistics). Rows, timed in alternation with the clean model:
  1 spec       InjectSpec(BitFlip(ber=1e-3), site="weight", format="int8"): per-channel scales
               calibrated at injection, the 13 weights drawn and coded together
  13 specs     one spec per layer, names=(layer,), scale=<that weight's per-tensor scale,
               max|w|/127>: how a campaign with per-tensor scales is written today
  13 specs pc  the same 13 specs without scale= (per-channel scales): separates the cost of the
               number of specs from the scale granularity
  1 spec pt    one spec with granularity="per_tensor": the per-tensor campaign written as one spec
               (qfault versions that have the field)
  plain pc/pt  the plain injector of bench_statistics.py with per-channel / per-tensor scales:
               one draw over the 13 tensors either way (a reference)
Goal: 13 specs / 1 spec (paired) <= 1.2x at both batch sizes.

Usage: .venv/bin/python bench/bench_specs.py [--quick] [--batches 64,1] [--grad-mode no_grad]
"""

from __future__ import annotations

import copy
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
from bench_statistics import PlainWeightFaults, budget, differs_from, grad_context  # noqa: E402
from models import count_params, make_model, weight_layers  # noqa: E402
from qfault.formats import calibrate, get_format  # noqa: E402

BER = 1e-3
GOAL = 1.2
INT8 = get_format("int8")


def per_tensor_scale(weight: torch.Tensor) -> float:
    return float(calibrate(INT8, weight.detach(), None)[0])


def specs_for(kind: str, base: nn.Module) -> list[qfault.InjectSpec]:
    """``one``: a spec over every weight; ``13``: a spec per layer with its per-tensor scale; ``13pc``:
    a spec per layer, per-channel scales."""
    fault = qfault.BitFlip(ber=BER)
    if kind == "one":
        return [qfault.InjectSpec(fault=fault, site="weight", format="int8", track_statistics=False, seed=0)]
    if kind == "one_pt":  # one spec, one scale per tensor (qfault versions with InjectSpec.granularity)
        return [qfault.InjectSpec(fault=fault, site="weight", format="int8", granularity="per_tensor",
                                  track_statistics=False, seed=0)]
    return [qfault.InjectSpec(fault=fault, site="weight", names=(name,), format="int8",
                              scale=per_tensor_scale(m.weight) if kind == "13" else None,
                              track_statistics=False, seed=0)
            for name, m in weight_layers(base)]


def check(kind: str, base: nn.Module, x: torch.Tensor, mode: str, n_fwd: int = 5) -> str:
    """Faults applied (bit flips per forward, outputs changed), weights restored after ``remove()``,
    and the faulted codes are those of the intended scales (per tensor or per channel)."""
    model = copy.deepcopy(base)
    before = [p.detach().clone() for p in model.parameters()]
    weights = {name: m.weight.detach() for name, m in weight_layers(base)}
    per_tensor = kind in ("13", "one_pt")
    flips, codes = [], {"per tensor": [0, 0], "per channel": [0, 0]}

    def listener(site_name, draw, old, new):
        flips.append(len(draw.bit_sites) if draw.bit_sites is not None else len(draw))
        w = weights[site_name.rsplit(":", 1)[0]]
        index = torch.as_tensor(draw.index)
        values = w.reshape(-1)[index]
        per_channel = calibrate(INT8, w, 0)[0][index // (w.numel() // w.shape[0])]
        for key, scale in (("per tensor", per_tensor_scale(w)), ("per channel", per_channel)):
            expected = torch.round(values / scale).clamp(-128, 127).to(torch.int32)
            codes[key][0] += int((expected == torch.as_tensor(old).to(torch.int32)).sum())
            codes[key][1] += index.numel()

    with qfault.inject(model, specs_for(kind, base)) as handle, grad_context(mode):
        handle.add_listener(listener)
        differs = differs_from(lambda: model(x), base(x), n_fwd)
    restored = all(torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    n_weights = sum(w.numel() for w in weights.values())
    intended = "per tensor" if per_tensor else "per channel"
    other = "per channel" if per_tensor else "per tensor"
    return (f"  check {kind:4s} b{x.shape[0]}: {len(handle.specs)} specs, {handle.num_sites} sites; "
            f"{sum(flips) / n_fwd:.1f} bit flips/forward (expected {n_weights * 8 * BER:.0f}); output differs in "
            f"{differs}/{n_fwd}; clean codes of the faults match {intended} scales {codes[intended][0]}/"
            f"{codes[intended][1]} ({other}: {codes[other][0]}); weights restored: {restored}")


def check_plain(per_tensor: bool, base: nn.Module, x: torch.Tensor, mode: str, n_fwd: int = 5) -> str:
    model = copy.deepcopy(base)
    before = [p.detach().clone() for p in model.parameters()]
    injector = PlainWeightFaults(model, BER, "int8", per_tensor=per_tensor)
    with grad_context(mode):
        differs = differs_from(lambda: model(x), base(x), n_fwd)
    injector.remove()
    restored = all(torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    return (f"  check plain {'pt' if per_tensor else 'pc'} b{x.shape[0]}: {injector.flips / n_fwd:.1f} bit flips/"
            f"forward; output differs in {differs}/{n_fwd}; weights restored: {restored}")


ROWS = {"1 spec": "one", "13 specs": "13", "13 specs pc": "13pc"}
if "granularity" in qfault.InjectSpec.__dataclass_fields__:
    ROWS["1 spec pt"] = "one_pt"  # the per-tensor campaign as one spec


def bench(batch: int, base: nn.Module, device, args) -> tuple[list, list[str]]:
    x = torch.randn(batch, 3, 32, 32, device=device)
    n_fwd = 3 if args.quick else 5
    checks = [check(kind, base, x, args.grad_mode, n_fwd) for kind in ROWS.values()]
    checks += [check_plain(pt, base, x, args.grad_mode, n_fwd) for pt in (False, True)]
    models = {name: copy.deepcopy(base) for name in ["clean", *ROWS, "plain pc", "plain pt"]}
    handles = [qfault.inject(models[name], specs_for(kind, base)) for name, kind in ROWS.items()]
    injectors = [PlainWeightFaults(models["plain pc"], BER, "int8"),
                 PlainWeightFaults(models["plain pt"], BER, "int8", per_tensor=True)]
    with grad_context(args.grad_mode):
        s = time_interleaved({name: (lambda m=m: m(x)) for name, m in models.items()}, device=device,
                             **budget(batch, args.quick))
    for handle in handles:
        handle.remove()
    for injector in injectors:
        injector.remove()
    c = median(s["clean"])
    rows = []
    for name in models:
        vs_one = paired_ratio(s[name], s["1 spec"])
        is_goal = name == "13 specs"
        rows.append([name, str(batch), fmt_time(median(s[name])), f"{median(s[name]) / c:.3f}x",
                     f"{paired_ratio(s[name], s['clean']):.3f}x", "" if name == "clean" else f"{vs_one:.3f}x",
                     f"<= {GOAL:.2f}x" if is_goal else "", verdict(vs_one, GOAL) if is_goal else ""])
    return rows, checks


def main() -> None:
    def extra(p):
        p.add_argument("--grad-mode", choices=("inference_mode", "no_grad"), default="inference_mode")
        p.add_argument("--batches", default="64,1", help="comma list of batch sizes")
    args = parse_args(__doc__.splitlines()[0], extra)
    device = torch.device(args.device)
    if device.type != "cpu":
        raise SystemExit("bench_specs.py measures the CPU paths (numpy views of parameters): use --device cpu")
    base = make_model().to(device)
    print(machine_line(device))
    print(f"model: SmallResNet, {count_params(base):,} params, {len(weight_layers(base))} Conv2d/Linear weights; "
          f"input 3x32x32; eval mode under {args.grad_mode}; qfault {qfault.__version__} "
          f"({Path(qfault.__file__).parent}); {'quick' if args.quick else 'full'} run")
    t_start = time.perf_counter()
    rows, checks = [], []
    for batch in (int(b) for b in args.batches.split(",")):
        r, c = bench(batch, base, device, args)
        rows += r
        checks += c
    print()
    print_table(["row", "batch", "per forward", "ratio", "paired", "vs 1 spec", "goal", "verdict"], rows)
    print("  ratio = median(row)/median(clean); paired = median of per-round ratios to clean; "
          "vs 1 spec = paired ratio to the 1-spec row (the verdict uses it)")
    print("\n".join(checks))
    print(f"\nload average at end {loadavg()}; total wall time {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
