"""DE/rand/1/bin, opposition and generation-jumping math (paper 2.3)."""
import numpy as np
import pytest

from searchers import de


def test_opposition_over_bounds_and_population_range():
    p = np.array([[0.2, 0.9], [0.6, 0.5]])
    np.testing.assert_allclose(de.opposition_population(p), [[0.8, 0.1], [0.4, 0.5]])
    # jumping: min+max-x per dimension over the current population: dim0 [0.2,0.6], dim1 [0.5,0.9]
    np.testing.assert_allclose(de.generation_jump(p), [[0.6, 0.5], [0.2, 0.9]])


def test_mutation_with_full_crossover_is_x_r1_plus_F_difference():
    rng = np.random.default_rng(0)
    p = np.random.default_rng(1).random((6, 4))
    trial = de.de_rand_1_bin(p, F=0.5, CR=1.0, rng=rng)
    # replay the same draws to recover r1, r2, r3 for every target
    rng = np.random.default_rng(0)
    for i in range(6):
        r1, r2, r3 = rng.choice([k for k in range(6) if k != i], size=3, replace=False)
        assert i not in (r1, r2, r3) and len({r1, r2, r3}) == 3
        np.testing.assert_allclose(trial[i], p[r1] + 0.5 * (p[r2] - p[r3]))
        rng.random(4), rng.integers(4)


def test_zero_crossover_keeps_all_but_one_gene():
    p = np.random.default_rng(1).random((8, 10))
    trial = de.de_rand_1_bin(p, F=0.5, CR=0.0, rng=np.random.default_rng(3))
    assert ((trial != p).sum(axis=1) == 1).all()


def test_repair_redraws_out_of_bound_genes_only():
    x = np.array([[-0.1, 0.5, 1.2]])
    y = de.repair_bounds(x, np.random.default_rng(0))
    assert y[0, 1] == 0.5 and (0 <= y).all() and (y <= 1).all() and y[0, 0] != -0.1


def test_selection_and_best_indices():
    parents, trials = np.zeros((3, 2)), np.ones((3, 2))
    pop, fit, _ = de.select_survivors(parents, np.array([0.5, 0.5, 0.5]), trials, np.array([0.4, 0.5, 0.9]))
    np.testing.assert_array_equal(pop[:, 0], [0, 1, 1])
    np.testing.assert_array_equal(fit, [0.5, 0.5, 0.9])
    assert list(de.best_indices(np.array([0.1, 0.9, -np.inf, 0.9]), 3)) == [1, 3, 0]


def test_feasibility_rules_rank_feasible_first_then_by_violation():
    """Deb's rules: feasible beats infeasible whatever the fitness; infeasible by violation."""
    inf = -np.inf
    fit, vio = np.array([inf, 0.2, inf, inf, 0.1]), np.array([2.0, 0.0, 0.5, np.inf, 0.0])
    assert list(de.best_indices(fit, 5, vio)) == [1, 4, 2, 0, 3]
    parents, trials = np.zeros((4, 1)), np.ones((4, 1))
    pop, fit, vio = de.select_survivors(parents, np.array([inf, inf, 0.5, 0.5]), trials, np.array([inf, inf, inf, 0.4]),
                                        np.array([1.0, 1.0, 0.0, 0.0]), np.array([0.5, 2.0, 0.3, 0.0]))
    # closer to feasible replaces; farther does not; infeasible never replaces feasible; then fitness
    np.testing.assert_array_equal(pop[:, 0], [1, 0, 0, 0])
    np.testing.assert_array_equal(vio, [0.5, 1.0, 0.0, 0.0])


def test_population_too_small():
    with pytest.raises(ValueError):
        de.de_rand_1_bin(np.zeros((3, 2)), 0.5, 0.5, np.random.default_rng(0))
