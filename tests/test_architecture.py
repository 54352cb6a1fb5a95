"""The package layering holds (import-linter), and packages use only each other's public names.

Public means: not a private module (``qfault.<package>._x``) and not a name starting with an
underscore, for every import from one qfault package into another (also imports inside
functions).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "qfault"
ROOT = SRC.parents[1]


def _package_of(module: str) -> str | None:
    """``qfault.<package>`` for a module inside a subpackage, None for top-level modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (SRC / parts[1]).is_dir() else None


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, absolute module, imported names)`` of every import in ``path``."""
    module = "qfault." + ".".join(path.relative_to(SRC).with_suffix("").parts)
    if module.endswith(".__init__"):
        module = module[: -len(".__init__")]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name, []) for alias in node.names)
    return out


def test_packages_use_only_public_names_of_other_packages():
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        own = _package_of("qfault." + ".".join(path.relative_to(SRC).with_suffix("").parts))
        for line, target, names in _imports(path):
            if not target.startswith("qfault.") or _package_of(target) in (None, own):
                continue
            private_module = any(part.startswith("_") for part in target.split(".")[2:])
            private_names = [n for n in names if n.startswith("_")]
            if private_module or private_names:
                problems.append(f"{path.relative_to(ROOT)}:{line}: from {target} import {', '.join(names)}")
    assert not problems, "private cross-package imports:\n" + "\n".join(problems)


def test_the_checker_resolves_relative_imports():
    """The checker above reads relative imports the way Python resolves them."""
    path = SRC / "campaign" / "_runner.py"
    resolved = {target for _, target, _ in _imports(path)}
    assert "qfault.injection" in resolved and "qfault._errors" in resolved


def test_import_layers_contract():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint is None:
        pytest.fail("lint-imports (import-linter, a test dependency) is not installed")
    result = subprocess.run([lint, "--config", str(ROOT / "pyproject.toml")], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
