"""``qfault cp TEMPLATE [DEST]``: copy a commented config template to edit."""

from __future__ import annotations

import argparse


class Cp:
    name = "cp"
    help = "copy a commented config template (see 'qfault ls configs')"
    description = ("Copy one of the shipped, commented YAML templates to a file or folder, to edit and "
                   "run (e.g. 'qfault campaign run campaign_digits.yaml'). Nothing is overwritten.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("template", help="template name, e.g. campaign_digits.yaml ('.yaml' optional)")
        parser.add_argument("dest", nargs="?", default=".", help="file or folder (default: the current folder)")

    def run(self, args: argparse.Namespace) -> int:
        from pathlib import Path

        from .._errors import QFaultConfigError
        from ._templates import resolve

        source = resolve(args.template)
        target = Path(args.dest)
        if target.is_dir():
            target = target / source.name
        if target.exists():
            raise QFaultConfigError("dest", str(target), "a path that does not exist yet (nothing is overwritten)")
        if not target.parent.is_dir():
            raise QFaultConfigError("dest", str(target), "a path in an existing folder")
        target.write_text(source.read_text())
        print(f"Wrote {target}")
        return 0
