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
