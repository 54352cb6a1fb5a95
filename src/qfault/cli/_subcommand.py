"""The shape of a ``qfault`` subcommand (one class per verb, one module each)."""

from __future__ import annotations

import argparse
from typing import Protocol, runtime_checkable


@runtime_checkable
class Subcommand(Protocol):
    """A ``qfault`` verb.

    ``name`` is what the user types, ``help`` the one-line summary in ``qfault --help`` and
    ``description`` the text of ``qfault NAME --help``. ``add_arguments`` declares its flags and
    ``run`` does the work, returning the exit code. Modules holding a subcommand import only the
    standard library at import time (``qfault --help`` must not import torch); ``run`` imports
    what it needs. Bad input raises :class:`~qfault.QFaultConfigError`, which ``qfault`` prints as
    ``qfault: error: ...`` with exit code 2.
    """

    name: str
    help: str
    description: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...
