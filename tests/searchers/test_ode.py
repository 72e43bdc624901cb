"""The ODE Searcher: batches, budget, de-duplication, determinism, save/restore, and search
quality under a real Tuner."""
import math
import random

import numpy as np
import pytest

from searchers.cell_space import Decoded
from searchers.de import Infeasible
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
    assert dups  # seed 0 proposes duplicates (4): the check below is not vacuous
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
    assert restarts and any(r["status"] == "ok" for r in restarts)
    assert [r["key"] for r in s.evaluated()].count("basin") == 1  # still trained once
    assert s.population_fitness.max() == 1.0  # the elite survives every restart


def test_exhausted_space_stops_without_spending_the_budget():
    class ThreeSpace(GenomeSpace):
        def decode(self, genome):
            return _Plain(str(min(int(genome[0] * 3), 2)))

    s = drive(ODESearcher(space=ThreeSpace(), pop_size=4, budget=20, seed=0), sphere)
    assert s.finished and len(s.evaluated()) == 3 and s.restarts >= 1


def test_infeasibility_rule_makes_candidates_infeasible_without_training():
    rule = lambda cfg: None if cfg["architecture"]["n_f_init"] <= 8 else Infeasible("needs too much memory", 1.0)
    s = ODESearcher(pop_size=6, budget=12, seed=0, feasibility_fn=rule)
    drive(s, lambda g: float(np.mean(g)))
    assert all(r["config"]["architecture"]["n_f_init"] == 8 for r in s.evaluated())
    assert any(r["status"] == "infeasible" and r["reason"] == "needs too much memory" for r in s.history)


class BoxSpace(GenomeSpace):
    """Feasible only where genes 0-2 all lie in [0.45, 0.55): 0.1% of the cube, like a narrow
    FLOPs window; outside it the violation is the summed distance to the box."""

    def decode(self, genome):
        d = sum(max(0.45 - g, g - 0.55, 0.0) for g in genome[:3])
        return super().decode(genome) if d == 0 else Decoded(None, False, "outside the box", d)


def test_violation_ranking_moves_the_population_into_a_narrow_feasible_region():
    """Deb's rules lead the search into the box and it spends its budget there. With every
    infeasible candidate tied (violation 0), the same search trains nothing for this seed
    (1 seed in 10 reaches the budget that way), so the budget is the test."""
    s = drive(ODESearcher(space=BoxSpace(), pop_size=8, budget=16, seed=0), sphere)
    assert len(s.evaluated()) == 16 and len(s.history) < 400
    assert all(0.45 <= g < 0.55 for r in s.evaluated() for g in r["genome"][:3])
    infeasible = [r for r in s.history if r["status"] == "infeasible"]
    assert infeasible and all(r["violation"] > 0 for r in infeasible)


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


@pytest.mark.parametrize("kwargs", [{"budget": 3, "pop_size": 4}, {"pop_size": 3, "budget": 10},
                                    {"mode": "min"}])
def test_what_the_searcher_cannot_run_is_a_plain_error(kwargs):
    with pytest.raises(ValueError):
        ODESearcher(**kwargs)


def _analytic_trainable(config):
    from ray import tune

    tune.report({"best_val_acc": sphere(config["genome"]), "status": "ok"})


def test_ode_under_a_real_tuner_completes_its_budget(ray_local, tmp_path):
    """Sanity under Tune (the comparison with random search is benchmarks/ode_vs_random.py)."""
    from ray import tune

    searcher = ODESearcher(space=GenomeSpace(), pop_size=4, budget=16, seed=0)
    tuner = tune.Tuner(
        tune.with_resources(_analytic_trainable, {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=16),
        run_config=tune.RunConfig(name="ode", storage_path=str(tmp_path), verbose=0))
    grid = tuner.fit()
    assert len(grid) == 16 and not grid.errors
    values = [r.metrics["best_val_acc"] for r in grid]
    restored = ODESearcher(space=GenomeSpace(), pop_size=4, budget=16, seed=0)
    restored.restore_from_dir(str(tmp_path / "ode"))
    assert restored.is_finished and len(restored.evaluated()) == 16
    assert max(r["fitness"] for r in restored.evaluated()) == max(values)


# ---- multi-fidelity (rungs) ---------------------------------------------------------------
from searchers.ode import rung_epochs  # noqa: E402


def test_rung_epochs_are_geometric_up_to_the_full_budget():
    assert rung_epochs(3, 3, 50) == [3, 9, 27, 50]
    assert rung_epochs(1, 2, 8) == [1, 2, 4, 8]
    assert rung_epochs(5, 3, 5) == [5]
    with pytest.raises(ValueError, match="eta >= 2"):
        rung_epochs(1, 1, 10)


def curve_of(genome, epochs):
    """A learning curve rising to the genome's quality (sphere in (0, 1]), better genomes
    better at every epoch, so rung scores rank like final scores."""
    quality = math.exp(sphere(genome))
    return [quality * (1 - 0.5 ** e) for e in range(1, epochs + 1)]


def drive_rungs(searcher, order_seed=None, rungs_full=9, lose_reports=None, stop_after=None, first_id=0):
    """Play Tune with a RungScheduler: each running trial reports epoch by epoch; the
    searcher's rung_decision may stop it. Returns {candidate: epochs trained}; with
    ``stop_after`` it returns at the first batch boundary after that many trials."""
    running, n, trained = [], first_id, {}
    rnd = random.Random(order_seed)
    while True:
        cfg = searcher.suggest(f"t{n}")
        if cfg == ODESearcher.FINISHED:
            return trained
        if cfg is None:
            if not running:
                raise AssertionError("searcher waits but nothing runs")
            tid, c = running.pop(rnd.randrange(len(running)) if order_seed is not None else 0)
            curve = []
            for e in range(1, rungs_full + 1):
                curve = curve_of(c["genome"], e)
                row = {"curve": curve, searcher.metric: max(curve), "status": "ok"}
                if lose_reports and e in lose_reports:
                    continue  # a report the searcher's saved state never saw (a crash)
                if not searcher.rung_decision(tid, row):
                    break
            else:
                row = dict(row, done_training=True)
            trained[c["candidate"]] = len(curve)
            searcher.on_trial_complete(tid, row)
            if stop_after is not None and len(searcher.evaluated()) >= stop_after and not running:
                return trained
            continue
        running.append((f"t{n}", cfg))
        n += 1


def multi_searcher(**kw):
    return ODESearcher(space=GenomeSpace(), pop_size=6, budget=30, seed=3, rungs=[1, 3, 9], eta=3, **kw)


def test_multi_fidelity_stops_most_candidates_at_low_rungs_and_never_retrains():
    s = multi_searcher()
    trained = drive_rungs(s)
    assert len(trained) == 30 == len(s.evaluated())
    epochs = sorted(trained.values())
    assert set(epochs) <= {1, 3, 9} and epochs.count(1) > epochs.count(3) > 0
    rungs = s.rungs_reached()
    assert [r["epochs"] for r in rungs] == [1, 3, 9]
    assert rungs[0]["candidates"] == 30 and rungs[0]["candidates"] > rungs[1]["candidates"] > rungs[2]["candidates"] > 0
    # a search of 30 candidates cost far fewer epochs than 30 full trainings
    assert s.epochs_trained() == sum(trained.values()) < 0.5 * 30 * 9
    for rec in s.evaluated():
        assert rec["fidelity"] == trained[rec["candidate"]] and len(rec["curve"]) == rec["fidelity"]


def test_multi_fidelity_ranks_by_rung_reached_then_score():
    s = multi_searcher()
    drive_rungs(s)
    ranked = sorted(s.evaluated(), key=s.rank_key)
    levels = [s.level(r["candidate"]) for r in ranked]
    assert levels == sorted(levels, reverse=True)
    full = [r for r in ranked if r["fidelity"] == 9]
    assert ranked[0] is full[0] and ranked[0]["fitness"] == max(r["fitness"] for r in full)


def test_one_to_one_selection_compares_at_the_fidelity_both_reached():
    s = multi_searcher()
    drive_rungs(s)
    full = next(r for r in s.evaluated() if r["fidelity"] == 9)
    low = next(r for r in s.evaluated() if r["fidelity"] == 1)
    parent_fit, trial_fit = s._paired_fitness([full["candidate"]], [low["candidate"]],
                                              np.array([full["fitness"]]), np.array([low["fitness"]]))
    # the parent's score is read at 1 epoch (its curve), not at its 9
    assert parent_fit[0] == pytest.approx(full["curve"][0]) and parent_fit[0] < full["fitness"]
    assert trial_fit[0] == pytest.approx(low["fitness"])


def test_multi_fidelity_is_deterministic_one_trial_at_a_time_and_resumes_exactly(tmp_path):
    full = multi_searcher()
    drive_rungs(full)
    again = multi_searcher()
    drive_rungs(again)
    assert [r["genome"] for r in again.history] == [r["genome"] for r in full.history]
    part = multi_searcher()
    drive_rungs(part, stop_after=14)  # past the first batch (2 x 6) and into the next
    assert 12 <= len(part.evaluated()) < 30
    part.save(str(tmp_path / "state.pkl"))
    resumed = multi_searcher()
    resumed.restore(str(tmp_path / "state.pkl"))
    drive_rungs(resumed, first_id=1000)
    assert [r["genome"] for r in resumed.history] == [r["genome"] for r in full.history]
    assert resumed.rungs_reached() == full.rungs_reached()


def test_rung_scores_missed_by_a_lost_report_are_read_from_the_curve():
    """After a crash a trial resumes from its checkpoint, past reports the saved searcher
    never saw: the next report's curve still gives every rung's score."""
    s = multi_searcher()
    drive_rungs(s, lose_reports={1, 3})
    assert len(s.rung_scores[1]) == 30  # every candidate scored at rung 1 anyway
    # each rung decided at the first report after it (epochs 2 and 4), none at the lost ones
    assert {len(r["curve"]) for r in s.evaluated()} <= {2, 4, 9}


def test_end_marks_what_never_ran_and_finishes():
    s = multi_searcher()
    drive_rungs(s, stop_after=12)
    assert s.started_at is not None and s.elapsed() >= 0
    s.suggest("late")  # one more running trial at the end
    s.end("time budget ran out")
    assert s.is_finished and s.suggest("x") == ODESearcher.FINISHED and s.ended == "time budget ran out"
    left = [r for r in s.history if r["status"] == "not evaluated" and r["reason"] == "time budget ran out"]
    assert left and not [r for r in s.history if r["status"] in ("pending", "running")]


def test_end_counts_a_running_candidate_at_the_epochs_it_reported():
    s = multi_searcher()
    drive_rungs(s, stop_after=12)
    cfg = s.suggest("late")
    curve = curve_of(cfg["genome"], 2)
    s.end("time budget ran out", {"late": {"curve": curve, s.metric: max(curve), "status": "ok"}})
    rec = s.history[cfg["candidate"]]
    assert rec["status"] == "ok" and rec["fidelity"] == 2 and rec["fitness"] == max(curve)
