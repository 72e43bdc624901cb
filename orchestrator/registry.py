"""Search name -> :class:`Entry`. The CLI (``medtune search NAME``), the Python API, specs and the
coordinator are all generated from this table.

An entry names its Search class and its config class as ``"module:Class"`` strings and carries
its one-line description, so ``medtune --help`` and ``medtune search NAME --help`` import no
search module (config classes live in the light :mod:`orchestrator.config`). :func:`get`
imports the search's module, when the search is used.

Where searches come from, in this order (the first registration of a name wins; a later one
with another target is listed as not registered in ``medtune --help``):

1. :data:`BUILTIN`, the five searches of this package. They are also declared as entry points in
   ``pyproject.toml``; the table is what counts, so a checkout that was not reinstalled works.
2. Entry points of the group ``medtune.searches`` of installed packages: ``NAME = "module:Class"``
   naming a Search subclass whose ``name`` is ``NAME``.
3. ``MEDTUNE_SEARCHES``, an environment variable of comma-separated ``NAME=module:Class`` items
   (``MEDTUNE_SEARCHES="toy=tests.orchestrator.toy_search:ToySearch"``): a search for this process
   and the processes it starts (``medtune run`` drivers), nothing installed.
4. :data:`SEARCHES`, ``NAME -> "module:Class"`` set in this process (by tests and benchmarks).

A plugin's (2-4) description and config class are its class attributes, read when the search is
used (``medtune search NAME ...``, a spec ``type: NAME``, :func:`get`); help listings show its
target instead, so a slow or broken plugin costs nothing until it is used. A broken plugin
(import fails, not a Search, another name, a malformed item) is one :class:`ConfigError` line
naming it when it is used; other searches are unaffected.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import re
from dataclasses import dataclass

from medcore.errors import ConfigError

GROUP = "medtune.searches"
ENV = "MEDTUNE_SEARCHES"
TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
BUILTIN_SOURCE = "built-in"


@dataclass(frozen=True)
class Entry:
    """A registered search. ``config`` and ``description`` are empty for a plugin until
    :func:`entry` loads its class; ``source`` says where it was registered (for error lines)."""

    name: str
    search: str  # "module:Class" of the Search subclass
    config: str = ""  # "module:Class" of its config dataclass
    description: str = ""  # one line
    source: str = BUILTIN_SOURCE

    @property
    def builtin(self) -> bool:
        return self.source == BUILTIN_SOURCE

    def label(self) -> str:
        """How a help listing describes it without importing anything."""
        return self.description if self.builtin else f"plugin {self.search or repr(self.search)} ({self.source})"


BUILTIN = {e.name: e for e in (
    Entry("ode", "orchestrator.searches.ode:ODESearch", "orchestrator.config:ODESearchConfig",
          "opposition-based DE over the 3D cell space"),
    Entry("compress", "orchestrator.searches.compress:CompressSearch", "orchestrator.config:CompressSearchConfig",
          "surrogate-assisted CTAEA over pruning + quantization"),
    Entry("strategy", "orchestrator.searches.strategy:StrategySearch", "orchestrator.config:StrategySearchConfig",
          "Optuna (TPE + ASHA, or NSGA-II) over training strategies: init, norm, dropout, L1/L2, optimizer, "
          "augmentation"),
    Entry("mednns", "orchestrator.searches.mednns:MedNNSSearch", "orchestrator.config:MedNNSSearchConfig",
          "MedNNS: per-dataset supernets, their zoo, a leave-one-out meta-space and its recommendation"),
    Entry("darts", "orchestrator.searches.darts:DartsSearch", "orchestrator.config:DartsSearchConfig",
          "PC-DARTS Implantable Adaptive Cells in the skips of frozen U-Nets (Stage I -> II -> III)"),
)}

# Searches registered in this process: name -> "module:Class" (what an entry point names).
SEARCHES: dict[str, str] = {}


@functools.lru_cache(maxsize=1)
def _entry_points() -> tuple[tuple[str, str, str], ...]:
    """``(name, "module:Class", distribution)`` of the installed ``medtune.searches`` entry points."""
    from importlib.metadata import entry_points

    found = []
    for ep in entry_points(group=GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
        found.append((ep.name, ep.value, dist))
    return tuple(found)


def _declared() -> list[tuple[str, str, str]]:
    """Every plugin declaration ``(name, target, source)``, in precedence order; a malformed
    ``MEDTUNE_SEARCHES`` item is kept (named by what precedes ``=``) so using it says why."""
    found = [(name, value, f"entry point of {dist}") for name, value, dist in _entry_points()]
    for item in os.environ.get(ENV, "").split(","):
        if item.strip():
            name, _, target = item.partition("=")
            found.append((name.strip() or item.strip(), target.strip(), ENV))
    found += [(name, target, "registry.SEARCHES") for name, target in SEARCHES.items()]
    return found


def _table() -> tuple[dict[str, Entry], list[str]]:
    """The entries by name, and one line for each declaration that was not registered."""
    table, skipped = dict(BUILTIN), []
    for name, target, source in _declared():
        known = table.get(name)
        if known is None:
            table[name] = Entry(name, target, source=source)
        elif known.search != target:  # the same target twice (a built-in's entry point) is no conflict
            skipped.append(f"{name} = {target} ({source}): the name is taken by {known.search} ({known.source})")
    return table, skipped


def entries() -> dict[str, Entry]:
    """Every registered search by name, built-ins first; nothing is imported."""
    return _table()[0]


def not_registered() -> list[str]:
    """One line per plugin declaration dropped because its name was taken."""
    return _table()[1]


def names() -> list[str]:
    return list(entries())


def _import(target: str, what: str):
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"{what} is {target!r}, expected 'module:Class'")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _broken(e: Entry, why: str) -> ConfigError:
    return ConfigError(f"search plugin '{e.name}' = {e.search!r} ({e.source}) cannot be loaded: {why}")


def search_class(name: str) -> type:
    """The Search subclass registered as ``name`` (imports its module)."""
    table = entries()
    if name not in table:
        raise ConfigError(f"unknown search '{name}'; known searches: {', '.join(table)}")
    e = table[name]
    if e.builtin:
        return _import(e.search, "the search")
    from orchestrator.search import Search

    if not TARGET.fullmatch(e.search):
        raise _broken(e, "expected a target 'module:Class'" + (f" (write {ENV} as NAME=module:Class,...)"
                                                                 if e.source == ENV else ""))
    try:
        cls = _import(e.search, "the target")
    except Exception as exc:  # anything a plugin's import raises
        raise _broken(e, " ".join(f"{type(exc).__name__}: {exc}".split())) from None
    if not (isinstance(cls, type) and issubclass(cls, Search)):
        raise _broken(e, f"{e.search} is not a subclass of orchestrator.search.Search")
    if cls.name != name:
        raise _broken(e, f"{e.search}.name is {cls.name!r}, not {name!r}")
    if not (isinstance(cls.config_cls, type) and dataclasses.is_dataclass(cls.config_cls)):
        raise _broken(e, f"{e.search}.config_cls is not a dataclass")
    return cls


def entry(name: str) -> Entry:
    """The complete entry of ``name``: a plugin's class is loaded for its config and description."""
    e = entries().get(name)
    if e is not None and e.builtin:
        return e
    cls = search_class(name)  # refuses an unknown name
    description = (str(cls.description or "").strip().splitlines() or [""])[0]
    config = f"{cls.config_cls.__module__}:{cls.config_cls.__qualname__}"
    return dataclasses.replace(e, config=config, description=description)


def config_cls(name: str) -> type:
    """The config class of ``name``; a built-in's imports no search module."""
    e = entries().get(name)
    if e is not None and e.builtin:
        return _import(e.config, "the config")
    return search_class(name).config_cls


def get(name: str):
    """An instance of the search registered as ``name`` (imports its module)."""
    return search_class(name)()
