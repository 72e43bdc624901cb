"""Stable names of the zoo's network builders, and the one resolver of a build recipe.

A build recipe (``{"builder": name, "kwargs": {...}}``: zoo rows, checkpoints' ``build.json``,
model cards) names its builder by a short stable name from :data:`BUILDERS`, so moving a
module changes one line here instead of breaking every zoo already written. Recipes written
before names (``"trainables.ode_trial:build_network"``) still resolve: a path in :data:`LEGACY`
maps to its name, and any other ``module:function`` that still imports is accepted as is.

Importing this module imports no network code (no torch): the builders' modules are imported
only when :func:`resolve` is called.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

from medcore.errors import MedtuneError

# name -> "module:function" (or a class). Names are what records store: never rename one.
BUILDERS = {
    "cell_net": "trainables.ode_trial:build_network",  # an ODE cell network (CellNet)
    "baseline": "trainables.ode_trial:build_baseline",  # the ODE search's --baseline networks
    "tiny_cnn": "trainables.nets.tiny_cnn:TinyCNN",
    "resnet": "trainables.nets.resnet:build_resnet",
    "strategy_model": "trainables.strategy_trial:build_model",  # a net plus a strategy's norm/dropout
    "ofa_subnet": "trainables.nets.ofa_resnet:build_subnet",  # MedNNS: a subnet of a saved supernet
    "unet": "trainables.nets.unets:rebuild_unet",  # DARTS stage 1: a plain U-Net
    "darts_skip_model": "trainables.darts_trial:build_skip_model",  # DARTS stage 3: U-Net + skip modules
}

# The import paths medtune wrote before names (issue #23), mapped to their names. Keep every
# entry when a builder moves: zoos written by older versions hold these strings.
LEGACY = {
    "trainables.ode_trial:build_network": "cell_net",
    "trainables.ode_trial:build_baseline": "baseline",
    "trainables.nets.tiny_cnn:TinyCNN": "tiny_cnn",
    "trainables.nets.resnet:build_resnet": "resnet",
    "trainables.strategy_trial:build_model": "strategy_model",
    "trainables.nets.ofa_resnet:build_subnet": "ofa_subnet",
    "trainables.nets.unets:rebuild_unet": "unet",
    "trainables.darts_trial:build_skip_model": "darts_skip_model",
}


class UnknownBuilder(MedtuneError):
    """A build recipe whose builder is neither a known name nor an importable ``module:function``."""


def _known() -> str:
    return f"known builders: {', '.join(sorted(BUILDERS))}"


def name_of(builder: str) -> str:
    """The stable name of ``builder`` (a name, or a legacy path in :data:`LEGACY`); any other
    string is returned unchanged (an unknown path, resolved by import)."""
    builder = str(builder)
    if builder in BUILDERS:
        return builder
    return LEGACY.get(builder) or {path: name for name, path in BUILDERS.items()}.get(builder, builder)


def _import(path: str) -> Callable[..., Any]:
    module, _, function = path.partition(":")
    target = importlib.import_module(module)
    for part in function.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{path} is not callable")
    return target


def resolve(builder: str) -> Callable[..., Any]:
    """The function (or class) a recipe's ``builder`` names: a name of :data:`BUILDERS`, or a
    ``module:function`` path written by older code. Raises :class:`UnknownBuilder` (one line)."""
    if not isinstance(builder, str) or not builder:
        raise UnknownBuilder(f"a build recipe needs a builder name, got {builder!r}; {_known()}")
    name = name_of(builder)
    if name in BUILDERS:
        return _import(BUILDERS[name])
    module, sep, function = builder.partition(":")
    if not sep or not module or not function:
        raise UnknownBuilder(f"unknown builder '{builder}'; {_known()}")
    try:
        return _import(builder)
    except (ImportError, AttributeError, TypeError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UnknownBuilder(f"unknown builder '{builder}' (it does not import: {why}); {_known()}") from None


def build(build: dict):
    """Call the recipe's builder with its ``kwargs``: the network it describes."""
    if not isinstance(build, dict):
        raise UnknownBuilder(f"a build recipe is {{\"builder\": name, \"kwargs\": {{...}}}}, got {build!r:.200}")
    return resolve(build.get("builder"))(**dict(build.get("kwargs") or {}))


def normalise(build: dict) -> dict:
    """``build`` with its builder, and those of recipes nested in its kwargs (a strategy-trained
    model's ``net``), written as names where a legacy path has one. Returns a new dict."""
    if not isinstance(build, dict) or "builder" not in build:
        return build
    out = dict(build, builder=name_of(build["builder"]))
    kwargs = build.get("kwargs")
    if isinstance(kwargs, dict):
        out["kwargs"] = {k: normalise(v) if isinstance(v, dict) and "builder" in v else v for k, v in kwargs.items()}
    return out
