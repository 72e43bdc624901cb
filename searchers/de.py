"""Opposition-based differential evolution operators (paper 2.3; Rahnamayan et al. 2008).

Plain numpy functions on populations in the unit hypercube, maximising fitness; the ODE
Searcher calls them, and tests check them on analytic functions in milliseconds.
"""
from __future__ import annotations

import numpy as np


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


def best_indices(fitness: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n fittest (maximisation), ties broken by position: deterministic."""
    return np.argsort(-np.asarray(fitness, dtype=float), kind="stable")[:n]


def select_survivors(parents: np.ndarray, parent_fit: np.ndarray, trials: np.ndarray,
                     trial_fit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DE's one-to-one selection: a trial replaces its parent when at least as fit."""
    take = np.asarray(trial_fit) >= np.asarray(parent_fit)
    return np.where(take[:, None], trials, parents), np.where(take, trial_fit, parent_fit)
