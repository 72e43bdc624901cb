"""Pure CTAEA on the real function, and the batch Searcher base shared with the surrogate loop.

Paper section 4.3 compares the surrogate loop of section 3 with CTAEA [12] run directly on
the expensive compression function at the same budget of 100 evaluations: population 20
x 5 generations ("CTAEA1") and 10 x 10 ("CTAEA2"). :class:`CTAEASearcher` is that baseline
as a thin ask/tell adapter over pymoo's CTAEA (modelled on Ray's ``OptunaSearch``):
``algorithm.setup(problem, termination=("n_gen", G), seed=...)``, then per generation
``ask()`` -> one Tune trial per new individual -> ``tell()``.

This module also holds what both searchers share (the surrogate searcher imports it):

* :class:`CompressionBatchSearcher` -- the Tune side: hands out a batch of configs one per
  ``suggest`` call, returns ``None`` while the batch runs, processes the batch only when
  all its trials are complete and always in suggestion order (so the search does not
  depend on trial completion order), ``Searcher.FINISHED`` at the end, history, ``D*`` and
  hypervolume, ``save``/``restore``;
* :func:`parse_trial_result` -- objectives / constraint / status out of a Tune result;
* :func:`make_ctaea` -- CTAEA with das-dennis reference directions and duplicate
  elimination on *canonical* configs (two real vectors that decode to the same
  compressed model are duplicates).

Failed candidates (paper-independent rule of DESIGN.md): a failed trial is recorded with its
reason, counts as evaluated (never re-proposed) and, where an algorithm needs numbers for
it (pure CTAEA's ``tell``), gets the worst fitness: objectives at ``2 x nadir - ideal``
(twice the normalisation span, beyond the hypervolume reference point) and constraint
violation :data:`FAILED_CONSTRAINT_VIOLATION`.
"""
from __future__ import annotations

import copy
import logging
import math
import pickle
from typing import Mapping, Sequence

import numpy as np
from pymoo.algorithms.moo.ctaea import CTAEA
from pymoo.core.duplicate import DefaultDuplicateElimination
from pymoo.core.evaluator import Evaluator
from pymoo.core.problem import Problem
from pymoo.core.sampling import Sampling
from pymoo.problems.static import StaticProblem
from pymoo.util.ref_dirs import get_reference_directions
from ray.tune.search import Searcher

from medcore.compression_genome import canonical_key
from medcore.errors import ConfigError
from searchers import compression_space as space
from searchers.pareto import (DEFAULT_IDEAL, DEFAULT_NADIR, DEFAULT_REFERENCE,
                              feasible_nondominated_indices, hypervolume)

logger = logging.getLogger(__name__)

DEFAULT_OBJECTIVE_KEYS = ("f1_compute", "f2_error")
DEFAULT_CONSTRAINT_KEY = "g_accuracy"
DEFAULT_STATUS_KEY = "status"
DEFAULT_REASON_KEY = "reason"

#: Constraint value told to CTAEA for a failed trial: g = tau - accuracy <= tau <= 1 for any
#: accuracy in [0, 1], so 1.0 is at least as bad as the worst real violation.
FAILED_CONSTRAINT_VIOLATION = 1.0


# ---------------------------------------------------------------------------------------
# CTAEA construction
# ---------------------------------------------------------------------------------------

def reference_directions(pop_size: int, n_obj: int = 2) -> np.ndarray:
    """Das-Dennis reference directions; CTAEA's population size is their number.

    For two objectives ``n_partitions = pop_size - 1`` gives exactly ``pop_size``
    directions (50 for the paper's population of 50). For more objectives the largest
    partition count with at most ``pop_size`` directions is used.
    """
    if pop_size < 2:
        raise ConfigError(f"CTAEA population size must be >= 2, got {pop_size}")
    partitions = 1
    while math.comb(partitions + 1 + n_obj - 1, n_obj - 1) <= pop_size:
        partitions += 1
    return get_reference_directions("das-dennis", n_obj, n_partitions=partitions)


def _canonical_solver_vectors(pop) -> np.ndarray:
    # Module level (not a lambda) so pymoo objects holding it stay picklable.
    return space.canonical_vectors(pop.get("X"))


class CanonicalDuplicateElimination(DefaultDuplicateElimination):
    """Duplicates = same canonical compression config, not just the same real vector.

    SBX/PM produce real vectors that often decode to an existing config (same categories,
    same 2-decimal intensities, or irrelevant variables of a scope-0 layer kind); pymoo
    then regenerates them, so a generation holds distinct compressed models.
    """

    def __init__(self):
        super().__init__(epsilon=1e-9, func=_canonical_solver_vectors)


class CanonicalUniqueSampling(Sampling):
    """Uniform random initial population of *distinct canonical* configs, always full size.

    Needed, not cosmetic: pymoo removes duplicates from the initial sample without
    refilling it, and CTAEA's diversity-archive update (``CADASurvival._updateDA``) loops
    forever when the first population is smaller than the number of reference directions.
    Uniform draws collide canonically quite often (both scopes 0 -> only ``x7`` matters),
    so colliding rows are redrawn from the algorithm's own random state.
    """

    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        X = random_state.random((n_samples, problem.n_var))
        for _ in range(1000):
            keys = space.canonical_keys(X)
            first = {}
            for i, key in enumerate(keys):
                first.setdefault(key, i)
            repeat = [i for i, key in enumerate(keys) if first[key] != i]
            if not repeat:
                return X
            X[repeat] = random_state.random((len(repeat), problem.n_var))
        raise RuntimeError(f"could not sample {n_samples} distinct compression configs")


def make_ctaea(pop_size: int, n_obj: int = 2) -> CTAEA:
    """pymoo CTAEA over the unit-cube solver space: canonical-unique initial sample and
    canonical duplicate elimination (see the two classes above)."""
    return CTAEA(ref_dirs=reference_directions(pop_size, n_obj), sampling=CanonicalUniqueSampling(),
                 eliminate_duplicates=CanonicalDuplicateElimination())


class CompressionSpaceProblem(Problem):
    """The compression problem (eq. 1) as pymoo sees it in ask/tell mode: 7 reals in [0, 1].

    Values come from Tune trials through :class:`~pymoo.problems.static.StaticProblem`, so
    this problem is never evaluated itself.
    """

    def __init__(self, n_obj: int = 2):
        super().__init__(n_var=space.N_VARIABLES, n_obj=n_obj, n_ieq_constr=1, xl=0.0, xu=1.0)

    def _evaluate(self, X, out, *args, **kwargs):
        raise RuntimeError("the compression problem is evaluated by Tune trials, not by pymoo")


def tell_values(algorithm, pop, F: np.ndarray, G: np.ndarray) -> None:
    """Attach objective/constraint values to an asked population and ``tell`` CTAEA."""
    static = StaticProblem(algorithm.problem, F=np.asarray(F, dtype=float),
                           G=np.asarray(G, dtype=float).reshape(len(pop), -1))
    Evaluator().eval(static, pop)
    algorithm.tell(infills=pop)


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------

def parse_trial_result(result: Mapping | None, error: bool,
                       objective_keys: Sequence[str] = DEFAULT_OBJECTIVE_KEYS,
                       constraint_key: str = DEFAULT_CONSTRAINT_KEY,
                       status_key: str = DEFAULT_STATUS_KEY,
                       reason_key: str = DEFAULT_REASON_KEY) -> dict:
    """Objectives, constraint, status and reason of one finished trial.

    A trial is ``"failed"`` when Tune reports an error, the trainable reports a status
    other than ``"ok"``, or an objective/constraint value is missing or not finite.
    A result without a status key but with all values counts as ``"ok"``.
    """
    result = result or {}
    reason = None
    if error:
        reason = "trial raised an error"
    elif result.get(status_key, "ok") != "ok":
        reason = str(result.get(reason_key) or f"{status_key}={result.get(status_key)!r}")
    objectives, constraint = None, None
    if reason is None:
        try:
            objectives = {k: float(result[k]) for k in objective_keys}
            constraint = float(result[constraint_key])
        except (KeyError, TypeError, ValueError):
            missing = [k for k in (*objective_keys, constraint_key) if k not in result]
            reason = f"result lacks {missing}" if missing else "non-numeric objective/constraint"
            objectives, constraint = None, None
    if reason is None and not all(np.isfinite([*objectives.values(), constraint])):
        reason = "non-finite objective/constraint"
        objectives, constraint = None, None
    ok = reason is None
    return {"objectives": objectives, "constraint": constraint,
            "status": "ok" if ok else "failed", "reason": reason,
            "feasible": bool(ok and constraint <= 0.0)}


# ---------------------------------------------------------------------------------------
# Shared Searcher base
# ---------------------------------------------------------------------------------------

class CompressionBatchSearcher(Searcher):
    """Batch ask/tell Searcher over the compression space (shared by both CTAEA searchers).

    Subclasses implement :meth:`_next_batch` (the configs of the next batch, ``[]`` when
    the search is over) and :meth:`_on_batch_complete` (learn from the batch's records).

    ``history`` holds one record per evaluated trial, in suggestion order::

        {"trial_id", "iteration", "config", "objectives": {key: value} | None,
         "constraint": value | None, "status": "ok" | "failed", "reason", "feasible"}

    Use with ``TuneConfig(num_samples=-1)`` (or ``>= budget``): the searcher ends the
    experiment itself with ``Searcher.FINISHED``. Only complete batches enter ``history``.
    """

    #: Attributes rebuilt after unpickling instead of being pickled (subclasses extend).
    _transient_attributes: tuple[str, ...] = ()

    def __init__(self, budget: int, seed: int = 0,
                 objective_keys: Sequence[str] = DEFAULT_OBJECTIVE_KEYS,
                 constraint_key: str = DEFAULT_CONSTRAINT_KEY,
                 status_key: str = DEFAULT_STATUS_KEY,
                 reason_key: str = DEFAULT_REASON_KEY,
                 objective_ideal: Sequence[float] = DEFAULT_IDEAL,
                 objective_nadir: Sequence[float] = DEFAULT_NADIR,
                 hv_reference: Sequence[float] = DEFAULT_REFERENCE):
        super().__init__(metric=None, mode=None)
        if int(budget) < 1:
            raise ConfigError(f"evaluation budget must be >= 1, got {budget}")
        if len(objective_keys) < 1:
            raise ConfigError("at least one objective key is needed")
        if not (len(objective_ideal) == len(objective_nadir) == len(hv_reference) == len(objective_keys)):
            raise ConfigError(
                "objective_ideal, objective_nadir and hv_reference need one value per objective")
        if any(n <= i for i, n in zip(objective_ideal, objective_nadir)):
            raise ConfigError(f"objective_nadir {tuple(objective_nadir)} must exceed "
                              f"objective_ideal {tuple(objective_ideal)}")
        self.budget = int(budget)
        self.seed = int(seed)
        self.objective_keys = tuple(objective_keys)
        self.constraint_key = constraint_key
        self.status_key = status_key
        self.reason_key = reason_key
        self.objective_ideal = tuple(float(v) for v in objective_ideal)
        self.objective_nadir = tuple(float(v) for v in objective_nadir)
        self.hv_reference = tuple(float(v) for v in hv_reference)
        # --- search state (everything below is saved by ``save``) ---
        self._rng = np.random.default_rng(self.seed)
        self._history: list[dict] = []
        self._known_keys: set[tuple] = set()    # canonical keys evaluated or pending
        self._n_suggested = 0
        self._n_batches = 0
        self._queue: list[tuple[int, dict]] = []  # (iteration, config) not yet handed out
        self._batch: list[str] = []               # trial ids of the running batch, suggestion order
        self._pending: dict[str, dict] = {}       # trial id -> {"iteration", "config"}
        self._completed: dict[str, dict] = {}     # trial id -> record (running batch only)

    # ---- subclass hooks -----------------------------------------------------------------

    def _next_batch(self) -> list[tuple[int, dict]]:
        """``(iteration, config)`` pairs of the next batch; ``[]`` ends the search."""
        raise NotImplementedError

    def _on_batch_complete(self, records: list[dict]) -> None:
        """Called once per batch, with its records in suggestion order."""

    def _extra_state(self) -> dict:
        return {}

    def _set_extra_state(self, state: dict) -> None:
        pass

    # ---- Tune Searcher API --------------------------------------------------------------

    def suggest(self, trial_id: str):
        if not self._queue and not self._batch:
            if self._n_suggested >= self.budget:
                return Searcher.FINISHED
            batch = self._next_batch()
            if not batch:
                return Searcher.FINISHED
            # Never hand out more than the budget, whatever a subclass returned.
            self._queue = list(batch)[: self.budget - self._n_suggested]
        if not self._queue:
            return None  # the running batch must finish before the next one is decided
        iteration, config = self._queue.pop(0)
        self._known_keys.add(canonical_key(config))
        self._batch.append(trial_id)
        self._pending[trial_id] = {"iteration": iteration, "config": dict(config)}
        self._n_suggested += 1
        return dict(config)

    def on_trial_complete(self, trial_id: str, result: Mapping | None = None, error: bool = False) -> None:
        info = self._pending.pop(trial_id, None)
        if info is None:
            logger.warning("%s: ignoring completion of unknown trial %s", type(self).__name__, trial_id)
            return
        parsed = parse_trial_result(result, error, self.objective_keys, self.constraint_key,
                                    self.status_key, self.reason_key)
        self._completed[trial_id] = {"trial_id": trial_id, "iteration": info["iteration"],
                                     "config": info["config"], **parsed}
        if self._queue or any(t not in self._completed for t in self._batch):
            return
        # The whole batch is in: process it in suggestion order (completion order is noise).
        records = [self._completed[t] for t in self._batch]
        self._history.extend(records)
        self._batch, self._completed = [], {}
        self._n_batches += 1
        self._on_batch_complete(records)

    # ---- results ------------------------------------------------------------------------

    @property
    def history(self) -> list[dict]:
        """Every evaluated trial of complete batches, in suggestion order (deep copy)."""
        return copy.deepcopy(self._history)

    @property
    def n_evaluated(self) -> int:
        return len(self._history)

    @property
    def is_finished(self) -> bool:
        """True once the search has handed out its last config and every trial is in."""
        return (not self._queue and not self._batch and
                (self._n_suggested >= self.budget or self._search_exhausted()))

    def _search_exhausted(self) -> bool:
        return False

    def objective_matrix(self, records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
        """``(F, G)`` arrays of successful records (objectives in ``objective_keys`` order)."""
        F = np.array([[r["objectives"][k] for k in self.objective_keys] for r in records], dtype=float)
        G = np.array([r["constraint"] for r in records], dtype=float)
        return F.reshape(len(records), len(self.objective_keys)), G

    def d_star(self) -> tuple[list[dict], float]:
        """Section 3 step 11: ``D*`` (feasible non-dominated records) and its hypervolume.

        Hypervolume as in :mod:`searchers.pareto`, with this searcher's
        ``objective_ideal``/``objective_nadir`` normalisation and ``hv_reference``.
        """
        ok = [r for r in self._history if r["status"] == "ok"]
        if not ok:
            return [], 0.0
        F, G = self.objective_matrix(ok)
        idx = feasible_nondominated_indices(F, G)
        hv = hypervolume(F[idx], self.objective_ideal, self.objective_nadir, self.hv_reference)
        return [copy.deepcopy(ok[i]) for i in idx], hv

    def hypervolume(self) -> float:
        """Hypervolume of ``D*`` (see :meth:`d_star`)."""
        return self.d_star()[1]

    def failed_objectives(self) -> np.ndarray:
        """Worst-fitness objective vector told for failed trials (``2 x nadir - ideal``)."""
        ideal = np.asarray(self.objective_ideal)
        nadir = np.asarray(self.objective_nadir)
        return nadir + (nadir - ideal)

    # ---- persistence --------------------------------------------------------------------

    _STATE_KEYS = ("_rng", "_history", "_known_keys", "_n_suggested", "_n_batches", "_queue",
                   "_batch", "_pending", "_completed")

    def get_state(self) -> dict:
        state = {key: copy.deepcopy(getattr(self, key)) for key in self._STATE_KEYS}
        state["searcher_class"] = type(self).__name__
        state["settings"] = {"budget": self.budget, "seed": self.seed,
                             "objective_keys": self.objective_keys, "constraint_key": self.constraint_key}
        state.update(self._extra_state())
        return state

    def set_state(self, state: dict) -> None:
        if state.get("searcher_class") != type(self).__name__:
            raise ConfigError(f"cannot restore a {state.get('searcher_class')} state into "
                              f"{type(self).__name__}")
        if state["settings"]["seed"] != self.seed:
            logger.warning("restoring a state saved with seed %s into a searcher with seed %s; "
                           "the saved state wins", state["settings"]["seed"], self.seed)
            self.seed = state["settings"]["seed"]
        for key in self._STATE_KEYS:
            setattr(self, key, copy.deepcopy(state[key]))
        self._set_extra_state(state)

    def save(self, checkpoint_path: str) -> None:
        """Pickle the whole search state (RNG, history, queue, pending trial ids, ...)."""
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))

    def __getstate__(self):
        # Tune pickles the searcher itself (Tuner.restore); live solver objects are rebuilt.
        state = self.__dict__.copy()
        for key in self._transient_attributes:
            state[key] = None
        return state


# ---------------------------------------------------------------------------------------
# Pure CTAEA (the paper's baseline)
# ---------------------------------------------------------------------------------------

class CTAEASearcher(CompressionBatchSearcher):
    """CTAEA directly on the real function: ``pop_size`` x ``n_gen`` (paper 4.3: 20x5, 10x10).

    Each generation is one batch: ``ask()`` gives ``pop_size`` individuals, each *new*
    canonical config becomes a Tune trial, and ``tell()`` gets the values once all are in.
    An individual whose canonical config was already evaluated (earlier generation, or a
    twin in the same generation) is answered from the history instead of being evaluated
    again -- the function is deterministic, so this only saves budget. Hence at most
    ``pop_size x n_gen`` evaluations (``budget``); ``record["iteration"]`` = generation (0-based).

    Persistence: the pymoo algorithm object is not pickled (pymoo's decorated functions
    are not picklable); the state keeps every told generation ``(X, F, G)`` and the
    outstanding ``ask``, and the algorithm is rebuilt by replaying them with the same seed
    -- CTAEA is deterministic given its seed and what it was told, and the replay checks
    that every re-asked population equals the recorded one.
    """

    _transient_attributes = ("_algorithm", "_asked_pop")

    def __init__(self, pop_size: int = 20, n_gen: int = 5, seed: int = 0, **kwargs):
        if int(pop_size) < 2 or int(n_gen) < 1:
            raise ConfigError(
                f"CTAEA needs pop_size >= 2 and n_gen >= 1, got {pop_size} x {n_gen}")
        super().__init__(budget=int(pop_size) * int(n_gen), seed=seed, **kwargs)
        self.n_gen = int(n_gen)
        self._ref_dirs = reference_directions(int(pop_size), len(self.objective_keys))
        self.pop_size = len(self._ref_dirs)
        self._told: list[dict] = []        # per told generation: {"X", "F", "G"}
        self._asked: dict | None = None     # outstanding generation: {"X", "keys", "iteration"}
        self._values: dict[tuple, tuple[np.ndarray, float]] = {}  # canonical key -> (F, G) told
        self._algorithm = None
        self._asked_pop = None

    # ---- pymoo algorithm, rebuilt lazily ------------------------------------------------

    def _build_algorithm(self):
        algorithm = make_ctaea(self.pop_size, len(self.objective_keys))
        algorithm.setup(CompressionSpaceProblem(len(self.objective_keys)),
                        termination=("n_gen", self.n_gen), seed=self.seed)
        for gen in self._told:  # replay (see class docstring)
            pop = algorithm.ask()
            if not np.array_equal(pop.get("X"), gen["X"]):
                raise RuntimeError("CTAEA replay diverged from the saved search (pymoo version change?)")
            tell_values(algorithm, pop, gen["F"], gen["G"])
        self._asked_pop = None
        if self._asked is not None:
            pop = algorithm.ask()
            if not np.array_equal(pop.get("X"), self._asked["X"]):
                raise RuntimeError("CTAEA replay diverged from the saved search (pymoo version change?)")
            self._asked_pop = pop
        self._algorithm = algorithm
        return algorithm

    def _ensure_algorithm(self):
        return self._algorithm if self._algorithm is not None else self._build_algorithm()

    # ---- hooks --------------------------------------------------------------------------

    def _search_exhausted(self) -> bool:
        return len(self._told) >= self.n_gen

    def _next_batch(self) -> list[tuple[int, dict]]:
        algorithm = self._ensure_algorithm()
        while len(self._told) < self.n_gen:
            generation = len(self._told)
            pop = algorithm.ask()
            X = pop.get("X")
            configs = space.decode_many(X, subset_seed=self.seed)
            keys = [canonical_key(c) for c in configs]
            self._asked = {"X": X.copy(), "keys": keys, "iteration": generation}
            self._asked_pop = pop
            new, seen = [], set()
            for config, key in zip(configs, keys):
                if key not in self._known_keys and key not in seen:
                    seen.add(key)
                    new.append((generation, config))
            if new:
                return new
            self._tell_asked()  # every individual already evaluated: no trial needed
        return []

    def _on_batch_complete(self, records: list[dict]) -> None:
        for record in records:
            key = canonical_key(record["config"])
            if record["status"] == "ok":
                F = np.array([record["objectives"][k] for k in self.objective_keys], dtype=float)
                self._values[key] = (F, float(record["constraint"]))
            else:
                self._values[key] = (self.failed_objectives(), FAILED_CONSTRAINT_VIOLATION)
        self._tell_asked()

    def _tell_asked(self) -> None:
        algorithm = self._ensure_algorithm()
        keys = self._asked["keys"]
        F = np.array([self._values[k][0] for k in keys], dtype=float).reshape(len(keys), -1)
        G = np.array([self._values[k][1] for k in keys], dtype=float).reshape(len(keys))
        tell_values(algorithm, self._asked_pop, F, G)
        self._told.append({"X": self._asked["X"], "F": F, "G": G})
        self._asked, self._asked_pop = None, None

    # ---- persistence --------------------------------------------------------------------

    def _extra_state(self) -> dict:
        return {"told": copy.deepcopy(self._told), "asked": copy.deepcopy(self._asked),
                "values": copy.deepcopy(self._values)}

    def _set_extra_state(self, state: dict) -> None:
        self._told = copy.deepcopy(state["told"])
        self._asked = copy.deepcopy(state["asked"])
        self._values = copy.deepcopy(state["values"])
        self._algorithm, self._asked_pop = None, None  # rebuilt by replay on next use
