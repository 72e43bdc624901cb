"""The ODE Searcher: batches, budget, de-duplication, determinism, save/restore, and search
quality under a real Tuner."""
import math
import random

import numpy as np
import pytest

from orchestrator.errors import ConfigError
from searchers.cell_space import Decoded
from searchers.ode import ODESearcher


class GenomeSpace:
    """Every genome feasible; identity = genes rounded to 3 decimals (analytic tests)."""

    dims = 29
    name = "genes"

    def decode(self, genome):
        key = ",".join(f"{g:.3f}" for g in genome)
        return _Plain(key)

    def config(self, decoded):
        return {}


class _Plain(Decoded):
    def __init__(self, key):
        super().__init__(architecture=None, feasible=True)
        object.__setattr__(self, "_key", key)

    @property
    def key(self):
        return self._key


TARGET = np.linspace(0.1, 0.9, 29)


def sphere(genome) -> float:
    return -float(np.sum((np.asarray(genome) - TARGET) ** 2))


def drive(searcher, fitness, order_seed=None, stop_after=None):
    """Play Tune's role: ask until None, complete running trials (in shuffled order)."""
    running, n = [], 0
    rnd = random.Random(order_seed)
    while True:
        cfg = searcher.suggest(f"t{n}")
        if cfg == ODESearcher.FINISHED:
            return searcher
        if cfg is None:
            if not running:
                raise AssertionError("searcher waits but nothing runs")
            k = rnd.randrange(len(running)) if order_seed is not None else 0
            tid, c = running.pop(k)
            searcher.on_trial_complete(tid, {searcher.metric: fitness(c["genome"]), "status": "ok"})
            if stop_after is not None and len(searcher.evaluated()) >= stop_after and not running:
                return searcher
            continue
        running.append((f"t{n}", cfg))
        n += 1


def test_first_batch_is_population_and_its_opposite():
    s = ODESearcher(space=GenomeSpace(), pop_size=5, budget=20, seed=0)
    cfgs = [s.suggest(f"t{i}") for i in range(10)]
    assert s.suggest("t10") is None  # generation barrier: the batch has not finished
    p, op = np.array([c["genome"] for c in cfgs[:5]]), np.array([c["genome"] for c in cfgs[5:]])
    np.testing.assert_allclose(op, 1.0 - p)


def test_budget_is_respected_and_deterministic_whatever_the_completion_order():
    a = drive(ODESearcher(space=GenomeSpace(), pop_size=6, budget=40, seed=3), sphere, order_seed=1)
    b = drive(ODESearcher(space=GenomeSpace(), pop_size=6, budget=40, seed=3), sphere, order_seed=2)
    assert len(a.evaluated()) == 40
    assert [r["genome"] for r in a.history] == [r["genome"] for r in b.history]
    assert [r["fitness"] for r in a.history] == [r["fitness"] for r in b.history]


def test_initial_population_keeps_the_best_of_p_and_op():
    s = ODESearcher(space=GenomeSpace(), pop_size=4, budget=40, seed=0)
    drive(s, sphere, stop_after=8)
    fits = sorted((r["fitness"] for r in s.history[:8]), reverse=True)[:4]
    assert sorted(s.population_fitness, reverse=True) == fits


def test_infeasible_and_duplicate_candidates_are_not_trained():
    s = ODESearcher(pop_size=8, budget=30, seed=0)  # the real 29-gene cell space
    drive(s, lambda g: float(np.mean(g)))
    trained_keys = [r["key"] for r in s.evaluated()]
    assert len(trained_keys) == len(set(trained_keys))  # each architecture trained once
    infeasible = [r for r in s.history if r["status"] == "infeasible"]
    assert infeasible and all(r["trial_id"] is None and r["fitness"] == -math.inf for r in infeasible)
    dups = [r for r in s.history if r["status"] == "duplicate"]
    for r in dups:
        assert r["fitness"] == s.history[r["duplicate_of"]]["fitness"]


class BasinSpace(GenomeSpace):
    """Half the cube (gene 0 < 0.5) decodes to one architecture, like the stem-only cell that
    most edge patterns prune down to; the other half are all distinct."""

    def decode(self, genome):
        return _Plain("basin") if genome[0] < 0.5 else super().decode(genome)


def basin_fitness(genome) -> float:
    return 1.0 if genome[0] < 0.5 else sphere(genome)  # the basin is the best architecture


def test_converged_population_restarts_and_spends_the_budget():
    s = drive(ODESearcher(space=BasinSpace(), pop_size=6, budget=30, seed=0), basin_fitness)
    assert len(s.evaluated()) == 30 and s.restarts >= 1
    restarts = [r for r in s.history if r["phase"] == "restart"]
    assert restarts and any(r["status"] == "trained" for r in restarts)
    assert [r["key"] for r in s.evaluated()].count("basin") == 1  # still trained once
    assert s.population_fitness.max() == 1.0  # the elite survives every restart


def test_exhausted_space_stops_without_spending_the_budget():
    class ThreeSpace(GenomeSpace):
        def decode(self, genome):
            return _Plain(str(min(int(genome[0] * 3), 2)))

    s = drive(ODESearcher(space=ThreeSpace(), pop_size=4, budget=20, seed=0), sphere)
    assert s.finished and len(s.evaluated()) == 3 and s.restarts >= 1


def test_cost_cap_makes_candidates_infeasible_without_training():
    s = ODESearcher(pop_size=6, budget=12, seed=0, cost_fn=lambda cfg: cfg["architecture"]["n_f_init"],
                    max_cost=8)
    drive(s, lambda g: float(np.mean(g)))
    assert all(r["config"]["architecture"]["n_f_init"] == 8 for r in s.evaluated())
    assert any("exceeds the cap" in r["reason"] for r in s.history)


def test_failed_trial_gets_worst_fitness_and_search_goes_on():
    s = ODESearcher(space=GenomeSpace(), pop_size=4, budget=12, seed=0)
    cfg = s.suggest("x")
    s.on_trial_complete("x", {"best_val_acc": 0.0, "status": "failed", "reason": "NonFiniteLoss"})
    s.on_trial_complete("nope", {"best_val_acc": 1.0})  # unknown trial ids are ignored
    rec = s.history[cfg["candidate"]]
    assert rec["status"] == "failed" and rec["fitness"] == -math.inf and rec["reason"] == "NonFiniteLoss"
    drive(s, sphere)
    assert len(s.evaluated()) == 12


def test_save_restore_mid_search_matches_uninterrupted(tmp_path):
    full = drive(ODESearcher(space=GenomeSpace(), pop_size=5, budget=35, seed=7), sphere)
    part = ODESearcher(space=GenomeSpace(), pop_size=5, budget=35, seed=7)
    drive(part, sphere, stop_after=17)
    part.save(str(tmp_path / "state.pkl"))
    resumed = ODESearcher(space=GenomeSpace(), pop_size=5, budget=35, seed=7)
    resumed.restore(str(tmp_path / "state.pkl"))
    drive(resumed, sphere)
    assert [r["genome"] for r in resumed.history] == [r["genome"] for r in full.history]
    assert len(resumed.evaluated()) == 35


@pytest.mark.parametrize("kwargs,match", [({"budget": 3, "pop_size": 4}, "budget"),
                                          ({"pop_size": 3, "budget": 10}, "pop-size"),
                                          ({"jump_rate": 1.5}, "JR")])
def test_bad_parameters(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ODESearcher(**kwargs)


def _analytic_trainable(config):
    from ray import tune

    tune.report({"best_val_acc": sphere(config["genome"]), "status": "ok"})


def test_ode_under_tuner_beats_random_search(ray_local, tmp_path):
    """Equal budget, three seeds: ODE through a real Tuner vs uniform random genomes."""
    from ray import tune

    budget, wins, gaps = 60, 0, []
    for seed in range(3):
        searcher = ODESearcher(space=GenomeSpace(), pop_size=10, budget=budget, seed=seed)
        tuner = tune.Tuner(
            tune.with_resources(_analytic_trainable, {"cpu": 0.25}),
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=budget, reuse_actors=True),
            run_config=tune.RunConfig(name=f"ode{seed}", storage_path=str(tmp_path), verbose=0))
        grid = tuner.fit()
        assert len(grid) == budget and not grid.errors
        ode_best = max(r.metrics["best_val_acc"] for r in grid)
        rng = np.random.default_rng(100 + seed)
        random_best = max(sphere(rng.random(29)) for _ in range(budget))
        wins += ode_best > random_best
        gaps.append(ode_best - random_best)
    assert wins == 3, gaps
