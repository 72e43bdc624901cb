"""The schema of typed configs: a dataclass tree whose fields carry their CLI help, flag name,
choices, bounds and path marks (:func:`opt`).

Generic, with no search in it: flags are generated from the fields (:func:`add_flags`), YAML and
JSON map onto the same objects (:func:`from_dict`), and :func:`check_values` checks what every
field's declaration promises (finite floats, 64-bit ints, capped strings, bounds, choices) on every
path in, so a flag, a spec and the Python API give the same one-line :class:`ConfigError`. The
concrete configs live in :mod:`orchestrator.config`.
"""
from __future__ import annotations

import argparse
import functools
import math
import reprlib
import typing
from dataclasses import field, fields, is_dataclass

from medcore.errors import ConfigError

# Every int field fits in 64 bits (torch and numpy hold them as int64); no config string needs more.
INT_RANGE = (-(2**63), 2**63 - 1)
MAX_STRING = 4096
# At most this much of a user's value is quoted in an error line.
QUOTE_LIMIT = 80

def opt(default=None, help: str = "", flag: str | None = None, choices=None, factory=None, bounds=None,
        path: bool = False, literal=None):
    """A config field with its CLI help (and optional flag name, choices, and inclusive ``bounds``
    checked by :func:`check_values`). ``path``: it holds a local file or folder (a spec resolves
    a relative one against its own folder, :func:`path_fields`); ``literal(value)`` is true for
    the values of such a field that name no path (kept as written, :func:`names_path`)."""
    meta = {"help": help, "flag": flag, "choices": choices, "bounds": bounds, "path": path, "literal": literal}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)

def quote(value, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` for an error line, at most about ``limit`` characters: a long string is cut
    with '…' and its length, a deep or long container shortened (a 5 MB value must not become
    a 5 MB line)."""
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else f"{value[:limit]!r}… ({len(value)} characters)"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 3 * limit:
        if value.bit_length() < 14000:  # str() refuses ints past 4300 digits
            return f"a {len(str(abs(value)))}-digit number"
        return f"a number of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother, short.maxlong = 3, limit, limit, limit
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = 6
    try:
        text = short.repr(value)
    except (ValueError, RecursionError):  # an int past Python's str() digit limit inside a container
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "…"


def clip(text, limit: int = QUOTE_LIMIT) -> str:
    """``str(text)`` unquoted (a path in a message), cut like :func:`quote` when long."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def key_text(key, limit: int = QUOTE_LIMIT) -> str:
    """A mapping key as part of a field path (``fit.lr``), cut like :func:`quote` when long."""
    return clip(key if isinstance(key, (str, int, float, bool)) or key is None else quote(key, limit), limit)


def _one_of(choices) -> str:
    """``a or b`` / ``a, b or c``: the choices of a field as an error line names them."""
    names = [str(c) for c in choices]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def check_values(cfg) -> None:
    """The checks every field gets from its declaration, before any search's own rules: a float
    is finite (NaN compares false with every bound, so it would pass them all: ``max_gflops: .nan``
    would mean "no cap"), an int fits in 64 bits, a string is at most :data:`MAX_STRING`
    characters, a field with ``bounds`` lies within them, and one with ``choices`` is one of them
    (the only check of choices: the CLI leaves them to this, so a flag reads like a spec)."""
    for path, parts, kind, bounds, choices in _typed_leaves(type(cfg)):
        value = cfg
        for part in parts:
            value = getattr(value, part)
        if value is None or isinstance(value, bool):
            continue
        number = isinstance(value, (int, float))
        if bounds is not None and number and not bounds[0] <= value <= bounds[1]:
            raise ConfigError(f"must be in [{bounds[0]}, {bounds[1]}], got {quote(value)}", path)
        if kind is float and number and not math.isfinite(value):
            raise ConfigError(f"must be a finite number, got {value}", path)
        if kind is int and isinstance(value, int) and not INT_RANGE[0] <= value <= INT_RANGE[1]:
            raise ConfigError(f"must fit in 64 bits, got {quote(value)}", path)
        if kind is str and isinstance(value, str) and len(value) > MAX_STRING:
            raise ConfigError(f"longer than {MAX_STRING} characters: {quote(value)}", path)
        if choices is not None and value not in choices:
            raise ConfigError(f"must be {_one_of(choices)}, got {quote(value)}", path)


@functools.lru_cache(maxsize=None)
def _typed_leaves(cls) -> tuple:
    """``(path, attribute chain, scalar type, bounds, choices)`` of every leaf of ``cls``, once per class."""
    return tuple((path, tuple(path.split(".")), _scalar_type(tp), f.metadata.get("bounds"),
                  f.metadata.get("choices")) for path, f, tp in leaves(cls))


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict:
    """``typing.get_type_hints`` once per class (a spec of many searches builds many configs)."""
    return typing.get_type_hints(cls)


def leaves(cls, prefix: str = ""):
    """(path, field, owner class) of every non-dataclass field, depth first."""
    hints = _hints(cls)
    for f in fields(cls):
        tp = hints[f.name]
        if is_dataclass(tp):
            yield from leaves(tp, prefix + f.name + ".")
        else:
            yield prefix + f.name, f, tp


def flag_of(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def flag_names(cls) -> dict[str, str]:
    """Field path -> CLI flag, for rendering errors in the CLI's words."""
    return {path: flag_of(f) for path, f, _ in leaves(cls)}


@functools.lru_cache(maxsize=None)
def _path_leaves(cls) -> dict:
    """Field path -> field, of every leaf of ``cls`` marked ``path`` (once per class)."""
    return {path: f for path, f, _ in leaves(cls) if f.metadata.get("path")}


def path_fields(cls) -> tuple[str, ...]:
    """The field paths (``data_root``, ``fit.x``) of ``cls`` that hold a local file or folder, so
    a spec resolves them against its own folder without keeping a list."""
    return tuple(_path_leaves(cls))


def names_path(cls, path: str, value) -> bool:
    """Whether ``value`` of path field ``path`` names a path: not a value the field reads as
    something else (``data: synthetic``, JSON text in ``space``)."""
    literal = _path_leaves(cls)[path].metadata.get("literal")
    return literal is None or not literal(value)


def _scalar_type(tp):
    """The concrete type behind ``X | None``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def add_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per leaf field of ``cls``; the dest is the field path. A field's choices show in
    ``--help`` as argparse shows them (``{a,b}``) but are not argparse's to check:
    :func:`check_values` refuses a bad one in the words a spec and the Python API get."""
    defaults = cls()
    for path, f, tp in leaves(cls):
        default = _get(defaults, path)
        kind = _scalar_type(tp)
        help_text = f.metadata.get("help", "")
        if kind is bool:
            action = "store_false" if default else "store_true"
            parser.add_argument(flag_of(f), dest=path, action=action, default=default, help=help_text)
            continue
        shown = f" (default: {default})" if default not in (None, "") else ""
        choices = f.metadata.get("choices")
        metavar = "{" + ",".join(map(str, choices)) + "}" if choices is not None else None
        parser.add_argument(flag_of(f), dest=path, type=kind, default=default, metavar=metavar,
                            help=help_text + shown)


def from_flags(cls, args: argparse.Namespace):
    """Build ``cls`` from the parsed flags of :func:`add_flags`."""
    values = {path: getattr(args, path) for path, _, _ in leaves(cls)}
    return from_dict(cls, _nest(values))


def _nest(flat: dict) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def from_dict(cls, data, path: str = ""):
    """Build a config tree from a (YAML / JSON) dict, checking names and types.

    Unknown fields and wrong types raise ConfigError naming the field path.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping, got {type(data).__name__}", path.rstrip(".") or None)
    hints = _hints(cls)
    names = {f.name for f in fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"unknown field for {_label(cls)}; known: {', '.join(sorted(names))}",
                              path + key_text(key))
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        tp, value = hints[f.name], data[f.name]
        if is_dataclass(tp):
            kwargs[f.name] = from_dict(tp, value, path + f.name + ".")
        else:
            kwargs[f.name] = _coerce(value, tp, path + f.name)
    return cls(**kwargs)


def _label(cls) -> str:
    return cls.__name__


def _coerce(value, tp, path: str):
    optional = type(None) in typing.get_args(tp)
    kind = _scalar_type(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"must not be empty (expected {kind.__name__})", path)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an int past float's range
                raise ConfigError(f"must be a finite number, got {quote(value)}", path) from None
    elif kind is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"expected {kind.__name__}, got {quote(value)}", path)
