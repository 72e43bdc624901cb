"""Every package folder of the product is listed in pyproject.toml's setuptools ``packages``.

The list is explicit, so a new sub-package (``orchestrator/coordinator/`` was one) that is not
added to it is left out of a non-editable install and fails there with ``ModuleNotFoundError``,
while an editable checkout keeps working. A folder of modules without ``__init__.py`` would be
left out the same way, and a listed package that no longer exists breaks the build.
"""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("medcore", "searchers", "trainables", "orchestrator")


def _listed() -> set[str]:
    tomllib = pytest.importorskip("tomllib")
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def _module_folders() -> set[Path]:
    """Folders of the product packages that hold Python modules."""
    return {path.parent for top in PRODUCT for path in (ROOT / top).rglob("*.py")
            if "__pycache__" not in path.parts}


def test_every_module_folder_is_a_package():
    missing = sorted(str(d.relative_to(ROOT)) for d in _module_folders() if not (d / "__init__.py").is_file())
    assert not missing, f"folders of modules without __init__.py: {missing}"


def test_pyproject_lists_every_package_and_only_those():
    found = {".".join(d.relative_to(ROOT).parts) for d in _module_folders() if (d / "__init__.py").is_file()}
    listed = _listed()
    assert not found - listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"
    assert not listed - found, f"listed in pyproject.toml but not a package here: {sorted(listed - found)}"
