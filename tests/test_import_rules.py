"""The layering rules of the packages, checked on the source (every import, at any depth).

* ``medcore`` imports only the standard library and itself, so every package can depend on it;
* ``searchers`` never imports torch, MONAI, ``trainables`` or ``orchestrator`` (the driver
  imports searchers without torch);
* ``trainables`` imports neither ``searchers`` nor ``orchestrator`` (trials run on workers
  that need only the network code);
* ``orchestrator`` never imports ``benchmarks`` or ``tests``;
* the modules of ``orchestrator`` import each other without a cycle.

Imports inside functions count, relative imports are resolved, and ``importlib.import_module`` /
``__import__`` calls with a literal name count too. A failure lists every offending file:line.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STDLIB = frozenset(sys.stdlib_module_names)

# package -> (allowed top-level modules or None for "anything else", forbidden top-level modules)
RULES = {
    "medcore": (STDLIB | {"medcore"}, frozenset()),
    "searchers": (None, frozenset({"torch", "monai", "trainables", "orchestrator"})),
    "trainables": (None, frozenset({"searchers", "orchestrator"})),
    "orchestrator": (None, frozenset({"benchmarks", "tests"})),
}


def _dynamic_import(node: ast.Call) -> str | None:
    """The literal module name of ``importlib.import_module("x")`` or ``__import__("x")``."""
    func = node.func
    named = (isinstance(func, ast.Name) and func.id in ("__import__", "import_module")) or (
        isinstance(func, ast.Attribute) and func.attr == "import_module")
    if named and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        return node.args[0].value
    return None


def _from_module(node: ast.ImportFrom, module_parts: tuple[str, ...]) -> str:
    """The absolute module of ``from X import ...``, relative ones resolved against ``module_parts``."""
    if not node.level:
        return node.module
    return ".".join(list(module_parts[:-node.level]) + ([node.module] if node.module else []))


def imported_modules(source: str, module_parts: tuple[str, ...]) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``source``.

    ``module_parts`` is the importing module's dotted path (``("searchers", "ctaea")``; a
    package's ``__init__`` included), used to resolve relative imports.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, _from_module(node, module_parts)))
        elif isinstance(node, ast.Call) and (name := _dynamic_import(node)) is not None:
            found.append((node.lineno, name))
    return sorted(found)


def violations(package: str) -> list[str]:
    """``path:line: imports name`` for every import in ``package`` that breaks its rule."""
    allowed, forbidden = RULES[package]
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT)
        for line, name in imported_modules(path.read_text(), rel.with_suffix("").parts):
            top = name.split(".")[0]
            if top in forbidden or (allowed is not None and top not in allowed):
                out.append(f"{rel}:{line}: imports {name}")
    return out


def _module_name(rel: Path) -> str:
    parts = rel.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports, at any depth. An import points at the
    deepest module it names: ``from orchestrator import zoo`` at ``orchestrator.zoo``,
    ``from orchestrator.zoo import read_zoo`` and ``import orchestrator.zoo.x`` at ``orchestrator.zoo``."""
    files = {_module_name(p.relative_to(root)): p for p in sorted((root / package).rglob("*.py"))}

    def known(name: str) -> str | None:
        parts = name.split(".")
        return next((m for m in (".".join(parts[:i]) for i in range(len(parts), 0, -1)) if m in files), None)

    graph = {}
    for name, path in files.items():
        parts = path.relative_to(root).with_suffix("").parts
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {known(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = _from_module(node, parts)
                targets |= {known(f"{base}.{alias.name}") for alias in node.names}
            elif isinstance(node, ast.Call) and (dynamic := _dynamic_import(node)) is not None:
                targets.add(known(dynamic))
        graph[name] = targets - {None, name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return None


def test_orchestrator_modules_import_each_other_without_a_cycle():
    graph = import_graph(ROOT, "orchestrator")
    # the scanner sees the run manifest's importers (a graph without edges has no cycle either)
    assert {"orchestrator.manifest", "orchestrator.run_report"} <= graph["orchestrator.coordinator.core"]
    assert "orchestrator.manifest" in graph["orchestrator.run_report"]
    assert not {m for m in graph["orchestrator.manifest"]
                if m == "orchestrator.run_report" or m.startswith("orchestrator.coordinator")}
    cycle = find_cycle(graph)
    assert cycle is None, "orchestrator imports in a cycle: " + " -> ".join(cycle)


def test_a_cycle_through_a_function_local_import_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("import os\nfrom .sub import c\n")
    (pkg / "sub" / "c.py").write_text("def f():\n    from ..a import thing\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.sub.c"}, "pkg.sub": set(),
                     "pkg.sub.c": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]
    (pkg / "sub" / "c.py").write_text("import json\n")
    assert find_cycle(import_graph(tmp_path, "pkg")) is None


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_imports_follow_the_layering_rules(package):
    bad = violations(package)
    assert not bad, f"{package} breaks its import rule:\n" + "\n".join(bad)


def test_the_scanner_sees_nested_relative_and_dynamic_imports():
    source = (
        "import os, numpy.linalg\n"
        "from . import sibling\n"
        "from ..other import thing\n"
        "def f():\n"
        "    import torch\n"
        "    class C:\n"
        "        from trainables.fit import fit\n"
        "    return importlib.import_module('orchestrator.cli'), __import__('monai')\n"
    )
    assert imported_modules(source, ("medcore", "sub", "mod")) == [
        (1, "numpy.linalg"), (1, "os"), (2, "medcore.sub"), (3, "medcore.other"), (5, "torch"),
        (7, "trainables.fit"), (8, "monai"), (8, "orchestrator.cli")]


def test_every_name_a_benchmark_or_example_imports_from_the_project_exists():
    """Benchmarks and examples are run by hand, not by the suite: a name that a refactor moved or
    removed would break them silently (benchmarks/seed_spread.py imported a builder renamed long
    before). Every ``from <project module> import name`` in them, function-local ones included,
    must resolve."""
    import importlib
    import importlib.util

    project = ("orchestrator", "trainables", "searchers", "medcore", "benchmarks", "tests")
    missing = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "examples").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                    and node.module.split(".")[0] in project):
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name) and importlib.util.find_spec(
                        f"{node.module}.{alias.name}") is None:
                    missing.append(f"{path.name}: from {node.module} import {alias.name}")
    assert not missing, missing
