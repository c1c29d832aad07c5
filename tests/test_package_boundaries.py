"""One job per package: which of our packages each package may import (read from the source, not run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"contract", "server", "devstack", "training", "export", "benchmarks", "recstack", "tests"}
ALLOWED = {
    "contract": set(),  # the leaf everybody shares
    "server": {"contract", "recstack"},  # the gateway image ships exactly these
    "training": {"contract"},
    "export": {"contract", "training", "recstack"},
    "devstack": {"contract", "server", "recstack"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of our packages that `path` imports (absolute imports only; relative ones stay inside)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_its_job_allows(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no modules"
    wrong = {
        str(path.relative_to(ROOT)): sorted(found)
        for path in files
        if (found := imported_packages(path) - ALLOWED[package] - {package})
    }
    assert not wrong, f"{package}/ may import only {sorted(ALLOWED[package])}: {wrong}"


def test_the_checker_sees_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom devstack.process import free_port\nimport server.config as c\nfrom . import x\n")
    assert imported_packages(module) == {"devstack", "server"}
