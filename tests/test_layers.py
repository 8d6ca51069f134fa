"""The import contracts in pyproject.toml (import-linter), checked on the tree as the wheel lays it out.

The checkout maps top-level folders onto ``chatq.*`` (``package-dir``), which import-linter cannot
follow through an editable install; so the test stages the same mapping in a temporary directory
and lints that. A second run plants an upward import to prove the contracts can fail.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from .conftest import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def stage(into: Path) -> Path:
    """Copy every package's modules to where ``[tool.setuptools.package-dir]`` installs them."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = config["package-dir"]
    for package in config["packages"]:
        parent = next(p for p in sorted(dirs, key=len, reverse=True) if package == p or package.startswith(p + "."))
        source = ROOT / dirs[parent] / package[len(parent):].lstrip(".").replace(".", "/")
        target = into / package.replace(".", "/")
        target.mkdir(parents=True, exist_ok=True)
        for module in source.glob("*.py"):
            shutil.copy(module, target / module.name)
    return into


def lint(tree: Path) -> subprocess.CompletedProcess:
    # From inside the staged tree: lint-imports puts its working directory first on sys.path.
    return subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=tree, capture_output=True, text=True, timeout=120)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return stage(tmp_path / "site")


def test_layers_import_downward_only(tree):
    out = lint(tree)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Contracts: 2 kept, 0 broken." in out.stdout, out.stdout


@pytest.mark.parametrize("module,planted,contract", [
    ("tasks/models.py", "import chatq.worker.runner", "Layers"),
    ("worker/agent.py", "from chatq.api import app", "Layers"),
    ("worker/provider.py", "from chatq.testing import server", "Test doubles"),
])
def test_an_upward_import_breaks_a_contract(tree, module, planted, contract):
    path = tree / "chatq" / module
    path.write_text(path.read_text() + f"\n{planted}  # planted by the test\n")
    out = lint(tree)
    assert out.returncode == 1, out.stdout + out.stderr
    broken = [line for line in out.stdout.splitlines() if line.endswith(" BROKEN")]
    assert len(broken) == 1 and broken[0].startswith(contract), out.stdout
    assert planted.split()[1] in out.stdout  # the report names the planted import
