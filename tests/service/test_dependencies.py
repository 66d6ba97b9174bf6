"""The dependency rules of ARCHITECTURE.md §1."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        found[str(path.relative_to(ROOT))] = names
    return found


def _offending(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for path, names in _imports(package).items():
        hits = sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))
        if hits:
            bad[path] = hits
    return bad


def test_gateway_import_does_not_load_torch():
    code = (
        "import sys, service.main\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'timm', 'zennit', 'optuna', 'numpy') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PXP_DATA_DIR": "/tmp/pxp-dep-test"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"service.main loaded {out.stdout.strip()}"


def test_client_is_torch_free():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, pxp.client; print('torch' in sys.modules)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.strip() == "False", out.stderr


def test_pxp_imports_nothing_from_the_service_side():
    assert (
        _offending("pxp", ("service", "worker", "fastapi", "celery", "sqlalchemy", "starlette", "alembic"))
        == {}
    )


def test_worker_never_imports_the_api():
    assert _offending("worker", ("service.api", "service.main", "fastapi", "starlette")) == {}


def test_worker_imports_only_the_shared_service_modules():
    allowed = ("service.db", "service.storage", "service.settings", "service.dispatch")
    for path, names in _imports("worker").items():
        service_imports = {n for n in names if n == "service" or n.startswith("service.")}
        assert all(any(n == a or n.startswith(a + ".") for a in allowed) for n in service_imports), (
            path,
            service_imports,
        )


def test_service_never_imports_torch_at_module_level():
    assert _offending("service", ("torch", "torchvision", "timm", "zennit", "optuna")) == {}
