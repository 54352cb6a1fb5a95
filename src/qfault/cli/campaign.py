"""``qfault campaign run|resume|status|report|validate SPEC [key=value ...]``.

``resume``, ``status`` and ``report`` also take a campaign store as ``SPEC``: the spec it holds is
used as it is.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ..campaign import CampaignSpec

ACTIONS = ("run", "resume", "status", "report", "validate")
#: the actions that read an existing store, and so also accept the store file as SPEC
STORE_ACTIONS = ("resume", "status", "report")
_SQLITE_HEADER = b"SQLite format 3\x00"


class Campaign:
    name = "campaign"
    help = "run, resume, inspect, report or validate a fault-injection campaign from a YAML spec"
    description = ("Campaigns are YAML specs (a commented template: 'qfault cp campaign_digits.yaml'). "
                   "key=value overrides change fields (dotted keys, YAML values: faults.0.fault.ber=1e-3, "
                   "sweep.fault.ber='[0, 1e-3]'); 'validate' builds the model and reports every "
                   "invalid field at once (nothing is written). Results "
                   "go to one SQLite store per campaign; a killed run resumes where it stopped. 'resume', "
                   "'status' and 'report' also take the store file as SPEC (its stored spec is used), and "
                   "a YAML spec without overrides whose store was run with overrides uses the stored spec.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("action", choices=ACTIONS)
        parser.add_argument("spec", help="campaign YAML file (resume, status, report: or its store file)")
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
        from ..campaign import CampaignStore, campaign_status, run_campaign, summarize, validate_campaign, write_report

        console = Console(soft_wrap=True)
        plain = lambda line: console.print(line, markup=False, highlight=False)  # noqa: E731 (values hold [...])
        spec = load_spec(args.action, args.spec, args.overrides, log=plain)
        if args.action == "validate":  # the model-dependent checks too: what run checks before writing
            plan = validate_campaign(spec, log=plain)
            trials = f"{plan.planned_trials} trials" if plan.fixed else "trials decided by the ci rule"
            console.print(f"{args.spec}: valid; {len(plan.points)} sweep points, {trials}; "
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


def load_spec(action: str, path: str | Path, overrides: list[str] | tuple[str, ...] = (),
              log: Callable[[str], None] = print) -> CampaignSpec:
    """The :class:`~qfault.campaign.CampaignSpec` that ``action`` works on.

    ``path`` is a YAML spec (with ``key=value`` overrides) or, for ``resume``, ``status`` and
    ``report``, a campaign store, whose stored spec is used with ``store`` set to ``path``. A YAML
    spec given to those actions without overrides, whose store exists but was created by a
    different spec (a run with overrides), gives the stored spec; ``log`` gets one line listing
    the differences. With overrides, a different stored spec is refused when the store is opened.

    Raises:
        QFaultConfigError: a store given to ``run`` or ``validate``, overrides given with a
            store, a foreign or unreadable store, or an invalid spec.
    """
    from .._errors import QFaultConfigError
    from ..campaign import CampaignSpec, read_store_spec, spec_diff, spec_extension

    path = Path(path)
    if _is_sqlite(path):
        if action not in STORE_ACTIONS:
            try:
                read_store_spec(path)
                what = "a campaign store"
            except QFaultConfigError:
                what = "a SQLite file but not a campaign store"
            raise QFaultConfigError("spec", str(path), "a campaign YAML file",
                                    hint=f"this is {what}; '{action}' needs the YAML spec, "
                                         f"'qfault campaign {'|'.join(STORE_ACTIONS)}' also take a store")
        if overrides:
            raise QFaultConfigError("overrides", " ".join(overrides), "none with a store file",
                                    hint="the store's own spec is used as it is; to change it, give the YAML "
                                         "spec with the overrides and another store=...")
        return _stored_spec(read_store_spec(path), path)
    spec = CampaignSpec.from_yaml(path, overrides)
    store = spec.store_path()
    if action in STORE_ACTIONS and not overrides and _is_sqlite(store):
        stored = read_store_spec(store)
        diff = spec_diff(spec.to_dict(), stored)
        extends = action == "resume" and spec_extension(stored, spec.to_dict()) is not None
        if diff and not extends:  # resuming with more repetitions or sweep values extends the store
            log(f"{path}: using the spec its store {store} was created with; differences "
                f"(spec file -> stored): {'; '.join(diff)}")
            return _stored_spec(stored, store)
    return spec


def _stored_spec(data: dict, store: Path) -> CampaignSpec:
    """The spec of a store's stored dict, with ``store`` set to where the store is now."""
    from .._errors import QFaultConfigError
    from ..campaign import CampaignSpec

    try:
        return CampaignSpec.from_dict({**data, "store": str(store)})
    except QFaultConfigError as exc:
        raise QFaultConfigError("store", str(store), "a store whose stored spec this qfault accepts",
                                hint=f"its spec: {exc}") from None


def _is_sqlite(path: Path) -> bool:
    """Whether ``path`` is a file that starts with SQLite's header (a store, ours or not)."""
    try:
        with path.open("rb") as f:
            return f.read(len(_SQLITE_HEADER)) == _SQLITE_HEADER
    except OSError:  # missing, a folder, unreadable: left to the YAML loader's errors
        return False


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
