"""``qfault evaluate --config FILE --checkpoint FILE [...]``: fault resilience of a trained model (seed 001).

The seed's ``evaluate.py`` with the same flags and output, run through the campaign engine: the
baseline is the campaign's golden run, every probability a sweep point, every run a trial (so an
interrupted evaluation resumes, and results carry confidence intervals). Prints the device, data
set, model, checkpoint accuracy, injection configuration, baseline, fault accuracy and
degradation, the per-layer statistics table (single probability) and the sweep summary (mean ±
std over runs); writes the JSON in the seed's schema (``--output``, default
``<checkpoint folder>/fault_eval_<injection_type>.json``) and the campaign report (plots, CSV)
beside it.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

_TYPES = ("random", "lsb_flip", "msb_flip", "full_flip")


class Evaluate:
    name = "evaluate"
    help = "fault resilience of a trained Brevitas model: one probability or a sweep, repeated runs"
    description = ("Evaluate a checkpoint under activation faults as seed 001's evaluate.py does (--probability, "
                   "--injection-type, --mode, --sweep 0,1,5, --num-runs N, --output FILE), through the campaign "
                   "engine: a crash resumes, every probability gets mean, std and a 95% interval, and the "
                   "campaign report (accuracy vs probability with bands) is written beside the JSON.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", required=True, help="the config the model was trained with (YAML)")
        parser.add_argument("--checkpoint", required=True, help="the checkpoint (model_state_dict or a raw state dict)")
        parser.add_argument("--probability", type=float, default=None, help="fault probability in percent (0-100)")
        parser.add_argument("--injection-type", choices=_TYPES, default=None, help="override the injection type")
        parser.add_argument("--mode", choices=("full_model", "layer"), default=None, help="override the mode")
        parser.add_argument("--sweep", default=None, help="comma-separated probabilities, e.g. 0,1,5,10")
        parser.add_argument("--num-runs", type=int, default=1, help="runs per probability (default 1)")
        parser.add_argument("--output", default=None, help="JSON results file")
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")
        parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config fields")

    def run(self, args: argparse.Namespace) -> int:
        from .._errors import QFaultConfigError
        from ..train import FatConfig

        config = FatConfig.from_yaml(args.config, args.overrides)
        probabilities = _probabilities(args, config)
        if args.num_runs < 1:
            raise QFaultConfigError("--num-runs", args.num_runs, "an integer >= 1")
        checkpoint = Path(args.checkpoint)
        if not checkpoint.is_file():
            raise QFaultConfigError("--checkpoint", str(checkpoint), "an existing checkpoint file")
        fi = config.fault_injection
        injection_type = args.injection_type or fi.injection_type
        mode = args.mode or fi.mode
        output = Path(args.output) if args.output else checkpoint.parent / f"fault_eval_{injection_type}.json"
        return evaluate(config, checkpoint, probabilities, injection_type, mode, args.num_runs, output,
                        sweep=args.sweep is not None, progress=not args.no_progress, config_file=args.config)


def _probabilities(args: argparse.Namespace, config: Any) -> list[float]:
    from .._errors import QFaultConfigError

    if args.sweep is not None:
        try:
            values = [float(v) for v in args.sweep.split(",") if v.strip()]
        except ValueError:
            raise QFaultConfigError("--sweep", args.sweep, "comma-separated probabilities, e.g. 0,1,5") from None
        if not values:
            raise QFaultConfigError("--sweep", args.sweep, "at least one probability")
    else:
        values = [args.probability if args.probability is not None else config.fault_injection.probability]
    for value in values:
        if not (0.0 <= value <= 100.0) or math.isnan(value):
            raise QFaultConfigError("--sweep" if args.sweep is not None else "--probability", value,
                                    "a probability in percent in [0, 100]")
    return values


def evaluate(config: Any, checkpoint: Path, probabilities: list[float], injection_type: str, mode: str,
             num_runs: int, output: Path, *, sweep: bool, progress: bool, config_file: str) -> int:
    import dataclasses

    import torch

    from ..campaign import CampaignSpec, CampaignStore, build_campaign_model, run_campaign, trial_seed, write_report
    from ..campaign import load_batches
    from ..faults import derive_seed
    from ..injection import inject
    from ..train import fault_specs
    from .train import build_datasets, model_kwargs

    fi = dataclasses.replace(config.fault_injection, enabled=True, apply_during="eval", mode=mode,
                             injection_type=injection_type, probability=probabilities[0], track_statistics=True)
    train_set, _ = build_datasets(config)
    kwargs = model_kwargs(config, train_set)
    seed = config.seed.value if config.seed.enabled else 0
    fault = fault_specs(fi, seed)[0].to_dict()
    dataset = {"name": config.dataset} if isinstance(config.dataset, str) else dict(config.dataset)
    dataset["train"] = False
    fields = {
        "name": f"{config.name}-eval-{injection_type}", "seed": seed,
        "model": {"source": "checkpoint", "factory": "qfault.data:build_model", "path": str(checkpoint),
                  "kwargs": {"name": config.model.name, **kwargs}},
        "dataset": dataset, "batch_size": config.training.batch_size, "faults": [fault],
        "sweep": {"fault.probability": probabilities} if sweep else {}, "repetitions": num_runs}
    # one store per evaluation (its fingerprint in the name): the same evaluation run again
    # resumes it, another one never meets it
    fingerprint = CampaignSpec.from_dict(fields).fingerprint()[:12]
    spec = CampaignSpec.from_dict({**fields, "store": str(output.with_name(f"{output.stem}.{fingerprint}.qfault.db"))})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batches = load_batches(spec)
    model = build_campaign_model(spec.model, log=lambda *_: None)
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True)
    checkpoint_accuracy = stored.get("accuracy") if isinstance(stored, dict) else None
    print(f"Using device: {device}")
    print(f"Dataset: {dataset['name']} ({len(batches)} test batches)")
    print(f"Model: {config.model.name}")
    print(f"Loading checkpoint: {checkpoint}")
    if isinstance(checkpoint_accuracy, (int, float)):
        print(f"Checkpoint accuracy: {checkpoint_accuracy:.2f}%")
    with inject(model, fault_specs(fi, seed)) as probe:
        layers = probe.num_sites
    print("\nFault Injection Configuration:")
    print(f"  Injection layers: {layers}\n  Mode: {mode}\n  Injection type: {injection_type}")
    if not sweep:
        print(f"  Probability: {probabilities[0]}%")
    print("\n" + "=" * 60 + "\nEvaluating baseline (no faults)...")
    result = run_campaign(spec, progress=progress, log=lambda *_: None, model=model, batches=batches)
    baseline = result.golden_accuracy
    print(f"Baseline accuracy: {baseline:.2f}%\n" + "=" * 60)
    data: dict[str, Any] = {"config_file": str(config_file), "checkpoint": str(checkpoint), "model": config.model.name,
                            "dataset": dataset["name"], "num_injection_layers": layers,
                            "fault_config": {"mode": mode, "injection_type": injection_type},
                            "baseline_accuracy": baseline}
    points = sorted(result.points, key=lambda p: p.point)
    if not sweep:
        point = points[0]
        print(f"\nEvaluating with {probabilities[0]}% fault probability...\n\nResults:")
        print(f"  Baseline accuracy:   {baseline:.2f}%")
        print(f"  Fault accuracy:      {point.accuracy_mean:.2f}%" + (
            f" (std {point.accuracy_std:.2f}%, 95% CI ±{point.accuracy_ci:.2f}, {point.trials} runs)"
            if point.trials > 1 else ""))
        print(f"  Accuracy degradation: {baseline - point.accuracy_mean:+.2f}%")
        data.update({"fault_probability": probabilities[0], "fault_accuracy": point.accuracy_mean,
                     "accuracy_degradation": baseline - point.accuracy_mean})
        if num_runs > 1:
            data["num_runs"] = num_runs
            data["fault_accuracy_std"] = point.accuracy_std
        # the statistics of the first run: the same faults, drawn again with statistics on
        trial = trial_seed(spec, point.values, 0)
        spec_stats = dataclasses.replace(fault_specs(fi, derive_seed(trial, 0) >> 1)[0], track_statistics=True)
        with inject(model, [spec_stats]) as handle, torch.no_grad():
            for x, _ in batches:
                model(x)
            statistics = handle.statistics()
        _print_statistics(statistics)
        data["statistics"] = statistics.to_dict()
    else:
        runs = _runs_by_point(spec)
        results = []
        for point, probability in zip(points, probabilities):
            accuracies = runs.get(point.point, [])
            print(f"\nEvaluating with probability {probability:g}%...")
            print(f"  Accuracy: {point.accuracy_mean:.2f}% (std: {point.accuracy_std:.2f}%)")
            results.append({"probability": probability, "accuracies": accuracies, "mean_accuracy": point.accuracy_mean,
                            "std_accuracy": point.accuracy_std,
                            "ci95": None if math.isinf(point.accuracy_ci) else point.accuracy_ci})
        print("\n" + "=" * 60 + "\nSweep Summary:")
        print(f"{'Probability':>12} | {'Accuracy':>10} | {'Degradation':>12}")
        print("-" * 40)
        for item in results:
            print(f"{item['probability']:>11.1f}% | {item['mean_accuracy']:>9.2f}% | "
                  f"{baseline - item['mean_accuracy']:>+11.2f}%")
        data["sweep_results"] = {"probabilities": probabilities, "num_runs": num_runs, "results": results}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(data, indent=2) + "\n")
    with CampaignStore(spec.store_path(), spec, create=False) as store:
        written = write_report(result, store, output.with_suffix(".report"))
    print(f"\nResults saved to: {output}")
    print(f"Campaign report: {written[-1] if written else output.with_suffix('.report')}")
    return 0


def _runs_by_point(spec: Any) -> dict[int, list[float]]:
    from ..campaign import CampaignStore

    with CampaignStore(spec.store_path(), spec, create=False) as store:
        runs: dict[int, list[float]] = {}
        for row in store.trials():
            runs.setdefault(row.point, []).append(row.accuracy)
    return runs


def _print_statistics(statistics: Any) -> None:
    print("\n" + "-" * 60 + "\nFAULT INJECTION STATISTICS\n" + "=" * 60)
    print(f"{'Layer':<8} {'Injected':<12} {'Total':<14} {'Rate (%)':<12} {'RMSE':<12} {'Cos Sim (%)':<12}")
    print("-" * 60)
    for site in statistics.sites:
        print(f"{site.layer_id:<8} {site.faulted_values:<12} {site.total_values:<14} {site.rate:<12.4f} "
              f"{site.avg_rmse:<12.4f} {100 * site.avg_cosine_similarity:<12.4f}")
    summary = statistics.to_dict()["summary"]
    print("-" * 60)
    print(f"{'TOTAL':<8} {summary['total_injected']:<12} {summary['total_activations']:<14} "
          f"{summary['overall_injection_rate']:<12.4f}")
    print("=" * 60)
