"""``qfault``: a command line of subcommands (``demo``, ``campaign``, ``train``, ``evaluate``, ``sensitivity``, ``ls``, ``cp``).

Each subcommand is a class in its own module (see :class:`~qfault.cli._subcommand.Subcommand`)
listed in :data:`SUBCOMMANDS`. Only the standard library is imported to build the parser, so
``qfault --help`` answers at once; a subcommand imports what it needs when it runs. Bad input
is one line ``qfault: error: ...`` (every invalid config field, one per line) and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ._subcommand import Subcommand
from .campaign import Campaign
from .cp import Cp
from .demo import Demo
from .evaluate import Evaluate
from .ls import Ls
from .sensitivity import Sensitivity
from .train import Train

#: the subcommands, in the order ``qfault --help`` lists them
SUBCOMMANDS: tuple[type, ...] = (Demo, Campaign, Train, Evaluate, Sensitivity, Ls, Cp)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line ``qfault: error: ...`` (exit code 2), like bad config values."""

    def error(self, message: str):
        self.exit(2, f"qfault: error: {message} (see '{self.prog} --help')\n")


def build_parser(subcommands: tuple[type, ...] = SUBCOMMANDS) -> argparse.ArgumentParser:
    """The ``qfault`` parser; each subcommand's instance is ``args.subcommand``."""
    parser = _Parser(prog="qfault", description="Bit-exact hardware fault injection for (quantized) PyTorch models.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for cls in subcommands:
        command: Subcommand = cls()
        child = sub.add_parser(command.name, help=command.help, description=command.description)
        command.add_arguments(child)
        child.set_defaults(subcommand=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``qfault`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.version:
        from importlib.metadata import version

        print(version("qfault"))
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    from .._errors import QFaultConfigError

    # importing Brevitas loads torch.utils.cpp_extension, which warns on every machine without a
    # CUDA toolkit although nothing here compiles an extension
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        return int(args.subcommand.run(args))
    except QFaultConfigError as exc:  # bad input: the fields and what they allow, no traceback
        print(f"qfault: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qfault: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
