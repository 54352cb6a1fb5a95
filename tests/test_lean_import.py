"""Importing qfault is lean and has no side effects; the CLI help needs no torch."""

import subprocess
import sys

CHECK = r"""
import os, sys
before = dict(os.environ)
import qfault
{body}
assert dict(os.environ) == before, "import qfault changed the environment"
"""


def run(body: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHECK.format(body=body)], capture_output=True, text=True)


def test_import_qfault_loads_no_optional_heavy_packages():
    result = run(
        "heavy = [m for m in ('brevitas', 'timm', 'matplotlib', 'ray', 'sklearn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "qfault.inject; qfault.corrupt; qfault.IntFormat\n"
        "heavy = [m for m in ('brevitas', 'timm', 'matplotlib', 'ray', 'sklearn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "import torch\n"
        "assert not torch.cuda.is_initialized()\n"
    )
    assert result.returncode == 0, result.stderr


def test_cli_help_does_not_import_torch():
    result = run(
        "from qfault.cli.main import build_parser\n"
        "build_parser().format_help()\n"
        "assert 'torch' not in sys.modules, 'torch imported by the CLI parser'\n"
    )
    assert result.returncode == 0, result.stderr


def test_inject_name_is_callable_even_after_subpackage_import():
    result = run(
        "import torch\n"
        "from qfault.injection import InjectSpec\n"
        "h = qfault.inject(torch.nn.Linear(2, 2), InjectSpec(fault=qfault.BitFlip(ber=0.5), format='int8', seed=0))\n"
        "h.remove()\n"
    )
    assert result.returncode == 0, result.stderr


def test_public_names_resolve():
    import qfault

    for name in qfault.__all__:
        assert getattr(qfault, name) is not None


def test_subpackages_resolve_as_attributes_in_a_fresh_process():
    result = run(
        "for name in ('formats', 'faults', 'injection', 'layers', 'mitigation', 'campaign', 'data', 'config'):\n"
        "    assert getattr(qfault, name).__name__ == 'qfault.' + name, name\n"
        "assert qfault.formats.IntFormat(8).bits == 8\n"
    )
    assert result.returncode == 0, result.stderr


def test_inject_is_one_callable_object_and_old_imports_warn():
    result = run(
        "import warnings\n"
        "verb = qfault.inject\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from qfault.inject import InjectSpec\n"
        "assert any(issubclass(w.category, FutureWarning) and 'qfault.injection' in str(w.message) for w in caught)\n"
        "import qfault.inject\n"
        "assert qfault.inject is verb and callable(verb)\n"
        "from qfault.injection import InjectSpec as Current\n"
        "assert InjectSpec is Current\n"
    )
    assert result.returncode == 0, result.stderr
