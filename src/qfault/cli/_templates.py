"""The commented config templates shipped in ``qfault/configs`` (``qfault ls configs``, ``qfault cp``)."""

from __future__ import annotations

import contextlib
from importlib.resources import as_file, files
from pathlib import Path
from typing import Iterator


def templates() -> dict:
    """``{file name: resource}`` of every shipped ``*.yaml`` template."""
    folder = files("qfault") / "configs"
    return {entry.name: entry for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def resolve(template: str):
    """The resource of ``template`` (``.yaml`` optional); an unknown name lists the others."""
    from .._errors import QFaultConfigError
    from ..config import did_you_mean

    known = templates()
    name = template if template.endswith(".yaml") else template + ".yaml"
    if name not in known:
        raise QFaultConfigError("template", template, "one of " + ", ".join(sorted(known)),
                                hint=did_you_mean(name, known, "template"))
    return known[name]


@contextlib.contextmanager
def template_path(template: str) -> Iterator[Path]:
    """A file system path of a shipped template for the duration of the block."""
    with as_file(resolve(template)) as path:
        yield Path(path)
