"""``qfault campaign run|resume|status|report|validate SPEC [key=value ...]``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

ACTIONS = ("run", "resume", "status", "report", "validate")


class Campaign:
    name = "campaign"
    help = "run, resume, inspect, report or validate a fault-injection campaign from a YAML spec"
    description = ("Campaigns are YAML specs (a commented template: 'qfault cp campaign_digits.yaml'). "
                   "key=value overrides change fields (dotted keys, YAML values: faults.0.fault.ber=1e-3, "
                   "sweep.fault.ber='[0, 1e-3]'); 'validate' reports every invalid field at once. Results "
                   "go to one SQLite store per campaign; a killed run resumes where it stopped.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("action", choices=ACTIONS)
        parser.add_argument("spec", help="campaign YAML file")
        parser.add_argument("overrides", nargs="*", metavar="key=value", help="override spec fields")
        parser.add_argument("--out", default=None, help="report folder (default: <store>.report)")
        parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
        parser.add_argument("--no-plot", action="store_true", help="report without PNG/HTML")
        parser.add_argument("--executor", choices=("local", "ray"), default="local",
                            help="where trials run: in this process (default) or on Ray workers "
                                 "(pip install 'qfault[ray]')")
        parser.add_argument("--address", default=None,
                            help="Ray cluster address ('auto', 'ray://host:10001'); default: start a local one")
        parser.add_argument("--workers", type=int, default=None,
                            help="Ray workers (default: one per CPU, or per GPU with --gpus-per-worker)")
        parser.add_argument("--gpus-per-worker", type=float, default=0.0,
                            help="GPUs per Ray worker; a worker with a GPU runs its trials on it (default 0)")

    def run(self, args: argparse.Namespace) -> int:
        from rich.console import Console

        from .._errors import QFaultConfigError
        from ..campaign import CampaignSpec, CampaignStore, campaign_status, run_campaign, summarize, write_report

        console = Console(soft_wrap=True)
        spec = CampaignSpec.from_yaml(args.spec, args.overrides)
        if args.action == "validate":
            console.print(f"{args.spec}: valid; {len(spec.points())} sweep points; "
                          f"fingerprint {spec.fingerprint()[:16]}")
            return 0
        if args.action == "status":
            status = campaign_status(spec)
            console.print(f"store {status['store']}: {status['completed']} trials completed"
                          + (f" ({status['per_point']} per point)" if status["per_point"] else ""))
            return 0
        if args.action == "resume" and not spec.store_path().exists():
            raise QFaultConfigError("store", str(spec.store_path()), "an existing campaign store to resume",
                                    hint="use 'qfault campaign run' to start it")
        if args.action in ("run", "resume"):
            executor = _executor(args)
            try:
                result = run_campaign(spec, executor=executor, progress=not args.no_progress, log=console.print)
            finally:
                if executor is not None:
                    executor.close()
        else:
            with CampaignStore(spec.store_path(), spec, create=False) as store:
                result = summarize(spec, store)
        console.print(result_table(result))
        if args.action == "report":
            out = Path(args.out or str(spec.store_path()) + ".report")
            with CampaignStore(spec.store_path(), spec, create=False) as store:
                written = write_report(result, store, out, plots=not args.no_plot)
            console.print("Wrote " + ", ".join(str(p) for p in written))
        return 0


def result_table(result: Any) -> Any:
    """A rich table of a :class:`~qfault.campaign.CampaignResult`, one row per sweep point."""
    from rich.table import Table

    spec = result.spec
    title = f"{spec.name}: golden accuracy {result.golden_accuracy:.2f}%"
    if result.float_accuracy is not None:
        title += f" (quantized; float {result.float_accuracy:.2f}%)"
    table = Table(title=title)
    for col in ("#", "point", "n", "acc. (%)", "SDC-1 %", "masked %", "DUE %"):
        table.add_column(col, justify="left" if col == "point" else "right")
    for p in result.points:
        rate = lambda k: f"{100 * p.rates.get(k, {}).get('rate', 0.0):.2f}"  # noqa: E731
        ci = "" if p.accuracy_ci == float("inf") else f" ± {p.accuracy_ci:.2f}"
        label = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in p.values.items()) or "-"
        table.add_row(str(p.point), label, str(p.trials),
                      f"{p.accuracy_mean:.2f}{ci}", rate("sdc1"), rate("masked"), rate("due"))
    return table


def _executor(args: argparse.Namespace) -> Any:
    """``None`` (in this process) or a :class:`~qfault.campaign.RayExecutor` from ``--executor ray``."""
    from .._errors import QFaultConfigError

    if getattr(args, "executor", "local") != "ray":
        errors = [flag for flag in ("address", "workers") if getattr(args, flag, None) is not None]
        if errors:
            raise QFaultConfigError(f"--{errors[0]}", getattr(args, errors[0]), "only with --executor ray")
        return None
    from ..campaign import RayExecutor

    gpus_per_worker = getattr(args, "gpus_per_worker", 0.0) or 0
    if gpus_per_worker > 0 and args.address is None:  # a local cluster: its GPUs are this machine's
        import torch

        have, need = torch.cuda.device_count(), gpus_per_worker * (args.workers or 1)
        if have < need:
            raise QFaultConfigError("--gpus-per-worker", gpus_per_worker,
                                    f"at most this machine's {have} GPU(s) across {args.workers or 1} worker(s)",
                                    hint="no GPU here: leave --gpus-per-worker out" if not have else None)
    return RayExecutor(address=args.address, num_workers=args.workers, num_gpus_per_worker=gpus_per_worker)
