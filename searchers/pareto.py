"""Feasible non-dominated set ``D*`` (paper section 3, step 11) and its hypervolume (Definition 1, eq. 3).

All objectives are minimised (eq. 1: ``f1`` = FLOPs x non-zero-weight rate, ``f2`` = error).
A point is feasible iff every constraint value is ``<= 0`` (``g = tau - accuracy``).

Hypervolume normalisation and reference point
--------------------------------------------
Objectives live on different scales (raw FLOPs vs an error in [0, 1]), so before
measuring, each objective is mapped linearly with given bounds::

    f_norm = (f - ideal) / (nadir - ideal)

and the hypervolume is taken with reference point ``reference`` on that normalised scale
(pymoo ``HV`` with ``zero_to_one`` normalisation, computed by moocore; non-dominated sorting is
pymoo's ``NonDominatedSorting``). Defaults: ``ideal = (0, 0)``, ``nadir = (1, 1)``,
``reference = (1.1, 1.1)``. For the compression search pass ``nadir = (base FLOPs, 1)``
when the trainable reports raw FLOPs (``f1`` divided by the base model's FLOPs,
``f2`` = error already in [0, 1]); with ``f1`` already normalised by the base model the
defaults apply as they are. The 10 % margin of the reference point gives the extreme
points of a front (e.g. an uncompressed model, normalised ``f1 = 1``) a non-zero share.
Points that do not dominate the reference point contribute nothing.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from pymoo.indicators.hv import HV
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting
from pymoo.util.normalization import ZeroToOneNormalization

DEFAULT_IDEAL = (0.0, 0.0)
DEFAULT_NADIR = (1.0, 1.0)
DEFAULT_REFERENCE = (1.1, 1.1)


def _as_2d(F) -> np.ndarray:
    F = np.asarray(F, dtype=float)
    if F.ndim == 1:
        F = F.reshape(-1, 1) if F.size else F.reshape(0, 1)
    return F


def feasible_mask(G) -> np.ndarray:
    """``True`` where every constraint value is ``<= 0`` (``G`` of shape (n,) or (n, m))."""
    G = np.asarray(G, dtype=float)
    if G.ndim == 1:
        G = G[:, None]
    return np.all(G <= 0.0, axis=1)


def non_dominated_mask(F) -> np.ndarray:
    """``True`` for rows of ``F`` no other row Pareto-dominates (minimisation).

    ``a`` dominates ``b`` iff ``a <= b`` everywhere and ``a < b`` somewhere; equal rows do
    not dominate each other, so duplicates are all kept.
    """
    F = _as_2d(F)
    mask = np.zeros(len(F), dtype=bool)
    if len(F):
        mask[NonDominatedSorting().do(F, only_non_dominated_front=True)] = True
    return mask


def feasible_nondominated_indices(F, G) -> np.ndarray:
    """Indices (ascending) of ``D*``: the feasible points not dominated by another feasible point."""
    F = _as_2d(F)
    feasible = np.flatnonzero(feasible_mask(G)) if len(F) else np.zeros(0, dtype=int)
    if len(feasible) == 0:
        return feasible
    return feasible[non_dominated_mask(F[feasible])]


def _bounds(ideal: Sequence[float], nadir: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    ideal, nadir = np.asarray(ideal, dtype=float), np.asarray(nadir, dtype=float)
    if np.any(nadir - ideal <= 0):  # pymoo would leave such an objective unscaled without a word
        raise ValueError(f"nadir {tuple(nadir)} must exceed ideal {tuple(ideal)} in every objective")
    return ideal, nadir


def normalise(F, ideal: Sequence[float] = DEFAULT_IDEAL,
              nadir: Sequence[float] = DEFAULT_NADIR) -> np.ndarray:
    """Map objectives linearly so ``ideal -> 0`` and ``nadir -> 1`` (per objective), by pymoo's
    ``ZeroToOneNormalization`` (the one its ``HV(zero_to_one=True)`` applies)."""
    F = _as_2d(F)
    ideal, nadir = _bounds(ideal, nadir)
    return ZeroToOneNormalization(ideal, nadir).forward(F)


def hypervolume(F, ideal: Sequence[float] = DEFAULT_IDEAL, nadir: Sequence[float] = DEFAULT_NADIR,
                reference: Sequence[float] = DEFAULT_REFERENCE) -> float:
    """Hypervolume (eq. 3) of the points ``F`` after :func:`normalise`, w.r.t. ``reference``.

    Dominated points are harmless (they add no volume); pass ``D*`` to follow the paper.
    Returns 0.0 for an empty set.
    """
    F = _as_2d(F)
    if len(F) == 0:
        return 0.0
    ideal, nadir = _bounds(ideal, nadir)
    reference = np.asarray(reference, dtype=float)
    inside = np.all(normalise(F, ideal, nadir) < reference, axis=1)
    if not inside.any():
        return 0.0
    indicator = HV(ref_point=reference, ideal=ideal, nadir=nadir, zero_to_one=True, norm_ref_point=False)
    return float(indicator(F[inside]))
