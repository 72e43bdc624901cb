"""ODE as a Ray Tune Searcher (paper 2.3, Fig. 3).

Phases: opposition-based initialisation (evaluate P and OP, keep the best NP), then
generations of DE/rand/1/bin with one-to-one selection, each followed with probability JR
by opposition-based generation jumping (evaluate OP* over the population's current bounds,
keep the best NP of P u OP*).

Every batch (P u OP, one generation, or one jump) is suggested at once so its trials run
concurrently; the generation barrier is internal (``suggest`` returns None while a batch
is still running). A genome whose decoded architecture was already evaluated reuses that
fitness, an infeasible one gets the worst fitness without training; neither spends the
evaluation budget. Selection uses Deb's feasibility rules (:mod:`searchers.de`), so infeasible
candidates are ranked by how far they miss and the population moves towards the feasible
region. Results are applied only when a batch is complete and in batch order, so a search is
deterministic for a seed whatever order trials finish in.

Restarts (not in the paper): because duplicates cost nothing, a population that has
converged in architecture space proposes only known architectures and would end the search
with budget unspent (measured: AdrenalMNIST3D seed 1 collapsed onto the stem-only network after
9 of 24 evaluations). After ``RESTART_AFTER_IDLE`` consecutive batches with nothing new to
train and no move towards feasible (the population's summed violation did not fall), the
population is re-initialised by opposition-based initialisation, keeping the best individual.
The search ends after ``MAX_IDLE_BATCHES`` batches in a row with nothing new to train.

Multi-fidelity (``rungs``, in the style of DEHB, Awad et al. IJCAI 2021): every candidate starts
training and is checked at each rung's epoch budget (e.g. 3, 9, 27); :class:`RungScheduler` asks
:meth:`ODESearcher.rung_decision` and stops it unless its score there is in the best ``1/eta`` of
every score recorded at that rung so far (asynchronous successive halving, as ASHA). A candidate
that continues keeps training in its trial: nothing is retrained from scratch. Selection compares
candidates only at one fidelity: the one-to-one DE step at the highest fidelity both reached,
pool selections (P u OP, jumps, restarts) by the rung reached, then the score there. The
opposition steps are the paper's. Rung scores are read from the trial's reported learning curve
(``curve``, the selection metric per epoch), so a resumed search recomputes any score its last
saved state missed. Rung decisions depend on the order trials reach a rung (as in ASHA): a
multi-fidelity search is deterministic for a seed at one trial at a time.
"""
from __future__ import annotations

import math
import pickle
import time

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from medcore.records import DUPLICATE, FAILED, INFEASIBLE, NOT_EVALUATED, OK
from searchers import de
from searchers.cell_space import CellSpace

WORST = -math.inf
# Batches in a row with nothing new to train: restart the population after a few, and stop
# after many (the space, under its feasibility rules, has nothing left to offer).
RESTART_AFTER_IDLE = 3
MAX_IDLE_BATCHES = 25


def rung_epochs(min_epochs: int, eta: int, max_epochs: int) -> list[int]:
    """The successive-halving budgets: ``min_epochs * eta**k`` below ``max_epochs``, then
    ``max_epochs`` itself (e.g. 3, 9, 27, 50)."""
    if min_epochs < 1 or eta < 2 or max_epochs < 1:
        raise ValueError(f"rungs need min_epochs >= 1, eta >= 2, max_epochs >= 1; got {min_epochs}, {eta}, {max_epochs}")
    out, r = [], min_epochs
    while r < max_epochs:
        out.append(r)
        r *= eta
    return out + [max_epochs]


class RungScheduler(FIFOScheduler):
    """Tune's side of the multi-fidelity mode: each reported epoch goes to the searcher's
    :meth:`ODESearcher.rung_decision`, which records rung scores and says stop or continue.
    The decisions live in the searcher's (saved) state, so a restored run decides alike."""

    def __init__(self, searcher: "ODESearcher"):
        super().__init__()
        self.searcher = searcher

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        keep = self.searcher.rung_decision(trial.trial_id, result)
        return TrialScheduler.CONTINUE if keep else TrialScheduler.STOP


class ODESearcher(Searcher):
    """Opposition-based differential evolution over a unit-hypercube genome space.

    ``space`` decodes genomes (``dims``, ``decode(genome) -> Decoded``, ``config(decoded)``);
    the default is the 29-gene 3D cell space. Fitness is ``result[metric]`` (maximised).
    ``feasibility_fn(config)`` returns a :class:`searchers.de.Infeasible` saying why a decoded
    candidate cannot be trained (a FLOPs cap, training memory above the largest node) and by how
    much, or None; such a candidate is infeasible and costs no budget. The validated config
    (orchestrator.config) is the place for range checks; this class only refuses what it cannot run.
    """

    def __init__(self, space=None, metric: str = "best_val_acc", mode: str = "max", pop_size: int = 20,
                 F: float = 0.5, CR: float = 0.5, jump_rate: float = 0.3, budget: int = 200, seed: int = 0,
                 feasibility_fn=None, rungs: list[int] | None = None, eta: int = 3):
        if mode != "max":
            raise ValueError("the ODE searcher maximises its metric; use mode='max'")
        if pop_size < 4 or budget < pop_size:
            raise ValueError(f"DE/rand/1 needs pop_size >= 4 and budget >= pop_size, got {pop_size}, {budget}")
        super().__init__(metric=metric, mode=mode)
        self.space = space or CellSpace()
        self.pop_size, self.F, self.CR, self.jump_rate = pop_size, F, CR, jump_rate
        self.budget, self.seed = budget, seed
        self.feasibility_fn = feasibility_fn
        # multi-fidelity: rung epochs (the last is the full budget) and the kept share 1/eta
        self.rungs, self.eta = (list(rungs) if rungs else None), int(eta)
        self.rung_scores: dict[int, dict[int, float]] = {r: {} for r in (self.rungs or [])[:-1]}
        self.rng = np.random.default_rng(seed)
        self.history: list[dict] = []  # one record per candidate genome considered
        self.fitness_by_key: dict[str, float] = {}
        self.record_by_key: dict[str, int] = {}
        self.trial_to_record: dict[str, int] = {}
        self.population = None
        self.population_fitness = None
        self.population_violation = None
        self.population_records = None  # history indices of the population's members
        self.phase = "init"
        self.generation = 0
        self.n_trials = 0
        self.idle_batches = 0  # batches in a row with nothing new to train
        self.stalled_batches = 0  # ... and with nothing closer to feasible either
        self.restarts = 0
        self.elite = None  # (genome, fitness, violation, records) carried over a restart
        self.batch: list[int] = []  # history indices of the current batch, in order
        self.queue: list[int] = []  # records of this batch waiting for a trial
        self.finished = False
        self.started_at: float | None = None  # wall clock of the first suggestion (a time budget counts from it)
        self.ended = ""  # why the search ended before its budget of candidates, if it did
        self._start_batch(np.vstack([p := self.rng.random((pop_size, self.space.dims)),
                                     de.opposition_population(p)]))

    @property
    def is_finished(self) -> bool:
        """True once the budget is spent (or the space exhausted) and every trial is in."""
        return self.finished

    # ---- Tune interface -------------------------------------------------------------
    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        if metric and metric != self.metric or mode and mode != self.mode:
            return False
        return True

    def suggest(self, trial_id: str):
        if self.finished:
            return Searcher.FINISHED
        if self.started_at is None:
            self.started_at = time.time()
        if not self.queue:
            return None
        idx = self.queue.pop(0)
        rec = self.history[idx]
        rec["trial_id"], rec["status"] = trial_id, "running"
        self.trial_to_record[trial_id] = idx
        self.n_trials += 1
        return dict(rec["config"], genome=list(rec["genome"]), candidate=idx, generation=rec["generation"])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        idx = self.trial_to_record.pop(trial_id, None)
        if idx is None:
            return
        self._record(idx, result, error)
        self._advance()

    def _record(self, idx: int, result: dict | None, error: bool = False) -> None:
        """A trial's result into its candidate's record (fitness, curve, fidelity)."""
        rec = self.history[idx]
        value = None if (error or not result) else result.get(self.metric)
        failed = error or not result or result.get("status", "ok") != "ok" or value is None \
            or not math.isfinite(float(value))
        rec["status"] = FAILED if failed else OK
        rec["fitness"] = WORST if failed else float(value)
        rec["reason"] = "trial errored" if error else (result or {}).get("reason", "") if failed else ""
        rec["metrics"] = {k: v for k, v in (result or {}).items() if _is_metric(k, v)}
        curve = (result or {}).get("curve")
        rec["curve"] = [float(v) for v in curve] if isinstance(curve, (list, tuple)) else []
        # the epochs a candidate's score stands for: all of them once fit ended by itself
        # (the epoch cap or early stopping: more epochs would not change it), else those trained
        full = self.rungs[-1] if self.rungs else len(rec["curve"])
        rec["fidelity"] = 0 if failed else full if (result or {}).get("done_training") else len(rec["curve"])
        self.fitness_by_key[rec["key"]] = rec["fitness"]

    def rung_decision(self, trial_id: str, result: dict) -> bool:
        """Multi-fidelity: record the trial's score at every rung its curve has reached and
        say whether it goes on (True) -- it stops at the first rung where its score is below the
        ``1 - 1/eta`` quantile of all scores recorded at that rung (itself included)."""
        idx = self.trial_to_record.get(trial_id)
        curve = result.get("curve")
        if not self.rungs or idx is None or not isinstance(curve, (list, tuple)):
            return True
        rec = self.history[idx]
        if rec.get("stopped_at"):
            return False
        passed = rec.setdefault("rungs_passed", [])
        for r in self.rungs[:-1]:
            if len(curve) < r or r in passed:
                continue
            score = _best(curve[:r])
            self.rung_scores[r][idx] = score
            passed.append(r)
            values = np.maximum(np.asarray(list(self.rung_scores[r].values()), dtype=float), -1e9)
            if score < np.percentile(values, 100.0 * (1.0 - 1.0 / self.eta)):
                rec["stopped_at"] = r
                return False
        return True

    def save(self, checkpoint_path: str):
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str):
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        if self.population is not None and getattr(self, "population_violation", None) is None:
            self.population_violation = np.zeros(len(self.population))  # state saved before the rules
        if self.elite is not None and len(self.elite) == 2:
            self.elite = (*self.elite, np.zeros(1))
        self.__dict__.setdefault("stalled_batches", self.idle_batches)
        for key, value in (("rungs", None), ("eta", 3), ("rung_scores", {}), ("population_records", None),
                           ("started_at", None), ("ended", "")):
            self.__dict__.setdefault(key, value)
        if self.elite is not None and len(self.elite) == 3:
            self.elite = (*self.elite, None)

    def elapsed(self) -> float:
        """Seconds since the first suggestion (0 before it)."""
        return 0.0 if self.started_at is None else time.time() - self.started_at

    def end(self, reason: str, last_results: dict | None = None) -> None:
        """End the search now (its time budget ran out). A running candidate with a last report
        (``last_results``: trial id -> its last reported metrics) counts at the epochs it reached;
        candidates never started, or stopped before their first epoch, are not evaluated."""
        for trial_id, idx in list(self.trial_to_record.items()):
            result = (last_results or {}).get(trial_id)
            if result and result.get(self.metric) is not None:
                self.trial_to_record.pop(trial_id)
                self._record(idx, result)
        for rec in self.history:
            if rec["status"] in ("pending", "running"):
                rec["status"], rec["reason"] = NOT_EVALUATED, reason
        self.batch, self.queue, self.finished, self.ended = [], [], True, reason

    # ---- the ODE state machine ------------------------------------------------------
    def _start_batch(self, genomes: np.ndarray):
        self.batch, self.queue = [], []
        remaining = self.budget - self.n_trials
        for genome in genomes:
            decoded = self.space.decode(genome)
            rec = {"candidate": len(self.history), "generation": self.generation, "phase": self.phase,
                   "genome": [float(g) for g in genome], "key": decoded.key, "fitness": None,
                   "status": "pending", "reason": decoded.reason, "violation": decoded.violation,
                   "trial_id": None, "metrics": {},
                   "config": self.space.config(decoded) if decoded.feasible else None}
            idx = len(self.history)
            self.history.append(rec)
            self.batch.append(idx)
            if decoded.feasible and self.feasibility_fn is not None and decoded.key not in self.record_by_key:
                refused = self.feasibility_fn(rec["config"])
                if refused is not None:
                    decoded = type(decoded)(None, False, refused.reason, refused.violation)
                    rec["reason"], rec["violation"] = refused.reason, refused.violation
            if not decoded.feasible:
                rec["status"], rec["fitness"] = INFEASIBLE, WORST
            elif decoded.key in self.record_by_key:
                rec["status"], rec["duplicate_of"] = DUPLICATE, self.record_by_key[decoded.key]
            elif remaining > 0:
                self.record_by_key[decoded.key] = idx
                self.queue.append(idx)
                remaining -= 1
            else:
                rec["status"], rec["reason"] = NOT_EVALUATED, "evaluation budget exhausted"
        self.idle_batches = 0 if self.queue else self.idle_batches + 1
        self._advance()

    def _batch_fitness(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(fitness, violation) of the whole batch, or None while a trial of it is still running."""
        values = []
        for idx in self.batch:
            rec = self.history[idx]
            if rec["status"] in ("pending", "running"):
                return None
            if rec["status"] == DUPLICATE:
                fit = self.fitness_by_key.get(rec["key"])
                if fit is None:
                    return None  # its original is still running in this batch
                rec["fitness"] = fit
            values.append(WORST if rec["fitness"] is None else rec["fitness"])
        violations = [self.history[idx].get("violation", 0.0) for idx in self.batch]
        return np.asarray(values, dtype=float), np.asarray(violations, dtype=float)

    def _advance(self):
        """Close the batch if complete, update P, and open the next batch (or finish)."""
        batch = self._batch_fitness()
        if batch is None:
            return
        fitness, violation = batch
        before = None if self.population is None else _total(self.population_violation)
        genomes = np.asarray([self.history[i]["genome"] for i in self.batch])
        records = list(self.batch)
        if self.phase == "init":
            keep = de.best_indices(fitness, self.pop_size, violation, self._levels(records))
            self._set_population(genomes[keep], fitness[keep], violation[keep], [records[i] for i in keep])
        elif self.phase == "evolve":
            parent_fit, trial_fit = self._paired_fitness(self.population_records, records,
                                                         self.population_fitness, fitness)
            take = de.survivor_mask(parent_fit, trial_fit, self.population_violation, violation)
            self._set_population(np.where(take[:, None], genomes, self.population),
                                 np.where(take, fitness, self.population_fitness),
                                 np.where(take, violation, self.population_violation),
                                 None if self.population_records is None else
                                 [t if k else p for t, p, k in zip(records, self.population_records, take)])
        else:  # jump: P u OP*; restart: the elite u P' u OP'
            old = (self.population, self.population_fitness, self.population_violation, self.population_records) \
                if self.phase == "jump" else self.elite
            pool = np.vstack([old[0], genomes])
            pool_fit, pool_vio = np.concatenate([old[1], fitness]), np.concatenate([old[2], violation])
            pool_rec = list(old[3]) + records if old[3] is not None else None
            keep = de.best_indices(pool_fit, self.pop_size, pool_vio, self._levels(pool_rec))
            self._set_population(pool[keep], pool_fit[keep], pool_vio[keep],
                                 None if pool_rec is None else [pool_rec[i] for i in keep])
        closer = before is not None and _total(self.population_violation) < before
        self.stalled_batches = 0 if self.idle_batches == 0 or closer else self.stalled_batches + 1
        if self.n_trials >= self.budget or self.idle_batches >= MAX_IDLE_BATCHES:
            self.finished = True
            self.batch, self.queue = [], []
            return
        if self.stalled_batches and self.stalled_batches % RESTART_AFTER_IDLE == 0:
            best = de.best_indices(self.population_fitness, 1, self.population_violation,
                                   self._levels(self.population_records))
            self.elite = (self.population[best], self.population_fitness[best], self.population_violation[best],
                          None if self.population_records is None else [self.population_records[i] for i in best])
            self.phase, self.restarts = "restart", self.restarts + 1
            self.generation += 1
            fresh = self.rng.random((self.pop_size, self.space.dims))
            self._start_batch(np.vstack([fresh, de.opposition_population(fresh)]))
        elif self.phase == "evolve" and self.rng.random() <= self.jump_rate:
            self.phase = "jump"
            self._start_batch(de.generation_jump(self.population))
        else:
            self.phase = "evolve"
            self.generation += 1
            trials = de.de_rand_1_bin(self.population, self.F, self.CR, self.rng)
            self._start_batch(de.repair_bounds(trials, self.rng))

    def _set_population(self, genomes, fitness, violation, records):
        self.population, self.population_fitness, self.population_violation = genomes, fitness, violation
        self.population_records = records

    # ---- fidelities (multi-fidelity mode; paper mode: every candidate at one fidelity) ------
    def _source(self, idx: int) -> dict:
        """The record that was trained for ``idx`` (a duplicate's original)."""
        rec = self.history[idx]
        return self.history[rec["duplicate_of"]] if rec["status"] == DUPLICATE else rec

    def reach(self, idx: int) -> int:
        """Epochs the candidate's score stands for (0: never trained)."""
        rec = self._source(idx)
        return int(rec.get("fidelity", 0)) if rec["status"] == OK else 0

    def level(self, idx: int) -> int:
        """How many rungs the candidate reached (multi-fidelity), 0 otherwise."""
        return sum(r <= self.reach(idx) for r in self.rungs) if self.rungs else 0

    def score_at(self, idx: int, epochs: int) -> float:
        """The candidate's selection score after ``epochs`` (its early-stopped best so far)."""
        rec = self._source(idx)
        curve = rec.get("curve") or []
        if rec["status"] != OK or epochs >= self.reach(idx) or len(curve) < epochs:
            return _fit(rec)
        return _best(curve[:epochs])

    def _levels(self, records) -> np.ndarray | None:
        return None if not self.rungs or records is None else np.asarray([self.level(i) for i in records])

    def _paired_fitness(self, parents, trials, parent_fit, trial_fit):
        """One-to-one selection's fitness pairs: in multi-fidelity mode each pair is scored at
        the highest fidelity both reached."""
        if not self.rungs or parents is None:
            return parent_fit, trial_fit
        pairs = []
        for p, t in zip(parents, trials):
            f = min(self.reach(p), self.reach(t))
            pairs.append((self.score_at(p, f), self.score_at(t, f)) if f else (_fit(self._source(p)), _fit(self._source(t))))
        return np.asarray([a for a, _ in pairs], dtype=float), np.asarray([b for _, b in pairs], dtype=float)

    def rank_key(self, rec: dict) -> tuple:
        """Sort key of a trained record, best first: the rung reached (multi-fidelity), then fitness."""
        return (-self.level(rec["candidate"]), -rec["fitness"])

    def rungs_reached(self) -> list[dict]:
        """One entry per rung: its epochs and how many trained candidates reached it."""
        if not self.rungs:
            done = [r for r in self.history if r["status"] == OK]
            epochs = max((len(r.get("curve") or []) for r in done), default=0)
            return [{"epochs": epochs, "candidates": len(done)}]
        return [{"epochs": r, "candidates": sum(self.reach(rec["candidate"]) >= r for rec in self.history
                                                 if rec["status"] == OK)} for r in self.rungs]

    def epochs_trained(self) -> int:
        """Training epochs the search spent (every trained candidate's curve)."""
        return sum(len(r.get("curve") or []) for r in self.history if r["status"] in (OK, FAILED))

    # ---- results ---------------------------------------------------------------------
    def evaluated(self) -> list[dict]:
        """Records of trained (or failed) candidates, in evaluation order of suggestion."""
        return [r for r in self.history if r["status"] in (OK, FAILED)]

    def best_per_generation(self) -> list[tuple[int, float]]:
        """(generation, best fitness found so far) after each generation; init is generation 0."""
        out, best = [], WORST
        top = len(self.rungs) if self.rungs else 0  # multi-fidelity: only full-budget scores count
        for gen in sorted({r["generation"] for r in self.history}):
            fits = [r["fitness"] for r in self.history if r["generation"] == gen and r["fitness"] is not None
                    and (not top or r["status"] != OK or self.level(r["candidate"]) == top)]
            best = max([best] + fits)
            out.append((gen, best))
        return out


def _fit(rec: dict) -> float:
    return WORST if rec["fitness"] is None else rec["fitness"]


def _best(values) -> float:
    """The best finite value of a learning curve (WORST when none is)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return max(finite) if finite else WORST


def _total(violation: np.ndarray) -> float:
    """The population's summed violation (unknown amounts counted as large, finite)."""
    return float(np.minimum(violation, 1e9).sum())


def _is_metric(key: str, value) -> bool:
    return isinstance(value, (int, float, str, bool)) and key not in ("config", "trial_id", "date", "hostname",
                                                                        "node_ip", "pid", "experiment_tag")
