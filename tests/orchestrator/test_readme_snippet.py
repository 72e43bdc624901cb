"""The README's Python snippet runs as written, offline: its configs validate and their data load
from the shipped sample, and its budgets are demo-sized. ``run_search`` is replaced by a recorder (the
real searches take the demo's ~5 minutes; ``make demo`` and the search tests run them), so this
checks everything the snippet decides -- imports, config fields, data, budgets -- without Ray."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def python_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_python_snippet_builds_its_searches_on_the_shipped_sample(monkeypatch, tmp_path):
    from orchestrator import driver, registry

    snippets = [s for s in python_snippets() if "run_search(" in s]
    assert len(snippets) == 1, "expected one README python snippet that calls run_search"
    calls = []

    def recorder(search, cfg, data=None):
        cfg.validate()
        loaded = registry.get(search).load_data(cfg)  # raises on a missing data_root (it would download)
        calls.append((search, cfg, loaded))
        return {"search": search}

    monkeypatch.setattr(driver, "run_search", recorder)
    monkeypatch.chdir(tmp_path)  # its relative out= folders land here
    exec(compile(snippets[0], str(README), "exec"), {"__name__": "readme_snippet"})
    assert [c[0] for c in calls] == ["ode", "compress"]
    for _, cfg, data in calls:
        assert data.info.flag == "adrenalmnist3d" and not data.info.synthetic  # the real sample, offline
        assert Path(cfg.data_root).resolve() == Path(driver.__file__).parent / "sample_data"
    (_, ode, _), (_, compress, _) = calls
    # demo-sized, each budget stated in the snippet rather than left at the paper's defaults
    assert ode.budget <= 8 and ode.fit.max_epochs <= 2 and ode.retrain_epochs <= 3
    assert compress.model == "resnet10" and compress.fit.max_epochs <= 2 and compress.budget <= 8


@pytest.mark.parametrize("snippet", python_snippets())
def test_every_readme_python_snippet_compiles(snippet):
    compile(snippet, str(README), "exec")
