"""``searchers.pareto`` through pymoo (NonDominatedSorting, ZeroToOneNormalization, HV) gives what
the hand-written numpy version it replaced gave, kept here as the reference, on fixed inputs."""
from __future__ import annotations

import numpy as np
import pytest

from searchers import pareto


def reference_non_dominated(F: np.ndarray) -> np.ndarray:
    """The former pairwise implementation: a dominates b iff a <= b everywhere and < somewhere."""
    if len(F) == 0:
        return np.zeros(0, dtype=bool)
    le = np.all(F[:, None, :] <= F[None, :, :], axis=2)
    lt = np.any(F[:, None, :] < F[None, :, :], axis=2)
    return ~np.any(le & lt, axis=0)


def fixed_inputs():
    rng = np.random.default_rng(12345)
    cases = [np.zeros((0, 2)), np.array([[0.3, 0.3]]), np.array([[1.0, 2.0], [1.0, 2.0], [2.0, 1.0], [3.0, 3.0]])]
    for n, m in [(7, 1), (25, 2), (40, 2), (30, 3)]:
        cases.append(rng.integers(0, 6, size=(n, m)) / 5.0)  # coarse grid: ties and duplicates
    return cases


@pytest.mark.parametrize("F", fixed_inputs())
def test_non_dominated_mask_matches_the_pairwise_definition(F):
    assert np.array_equal(pareto.non_dominated_mask(F), reference_non_dominated(F))


def test_duplicates_are_all_kept_and_dominated_points_dropped():
    F = [[1.0, 2.0], [1.0, 2.0], [2.0, 1.0], [3.0, 3.0], [0.5, 5.0]]
    assert pareto.non_dominated_mask(F).tolist() == [True, True, True, False, True]
    assert pareto.feasible_nondominated_indices(F, [0, 0, 1, 0, -1]).tolist() == [0, 1, 4]


def test_normalisation_and_hypervolume_match_the_former_formulas():
    F = np.array([[0.2, 0.5], [0.6, 0.1], [0.9, 0.05], [1.2, 0.0], [0.4, 0.5]])
    ideal, nadir, ref = (0.0, -0.1), (1.2, 1.0), (1.1, 1.1)
    expected = (F - np.array(ideal)) / (np.array(nadir) - np.array(ideal))
    assert np.allclose(pareto.normalise(F, ideal, nadir), expected, rtol=0, atol=1e-15)
    # the 2-D hypervolume by hand: sort the inside, non-dominated points by f1, sum the slabs
    Fn = expected[np.all(expected < ref, axis=1)]
    Fn = Fn[reference_non_dominated(Fn)]
    Fn = Fn[np.argsort(Fn[:, 0])]
    by_hand = sum((ref[0] - f1) * (prev - f2) for (f1, f2), prev in zip(Fn, [ref[1], *Fn[:-1, 1]]))
    assert pareto.hypervolume(F, ideal, nadir, ref) == pytest.approx(by_hand, abs=1e-12)
    assert pareto.hypervolume([[0.0, 0.0]]) == pytest.approx(1.1 * 1.1)
    assert pareto.hypervolume([[1.2, 0.5]]) == 0.0 and pareto.hypervolume(np.zeros((0, 2))) == 0.0


def test_a_degenerate_normalisation_span_is_refused():
    with pytest.raises(ValueError, match="must exceed ideal"):
        pareto.normalise([[0.5, 0.5]], (0.0, 1.0), (1.0, 1.0))
