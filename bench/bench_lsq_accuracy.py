"""Accuracy under BER weight faults of the mixed-precision LSQ demo model, clean-trained vs
fault-aware trained (seed 004's FaultInjector workflow, on the embedded digits data).

Model: ``digits_lsq`` (four 3x3 convs + a linear classifier, LSQ layers; first conv and classifier
8-bit, inner convs 6/4/2 weight bits from the shipped search JSON), trained with QAT by the demo
recipe (Adam, lr 0.005, 20 epochs, seed 0, 1 torch thread). Faults: ``compat.rfq.FaultInjector``
in ``"ber"`` mode, every bit of every weight code flips with probability BER; biases and
activations are untouched. Each BER is evaluated with ``--seeds`` fault seeds; a seed's fault
positions depend only on the seed and the layer (the same on every model), and those of a lower
BER are a subset of those of a higher one. After every ``disable()`` the fault-free logits must
come back bit for bit.

Fault-aware training (FAT): the injector with ``seed=None`` (a new fault pattern on every
training step), ``enable_in_training=True, enable_in_inference=False``, around
``train_classifier``: by default a fresh model trained for 20 epochs at lr 0.002 with faults at
BER 3e-3 (``--fat-from clean`` fine-tunes a copy of the clean model instead). The unseeded
injector derives all its training faults from one number it draws from torch's global generator
at ``enable()``; FAT run ``r`` calls ``torch.manual_seed(r)`` right before ``enable()``, so run
``r`` is the same model in every invocation (training itself always uses seed 0: runs differ only
in their training faults). Which fault stream a model meets changes its robustness a lot, so the
script trains ``--fat-runs`` (5) runs, r = 0, 1, ..., and pools their evaluations (runs x seeds);
``--repeat-check`` (default on) trains run 0 a second time and requires bit-identical
parameters. Where the FAT procedure differs from the clean recipe (fine-tuning, other epochs or
lr) the script also runs it with the injector off ("control", deterministic): FAT - control is
what the faults in training add, FAT - clean mixes that with the effect of the recipe.

Learned steps: the LSQ layers compute with ``max(|s|, 1e-8)``; the JSON keeps both the learned
``s`` and that effective step per quantizer, and the printout names every negative learned ``s``.

Output: a table on stdout, ``lsq_accuracy.json`` and ``lsq_accuracy.png`` (log-x BER vs
accuracy, mean and sample std) in ``--out``; ``--replot JSON`` redraws a saved run's figure.

Usage: .venv/bin/python bench/bench_lsq_accuracy.py [--quick] [--out DIR] [--seeds N]
       [--fat-ber P] [--fat-epochs N] [--fat-lr LR] [--fat-from scratch|clean] [--fat-runs N]
       [--no-repeat-check]
       .venv/bin/python bench/bench_lsq_accuracy.py --replot bench/out/lsq_accuracy/lsq_accuracy.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import loadavg, machine_line, parse_args, print_table  # noqa: E402
from qfault.compat.rfq import FaultInjector  # noqa: E402
from qfault.data import accuracy, build_model, load_digits_split, train_classifier  # noqa: E402
from qfault.layers import lsq_layers  # noqa: E402

MODEL = "digits_lsq"
BERS = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
CLEAN_RECIPE = {"epochs": 20, "lr": 0.005, "seed": 0}  # the demo recipe of digits_lsq
COLLAPSED_BELOW = 50.0  # fault-free accuracy (%) under which a FAT run counts as collapsed
DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "lsq_accuracy"


def extra_args(parser) -> None:
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--seeds", type=int, default=None, help="fault seeds per BER (default 10, 3 with --quick)")
    parser.add_argument("--fat-ber", type=float, default=3e-3, help="BER of the faults during FAT (default 3e-3)")
    parser.add_argument("--fat-epochs", type=int, default=CLEAN_RECIPE["epochs"],
                        help=f"FAT epochs (default {CLEAN_RECIPE['epochs']})")
    parser.add_argument("--fat-lr", type=float, default=0.002, help="FAT learning rate (default 0.002)")
    parser.add_argument("--fat-from", choices=("scratch", "clean"), default="scratch",
                        help="train a fresh model with FAT (default) or fine-tune the clean one")
    parser.add_argument("--replot", type=Path, default=None, metavar="JSON",
                        help="only redraw the figure of a saved lsq_accuracy.json (next to it)")
    parser.add_argument("--fat-runs", type=int, default=None,
                        help="FAT trainings, fault-stream seeds 0..N-1 (default 5, 1 with --quick)")
    parser.add_argument("--repeat-check", action=argparse.BooleanOptionalAction, default=True,
                        help="train FAT run 0 twice and require bit-identical parameters (default on)")


@contextmanager
def torch_threads(n: int):
    """The demo recipe trains on one thread (run to run identical results on the CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model(x)


def ber_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seeds: int) -> tuple[dict[float, list[float]], int]:
    """Accuracy (%) per BER per fault seed, and the number of exact-restore checks made.

    Raises:
        AssertionError: the model's logits differ from the clean ones after ``disable()``.
    """
    clean = logits_of(model, x)
    curve: dict[float, list[float]] = {}
    checks = 0
    for ber in BERS:
        accs = []
        for seed in range(seeds):
            injector = FaultInjector(model, mode="ber", ber=ber, seed=seed, enable_in_training=False)
            injector.enable()
            accs.append(accuracy(model, x, y))
            injector.disable()
            if not torch.equal(logits_of(model, x), clean):
                raise AssertionError(f"logits differ from the clean run after disable() (BER {ber:g}, seed {seed})")
            checks += 1
        curve[ber] = accs
    return curve, checks


def lsq_steps(model: nn.Module) -> list[dict]:
    """Per LSQ layer: bit widths, the learned weight/activation ``s`` and the effective steps
    (``get_scale``: ``max(|s|, 1e-8)``, what the forward uses), and the largest |weight code|.

    A flip of bit ``j`` of a weight code moves that weight by ``2**j * step``: the step sets how
    large a high-bit flip is against the weights in use.
    """
    rows = []
    for name, layer in lsq_layers(model):
        widths = layer.bit_widths()
        if widths is None:
            continue
        w_bits, a_bits = widths
        w_step = float(layer.quan_w_fn.get_scale(w_bits))
        low, high = layer.quan_w_fn.thresholds(w_bits)
        codes = torch.clamp(layer.weight.detach() / w_step, low, high).round()
        rows.append({"layer": name, "weight_bits": w_bits, "act_bits": a_bits, "weight_step": w_step,
                     "act_step": float(layer.quan_a_fn.get_scale(a_bits)),
                     "weight_s": float(layer.quan_w_fn.s.detach()[w_bits - 1].reshape(-1)[0]),
                     "act_s": float(layer.quan_a_fn.s.detach()[a_bits - 1].reshape(-1)[0]),
                     "max_abs_code": int(codes.abs().max())})
    return rows


def negative_steps(steps: list[dict]) -> list[str]:
    """Quantizers whose learned ``s`` is negative (the forward uses ``|s|``): ``"<layer>.w"`` /
    ``"<layer>.a"``."""
    return [f"{row['layer']}.{kind[0]}" for row in steps for kind in ("weight", "act") if row[f"{kind}_s"] < 0]


def step_line(steps: list[dict]) -> str:
    """The effective weight steps, and any negative learned ``s``."""
    line = " ".join(f"{row['layer']}:{row['weight_bits']}b {row['weight_step']:.4f}" for row in steps)
    negative = [f"{row['layer']}.{kind[0]} {row[f'{kind}_s']:+.4f}" for row in steps for kind in ("weight", "act")
                if row[f"{kind}_s"] < 0]
    return line + (f"; negative learned s (forward uses |s|): {', '.join(negative)}" if negative else "")


def train_fat(clean_model: nn.Module, x: torch.Tensor, y: torch.Tensor, args, device: torch.device,
              run: int | None = None) -> tuple[nn.Module, list[float]]:
    """FAT run ``run`` (its training faults come from ``torch.manual_seed(run)``); ``run=None``
    runs the same procedure with the injector off (control)."""
    if args.fat_from == "clean":
        model = copy.deepcopy(clean_model)
    else:
        model = build_model(MODEL, seed=CLEAN_RECIPE["seed"]).to(device)
    injector = None
    if run is not None:
        injector = FaultInjector(model, mode="ber", ber=args.fat_ber, seed=None, enable_in_training=True,
                                 enable_in_inference=False)
        torch.manual_seed(run)  # enable() draws the number all training faults derive from
        injector.enable()
    try:
        with torch_threads(1):
            losses = train_classifier(model, x, y, epochs=args.fat_epochs, lr=args.fat_lr, seed=CLEAN_RECIPE["seed"])
    finally:
        if injector is not None:
            injector.disable()
    return model, losses


def repeats(a: nn.Module, b: nn.Module) -> bool:
    """Whether two models have bit-identical parameters and buffers."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def needs_control(args) -> bool:
    """Whether the FAT procedure without faults differs from the clean model."""
    return not (args.fat_from == "scratch" and args.fat_epochs == CLEAN_RECIPE["epochs"]
                and args.fat_lr == CLEAN_RECIPE["lr"])


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(curve: dict[float, list[float]]) -> dict[str, dict[str, float]]:
    out = {}
    for ber, accs in curve.items():
        m, s = mean_std(accs)
        out[f"{ber:g}"] = {"mean": m, "std": s, "min": min(accs), "max": max(accs), "n": len(accs)}
    return out


def plot(path: Path, curves: list[tuple[str, str, dict, float]], fat_runs: list[dict]) -> None:
    """``curves``: ``(label, color, summary, fault-free accuracy)``; the last one is FAT, drawn
    with its runs' means as thin lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for i, (label, color, summary, base) in enumerate(curves):
        shift = 1.08 ** (i - (len(curves) - 1) / 2)  # side by side on the log axis: error bars stay apart
        means = [summary[f"{b:g}"]["mean"] for b in BERS]
        stds = [summary[f"{b:g}"]["std"] for b in BERS]
        ax.errorbar([b * shift for b in BERS], means, yerr=stds, marker="o", ms=4, capsize=3, color=color,
                    label=f"{label} (fault-free {base:.2f} %)")
    if len(fat_runs) > 1:
        for run in fat_runs:
            ax.plot([b * shift for b in BERS], [run[f"{b:g}"]["mean"] for b in BERS], color=curves[-1][1],
                    alpha=0.25, lw=0.8)
    ax.axhline(10.0, color="grey", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_ylim(0, 102)
    ax.set_xlabel("bit error rate (per weight-code bit)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("digits_lsq (8/6/4/2/8-bit LSQ weights): accuracy vs BER")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def procedure_of(setup: dict) -> str:
    start = "fine-tuned" if setup["from"] == "clean" else "from scratch"
    return f"{start} {setup['epochs']} ep, lr {setup['lr']:g}"


def plot_report(report: dict, path: Path) -> None:
    """The figure of a report (as written to ``lsq_accuracy.json``)."""
    recipe, setup = report["clean"]["recipe"], report["fat"]["setup"]
    curves = [(f"clean QAT (lr {recipe['lr']:g}, {recipe['epochs']} ep)", "tab:blue", report["clean"]["summary"],
               report["clean"]["fault_free_accuracy"])]
    control = report["control"]
    if "summary" in control:
        curves.append((f"control: {procedure_of(setup)}, no faults", "tab:green", control["summary"],
                       control["fault_free_accuracy"]))
    runs = len(report["fat"]["runs"])
    curves.append((f"FAT BER {setup['ber']:g}, {procedure_of(setup)}, {runs} run{'s' if runs > 1 else ''}",
                   "tab:red", report["fat"]["summary"], report["fat"]["fault_free_accuracy"]["mean"]))
    plot(path, curves, [run["summary"] for run in report["fat"]["runs"]])


def cell(summary: dict, ber: float) -> str:
    entry = summary[f"{ber:g}"]
    return f"{entry['mean']:.2f} ± {entry['std']:.2f}"


def main() -> None:
    args = parse_args(__doc__, extra_args)
    if args.replot is not None:
        png_path = args.replot.with_suffix(".png")
        plot_report(json.loads(args.replot.read_text()), png_path)
        print(f"wrote {png_path}")
        return
    seeds = args.seeds or (3 if args.quick else 10)
    fat_runs = args.fat_runs or (1 if args.quick else 5)
    device = torch.device(args.device)
    machine = machine_line(device)
    print(machine)
    started = time.perf_counter()
    x_train, y_train, x_test, y_test = (t.to(device) for t in load_digits_split())

    model = build_model(MODEL, seed=CLEAN_RECIPE["seed"]).to(device)
    t0 = time.perf_counter()
    with torch_threads(1):
        clean_losses = train_classifier(model, x_train, y_train, epochs=CLEAN_RECIPE["epochs"],
                                        lr=CLEAN_RECIPE["lr"], seed=CLEAN_RECIPE["seed"])
    clean_train_s = time.perf_counter() - t0
    baseline = accuracy(model, x_test, y_test)
    clean_steps = lsq_steps(model)
    print(f"clean QAT: {CLEAN_RECIPE['epochs']} epochs in {clean_train_s:.1f} s, final loss {clean_losses[-1]:.4f}, "
          f"fault-free accuracy {baseline:.2f} %; weight steps {step_line(clean_steps)}")
    clean_curve, checks = ber_curve(model, x_test, y_test, seeds)
    clean_summary = summarise(clean_curve)

    procedure = procedure_of({"from": args.fat_from, "epochs": args.fat_epochs, "lr": args.fat_lr})
    control = None
    if needs_control(args):
        t0 = time.perf_counter()
        control_model, losses = train_fat(model, x_train, y_train, args, device)
        train_s = time.perf_counter() - t0
        control_acc = accuracy(control_model, x_test, y_test)
        curve, control_checks = ber_curve(control_model, x_test, y_test, seeds)
        checks += control_checks
        steps = lsq_steps(control_model)
        control = {"train_s": train_s, "losses": losses, "fault_free_accuracy": control_acc,
                   "lsq_steps": steps, "negative_steps": negative_steps(steps),
                   "accuracy": {f"{b:g}": a for b, a in curve.items()}, "summary": summarise(curve)}
        print(f"control ({procedure}, no faults): {train_s:.1f} s, loss {losses[-1]:.4f}, fault-free accuracy "
              f"{control_acc:.2f} %; weight steps {step_line(steps)}")

    runs = []
    repeat_check = None
    for run in range(fat_runs):
        t0 = time.perf_counter()
        fat_model, losses = train_fat(model, x_train, y_train, args, device, run=run)
        train_s = time.perf_counter() - t0
        fat_acc = accuracy(fat_model, x_test, y_test)
        curve, run_checks = ber_curve(fat_model, x_test, y_test, seeds)
        checks += run_checks
        collapsed = fat_acc < COLLAPSED_BELOW
        steps = lsq_steps(fat_model)
        if run == 0 and args.repeat_check:
            again, again_losses = train_fat(model, x_train, y_train, args, device, run=run)
            repeat_check = repeats(fat_model, again) and again_losses == losses
            if not repeat_check:
                raise AssertionError("FAT run 0 trained twice gave different models (training faults not repeatable)")
            print("FAT run 0 trained twice: bit-identical parameters and losses")
        runs.append({"run": run, "fault_stream_seed": run, "train_s": train_s, "losses": losses,
                     "fault_free_accuracy": fat_acc, "collapsed": collapsed, "lsq_steps": steps,
                     "negative_steps": negative_steps(steps),
                     "accuracy": {f"{b:g}": a for b, a in curve.items()}, "summary": summarise(curve)})
        note = "  COLLAPSED (kept in the pooled numbers)" if collapsed else ""
        print(f"FAT run {run}: {train_s:.1f} s, loss {losses[0]:.3f} -> {losses[-1]:.3f}, fault-free accuracy "
              f"{fat_acc:.2f} %; weight steps {step_line(steps)}{note}")

    fat_summary = summarise({b: [a for r in runs for a in r["accuracy"][f"{b:g}"]] for b in BERS})
    fat_baseline, fat_baseline_std = mean_std([r["fault_free_accuracy"] for r in runs])
    reference = control["summary"] if control else clean_summary

    header = ["BER", "clean QAT"] + (["control"] if control else []) + ["FAT", "FAT - clean"] + (
        ["FAT - control"] if control else []) + ["FAT run means"]
    free = [f"{fat_baseline:.2f} ± {fat_baseline_std:.2f}" if fat_runs > 1 else f"{fat_baseline:.2f}",
            f"{fat_baseline - baseline:+.2f}"]
    rows = [["0 (fault-free)", f"{baseline:.2f}"] + ([f"{control['fault_free_accuracy']:.2f}"] if control else [])
            + free + ([f"{fat_baseline - control['fault_free_accuracy']:+.2f}"] if control else [])
            + [" / ".join(f"{r['fault_free_accuracy']:.1f}" for r in runs)]]
    for ber in BERS:
        key = f"{ber:g}"
        fat_mean = fat_summary[key]["mean"]
        rows.append([key, cell(clean_summary, ber)] + ([cell(control["summary"], ber)] if control else [])
                    + [cell(fat_summary, ber), f"{fat_mean - clean_summary[key]['mean']:+.2f}"]
                    + ([f"{fat_mean - reference[key]['mean']:+.2f}"] if control else [])
                    + [" / ".join(f"{r['summary'][key]['mean']:.1f}" for r in runs)])
    print()
    pooled = f"{fat_runs} runs x {seeds} seeds" if fat_runs > 1 else f"{seeds} seeds, one run"
    print(f"accuracy (%) on {len(y_test)} test images, mean ± sample std over {seeds} fault seeds "
          f"(FAT: {pooled}); FAT: BER {args.fat_ber:g}, {procedure}"
          + ("; control: the same procedure without faults" if control else "; same recipe as clean QAT"))
    print_table(header, rows)
    print(f"exact restore after disable(): {checks} of {checks} checks (logits bit-identical)")
    collapsed = [r["run"] for r in runs if r["collapsed"]]
    if collapsed:
        print(f"WARNING: FAT runs {collapsed} collapsed (fault-free accuracy < {COLLAPSED_BELOW:g} %)")

    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "lsq_accuracy", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine, "load_average_end": loadavg(), "command": " ".join(sys.argv),
        "model": MODEL, "test_images": len(y_test), "bers": BERS, "fault_seeds": list(range(seeds)),
        "clean": {"recipe": {**CLEAN_RECIPE, "threads": 1}, "train_s": clean_train_s, "losses": clean_losses,
                  "fault_free_accuracy": baseline, "lsq_steps": clean_steps,
                  "negative_steps": negative_steps(clean_steps),
                  "accuracy": {f"{b:g}": a for b, a in clean_curve.items()}, "summary": clean_summary},
        "control": control if control else {"same_as": "clean"},
        "fat": {"setup": {"ber": args.fat_ber, "epochs": args.fat_epochs, "lr": args.fat_lr, "from": args.fat_from,
                          "seed": None, "fault_stream": "torch.manual_seed(run) before enable()",
                          "train_seed": CLEAN_RECIPE["seed"], "enable_in_training": True,
                          "enable_in_inference": False, "threads": 1, "runs": fat_runs},
                "repeat_check": repeat_check,
                "fault_free_accuracy": {"mean": fat_baseline, "std": fat_baseline_std},
                "summary": fat_summary, "runs": runs},
        "restore_checks": checks, "elapsed_s": time.perf_counter() - started,
    }
    json_path, png_path = args.out / "lsq_accuracy.json", args.out / "lsq_accuracy.png"
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    plot_report(report, png_path)
    print(f"wrote {json_path} and {png_path} ({report['elapsed_s']:.0f} s in all); load average at end {loadavg()}")


if __name__ == "__main__":
    main()
