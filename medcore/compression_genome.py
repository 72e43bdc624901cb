"""The genome of the pruning + quantization search (compression paper, section 2.2): one record.

Seven design variables, as config-dict keys (code names a key by its constant, second column)::

    x1  LINEAR_SCOPE      linear-layer pruning scope      {0 none, 1 all, 2 seeded random subset}
    x2  CONV_SCOPE        conv-layer pruning scope        {0 none, 1 all, 2 seeded random subset}
    x3  LINEAR_INTENSITY  linear pruning intensity (%)    0 < x3 < 100, kept in [1, 99], 2 decimals
    x4  CONV_INTENSITY    conv pruning intensity (%)      0 < x4 < 100, kept in [1, 99], 2 decimals
    x5  LINEAR_TYPE       linear pruning type             {0 weights, 1 biases, 2 both}
    x6  CONV_TYPE         conv pruning type               {0 weights, 1 biases, 2 both}
    x7  QUANTIZE          quantization                    {0 no, 1 yes}

plus ``subset_seed`` (``SUBSET_SEED``): the searcher's seed, from which the trainable draws the random subset of
layers when a scope is 2, so one search sees one subset.

:meth:`CompressionGenome.from_config` is the one validation, shared by the searchers (encoding,
de-duplication) and the trainable (pruning). Its rules accept every config a searcher emits and
every canonical config:

* all seven variables must be present -- every searcher emits all seven; a missing one is a bug;
* a categorical variable is an integer in ``0..n-1``; an integral float (``2.0``) is accepted,
  because real-coded solvers and JSON round trips hand integers over as floats;
* an intensity whose scope is non-zero lies in :data:`INTENSITY_BOUNDS` ``[1, 99]``: the paper's
  open interval ``0 < x < 100`` kept off its ends, and exactly the range the solver space
  decodes to;
* an intensity whose scope is 0 only has to be a finite number: nothing of that layer kind is
  pruned, so it cannot change the model. Canonical configs set it to 1.0 and hand-written
  configs often leave a placeholder (0.0, 50.0) there;
* ``subset_seed`` (default 0) is a non-negative integer, integral floats accepted: it seeds
  numpy's generator, which refuses negative seeds.

Canonical form: with a scope of 0, that kind's intensity and type are set to fixed values
(:meth:`CompressionGenome.canonical`) or dropped from the key (:meth:`~CompressionGenome.canonical_key`),
so "never re-propose an evaluated point" compares compressed models, not configs.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, replace
from typing import Mapping

from medcore.errors import ConfigError

SCOPES = ("none", "all", "random subset")
PRUNING_TYPES = ("weights", "biases", "both")
INTENSITY_BOUNDS = (1.0, 99.0)  # percent; the paper's open interval 0 < x < 100, kept off the ends
INTENSITY_DECIMALS = 2

# The config key of each design variable, named by what it sets. The keys themselves stay the
# paper's x1..x7: zoo rows and Tune configs already written use them.
LINEAR_SCOPE, CONV_SCOPE = "x1", "x2"
LINEAR_INTENSITY, CONV_INTENSITY = "x3", "x4"
LINEAR_TYPE, CONV_TYPE = "x5", "x6"
QUANTIZE = "x7"
SUBSET_SEED = "subset_seed"


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
    DesignVariable(LINEAR_SCOPE, "linear-layer pruning scope (0 none, 1 all, 2 random subset)", n_categories=3),
    DesignVariable(CONV_SCOPE, "conv-layer pruning scope (0 none, 1 all, 2 random subset)", n_categories=3),
    DesignVariable(LINEAR_INTENSITY, "linear pruning intensity (%)", bounds=INTENSITY_BOUNDS),
    DesignVariable(CONV_INTENSITY, "conv pruning intensity (%)", bounds=INTENSITY_BOUNDS),
    DesignVariable(LINEAR_TYPE, "linear pruning type (0 weights, 1 biases, 2 both)", n_categories=3),
    DesignVariable(CONV_TYPE, "conv pruning type (0 weights, 1 biases, 2 both)", n_categories=3),
    DesignVariable(QUANTIZE, "quantization (0 no, 1 yes)", n_categories=2),
)
VARIABLE_NAMES: tuple[str, ...] = tuple(v.name for v in DESIGN_VARIABLES)
CONFIG_KEYS: tuple[str, ...] = (*VARIABLE_NAMES, SUBSET_SEED)  # a full config: the seven and the seed
N_VARIABLES = len(DESIGN_VARIABLES)
VARIABLES = {v.name: v for v in DESIGN_VARIABLES}

# Which intensity / type belong to which scope: (scope, intensity, type), linear then conv.
LAYER_GROUPS: tuple[tuple[str, str, str], ...] = ((LINEAR_SCOPE, LINEAR_INTENSITY, LINEAR_TYPE),
                                                   (CONV_SCOPE, CONV_INTENSITY, CONV_TYPE))

# Canonical values of the "does not matter" variables when their scope is 0.
CANONICAL_INTENSITY = INTENSITY_BOUNDS[0]
CANONICAL_TYPE = 0


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and math.isfinite(value)


def _category(var: DesignVariable, value) -> int:
    if not _is_number(value) or int(value) != value or not 0 <= int(value) < var.n_categories:
        raise ConfigError(f"{var.name}={value!r} is not one of 0..{var.n_categories - 1} ({var.description})")
    return int(value)


def _intensity(var: DesignVariable, value, used: bool) -> float:
    if not _is_number(value):
        raise ConfigError(f"{var.name}={value!r} is not a number ({var.description})")
    lo, hi = var.bounds
    if used and not lo <= value <= hi:
        raise ConfigError(f"{var.name}={value!r} is outside [{lo}, {hi}] ({var.description})")
    return float(value)


@dataclass(frozen=True)
class CompressionGenome:
    """The seven design variables of section 2.2 plus the seed of the random subsets.

    Build it with :meth:`from_config`, which validates; the fields are then plain ints and floats.
    """

    x1: int  # linear pruning scope: 0 none, 1 all, 2 random subset
    x2: int  # conv pruning scope
    x3: float  # linear pruning intensity, percent
    x4: float  # conv pruning intensity, percent
    x5: int  # linear pruning type: 0 weights, 1 biases, 2 both
    x6: int  # conv pruning type
    x7: int  # quantization: 0 no, 1 yes
    subset_seed: int = 0

    @classmethod
    def from_config(cls, config: Mapping) -> "CompressionGenome":
        """Validate a config dict by the rules in the module docstring; raises :class:`ConfigError`."""
        values = {}
        for var in DESIGN_VARIABLES:
            if var.name not in config:
                raise ConfigError(f"compression config is missing {var.name} ({var.description})")
            if var.is_categorical:
                values[var.name] = _category(var, config[var.name])
        for scope, intensity, _ in LAYER_GROUPS:
            values[intensity] = _intensity(VARIABLES[intensity], config[intensity], used=values[scope] != 0)
        seed = config.get(SUBSET_SEED, 0)
        if not _is_number(seed) or int(seed) != seed or seed < 0:
            raise ConfigError(f"subset_seed={seed!r} must be a non-negative integer")
        return cls(**values, subset_seed=int(seed))

    def to_config(self) -> dict:
        """The config dict: the seven variables and ``subset_seed``."""
        return asdict(self)

    def variables(self) -> dict:
        """The seven design variables only, in order."""
        return {name: getattr(self, name) for name in VARIABLE_NAMES}

    def canonical(self) -> "CompressionGenome":
        """The same compressed model with scope-0 intensity/type fixed and intensities rounded
        to :data:`INTENSITY_DECIMALS`."""
        changes = {}
        for scope, intensity, ptype in LAYER_GROUPS:
            if getattr(self, scope) == 0:
                changes[intensity], changes[ptype] = CANONICAL_INTENSITY, CANONICAL_TYPE
            else:
                changes[intensity] = round(getattr(self, intensity), INTENSITY_DECIMALS)
        return replace(self, **changes)

    def canonical_key(self) -> tuple:
        """Hashable de-duplication key over the seven variables: equal keys compress the model
        identically. Intensity and type of a scope-0 layer kind are ``None``; ``subset_seed`` is
        left out (it is constant within one search)."""
        canon = self.canonical().variables()
        for scope, intensity, ptype in LAYER_GROUPS:
            if canon[scope] == 0:
                canon[intensity] = canon[ptype] = None
        return tuple(canon.values())


def canonical_key(config: Mapping) -> tuple:
    """:meth:`CompressionGenome.canonical_key` of a config dict."""
    return CompressionGenome.from_config(config).canonical_key()
