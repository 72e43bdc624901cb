"""The mixed design space of the pruning + quantization search (paper section 2.2).

Seven compression design variables, as config-dict keys::

    x1  linear-layer pruning scope      {0 none, 1 all, 2 seeded random subset}
    x2  conv-layer pruning scope        {0 none, 1 all, 2 seeded random subset}
    x3  linear pruning intensity (%)    0 < x3 < 100, kept in [1, 99], 2 decimals
    x4  conv pruning intensity (%)      0 < x4 < 100, kept in [1, 99], 2 decimals
    x5  linear pruning type             {0 weights, 1 biases, 2 both}
    x6  conv pruning type               {0 weights, 1 biases, 2 both}
    x7  quantization                    {0 no, 1 yes}

Every suggested config also carries ``"subset_seed"``: the searcher's seed, used by the
trainable to draw the random subset of layers when a scope is 2, so the real function
is deterministic for one search.

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
When a scope is 0 nothing of that layer kind is pruned, so its intensity and pruning type
cannot change the compressed model. :func:`canonical_config` sets them to fixed values
(intensity = lower bound, type = 0) and :func:`canonical_key` drops them (``None``).
Searchers compare canonical keys to "never re-propose an evaluated point" while still
reporting the config exactly as suggested. :func:`canonical_vectors` snaps solver
vectors to the encoding of their canonical config: the surrogates are trained and
queried on these, so two configs the trainable cannot tell apart look identical to
them as well.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy.stats import qmc

from orchestrator.errors import ConfigError

# ---------------------------------------------------------------------------------------
# The variables (paper section 2.2)
# ---------------------------------------------------------------------------------------

INTENSITY_BOUNDS = (1.0, 99.0)  # percent; the paper's open interval 0 < x < 100, kept off the ends
INTENSITY_DECIMALS = 2


@dataclass(frozen=True)
class DesignVariable:
    """One compression design variable: categorical (``n_categories``) or continuous (``bounds``)."""

    name: str
    description: str
    n_categories: int | None = None
    bounds: tuple[float, float] | None = None

    @property
    def is_categorical(self) -> bool:
        return self.n_categories is not None


DESIGN_VARIABLES: tuple[DesignVariable, ...] = (
    DesignVariable("x1", "linear-layer pruning scope (0 none, 1 all, 2 random subset)", n_categories=3),
    DesignVariable("x2", "conv-layer pruning scope (0 none, 1 all, 2 random subset)", n_categories=3),
    DesignVariable("x3", "linear pruning intensity (%)", bounds=INTENSITY_BOUNDS),
    DesignVariable("x4", "conv pruning intensity (%)", bounds=INTENSITY_BOUNDS),
    DesignVariable("x5", "linear pruning type (0 weights, 1 biases, 2 both)", n_categories=3),
    DesignVariable("x6", "conv pruning type (0 weights, 1 biases, 2 both)", n_categories=3),
    DesignVariable("x7", "quantization (0 no, 1 yes)", n_categories=2),
)
VARIABLE_NAMES: tuple[str, ...] = tuple(v.name for v in DESIGN_VARIABLES)
N_VARIABLES = len(DESIGN_VARIABLES)

# Which intensity / type belong to which scope: (scope, intensity, type).
LAYER_GROUPS: tuple[tuple[str, str, str], ...] = (("x1", "x3", "x5"), ("x2", "x4", "x6"))

# Canonical values of the "does not matter" variables when their scope is 0.
CANONICAL_INTENSITY = INTENSITY_BOUNDS[0]
CANONICAL_TYPE = 0

_N_CATEGORIES = np.array([v.n_categories or 0 for v in DESIGN_VARIABLES])
_IS_CATEGORICAL = _N_CATEGORIES > 0
_CONTINUOUS_INDEX = np.flatnonzero(~_IS_CATEGORICAL)
_INDEX = {name: i for i, name in enumerate(VARIABLE_NAMES)}
_LOW, _HIGH = INTENSITY_BOUNDS


class CompressionConfigError(ConfigError, ValueError):
    """A compression-search setting or config is invalid.

    A :class:`~orchestrator.errors.ConfigError` (the CLI prints it as one line) that is also a
    ``ValueError``, so plain-Python callers can catch it the standard way.
    """


# ---------------------------------------------------------------------------------------
# Config <-> solver vector
# ---------------------------------------------------------------------------------------

def validate_config(config: Mapping) -> None:
    """Raise :class:`CompressionConfigError` unless ``config`` holds all seven variables in range."""
    for var in DESIGN_VARIABLES:
        if var.name not in config:
            raise CompressionConfigError(f"compression config is missing {var.name} ({var.description})")
        value = config[var.name]
        if var.is_categorical:
            if int(value) != value or not 0 <= int(value) < var.n_categories:
                raise CompressionConfigError(
                    f"{var.name}={value!r} is not one of 0..{var.n_categories - 1} ({var.description})")
        else:
            lo, hi = var.bounds
            if not lo <= float(value) <= hi:
                raise CompressionConfigError(f"{var.name}={value!r} is outside [{lo}, {hi}] ({var.description})")


def encode(config: Mapping) -> np.ndarray:
    """Config -> solver vector in ``[0, 1]^7`` (categories at their cell centres)."""
    validate_config(config)
    u = np.empty(N_VARIABLES)
    for i, var in enumerate(DESIGN_VARIABLES):
        value = config[var.name]
        if var.is_categorical:
            u[i] = (int(value) + 0.5) / var.n_categories
        else:
            u[i] = (float(value) - _LOW) / (_HIGH - _LOW)
    return u


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
        config["subset_seed"] = int(subset_seed)
    return config


def decode_many(U: np.ndarray, subset_seed: int | None = None) -> list[dict]:
    """Decode every row of ``U``."""
    return [decode(row, subset_seed) for row in np.asarray(U, dtype=float).reshape(-1, N_VARIABLES)]


# ---------------------------------------------------------------------------------------
# Canonical form
# ---------------------------------------------------------------------------------------

def canonical_config(config: Mapping) -> dict:
    """The config with intensity/type of every scope-0 layer kind set to fixed values.

    Only the seven design variables are kept (``subset_seed`` is constant per search).
    """
    canon = {name: config[name] for name in VARIABLE_NAMES}
    for scope, intensity, ptype in LAYER_GROUPS:
        if int(canon[scope]) == 0:
            canon[intensity] = CANONICAL_INTENSITY
            canon[ptype] = CANONICAL_TYPE
    for var in DESIGN_VARIABLES:
        canon[var.name] = (int(canon[var.name]) if var.is_categorical
                           else round(float(canon[var.name]), INTENSITY_DECIMALS))
    return canon


def canonical_key(config: Mapping) -> tuple:
    """Hashable de-duplication key: two configs with equal keys compress the model identically.

    Intensity and type of a scope-0 layer kind are ``None`` in the key.
    """
    canon = canonical_config(config)
    irrelevant = set()
    for scope, intensity, ptype in LAYER_GROUPS:
        if canon[scope] == 0:
            irrelevant.update((intensity, ptype))
    return tuple(None if name in irrelevant else canon[name] for name in VARIABLE_NAMES)


def canonical_vectors(U: np.ndarray) -> np.ndarray:
    """Snap solver vectors to the encoding of their canonical configs (vectorised).

    Equivalent to ``encode(canonical_config(decode(u)))`` row by row, but fast enough to
    run on every CTAEA generation (surrogate queries and duplicate elimination).
    """
    values = _decode_columns(np.atleast_2d(U))
    for scope, intensity, ptype in LAYER_GROUPS:
        off = values[:, _INDEX[scope]] == 0
        values[off, _INDEX[intensity]] = CANONICAL_INTENSITY
        values[off, _INDEX[ptype]] = CANONICAL_TYPE
    out = np.empty_like(values)
    cats = _IS_CATEGORICAL
    out[:, cats] = (values[:, cats] + 0.5) / _N_CATEGORIES[cats]
    out[:, ~cats] = (values[:, ~cats] - _LOW) / (_HIGH - _LOW)
    return out


def canonical_keys(U: np.ndarray) -> list[tuple]:
    """:func:`canonical_key` of every decoded row of ``U``."""
    return [canonical_key(c) for c in decode_many(U)]


# ---------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------

def random_unique_configs(n: int, rng: np.random.Generator, excluded_keys: Iterable[tuple] = (),
                          subset_seed: int | None = None, max_tries: int = 10_000) -> list[dict]:
    """``n`` uniformly random configs whose canonical keys are new (not in ``excluded_keys``
    and pairwise distinct). Raises :class:`CompressionConfigError` if the space seems exhausted."""
    seen = set(excluded_keys)
    out: list[dict] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > max_tries:
            raise CompressionConfigError(f"could not draw {n} new compression configs in {max_tries} tries")
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
        raise CompressionConfigError(f"initial sample size must be >= 1, got {n}")
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


# ---------------------------------------------------------------------------------------
# Synthetic stand-in of the compression problem (tests and benchmarks only)
# ---------------------------------------------------------------------------------------

#: Tag carried by every result of :func:`synthetic_compression_objectives`.
SYNTHETIC_LABEL = "synthetic analytic compression problem (no network, no data)"


def _sigmoid(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-z)))


def synthetic_compression_objectives(config: Mapping, base_accuracy: float = 0.80,
                                     tolerance: float = 0.96) -> dict:
    """A cheap, deterministic, SYNTHETIC analytic problem shaped like eq. (1), for tests/benchmarks.

    It mimics the structure of pruning + quantization of a CNN *without fine-tuning* (the
    paper's procedure prunes a trained model and evaluates it directly), not any real network:

    * parameters: 85 % in conv layers, 15 % in linear layers; within a layer kind 97 %
      weights and 3 % biases ("both" = 100 %). Scope "all" prunes every layer of the kind;
      "random subset" prunes a fraction in [0.3, 0.5] drawn from ``subset_seed`` (fixed per
      search, as the real trainable's subset is).
    * effective pruning ``e`` of a layer kind = scope share x intensity.
    * ``f1_compute`` = FLOPs rate x non-zero-weight rate, normalised by the base model
      (base = 1.0); quantization scales FLOPs by 0.55.
    * accuracy = base + up to +1 % for mild conv pruning (a regularisation effect)
      - a gentle quadratic loss - a sharp collapse (logistic, width 1.5 %) once ``e`` passes
      the kind's *cliff* - 0.5 % for quantization. Cliffs (fraction pruned): conv 0.30
      weights / 0.10 biases / 0.22 both; linear 0.25 / 0.12 / 0.20; quantization lowers
      every cliff by 0.04 (sparse weights quantize worse). Without retraining, a 4 %
      accuracy tolerance is exceeded early, so only ~17 % of random configs are feasible --
      the regime the paper's constraint is for ("avoid spending computational resources on
      the evaluation of poor solutions", section 2.3).
    * ``f2_error`` = 1 - accuracy, ``g_accuracy`` = tolerance x base - accuracy (feasible iff <= 0).

    The best feasible trade-offs (quantized, conv scope "all", weights, intensity just below
    the lowered cliff, f1 ~ 0.42) form a narrow region of the mixed space.
    """
    c = canonical_config(config)
    seed = int(config.get("subset_seed", 0))
    subset_lin, subset_conv = np.random.default_rng([seed, 0x5EED]).uniform(0.3, 0.5, size=2)
    scope_share = ({0: 0.0, 1: 1.0, 2: subset_lin}[c["x1"]], {0: 0.0, 1: 1.0, 2: subset_conv}[c["x2"]])
    param_share = (0.97, 0.03, 1.0)        # weights, biases, both: share of a layer's parameters
    quantized = c["x7"] == 1
    conv_cliff = (0.30, 0.10, 0.22)[c["x6"]] - (0.04 if quantized else 0.0)
    lin_cliff = (0.25, 0.12, 0.20)[c["x5"]] - (0.04 if quantized else 0.0)
    e_lin = scope_share[0] * c["x3"] / 100.0
    e_conv = scope_share[1] * c["x4"] / 100.0
    pruned = 0.85 * e_conv * param_share[c["x6"]] + 0.15 * e_lin * param_share[c["x5"]]
    f1 = (0.55 if quantized else 1.0) * (1.0 - pruned)
    accuracy = (base_accuracy
                + 0.010 * np.sin(np.pi * min(e_conv / conv_cliff, 1.0))
                - 0.020 * (e_conv / conv_cliff) ** 2
                - 0.010 * (e_lin / lin_cliff) ** 2
                - 0.30 * _sigmoid((e_conv - conv_cliff) / 0.015)
                - 0.20 * _sigmoid((e_lin - lin_cliff) / 0.015)
                - (0.005 if quantized else 0.0))
    accuracy = float(np.clip(accuracy, 0.0, 1.0))
    return {
        "f1_compute": float(f1),
        "f2_error": 1.0 - accuracy,
        "g_accuracy": tolerance * base_accuracy - accuracy,
        "accuracy": accuracy,
        "status": "ok",
        "data": SYNTHETIC_LABEL,
    }
