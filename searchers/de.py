"""Opposition-based differential evolution operators (paper 2.3; Rahnamayan et al. 2008).

Plain numpy functions on populations in the unit hypercube, maximising fitness; the ODE
Searcher calls them, and tests check them on analytic functions in milliseconds.

Selection follows Deb's feasibility rules (Deb 2000, "An efficient constraint handling method
for genetic algorithms"): a feasible candidate beats an infeasible one, two feasible ones
compare by fitness, two infeasible ones by how far they miss (``violation``, 0 when
feasible). The paper only says infeasible cells are not trained; with every infeasible
candidate at the same worst fitness, a population far from a narrow feasible region has no
direction to move in. With all candidates feasible the rules are plain DE selection.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Infeasible:
    """Why a candidate cannot be trained, and by how much it misses (> 0, unitless; summed
    over constraints, e.g. ln(FLOPs / cap)); ``inf`` when the amount is unknown."""

    reason: str
    violation: float = math.inf


def opposite(x: np.ndarray, lower, upper) -> np.ndarray:
    """The opposite point a + b - x (OBL), per dimension."""
    return np.asarray(lower) + np.asarray(upper) - np.asarray(x)


def opposition_population(population: np.ndarray) -> np.ndarray:
    """OP for opposition-based initialisation: opposites over the search bounds [0, 1]."""
    return opposite(population, 0.0, 1.0)


def generation_jump(population: np.ndarray) -> np.ndarray:
    """OP* for generation jumping: opposites over the population's current per-dimension
    min/max (the dynamic interval of ODE), which shrinks as the population converges."""
    return opposite(population, population.min(axis=0), population.max(axis=0))


def de_rand_1_bin(population: np.ndarray, F: float, CR: float, rng: np.random.Generator) -> np.ndarray:
    """DE/rand/1/bin: v = x_r1 + F (x_r2 - x_r3), binomial crossover with one forced gene."""
    n, d = population.shape
    if n < 4:
        raise ValueError("DE/rand/1 needs a population of at least 4")
    trial = population.copy()
    for i in range(n):
        r1, r2, r3 = rng.choice([k for k in range(n) if k != i], size=3, replace=False)
        mutant = population[r1] + F * (population[r2] - population[r3])
        cross = rng.random(d) < CR
        cross[rng.integers(d)] = True
        trial[i, cross] = mutant[cross]
    return trial


def repair_bounds(x: np.ndarray, rng: np.random.Generator, lower: float = 0.0, upper: float = 1.0) -> np.ndarray:
    """Genes pushed out of bounds by mutation are re-drawn uniformly inside them."""
    x = x.copy()
    bad = (x < lower) | (x > upper)
    x[bad] = rng.uniform(lower, upper, size=int(bad.sum()))
    return x


def best_indices(fitness: np.ndarray, n: int, violation: np.ndarray | None = None,
                 level: np.ndarray | None = None) -> np.ndarray:
    """Indices of the n best by Deb's rules (least violation, then highest fitness), ties
    broken by position: deterministic. With ``level`` (multi-fidelity: the rung each reached),
    a higher level ranks first and fitness decides within a level, so scores taken at
    different fidelities are never compared."""
    fitness = np.asarray(fitness, dtype=float)
    violation = np.zeros_like(fitness) if violation is None else np.asarray(violation, dtype=float)
    level = np.zeros_like(fitness) if level is None else np.asarray(level, dtype=float)
    return np.lexsort((-fitness, -level, violation))[:n]


def survivor_mask(parent_fit: np.ndarray, trial_fit: np.ndarray, parent_violation: np.ndarray | None = None,
                  trial_violation: np.ndarray | None = None) -> np.ndarray:
    """DE's one-to-one selection under Deb's rules: True where a trial replaces its parent
    (it violates less, or as little and is at least as fit)."""
    parent_fit, trial_fit = np.asarray(parent_fit, dtype=float), np.asarray(trial_fit, dtype=float)
    pv = np.zeros_like(parent_fit) if parent_violation is None else np.asarray(parent_violation, dtype=float)
    tv = np.zeros_like(trial_fit) if trial_violation is None else np.asarray(trial_violation, dtype=float)
    return (tv < pv) | ((tv == pv) & (trial_fit >= parent_fit))


def select_survivors(parents: np.ndarray, parent_fit: np.ndarray, trials: np.ndarray, trial_fit: np.ndarray,
                     parent_violation: np.ndarray | None = None, trial_violation: np.ndarray | None = None):
    """Apply :func:`survivor_mask`. Returns (population, fitness, violation)."""
    parent_fit, trial_fit = np.asarray(parent_fit, dtype=float), np.asarray(trial_fit, dtype=float)
    pv = np.zeros_like(parent_fit) if parent_violation is None else np.asarray(parent_violation, dtype=float)
    tv = np.zeros_like(trial_fit) if trial_violation is None else np.asarray(trial_violation, dtype=float)
    take = survivor_mask(parent_fit, trial_fit, pv, tv)
    return (np.where(take[:, None], trials, parents), np.where(take, trial_fit, parent_fit),
            np.where(take, tv, pv))
