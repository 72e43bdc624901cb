"""Search name -> Search class. The CLI (``medtune search NAME``), the Python API and the
coordinator are all generated from this table; adding a search is one module and one line here.
Classes are named as import strings so that ``medtune --help`` imports no search code."""
from __future__ import annotations

import importlib

from medcore.errors import ConfigError

SEARCHES = {
    "ode": "orchestrator.searches.ode:ODESearch",
    "compress": "orchestrator.searches.compress:CompressSearch",
    "strategy": "orchestrator.searches.strategy:StrategySearch",
    "mednns": "orchestrator.searches.mednns:MedNNSSearch",
    "darts": "orchestrator.searches.darts:DartsSearch",
}


def names() -> list[str]:
    return list(SEARCHES)


def get(name: str):
    """An instance of the search registered as ``name``."""
    if name not in SEARCHES:
        raise ConfigError(f"unknown search '{name}'; known searches: {', '.join(SEARCHES)}")
    module, cls = SEARCHES[name].split(":")
    return getattr(importlib.import_module(module), cls)()
