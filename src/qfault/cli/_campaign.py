"""``qfault campaign run|resume|status|report|validate SPEC [key=value ...]``."""

from __future__ import annotations

from pathlib import Path


def run_campaign_command(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..campaign import CampaignSpec, CampaignStore, campaign_status, run_campaign, summarize, write_report

    console = Console(soft_wrap=True)
    spec = CampaignSpec.from_yaml(args.spec, args.overrides)
    if args.action == "validate":
        console.print(f"{args.spec}: valid; {len(spec.points())} sweep points; fingerprint {spec.fingerprint()[:16]}")
        return 0
    if args.action == "status":
        status = campaign_status(spec)
        console.print(f"store {status['store']}: {status['completed']} trials completed"
                      + (f" ({status['per_point']} per point)" if status["per_point"] else ""))
        return 0
    if args.action == "resume" and not spec.store_path().exists():
        console.print(f"[red]qfault: error: no store at {spec.store_path()} to resume; use 'run'[/]")
        return 2
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
    console.print(table)
    if args.action == "report":
        out = Path(args.out or str(spec.store_path()) + ".report")
        with CampaignStore(spec.store_path(), spec, create=False) as store:
            written = write_report(result, store, out, plots=not args.no_plot)
        console.print("Wrote " + ", ".join(str(p) for p in written))
    return 0


def _executor(args):
    """``None`` (in this process) or a :class:`RayExecutor` from ``--executor ray``."""
    kind = getattr(args, "executor", "local")
    if kind != "ray":
        for flag in ("address", "workers"):
            if getattr(args, flag, None) is not None:
                from .._errors import QFaultConfigError

                raise QFaultConfigError(f"--{flag}", getattr(args, flag), "only with --executor ray")
        return None
    from ..campaign._executors import RayExecutor

    return RayExecutor(address=args.address, num_workers=args.workers,
                       num_gpus_per_worker=getattr(args, "gpus_per_worker", 0.0) or 0)
