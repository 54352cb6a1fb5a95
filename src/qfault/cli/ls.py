"""``qfault ls [formats|faults|models|datasets|configs|all]``: what is registered and shipped."""

from __future__ import annotations

import argparse

GROUPS = ("formats", "faults", "models", "datasets", "configs")


class Ls:
    name = "ls"
    help = "list registered formats, fault models, demo models, data sets and config templates"
    description = ("List the names the configs accept: number formats, fault models, demo models, data "
                   "sets, and the commented config templates that 'qfault cp' copies.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("what", nargs="?", choices=GROUPS + ("all",), default="all",
                            help="one group (default: all)")

    def run(self, args: argparse.Namespace) -> int:
        from ..data import list_datasets, list_models
        from ..faults import list_faults
        from ..formats import list_formats
        from ._templates import templates

        groups = {"formats": list_formats, "faults": list_faults, "models": list_models,
                  "datasets": list_datasets, "configs": lambda: sorted(templates())}
        for name in GROUPS:
            if args.what in (name, "all"):
                print(f"{name}: {', '.join(groups[name]())}")
        return 0
