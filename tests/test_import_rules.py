"""The layering rules of the packages, checked on the source (every import, at any depth).

* ``medcore`` imports only the standard library and itself, so every package can depend on it;
* ``searchers`` never imports torch, MONAI, ``trainables`` or ``orchestrator`` (the driver
  imports searchers without torch);
* ``trainables`` imports neither ``searchers`` nor ``orchestrator`` (trials run on workers
  that need only the network code);
* ``orchestrator`` never imports ``benchmarks`` or ``tests``.

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
            if node.level:
                base = list(module_parts[:-node.level])
                found.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
            else:
                found.append((node.lineno, node.module))
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
