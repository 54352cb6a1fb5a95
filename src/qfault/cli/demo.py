"""``qfault demo``: the shipped demo campaigns (digits + an 8-bit Brevitas CNN) end to end.

The demo is two campaign templates, ``configs/demo_weight_ber.yaml`` (permanent bit flips in
the weight codes, swept over the bit error rate) and ``configs/demo_act_prob.yaml`` (random
values in the activations, swept over the fault probability), run by
:func:`qfault.campaign.run_campaign` with the demo's flags as ``key=value`` overrides. Their
stores (with the resolved specs, for ``qfault campaign report``), a table, ``results.json`` and
``accuracy_vs_rate.png`` go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


@dataclass(frozen=True)
class DemoSweep:
    """One demo campaign: its template, the swept path and flag, and how results.json names it."""

    key: str  # in results.json["sweeps"]
    template: str
    path: str  # the sweep path in the template
    flag: str  # the demo flag that sets the path
    label: str  # the table's "Fault" column
    rate_format: str  # of a rate in the table
    xlabel: str
    log_x: bool
    info: dict  # descriptive fields of results.json


SWEEPS = (
    DemoSweep("weight_bit_flip", "demo_weight_ber.yaml", "fault.ber", "--weight-ber", "weight bit flip", "{:.0e}",
              "weight bit error rate", True,
              {"fault": "bit_flip", "site": "weight (integer codes)", "rate_unit": "BER (fraction)",
               "persistence": "permanent per run"}),
    DemoSweep("activation_random_value", "demo_act_prob.yaml", "fault.probability", "--act-prob",
              "activation random value", "{:g}%", "activation fault probability (%)", False,
              {"fault": "random_value", "site": "QuantReLU/QuantIdentity outputs", "rate_unit": "probability (percent)",
               "persistence": "transient"}),
)


class Demo:
    name = "demo"
    help = "train (or load) a quantized CNN on the bundled digits data and sweep faults"
    description = ("Train or load a cached 8-bit Brevitas CNN on scikit-learn's digits, then run the demo "
                   "campaigns (templates demo_weight_ber.yaml and demo_act_prob.yaml: weight bit error rate "
                   "and activation fault probability, 5 runs each) through the campaign engine; print a "
                   "table and write results.json, accuracy_vs_rate.png and the campaign stores to --out.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", default="demo-results", help="output folder (default: %(default)s)")
        parser.add_argument("--runs", type=int, default=None,
                            help="repetitions per rate (override repetitions; template: 5)")
        parser.add_argument("--seed", type=int, default=None,
                            help="campaign seed; trial seeds derive from it (override seed; template: 0)")
        parser.add_argument("--weight-ber", type=_float_list, default=None,
                            help="comma-separated weight bit error rates, fractions in [0, 1] "
                                 "(override sweep.fault.ber; template: 1e-4,1e-3,3e-3,1e-2,3e-2,1e-1)")
        parser.add_argument("--act-prob", type=_float_list, default=None,
                            help="comma-separated activation fault probabilities, percent in [0, 100] "
                                 "(override sweep.fault.probability; template: 0.1,0.5,1,2,5,10)")
        parser.add_argument("--retrain", action="store_true", help="ignore the cached model and train again")
        parser.add_argument("--epochs", type=int, default=None,
                            help="training epochs (override model.kwargs.epochs; default: 15)")
        parser.add_argument("--cache-dir", default=None,
                            help="where the trained model is cached (default: $QFAULT_CACHE or ~/.cache/qfault)")
        parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
        parser.add_argument("--no-plot", action="store_true", help="skip the PNG plot")

    def run(self, args: argparse.Namespace) -> int:
        return run_demo(args)


def overrides(args: argparse.Namespace, sweep: DemoSweep) -> list[str]:
    """The ``key=value`` overrides of the demo's flags for one template."""
    out = []
    if args.runs is not None:
        out.append(f"repetitions={args.runs}")
    if args.seed is not None:
        out.append(f"seed={args.seed}")
    if args.epochs is not None:
        out.append(f"model.kwargs.epochs={args.epochs}")
    rates = args.weight_ber if sweep.flag == "--weight-ber" else args.act_prob
    if rates is not None:
        out.append(f"sweep.{sweep.path}=[{', '.join(repr(float(r)) for r in rates)}]")
    return out


def _as_flag(error, sweep: DemoSweep):
    """A spec error named after the demo flag that set the field (``repetitions`` -> ``--runs``)."""
    from .._errors import QFaultConfigError

    flags = {"repetitions": "--runs", "seed": "--seed", "model.kwargs.epochs": "--epochs",
             f"sweep.{sweep.path}": sweep.flag}
    if error.field in flags:
        return QFaultConfigError(flags[error.field], error.value, error.allowed, hint=error.hint)
    return QFaultConfigError(f"{sweep.template}: {error.field}", error.value, error.allowed, hint=error.hint)


def build_specs(args: argparse.Namespace, out: Path) -> list:
    """The demo's campaign specs (stores in ``out``); every bad flag is reported at once."""
    from .._errors import QFaultConfigError, check_range
    from ..campaign import CampaignSpec
    from ..config import ConfigErrors, load_config
    from ._templates import template_path

    errors = ConfigErrors()
    if args.epochs is not None:
        with errors.collect():
            check_range("--epochs", args.epochs, 1, 10**6, integer=True)
    specs = []
    for sweep in SWEEPS:
        try:
            with template_path(sweep.template) as path:
                data = load_config(path, overrides(args, sweep), what="spec", dotted_keys=("sweep",))
            data["store"] = str(out / f"{data.get('name', sweep.key)}.qfault.db")
            specs.append(CampaignSpec.from_dict(data))
        except QFaultConfigError as exc:
            for error in exc.errors if isinstance(exc, ConfigErrors) else [exc]:
                errors.append(_as_flag(error, sweep))
    errors.raise_if_any()
    return specs


def _remove_store(path: Path) -> None:
    """A demo run starts afresh (the model may have been retrained since the last one)."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def _write_spec(spec, out: Path) -> Path:
    """The resolved spec beside its store, for ``qfault campaign status|report <out>/<name>.yaml``."""
    import yaml

    data = spec.to_dict()
    data["store"] = spec.store_path().name  # relative to the spec file
    path = out / f"{spec.name}.yaml"
    path.write_text(f"# {spec.name}: the demo's campaign as it ran (qfault demo); "
                    f"qfault campaign report {path}\n" + yaml.safe_dump(data, sort_keys=False))
    return path


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def run_demo(args: argparse.Namespace) -> int:
    import os

    import torch
    from rich.console import Console

    from ..campaign import CampaignStore, run_campaign
    from ..data import load_demo_model

    console = Console()
    out = Path(args.out)
    specs = build_specs(args, out)  # every bad flag before any work
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    started = time.monotonic()
    source = specs[0].model
    if any(spec.model != source for spec in specs):  # pragma: no cover - the shipped templates agree
        raise ValueError("the demo templates must use the same model")
    with _progress(not args.no_progress, console) as bar:
        task = bar.add_task("training", total=source.kwargs.get("epochs"))  # None: the model's default
        model, trained = load_demo_model(source.name, epochs=source.kwargs.get("epochs"), cache=args.cache_dir,
                                         retrain=args.retrain, log=console.print, progress=lambda: bar.advance(task))
    out.mkdir(parents=True, exist_ok=True)
    sweeps: dict[str, Any] = {}
    baseline = images = None
    for sweep, spec in zip(SWEEPS, specs):
        _remove_store(spec.store_path())
        result = run_campaign(spec, progress=not args.no_progress, log=console.print, model=model)
        if baseline is None:
            baseline = result.golden_accuracy
            images = result.points[0].counts["images"] // result.points[0].trials
            console.print(f"Baseline accuracy (no faults): {baseline:.2f}% on {images} test images")
        with CampaignStore(spec.store_path(), spec, create=False) as store:
            accuracies: dict[int, list[float]] = {}
            for row in store.trials():
                accuracies.setdefault(row.point, []).append(row.accuracy)
        rows = []
        for point in result.points:
            accs = accuracies[point.point]
            mean, std = _mean_std(accs)
            rows.append({"rate": point.values[sweep.path], "accuracies": accs, "mean_accuracy": mean,
                         "std_accuracy": std, "degradation": baseline - mean})
        spec_file = _write_spec(spec, out)
        sweeps[sweep.key] = {**sweep.info, "template": sweep.template, "spec": str(spec_file),
                             "store": str(spec.store_path()), "fingerprint": spec.fingerprint(),
                             "golden_accuracy": result.golden_accuracy, "results": rows}
    runs = specs[0].repetitions
    console.print(_table(sweeps, baseline, runs, source.name))
    results = {
        "model": source.name, "dataset": "sklearn digits (8x8), 25% test split", "test_images": images,
        "weight_bits": 8, "act_bits": 8, "seed": specs[0].seed, "num_runs": runs, "std": "population (divide by N)",
        "baseline_accuracy": baseline, "trained_now": trained,
        "sweeps": sweeps,
        "elapsed_s": round(time.monotonic() - started, 2),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    written = [out / "results.json"]
    if not args.no_plot:
        written.append(plot_results(results, out / "accuracy_vs_rate.png"))
    console.print("Wrote " + ", ".join(str(p) for p in written))
    return 0


def _table(sweeps: dict, baseline: float, runs: int, model: str):
    from rich.table import Table

    table = Table(title=f"{model} on digits: accuracy under faults (mean ± std over {runs} runs)")
    for col in ("Fault", "Rate", "Accuracy (%)", "Degradation (pp)"):
        table.add_column(col, justify="left" if col == "Fault" else "right")
    table.add_row("none (baseline)", "-", f"{baseline:.2f}", "0.00")
    for sweep in SWEEPS:
        for row in sweeps[sweep.key]["results"]:
            table.add_row(sweep.label, sweep.rate_format.format(row["rate"]),
                          f"{row['mean_accuracy']:.2f} ± {row['std_accuracy']:.2f}", f"{row['degradation']:+.2f}")
    return table


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


def plot_results(results: dict, path: Path) -> Path:
    """Accuracy vs rate with ±std bands, one panel per sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SWEEPS), figsize=(5 * len(SWEEPS), 4))
    for ax, sweep in zip(axes, SWEEPS):
        rows = results["sweeps"][sweep.key]["results"]
        xs = [r["rate"] for r in rows]
        ax.errorbar(xs, [r["mean_accuracy"] for r in rows], yerr=[r["std_accuracy"] for r in rows],
                    marker="o", capsize=3, label="faulty")
        ax.axhline(results["baseline_accuracy"], color="gray", linestyle="--", label="baseline")
        if sweep.log_x and all(x > 0 for x in xs):
            ax.set_xscale("log")
        ax.set_xlabel(sweep.xlabel)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower left")
    fig.suptitle(f"{results['model']} on digits, mean ± std over {results['num_runs']} runs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
