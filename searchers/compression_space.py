"""The solver-space encoding of the compression genome (paper section 2.2) and its LHS sampling.

The design variables and their validation live in :mod:`medcore.compression_genome` (one
definition for searchers and trainables); this module maps them to and from the real
vectors the solvers and surrogates work on.

Encoding (the choice, and why)
------------------------------
CTAEA (pymoo's SBX + polynomial mutation) works on real vectors, so every variable is
encoded into the unit interval ``[0, 1]`` -- the *solver space*:

* a categorical/integer variable with ``n`` categories owns ``n`` equal cells;
  decoding is ``c = min(floor(u * n), n - 1)`` and encoding puts ``c`` at the centre of its
  cell, ``u = (c + 0.5) / n``.  Equal-width cells give every category the same share of
  the solver space (rounding on ``[0, n-1]`` would give the two end categories half
  the share), and decode(encode(c)) == c exactly;
* an intensity is ``x = 1 + u * (99 - 1)``, rounded to 2 decimals.

The same unit encoding is the surrogate feature space (section 3, steps 2-4): all seven
features share one scale, which distance-based surrogates (KNN) need, and tree models
are indifferent to it.

Canonical configs (de-duplication)
----------------------------------
Searchers compare :func:`medcore.compression_genome.canonical_key` to "never re-propose an
evaluated point" while still reporting the config exactly as suggested.
:func:`canonical_vectors` snaps solver vectors to the encoding of their canonical config: the
surrogates are trained and queried on these, so two configs the trainable cannot tell apart
look identical to them as well.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy.stats import qmc

from medcore.compression_genome import (CANONICAL_INTENSITY, CANONICAL_TYPE, DESIGN_VARIABLES, INTENSITY_BOUNDS,
                                        INTENSITY_DECIMALS, LAYER_GROUPS, N_VARIABLES, SUBSET_SEED,
                                        VARIABLE_NAMES, CompressionGenome, canonical_key)
from medcore.errors import ConfigError

_N_CATEGORIES = np.array([v.n_categories or 0 for v in DESIGN_VARIABLES])
_IS_CATEGORICAL = _N_CATEGORIES > 0
_CONTINUOUS_INDEX = np.flatnonzero(~_IS_CATEGORICAL)
_INDEX = {name: i for i, name in enumerate(VARIABLE_NAMES)}
_LOW, _HIGH = INTENSITY_BOUNDS


# ---------------------------------------------------------------------------------------
# Config <-> solver vector
# ---------------------------------------------------------------------------------------

def _encode_columns(values: np.ndarray) -> np.ndarray:
    """Vectorised encode of variable values (rows of seven) into the unit cube.

    Only an intensity whose scope is 0 can lie outside the bounds (see
    :meth:`CompressionGenome.from_config`); it is clipped to the nearest bound, which cannot
    change the compressed model.
    """
    out = np.empty_like(values)
    cats = _IS_CATEGORICAL
    out[:, cats] = (values[:, cats] + 0.5) / _N_CATEGORIES[cats]
    out[:, ~cats] = np.clip((values[:, ~cats] - _LOW) / (_HIGH - _LOW), 0.0, 1.0)
    return out


def encode(config: Mapping) -> np.ndarray:
    """Config -> solver vector in ``[0, 1]^7`` (categories at their cell centres).

    Raises :class:`~medcore.errors.ConfigError` (a ``ValueError``) for an invalid config.
    """
    genome = CompressionGenome.from_config(config)
    values = np.array([list(genome.variables().values())], dtype=float)
    return _encode_columns(values)[0]


def encode_many(configs: Iterable[Mapping]) -> np.ndarray:
    """Stack :func:`encode` over configs into an ``(n, 7)`` array."""
    rows = [encode(c) for c in configs]
    return np.array(rows).reshape(len(rows), N_VARIABLES)


def _decode_columns(U: np.ndarray) -> np.ndarray:
    """Vectorised decode to variable values (categories as floats, intensities rounded)."""
    U = np.clip(np.asarray(U, dtype=float), 0.0, 1.0)
    values = np.empty_like(U)
    cats = _IS_CATEGORICAL
    values[:, cats] = np.minimum(np.floor(U[:, cats] * _N_CATEGORIES[cats]), _N_CATEGORIES[cats] - 1)
    cont = _CONTINUOUS_INDEX
    values[:, cont] = np.round(_LOW + U[:, cont] * (_HIGH - _LOW), INTENSITY_DECIMALS)
    return values


def decode(u: Sequence[float], subset_seed: int | None = None) -> dict:
    """Solver vector -> config dict (ints for categories, 2-decimal floats for intensities).

    Values outside ``[0, 1]`` are clipped first, so any real vector decodes to a valid
    config. ``subset_seed`` (the searcher's seed) is attached when given.
    """
    values = _decode_columns(np.asarray(u, dtype=float).reshape(1, N_VARIABLES))[0]
    config = {}
    for i, var in enumerate(DESIGN_VARIABLES):
        config[var.name] = int(values[i]) if var.is_categorical else float(values[i])
    if subset_seed is not None:
        config[SUBSET_SEED] = int(subset_seed)
    return config


def decode_many(U: np.ndarray, subset_seed: int | None = None) -> list[dict]:
    """Decode every row of ``U``."""
    return [decode(row, subset_seed) for row in np.asarray(U, dtype=float).reshape(-1, N_VARIABLES)]


# ---------------------------------------------------------------------------------------
# Canonical form in the solver space
# ---------------------------------------------------------------------------------------

def canonical_vectors(U: np.ndarray) -> np.ndarray:
    """Snap solver vectors to the encoding of their canonical configs (vectorised).

    Equivalent to ``encode(CompressionGenome.from_config(decode(u)).canonical().variables())`` row
    by row, but fast enough to run on every CTAEA generation (surrogate queries and duplicate
    elimination).
    """
    values = _decode_columns(np.atleast_2d(U))
    for scope, intensity, ptype in LAYER_GROUPS:
        off = values[:, _INDEX[scope]] == 0
        values[off, _INDEX[intensity]] = CANONICAL_INTENSITY
        values[off, _INDEX[ptype]] = CANONICAL_TYPE
    return _encode_columns(values)


def canonical_keys(U: np.ndarray) -> list[tuple]:
    """:func:`~medcore.compression_genome.canonical_key` of every decoded row of ``U``."""
    return [canonical_key(c) for c in decode_many(U)]


# ---------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------

def random_unique_configs(n: int, rng: np.random.Generator, excluded_keys: Iterable[tuple] = (),
                          subset_seed: int | None = None, max_tries: int = 10_000) -> list[dict]:
    """``n`` uniformly random configs whose canonical keys are new (not in ``excluded_keys``
    and pairwise distinct). Raises :class:`~medcore.errors.ConfigError` if the space seems exhausted."""
    seen = set(excluded_keys)
    out: list[dict] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > max_tries:
            raise ConfigError(f"could not draw {n} new compression configs in {max_tries} tries")
        config = decode(rng.random(N_VARIABLES), subset_seed)
        key = canonical_key(config)
        if key not in seen:
            seen.add(key)
            out.append(config)
    return out


def latin_hypercube_configs(n: int, seed: int, subset_seed: int | None = None,
                            excluded_keys: Iterable[tuple] = ()) -> list[dict]:
    """Initial sample of section 3 step 1: ``n`` configs by Latin hypercube over the mixed space.

    A scipy ``LatinHypercube(d=7, seed=seed)`` design in the solver space is decoded; each
    categorical variable then takes every category ``floor(n/c)`` or ``ceil(n/c)`` times
    (equal-width cells), so for ``n >= 3`` every category appears.

    Canonical duplicates (mostly configs with both scopes 0, where only ``x7`` matters) are
    kept once; each later duplicate is replaced by a seeded uniform random config with a
    new canonical key, so the sample has exactly ``n`` distinct compressed models.
    """
    if n < 1:
        raise ConfigError(f"initial sample size must be >= 1, got {n}")
    U = qmc.LatinHypercube(d=N_VARIABLES, seed=seed).random(n)
    seen = set(excluded_keys)
    configs: list[dict | None] = []
    for config in decode_many(U, subset_seed):
        key = canonical_key(config)
        if key in seen:
            configs.append(None)
        else:
            seen.add(key)
            configs.append(config)
    n_missing = sum(c is None for c in configs)
    if n_missing:
        # A separate stream derived from the seed, so the LHS part is unchanged.
        rng = np.random.default_rng([seed, 0x1A5])
        fill = iter(random_unique_configs(n_missing, rng, seen, subset_seed))
        configs = [c if c is not None else next(fill) for c in configs]
    return configs  # type: ignore[return-value]
