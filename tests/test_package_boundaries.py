"""One job per package: which of our packages each package may import (read from the source, not run)."""

from __future__ import annotations

import ast
import subprocess
import sys
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


@pytest.mark.parametrize(
    ("module", "not_loaded"),
    [
        ("server.domain", ("pymilvus", "grpc", "tritonclient", "google.protobuf")),
        ("contract.schemas", ("pymilvus", "grpc", "tritonclient", "google.protobuf")),
        ("server.requests", ("pymilvus", "tritonclient")),  # validating a request needs no database client
    ],
)
def test_domain_types_and_validation_load_no_database_client(module: str, not_loaded: tuple[str, ...]) -> None:
    check = f"import sys, {module}; print(sorted(m for m in {not_loaded!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", f"importing {module} loads {loaded.stdout.strip()}"


def test_the_gateway_image_ships_the_gateway_and_what_it_imports_only() -> None:
    """Python source folders the Dockerfile copies: server/, what it may import, and the proto it is generated from."""
    sources = {
        line.split()[1].rstrip("/")
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ") and not line.startswith("COPY --from")
    }
    python_folders = {
        name
        for name in sources
        if "/" not in name
        and (ROOT / name).is_dir()
        and any(next((ROOT / name).rglob(p), None) for p in ("*.py", "*.proto"))
    }
    assert python_folders == {"server", "contract", "proto"}, sources
    assert ALLOWED["server"] == {"contract", "recstack"}  # recstack is generated from proto/ inside the image
