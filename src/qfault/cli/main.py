"""``qfault`` command line: ``qfault demo``, ``qfault ls``.

Only the standard library is imported at start-up so that ``qfault --help`` answers at once;
each subcommand imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import sys


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qfault",
        description="Bit-exact hardware fault injection for (quantized) PyTorch models.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="train (or load) a quantized CNN on the bundled digits data and sweep faults",
        description="Train or load a cached 8-bit Brevitas CNN on scikit-learn's digits, then sweep "
                    "weight bit error rate and activation fault probability; print a table and write "
                    "results.json and accuracy_vs_rate.png.",
    )
    demo.add_argument("--out", default="demo-results", help="output folder (default: %(default)s)")
    demo.add_argument("--runs", type=int, default=5, help="repetitions per rate (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="seed of every fault draw (default: %(default)s)")
    demo.add_argument("--weight-ber", type=_float_list, default=[1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
                      help="comma-separated weight bit error rates, fractions in [0, 1]")
    demo.add_argument("--act-prob", type=_float_list, default=[0.1, 0.5, 1.0, 2.0, 5.0, 10.0],
                      help="comma-separated activation fault probabilities, percent in [0, 100]")
    demo.add_argument("--retrain", action="store_true", help="ignore the cached model and train again")
    demo.add_argument("--epochs", type=int, default=15, help="training epochs (default: %(default)s)")
    demo.add_argument("--cache-dir", default=None,
                      help="where the trained model is cached (default: $QFAULT_CACHE or ~/.cache/qfault)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.add_argument("--no-plot", action="store_true", help="skip the PNG plot")

    campaign = sub.add_parser(
        "campaign", help="run, resume, inspect or report a fault-injection campaign from a YAML spec",
        description="Campaigns are YAML specs (see configs/campaign_digits.yaml). Results go to one "
                    "SQLite store per campaign; a killed run resumes where it stopped.",
    )
    campaign.add_argument("action", choices=("run", "resume", "status", "report", "validate"))
    campaign.add_argument("spec", help="campaign YAML file")
    campaign.add_argument("overrides", nargs="*", metavar="key=value", help="override spec fields")
    campaign.add_argument("--out", default=None, help="report folder (default: <store>.report)")
    campaign.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    campaign.add_argument("--no-plot", action="store_true", help="report without PNG/HTML")
    campaign.add_argument("--executor", choices=("local", "ray"), default="local",
                          help="where trials run: in this process (default) or on Ray workers (pip install 'qfault[ray]')")
    campaign.add_argument("--address", default=None,
                          help="Ray cluster address ('auto', 'ray://host:10001'); default: start a local one")
    campaign.add_argument("--workers", type=int, default=None,
                          help="Ray workers (default: one per CPU, or per GPU with --gpus-per-worker)")
    campaign.add_argument("--gpus-per-worker", type=float, default=0.0,
                          help="GPUs per Ray worker; a worker with a GPU runs its trials on it (default 0)")

    ls = sub.add_parser("ls", help="list registered formats, fault models, demo models and data sets")
    ls.add_argument("what", nargs="?", choices=("formats", "faults", "models", "datasets", "configs", "all"),
                    default="all")

    cp = sub.add_parser("cp", help="copy a commented config template (see 'qfault ls configs')")
    cp.add_argument("template", help="template name, e.g. campaign_digits.yaml")
    cp.add_argument("dest", nargs="?", default=".", help="file or folder (default: the current folder)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from importlib.metadata import version

        print(version("qfault"))
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "demo":
            from ._demo import run_demo

            return run_demo(args)
        if args.command == "ls":
            return _ls(args.what)
        if args.command == "cp":
            return _cp(args.template, args.dest)
        if args.command == "campaign":
            from ._campaign import run_campaign_command

            return run_campaign_command(args)
    except Exception as exc:  # one clear line for bad input, no traceback
        from .._errors import QFaultConfigError

        if isinstance(exc, QFaultConfigError):
            print(f"qfault: error: {exc}", file=sys.stderr)
            return 2
        raise
    return 0  # pragma: no cover


def _templates() -> dict:
    from importlib.resources import files

    folder = files("qfault") / "configs"
    return {entry.name: entry for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def _cp(template: str, dest: str) -> int:
    from pathlib import Path

    from .._errors import QFaultConfigError

    templates = _templates()
    name = template if template.endswith(".yaml") else template + ".yaml"
    if name not in templates:
        raise QFaultConfigError("template", template, "one of " + ", ".join(sorted(templates)))
    target = Path(dest)
    if target.is_dir():
        target = target / name
    if target.exists():
        raise QFaultConfigError("dest", str(target), "a path that does not exist yet (nothing is overwritten)")
    target.write_text(templates[name].read_text())
    print(f"Wrote {target}")
    return 0


def _ls(what: str) -> int:
    from ..data import list_datasets, list_models
    from ..faults import list_faults
    from ..formats import list_formats

    groups = {"formats": list_formats(), "faults": list_faults(), "models": list_models(),
              "datasets": list_datasets(), "configs": sorted(_templates())}
    for name, items in groups.items():
        if what in (name, "all"):
            print(f"{name}: {', '.join(items)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
