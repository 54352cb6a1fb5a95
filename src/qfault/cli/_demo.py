"""``qfault demo``: the main job on the embedded default (digits + a Brevitas CNN)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch

from .._errors import QFaultConfigError, check_range
from ..data import accuracy, load_demo_model, load_digits_split
from ..faults import BitFlip, RandomValue, derive_seed
from ..injection import InjectSpec, inject

MODEL_NAME = "digits_cnn"


def load_or_train(args, console, progress_enabled: bool):
    """The trained demo model, from the cache when a valid checkpoint is there."""
    with _progress(progress_enabled, console) as bar:
        task = bar.add_task("training", total=args.epochs)
        return load_demo_model(MODEL_NAME, epochs=args.epochs, cache=args.cache_dir, retrain=args.retrain,
                               log=console.print, progress=lambda: bar.advance(task))


class _NullProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *a, **k):
        return 0

    def advance(self, *a, **k):
        pass


def _progress(enabled: bool, console):
    if not enabled:
        return _NullProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=console, transient=True)


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def sweep(model, x, y, kind: str, rates: list[float], runs: int, seed: int, bar, task) -> list[dict]:
    """Accuracy under faults for each rate, ``runs`` independent fault draws each."""
    rows = []
    for rate in rates:
        accs = []
        for run in range(runs):
            run_seed = derive_seed(seed, kind, rate, run)
            if kind == "weight_bit_flip":
                spec = InjectSpec(fault=BitFlip(ber=rate), site="weight", persistence="permanent",
                                  seed=run_seed, track_statistics=False)
            else:
                spec = InjectSpec(fault=RandomValue(probability=rate), site="output", seed=run_seed,
                                  track_statistics=False)
            with inject(model, spec):
                accs.append(accuracy(model, x, y))
            bar.advance(task)
        mean, std = _mean_std(accs)
        rows.append({"rate": rate, "accuracies": accs, "mean_accuracy": mean, "std_accuracy": std})
    return rows


def run_demo(args) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if args.runs < 1:
        raise QFaultConfigError("runs", args.runs, "an integer >= 1")
    for ber in args.weight_ber:
        check_range("weight-ber", ber, 0.0, 1.0)
    for prob in args.act_prob:
        check_range("act-prob", prob, 0.0, 100.0)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    started = time.monotonic()
    data = load_digits_split()
    x_test, y_test = data[2], data[3]
    model, trained = load_or_train(args, console, not args.no_progress)
    baseline = accuracy(model, x_test, y_test)
    console.print(f"Baseline accuracy (no faults): {baseline:.2f}% on {len(y_test)} test images")

    total = args.runs * (len(args.weight_ber) + len(args.act_prob))
    with _progress(not args.no_progress, console) as bar:
        task = bar.add_task("fault sweeps", total=total)
        weight_rows = sweep(model, x_test, y_test, "weight_bit_flip", args.weight_ber, args.runs, args.seed, bar, task)
        act_rows = sweep(model, x_test, y_test, "activation_random_value", args.act_prob, args.runs, args.seed, bar, task)
    for row in weight_rows + act_rows:
        row["degradation"] = baseline - row["mean_accuracy"]

    table = Table(title=f"{MODEL_NAME} on digits: accuracy under faults (mean ± std over {args.runs} runs)")
    for col in ("Fault", "Rate", "Accuracy (%)", "Degradation (pp)"):
        table.add_column(col, justify="left" if col == "Fault" else "right")
    table.add_row("none (baseline)", "-", f"{baseline:.2f}", "0.00")
    for label, unit, rows in (("weight bit flip", "BER", weight_rows),
                              ("activation random value", "%", act_rows)):
        for row in rows:
            rate = f"{row['rate']:.0e}" if unit == "BER" else f"{row['rate']:g}%"
            table.add_row(label, rate, f"{row['mean_accuracy']:.2f} ± {row['std_accuracy']:.2f}",
                          f"{row['degradation']:+.2f}")
    console.print(table)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "model": MODEL_NAME, "dataset": "sklearn digits (8x8), 25% test split", "test_images": len(y_test),
        "weight_bits": 8, "act_bits": 8, "seed": args.seed, "num_runs": args.runs, "std": "population (divide by N)",
        "baseline_accuracy": baseline, "trained_now": trained,
        "sweeps": {
            "weight_bit_flip": {"fault": "bit_flip", "site": "weight (integer codes)", "rate_unit": "BER (fraction)",
                                "persistence": "permanent per run", "results": weight_rows},
            "activation_random_value": {"fault": "random_value", "site": "QuantReLU/QuantIdentity outputs",
                                        "rate_unit": "probability (percent)", "persistence": "transient",
                                        "results": act_rows},
        },
        "elapsed_s": round(time.monotonic() - started, 2),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    written = [out / "results.json"]
    if not args.no_plot:
        written.append(plot_results(results, out / "accuracy_vs_rate.png"))
    console.print("Wrote " + ", ".join(str(p) for p in written))
    return 0


def plot_results(results: dict, path: Path) -> Path:
    """Accuracy vs rate with ±std bands, one panel per sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = (("weight_bit_flip", "weight bit error rate", True),
              ("activation_random_value", "activation fault probability (%)", False))
    for ax, (key, xlabel, log) in zip(axes, panels):
        rows = results["sweeps"][key]["results"]
        xs = [r["rate"] for r in rows]
        means = [r["mean_accuracy"] for r in rows]
        stds = [r["std_accuracy"] for r in rows]
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label="faulty")
        ax.axhline(results["baseline_accuracy"], color="gray", linestyle="--", label="baseline")
        if log and all(x > 0 for x in xs):
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower left")
    fig.suptitle(f"{results['model']} on digits, mean ± std over {results['num_runs']} runs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
