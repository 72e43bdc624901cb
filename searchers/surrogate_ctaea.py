"""Surrogate-assisted CTAEA search for pruning + quantization (paper section 3).

The loop of section 3, with the paper's settings (section 4.3) as defaults:

1. initial dataset ``D``: ``n_initial = 50`` configs by Latin hypercube over the mixed
   space (:func:`searchers.compression_space.latin_hypercube_configs`), evaluated by Tune;
2-5. for each objective (``f1_compute``, ``f2_error``) and for the constraint
   (``g_accuracy``), fit the surrogate pool (KNN, random forest, LightGBM, XGBoost or
   sklearn's histogram GBM) and keep the lowest cross-validated MAPE (eq. 2)
   (:func:`fit_surrogates`);
6-7. solve the surrogate problem with CTAEA, das-dennis directions -> population 50,
   1000 generations (:func:`solve_surrogate_problem`);
8. randomly sample ``k = 2`` feasible non-dominated solutions of CTAEA's final
   population -- the infill points (:func:`select_infill`);
9. evaluate them as concurrent Tune trials and add them to ``D``;
10. repeat until the budget (100 evaluations) is spent;
11. ``D*`` = feasible non-dominated evaluated points (:meth:`SurrogateCTAEASearcher.d_star`).

Steps 2-8 are the plain function :func:`propose_infill` (numpy in, configs out, no Ray),
which :class:`SurrogateCTAEASearcher` calls once per iteration.

Infill fallback (step 8 when it cannot be followed literally). Infill points are never an
evaluated or pending config (canonical keys, :mod:`searchers.compression_space`). Let the
*candidates* be CTAEA's final population -- convergence archive and diversity archive,
canonical duplicates removed -- minus evaluated/pending configs. Then:

a. sample without replacement (seeded) among candidates predicted feasible and
   non-dominated within the final population ("nondominated");
b. if fewer than ``k``: take the remaining candidates in order of predicted quality --
   predicted feasible ones by non-domination rank, then predicted infeasible ones by
   increasing predicted violation ("population");
c. if still fewer: seeded uniform random new configs ("random").

Failed trials count as evaluated (never re-proposed) but are left out of surrogate
training; if fewer than 2 successful points exist, the batch is drawn as in (c).
"""
from __future__ import annotations

import copy
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np
from pymoo.core.problem import Problem
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from medcore.compression_genome import canonical_key
from medcore.errors import ConfigError
from searchers import compression_space as space
from searchers.ctaea import CompressionBatchSearcher, make_ctaea
from searchers.pareto import feasible_mask, non_dominated_mask
from searchers.surrogates import (MAPE_EPSILON, SurrogateFactory, SurrogateSelection, fast_predictor,
                                  select_surrogate, single_thread)

DEFAULT_TARGET_NAMES = ("f1_compute", "f2_error", "g_accuracy")


# ---------------------------------------------------------------------------------------
# Steps 2-5: surrogates
# ---------------------------------------------------------------------------------------

def fit_surrogates(X: np.ndarray, F: np.ndarray, G: np.ndarray, seed: int, folds: int = 5,
                   pool: Mapping[str, SurrogateFactory] | None = None,
                   epsilon: float = MAPE_EPSILON,
                   target_names: Sequence[str] | None = None) -> dict[str, SurrogateSelection]:
    """One :func:`~searchers.surrogates.select_surrogate` per objective column of ``F`` and for ``G``.

    ``X`` are canonical solver vectors (:func:`~searchers.compression_space.canonical_vectors`).
    Returns ``{target name: selection}``, objectives first, constraint last.
    """
    F = np.asarray(F, dtype=float).reshape(len(X), -1)
    G = np.asarray(G, dtype=float).ravel()
    names = list(target_names) if target_names is not None else (
        [f"f{j + 1}" for j in range(F.shape[1])] + ["g"])
    if len(names) != F.shape[1] + 1:
        raise ValueError(f"need {F.shape[1] + 1} target names, got {names}")
    targets = [F[:, j] for j in range(F.shape[1])] + [G]
    return {name: select_surrogate(X, y, seed, folds, pool, epsilon) for name, y in zip(names, targets)}


# ---------------------------------------------------------------------------------------
# Steps 6-7: the surrogate problem, solved by CTAEA
# ---------------------------------------------------------------------------------------

class SurrogateProblem(Problem):
    """Step 6: eq. (1) with every objective and the constraint replaced by its best surrogate.

    Solver vectors are snapped to their canonical encoding before prediction, so the
    surrogates are queried exactly where they were trained (one point per compressed model).
    The whole population is predicted in one call per surrogate.
    """

    def __init__(self, objective_predictors, constraint_predictor):
        super().__init__(n_var=space.N_VARIABLES, n_obj=len(objective_predictors), n_ieq_constr=1,
                         xl=0.0, xu=1.0)
        self.objective_predictors = list(objective_predictors)
        self.constraint_predictor = constraint_predictor

    def _evaluate(self, X, out, *args, **kwargs):
        Z = space.canonical_vectors(X)
        out["F"] = np.column_stack([predict(Z) for predict in self.objective_predictors])
        out["G"] = np.asarray(self.constraint_predictor(Z), dtype=float).reshape(-1, 1)


class SurrogateSolution(NamedTuple):
    """CTAEA's final population on the surrogate problem (CA + DA, canonical duplicates removed)."""

    X: np.ndarray  # solver vectors
    F: np.ndarray  # predicted objectives
    G: np.ndarray  # predicted constraint


def solve_surrogate_problem(objective_predictors, constraint_predictor, pop_size: int = 50,
                            n_gen: int = 1000, seed: int = 0) -> SurrogateSolution:
    """Step 7: run CTAEA (das-dennis, ``pop_size`` directions) for ``n_gen`` generations.

    Both archives count as "solutions obtained by the MOEA": the convergence archive holds
    the (predicted) feasible front, the diversity archive its spread.
    """
    problem = SurrogateProblem(objective_predictors, constraint_predictor)
    algorithm = make_ctaea(pop_size, problem.n_obj)
    algorithm.setup(problem, termination=("n_gen", n_gen), seed=seed)
    with single_thread():
        while algorithm.has_next():
            algorithm.next()
    pops = [p for p in (algorithm.pop, algorithm.da) if p is not None and len(p)]
    X = np.vstack([p.get("X") for p in pops])
    F = np.vstack([p.get("F") for p in pops])
    G = np.concatenate([p.get("G").ravel() for p in pops])
    keys = space.canonical_keys(X)
    first = sorted({k: i for i, k in reversed(list(enumerate(keys)))}.values())
    return SurrogateSolution(X[first], F[first], G[first])


# ---------------------------------------------------------------------------------------
# Step 8: infill points
# ---------------------------------------------------------------------------------------

class InfillProposal(NamedTuple):
    """What :func:`propose_infill` decided: configs, where each came from, the surrogates."""

    configs: list[dict]
    sources: list[str]                       # "nondominated" | "population" | "random"
    surrogates: dict[str, SurrogateSelection]
    predicted: np.ndarray                    # (k, n_obj + 1) surrogate predictions [F..., G]


def select_infill(solution: SurrogateSolution, k: int, rng: np.random.Generator,
                  excluded_keys: Iterable[tuple] = (), subset_seed: int | None = None
                  ) -> tuple[list[dict], list[str]]:
    """Step 8 with the fallback (a)-(c) of the module docstring; never an excluded key."""
    excluded = set(excluded_keys)
    configs = space.decode_many(solution.X, subset_seed)
    keys = [canonical_key(c) for c in configs]
    seen: set[tuple] = set()
    fresh = np.zeros(len(keys), dtype=bool)   # new key, first occurrence in the population
    for i, key in enumerate(keys):
        fresh[i] = key not in excluded and key not in seen
        seen.add(key)
    feasible = feasible_mask(solution.G)
    nondominated = np.zeros(len(keys), dtype=bool)
    if feasible.any():
        idx = np.flatnonzero(feasible)
        nondominated[idx[non_dominated_mask(solution.F[idx])]] = True

    chosen: list[int] = []
    tier_a = np.flatnonzero(nondominated & fresh)
    if len(tier_a):
        chosen = [int(i) for i in rng.choice(tier_a, size=min(k, len(tier_a)), replace=False)]
    sources = ["nondominated"] * len(chosen)

    if len(chosen) < k:
        taken_so_far = set(chosen)
        rest = [int(i) for i in np.flatnonzero(fresh) if i not in taken_so_far]
        rank = np.full(len(keys), np.inf)
        if feasible.any():
            idx = np.flatnonzero(feasible)
            rank[idx] = NonDominatedSorting().do(solution.F[idx], return_rank=True)[1]
        violation = np.maximum(solution.G, 0.0)
        rest.sort(key=lambda i: (not feasible[i], rank[i] if feasible[i] else violation[i], i))
        extra = [int(i) for i in rest[: k - len(chosen)]]
        chosen += extra
        sources += ["population"] * len(extra)

    out = [configs[i] for i in chosen]
    if len(out) < k:
        taken = excluded | {keys[i] for i in chosen}
        randoms = space.random_unique_configs(k - len(out), rng, taken, subset_seed)
        out += randoms
        sources += ["random"] * len(randoms)
    return out, sources


def propose_infill(X: np.ndarray, F: np.ndarray, G: np.ndarray, k: int, seed: int,
                   excluded_keys: Iterable[tuple] = (), *, pop_size: int = 50, n_gen: int = 1000,
                   folds: int = 5, pool: Mapping[str, SurrogateFactory] | None = None,
                   epsilon: float = MAPE_EPSILON, subset_seed: int | None = None,
                   target_names: Sequence[str] = DEFAULT_TARGET_NAMES) -> InfillProposal:
    """Steps 2-8 of section 3 as one plain function: data ``D`` in, ``k`` infill configs out.

    ``X``: ``(n, 7)`` solver vectors of successfully evaluated configs (snapped to canonical
    form here); ``F``: ``(n, n_obj)`` objectives; ``G``: ``(n,)`` constraint.
    ``excluded_keys``: canonical keys of every evaluated (incl. failed) or pending config.
    Deterministic for ``seed``.
    """
    X = space.canonical_vectors(np.asarray(X, dtype=float))
    F = np.asarray(F, dtype=float).reshape(len(X), -1)
    G = np.asarray(G, dtype=float).ravel()
    with single_thread():  # every model call, including the last predictions (see surrogates.py)
        surrogates = fit_surrogates(X, F, G, seed, folds, pool, epsilon, target_names)
        predictors = [fast_predictor(sel.model) for sel in surrogates.values()]
        solution = solve_surrogate_problem(predictors[:-1], predictors[-1], pop_size, n_gen, seed)
        configs, sources = select_infill(solution, k, np.random.default_rng([seed, 8]),
                                         excluded_keys, subset_seed)
        Z = space.canonical_vectors(space.encode_many(configs))
        predicted = np.column_stack([predict(Z) for predict in predictors])
    return InfillProposal(configs, sources, surrogates, predicted)


# ---------------------------------------------------------------------------------------
# The Tune Searcher
# ---------------------------------------------------------------------------------------

class SurrogateCTAEASearcher(CompressionBatchSearcher):
    """Tune adapter of the section 3 loop (defaults = paper section 4.3).

    Args:
        n_initial: initial Latin hypercube sample size ``n`` (step 1).
        budget: total function evaluations (trials), initial sample included.
        n_infill: infill points ``k`` per iteration (step 8), run as concurrent trials.
        pop_size, n_gen: CTAEA population (das-dennis directions) and generations (step 7).
        folds: cross-validation folds of the MAPE surrogate selection (step 5).
        pool: ``{name: factory(seed)}`` surrogate pool; default
            :func:`~searchers.surrogates.default_surrogate_pool`. Not part of the saved state.
        seed: seeds everything (LHS, CV folds, models, CTAEA, infill sampling) and is the
            ``subset_seed`` every suggested config carries.
        objective_keys, constraint_key, status_key, reason_key: result keys of the trainable.
        objective_ideal, objective_nadir, hv_reference: hypervolume normalisation
            (:mod:`searchers.pareto`).
        mape_epsilon: ``epsilon`` of eq. (2).

    ``record["iteration"]`` is 0 for the initial sample and ``i`` for the ``i``-th infill
    batch; :attr:`surrogate_log` records, per iteration and target, the selected surrogate,
    every pool member's CV MAPE, where the infill points came from and their predicted
    values (to compare with the evaluated ones).
    """

    def __init__(self, n_initial: int = 50, budget: int = 100, n_infill: int = 2, pop_size: int = 50,
                 n_gen: int = 1000, folds: int = 5, pool: Mapping[str, SurrogateFactory] | None = None,
                 seed: int = 0, mape_epsilon: float = MAPE_EPSILON, **kwargs):
        if int(n_initial) < 2:
            raise ConfigError(
                f"the initial sample needs >= 2 points to fit surrogates, got {n_initial}")
        if int(budget) < int(n_initial):
            raise ConfigError(f"evaluation budget ({budget}) is smaller than the initial sample "
                              f"({n_initial}); the surrogate loop needs budget >= n_initial")
        if int(n_infill) < 1 or int(n_gen) < 1 or int(folds) < 2:
            raise ConfigError(f"need n_infill >= 1, n_gen >= 1 and folds >= 2, "
                              f"got {n_infill}, {n_gen}, {folds}")
        super().__init__(budget=budget, seed=seed, **kwargs)
        self.n_initial = int(n_initial)
        self.n_infill = int(n_infill)
        self.pop_size = int(pop_size)
        self.n_gen = int(n_gen)
        self.folds = int(folds)
        self.pool = pool
        self.mape_epsilon = float(mape_epsilon)
        make_ctaea(self.pop_size, len(self.objective_keys))  # validate pop_size now, not mid-search
        self._surrogate_log: list[dict] = []

    @property
    def surrogate_log(self) -> list[dict]:
        return copy.deepcopy(self._surrogate_log)

    def _next_batch(self) -> list[tuple[int, dict]]:
        iteration = self._n_batches
        if iteration == 0:
            configs = space.latin_hypercube_configs(self.n_initial, self.seed, subset_seed=self.seed)
            return [(0, c) for c in configs]
        k = min(self.n_infill, self.budget - self._n_suggested)
        iteration_seed = int(self._rng.integers(2**31 - 1))
        ok = [r for r in self._history if r["status"] == "ok"]
        if len(ok) < 2:
            rng = np.random.default_rng(iteration_seed)
            configs = space.random_unique_configs(k, rng, self._known_keys, self.seed)
            self._surrogate_log.append({"iteration": iteration, "target": None, "selected": None,
                                        "cv_mape": {}, "sources": ["random"] * k, "predicted": []})
            return [(iteration, c) for c in configs]
        X = space.encode_many(r["config"] for r in ok)
        F, G = self.objective_matrix(ok)
        proposal = propose_infill(X, F, G, k, iteration_seed, self._known_keys,
                                  pop_size=self.pop_size, n_gen=self.n_gen, folds=self.folds,
                                  pool=self.pool, epsilon=self.mape_epsilon, subset_seed=self.seed,
                                  target_names=(*self.objective_keys, self.constraint_key))
        for j, (target, selection) in enumerate(proposal.surrogates.items()):
            self._surrogate_log.append({"iteration": iteration, "target": target,
                                        "selected": selection.name, "cv_mape": dict(selection.cv_mape),
                                        "sources": list(proposal.sources),
                                        "predicted": proposal.predicted[:, j].tolist()})
        return [(iteration, c) for c in proposal.configs]

    def _extra_state(self) -> dict:
        return {"surrogate_log": copy.deepcopy(self._surrogate_log)}

    def _set_extra_state(self, state: dict) -> None:
        self._surrogate_log = copy.deepcopy(state["surrogate_log"])
