"""Every docstring example under ``src/qfault`` runs, one test case per module (``doctest``).

An example runs in a namespace holding ``torch``, ``nn`` (``torch.nn``), ``qfault``, the public names of ``qfault``
and the public names of the example's own package (its ``__all__``), i.e. what a user has after
``import torch, qfault`` and ``from qfault.<package> import *``. Private helpers of the module
are *not* in it: an example shows public API, or imports what it uses. ``# doctest: +SKIP`` marks
an example that should not run (a long campaign, a download).
"""

from __future__ import annotations

import doctest
import importlib
import io
import pkgutil
import warnings

import pytest
import torch

import qfault

# Extras (pyproject optional-dependencies); a module that cannot be imported without one is skipped.
OPTIONAL = {"ray", "pyarrow", "pytorchfi", "mrfi"}

# Modules whose examples are known to fail (none): strict, so a fixed example turns the case red.
XFAIL: dict[str, str] = {}

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _walk() -> tuple[list[str], list[str]]:
    """All module names of the package and the packages that failed to import while walking."""
    broken: list[str] = []
    names = ["qfault"] + [m.name for m in pkgutil.walk_packages(qfault.__path__, "qfault.", onerror=broken.append)]
    return sorted(set(names) | set(broken)), broken


MODULES, _BROKEN = _walk()


def _import(name: str):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated shims may warn on import
            return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing in OPTIONAL:
            pytest.skip(f"{name} needs the optional package {missing!r}")
        raise


def _public(module) -> dict:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    return {n: getattr(module, n) for n in names}


def _namespace(name: str, module) -> dict:
    """``torch``, ``nn``, ``qfault``, qfault's public names and those of the module's package (a
    private ``_x`` module) or of the module itself (a package or public module)."""
    globs = {n: getattr(qfault, n) for n in qfault.__all__}
    parent, _, leaf = name.rpartition(".")
    globs.update(_public(importlib.import_module(parent) if leaf.startswith("_") else module))
    globs.update(torch=torch, nn=torch.nn, qfault=qfault, __name__=name)
    return globs


def _params():
    out = []
    for name in MODULES:
        marks = [pytest.mark.xfail(strict=True, reason=XFAIL[name])] if name in XFAIL else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def _excused(name: str) -> bool:
    """Whether a package that failed to import during the walk only lacks an optional package."""
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        return (exc.name or "").split(".")[0] in OPTIONAL
    except Exception:  # noqa: BLE001 - any other failure is a broken package
        return False
    return True  # imports on a second try: nothing is broken


def test_walk_finds_the_package():
    broken = [name for name in _BROKEN if not _excused(name)]
    assert not broken, f"packages that failed to import while walking: {broken}"
    for name in ("qfault.formats", "qfault.formats._int", "qfault.faults", "qfault.injection", "qfault.cli"):
        assert name in MODULES
    assert len(MODULES) >= 30


@pytest.mark.parametrize("name", _params())
def test_docstring_examples(name: str):
    module = _import(name)
    tests = [t for t in doctest.DocTestFinder(exclude_empty=True).find(module, name) if t.examples]
    if not tests:
        pytest.skip(f"{name} has no docstring examples")
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    out = io.StringIO()
    for test in sorted(tests, key=lambda t: t.name):
        test.globs = _namespace(name, module)
        torch.manual_seed(0)
        runner.run(test, out=out.write)
    result = runner.summarize(verbose=False)
    if result.failed:
        pytest.fail(f"{result.failed} of {result.attempted} examples failed in {name}:\n{out.getvalue()}",
                    pytrace=False)
