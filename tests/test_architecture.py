"""The dependency rules of ARCHITECTURE.md §1, over every .py file of pxp, service and worker.

Imports are read with ``ast``: ``import x``, ``from x import y`` (relative ones resolved),
wherever they appear (module level or inside a function), and string imports
(``importlib.import_module("x")``, ``__import__("x")``), which are also forbidden as such.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pxp", "service", "worker")
HEAVY = ("torch", "torchvision", "timm", "zennit", "optuna")
#: What the worker may use of the service (the queue contract and shared infrastructure).
WORKER_MAY_IMPORT = ("service.db", "service.storage", "service.settings", "service.dispatch")
#: The one launcher through which the service starts workers.
SERVICE_TO_WORKER = {"service/embedded.py": {"worker.embedded"}}


@dataclass
class Module:
    path: str
    imports: set[str] = field(default_factory=set)
    string_imports: list[str] = field(default_factory=list)


def _module_name(rel: Path) -> list[str]:
    parts = list(rel.with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _string_import(node: ast.Call) -> str | None:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name not in ("import_module", "__import__"):
        return None
    arg = node.args[0] if node.args else None
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else "<dynamic>"


def _scan(path: Path, root: Path = ROOT) -> Module:
    rel = path.relative_to(root)
    package = _module_name(rel) if rel.name == "__init__.py" else _module_name(rel)[:-1]
    module = Module(str(rel))
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            module.imports.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            module.imports.add(name)
            module.imports.update(f"{name}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and (target := _string_import(node)) is not None:
            module.string_imports.append(target)
            module.imports.add(target)
    return module


MODULES: dict[str, list[Module]] = {
    package: [_scan(p) for p in sorted((ROOT / package).rglob("*.py"))] for package in PACKAGES
}


def _hits(names: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


def _offending(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found = {m.path: _hits(m.imports, forbidden) for m in MODULES[package]}
    return {path: hits for path, hits in found.items() if hits}


def test_the_scan_sees_every_kind_of_import(tmp_path):
    sample = tmp_path / "pxp" / "sub" / "mod.py"
    sample.parent.mkdir(parents=True)
    sample.write_text(
        "import importlib\nfrom . import sibling\nfrom ..other import thing\n"
        "def f():\n    import service.db\n    importlib.import_module('worker.tasks')\n    __import__('x.y')\n"
    )
    module = _scan(sample, root=tmp_path)
    assert {"pxp.sub.sibling", "pxp.other.thing", "service.db", "worker.tasks", "x.y"} <= module.imports
    assert module.string_imports == ["worker.tasks", "x.y"]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_string_imports(package):
    found = {m.path: m.string_imports for m in MODULES[package] if m.string_imports}
    assert found == {}, "a test seam is an argument, not a string import (ARCHITECTURE.md §1)"


def test_pxp_imports_nothing_from_the_service_side():
    forbidden = ("service", "worker", "fastapi", "celery", "sqlalchemy", "starlette", "alembic")
    assert _offending("pxp", forbidden) == {}


def test_service_never_imports_torch():
    assert _offending("service", HEAVY) == {}


def test_service_imports_worker_only_through_the_embedded_launcher():
    found = {m.path: set(_hits(m.imports, ("worker",))) for m in MODULES["service"]}
    found = {path: hits for path, hits in found.items() if hits}
    allowed = {path: tuple(SERVICE_TO_WORKER.get(path, ())) for path in found}
    assert all(set(_hits(hits, allowed[path])) == hits for path, hits in found.items()), found


def test_worker_imports_only_the_shared_service_modules():
    for module in MODULES["worker"]:
        service_imports = set(_hits(module.imports, ("service",)))
        assert service_imports == set(_hits(service_imports, WORKER_MAY_IMPORT)), (
            module.path,
            service_imports,
        )
        assert not _hits(module.imports, ("service.api", "service.main", "fastapi", "starlette")), module.path


def test_architecture_doc_states_the_same_worker_rule():
    doc = ROOT.parent / "shared" / "ARCHITECTURE.md"
    if not doc.is_file():
        pytest.skip("ARCHITECTURE.md is not beside this checkout")
    rule = next(line for line in doc.read_text().splitlines() if line.startswith("- `worker` may import"))
    assert all(f"`{name}`" in rule for name in WORKER_MAY_IMPORT), rule


def _fresh_python(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PXP_DATA_DIR": "/tmp/pxp-dep-test"},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_gateway_import_does_not_load_torch():
    heavy = ", ".join(repr(m) for m in (*HEAVY, "numpy"))
    loaded = _fresh_python(
        f"import sys, service.main\nprint(','.join(m for m in ({heavy}) if m in sys.modules))"
    )
    assert loaded == "", f"service.main loaded {loaded}"


def test_client_and_service_cli_are_torch_free():
    assert _fresh_python(
        "import sys, pxp.client, pxp.cli_service, service.cli; print('torch' in sys.modules)"
    ) == ("False")


def _module_level_imports(path: Path, known: set[str]) -> set[str]:
    """Modules of the tree ``path`` imports when it is itself imported (not inside functions or
    ``TYPE_CHECKING``): the edges that can form an import circle."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in known}


def test_no_import_circles() -> None:
    paths: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            paths[name] = path
    graph = {name: _module_level_imports(path, set(paths)) - {name} for name, path in paths.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                circles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert not circles, [" -> ".join(c) for c in circles]
