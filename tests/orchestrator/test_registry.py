"""The search registry (fast, no Ray): built-in entries match their classes and pyproject, help
imports no search module, and plugins (MEDTUNE_SEARCHES, entry points) add a search or fail in
one line without breaking the others."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medcore.errors import ConfigError
from orchestrator import registry
from orchestrator.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]
TOY = "toy=tests.orchestrator.toy_search:ToySearch"
# Runs main() on each argv (help exits), then prints the search modules that were imported.
IMPORTED = """import json, sys
from orchestrator import cli
for argv in {argvs!r}:
    try:
        cli.main(argv)
    except SystemExit:
        pass
print(json.dumps(sorted(m for m in sys.modules if m.startswith("orchestrator.searches"))))
"""


def medtune(*args, env_add=None, pythonpath="") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != registry.ENV}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, str(ROOT)) if p)
    env.update(env_add or {})
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def cli(*argv, **kw) -> subprocess.CompletedProcess:
    return medtune("-m", "orchestrator.cli", *argv, **kw)


def test_builtin_entries_match_their_search_classes():
    for name, e in registry.BUILTIN.items():
        cls = registry.search_class(name)
        assert (cls.name, cls.description) == (e.name, e.description), name
        assert cls.config_cls is registry.config_cls(name), name
        assert e.config.startswith("orchestrator.config:"), name  # config classes import light
        assert isinstance(registry.get(name), cls)


def test_pyproject_declares_the_builtin_entry_points():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["entry-points"][registry.GROUP]
    assert declared == {name: e.search for name, e in registry.BUILTIN.items()}


def test_help_imports_no_search_module():
    argvs = [["--help"], ["search", "--help"], ["search", "ode", "--help"], ["search", "darts", "--help"]]
    done = medtune("-c", IMPORTED.format(argvs=argvs))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    assert "--budget" in done.stdout and registry.BUILTIN["ode"].description in done.stdout


def test_the_help_listing_names_every_search_and_its_description():
    done = cli("--help")
    assert done.returncode == 0, done.stderr
    for name, e in registry.BUILTIN.items():
        assert f"  {name}" in done.stdout and e.description in done.stdout


def test_a_toy_search_from_medtune_searches_is_listed_and_runs_its_flags():
    env = {registry.ENV: TOY}
    listing = cli("--help", env_add=env)
    assert listing.returncode == 0, listing.stderr
    assert "toy       plugin tests.orchestrator.toy_search:ToySearch (MEDTUNE_SEARCHES)" in listing.stdout
    done = medtune("-c", IMPORTED.format(argvs=[["search", "toy", "--help"]]), env_add=env)
    assert done.returncode == 0, done.stderr
    assert "test-only search" in done.stdout and "--n-trials" in done.stdout and "--fail" in done.stdout
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []  # the toy is not a search module


def test_a_broken_plugin_is_one_line_when_used_and_breaks_nothing_else():
    env = {registry.ENV: f"bad=nowhere.at_all:Nope,{TOY}"}
    done = cli("search", "bad", "--out", "x", env_add=env)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("medtune: error: search plugin 'bad' = 'nowhere.at_all:Nope' (MEDTUNE_SEARCHES) "
                                  "cannot be loaded: ModuleNotFoundError: No module named 'nowhere'"), done.stderr
    for argv in (["--help"], ["search", "ode", "--help"], ["search", "toy", "--help"]):
        assert cli(*argv, env_add=env).returncode == 0, argv


def test_an_entry_point_of_an_installed_distribution_adds_a_search(tmp_path):
    """A dist-info folder on sys.path is what pip installs: importlib.metadata finds its group."""
    info = tmp_path / "toyplugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyplugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{registry.GROUP}]\ntoy = tests.orchestrator.toy_search:ToySearch\n"
                                           "ode = orchestrator.searches.ode:ODESearch\n"
                                           "darts = toyplugin:OtherDarts\n")
    listing = cli("--help", pythonpath=str(tmp_path))
    assert listing.returncode == 0, listing.stderr
    assert "toy       plugin tests.orchestrator.toy_search:ToySearch (entry point of toyplugin)" in listing.stdout
    # ode: the built-in's own declaration, no conflict; darts: the name is taken, listed as not registered
    assert ("not registered:\n  darts = toyplugin:OtherDarts (entry point of toyplugin): the name is taken by "
            "orchestrator.searches.darts:DartsSearch (built-in)\n") in listing.stdout
    assert "ode = " not in listing.stdout
    done = cli("search", "toy", "--help", pythonpath=str(tmp_path))
    assert done.returncode == 0 and "test-only search" in done.stdout, done.stderr


def test_a_plugin_entry_comes_from_its_class(monkeypatch):
    from tests.orchestrator.toy_search import ToyConfig, ToySearch

    monkeypatch.setenv(registry.ENV, f" {TOY} ,")
    e = registry.entries()["toy"]
    assert (e.config, e.description, e.builtin) == ("", "", False)  # nothing loaded to list it
    assert registry.entry("toy") == registry.Entry("toy", "tests.orchestrator.toy_search:ToySearch",
                                                   "tests.orchestrator.toy_search:ToyConfig", "test-only search",
                                                   registry.ENV)
    assert registry.config_cls("toy") is ToyConfig and isinstance(registry.get("toy"), ToySearch)
    assert registry.entry("ode") is registry.BUILTIN["ode"]


@pytest.mark.parametrize("value,why", [
    ("mytoy=tests.orchestrator.toy_search:ToySearch", "ToySearch.name is 'toy', not 'mytoy'"),
    ("toy=tests.orchestrator.toy_search:ToyConfig", "ToyConfig is not a subclass of orchestrator.search.Search"),
    ("toy=tests.orchestrator.toy_search:Missing", "AttributeError: module 'tests.orchestrator.toy_search' has no"),
    ("toy=tests.orchestrator.toy_search", "expected a target 'module:Class' (write MEDTUNE_SEARCHES as NAME="),
    ("tests.orchestrator.toy_search:ToySearch", "expected a target 'module:Class'"),
])
def test_a_broken_plugin_names_itself_and_why(monkeypatch, value, why):
    monkeypatch.setenv(registry.ENV, value)
    name = value.partition("=")[0] if "=" in value else value
    for use in (registry.get, registry.config_cls, registry.entry):
        with pytest.raises(ConfigError) as info:
            use(name)
        text = str(info.value)
        assert text.startswith(f"search plugin '{name}' = ") and why in text and "\n" not in text, text
    assert registry.config_cls("ode").__name__ == "ODESearchConfig"  # the others are unaffected


def test_a_plugin_cannot_take_a_builtin_name(monkeypatch):
    monkeypatch.setenv(registry.ENV, "ode=tests.orchestrator.toy_search:ToySearch")
    assert registry.entries()["ode"] is registry.BUILTIN["ode"]
    assert registry.not_registered() == ["ode = tests.orchestrator.toy_search:ToySearch (MEDTUNE_SEARCHES): the name "
                                         "is taken by orchestrator.searches.ode:ODESearch (built-in)"]


def test_a_spec_naming_a_broken_plugin_is_refused_at_its_type(monkeypatch):
    monkeypatch.setenv(registry.ENV, "bad=nowhere.at_all:Nope")
    with pytest.raises(ConfigError, match=r"^searches\[0\]\.type: search plugin 'bad' = 'nowhere.at_all:Nope' "
                                          r"\(MEDTUNE_SEARCHES\) cannot be loaded: ModuleNotFoundError"):
        parse_spec({"searches": [{"name": "a", "type": "bad"}]}, ".")
