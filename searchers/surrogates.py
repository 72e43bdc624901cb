"""Surrogate pool and MAPE-based surrogate selection (paper section 3, steps 2-5, eq. 2).

Each iteration of the surrogate loop fits, for each objective and for the constraint,
a set of candidate regressors (paper 4.3 (g): KNeighborsRegressor, RandomForest,
XGBoost, LightGBM) and keeps the one with the lowest cross-validated MAPE (eq. 2).

Kept fast on purpose (this runs every iteration on ~50-100 points, and the selected
model is then queried by 1000 CTAEA generations):

* model sizes suit ~50-100 points (LightGBM ``min_child_samples=5``, 50 forest trees, ...);
* every fit/predict runs under a one-thread OpenMP/BLAS limit (:func:`single_thread`):
  on small data LightGBM's and scikit-learn's OpenMP pools spin against each other --
  on 2 cores a HistGradientBoosting fit went from ~45 ms to ~3 s without the limit;
* :func:`fast_predictor` bypasses per-call validation overhead of scikit-learn forests
  and LightGBM's sklearn wrapper (identical numbers, ~10x less time per call).

Determinism: every model gets ``random_state``/``seed`` from the caller and the CV folds are
shuffled with the same seed, so a selection is a pure function of ``(X, y, seed)``.
"""
from __future__ import annotations

import warnings
from typing import Callable, Mapping, NamedTuple

import numpy as np
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.model_selection import KFold
from sklearn.neighbors import KNeighborsRegressor
from threadpoolctl import threadpool_limits

#: ``epsilon`` of eq. (2): the denominator is ``max(epsilon, |Y_i|)`` so a zero target cannot
#: divide by zero. Machine epsilon of float64, the convention of scikit-learn's
#: ``mean_absolute_percentage_error``: "a very small positive value", as the paper asks.
#: Near-zero targets (a constraint value close to 0) then dominate the mean -- that is the
#: paper's intent ("penalizes errors more for values of lower magnitude").
MAPE_EPSILON = float(np.finfo(np.float64).eps)

SurrogateFactory = Callable[[int], object]


def mape(y_true, y_pred, epsilon: float = MAPE_EPSILON) -> float:
    """Mean absolute percentage error, eq. (2): ``(1/n) sum |Y_i - Yhat_i| / max(eps, |Y_i|)``.

    Returned as a fraction (0.1 == 10 %), not multiplied by 100.
    """
    y_true = np.asarray(y_true, dtype=float).ravel()
    y_pred = np.asarray(y_pred, dtype=float).ravel()
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(f"mape needs two equal, non-empty shapes, got {y_true.shape} and {y_pred.shape}")
    return float(np.mean(np.abs(y_true - y_pred) / np.maximum(epsilon, np.abs(y_true))))


# ---------------------------------------------------------------------------------------
# The pool (paper 4.3 (g))
# ---------------------------------------------------------------------------------------

def _knn(seed: int):
    # Distance weighting: an exact match in the data is reproduced exactly. Features are the
    # unit-cube encoding of compression_space, so no extra scaling is needed.
    return KNeighborsRegressor(n_neighbors=5, weights="distance")


def _random_forest(seed: int):
    return RandomForestRegressor(n_estimators=50, random_state=seed, n_jobs=1)


def _lightgbm(seed: int):
    from lightgbm import LGBMRegressor

    # Defaults (min_child_samples=20) would barely split 40-point CV folds.
    return LGBMRegressor(n_estimators=100, learning_rate=0.1, num_leaves=15, min_child_samples=5,
                         min_data_in_bin=1, subsample=1.0, colsample_bytree=1.0,
                         random_state=seed, n_jobs=1, deterministic=True, force_row_wise=True,
                         verbose=-1)


def _gradient_boosting_factory() -> tuple[str, SurrogateFactory]:
    """XGBoost as in the paper when importable, else scikit-learn's histogram GBM."""
    try:
        from xgboost import XGBRegressor  # noqa: F401
    except ImportError:
        def _hgb(seed: int):
            return HistGradientBoostingRegressor(max_iter=100, learning_rate=0.1, max_leaf_nodes=15,
                                                 min_samples_leaf=5, early_stopping=False,
                                                 random_state=seed)
        return "hist_gradient_boosting", _hgb

    def _xgb(seed: int):
        from xgboost import XGBRegressor
        return XGBRegressor(n_estimators=100, learning_rate=0.1, max_depth=4, subsample=1.0,
                            random_state=seed, n_jobs=1, verbosity=0)
    return "xgboost", _xgb


def default_surrogate_pool() -> dict[str, SurrogateFactory]:
    """Name -> ``factory(seed)`` of a fresh regressor: KNN, random forest, LightGBM, GBM."""
    gbm_name, gbm = _gradient_boosting_factory()
    return {"knn": _knn, "random_forest": _random_forest, "lightgbm": _lightgbm, gbm_name: gbm}


# ---------------------------------------------------------------------------------------
# Fitting, fast prediction, selection
# ---------------------------------------------------------------------------------------

def single_thread():
    """Context manager limiting OpenMP/BLAS pools to one thread (see module docstring)."""
    return threadpool_limits(limits=1)


def _fit(model, X: np.ndarray, y: np.ndarray):
    # KNN cannot use more neighbours than training points (tiny CV folds).
    if isinstance(model, KNeighborsRegressor) and model.n_neighbors > len(X):
        model.set_params(n_neighbors=len(X))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # feature-name / convergence chatter on tiny data
        return model.fit(X, y)


def fast_predictor(model) -> Callable[[np.ndarray], np.ndarray]:
    """A prediction function giving the same numbers as ``model.predict`` with less overhead.

    Forests: average the trees' low-level ``tree_.predict`` (skips joblib and input
    validation); LightGBM: call the booster directly. Anything else: ``model.predict``.
    """
    if isinstance(model, RandomForestRegressor):
        trees = [est.tree_ for est in model.estimators_]

        def predict_forest(X):
            X32 = np.ascontiguousarray(X, dtype=np.float32)
            total = np.zeros(len(X32))
            for tree in trees:
                total += tree.predict(X32).reshape(len(X32), -1)[:, 0]
            return total / len(trees)
        return predict_forest
    booster = getattr(model, "booster_", None)
    if booster is not None and type(model).__module__.startswith("lightgbm"):
        return lambda X: booster.predict(np.asarray(X, dtype=float), num_threads=1)
    return model.predict


class SurrogateSelection(NamedTuple):
    """Outcome of :func:`select_surrogate`: best model (refitted on all data) and CV scores."""

    name: str
    model: object
    cv_mape: dict[str, float]


def cross_validated_mape(model, X: np.ndarray, y: np.ndarray, seed: int, folds: int = 5,
                         epsilon: float = MAPE_EPSILON) -> float:
    """MAPE (eq. 2) of out-of-fold predictions pooled over a shuffled ``folds``-fold split.

    Pooling makes ``n`` in eq. (2) the full sample size, so folds of unequal size weigh
    each point once. Returns ``inf`` if the model fails or predicts non-finite values.
    """
    n_splits = min(folds, len(X))
    oof = np.empty(len(y))
    try:
        for train, test in KFold(n_splits=n_splits, shuffle=True, random_state=seed).split(X):
            fitted = _fit(clone(model), X[train], y[train])
            oof[test] = fitted.predict(X[test])
    except Exception:  # noqa: BLE001 - a model that cannot fit this data simply loses
        return float("inf")
    if not np.all(np.isfinite(oof)):
        return float("inf")
    return mape(y, oof, epsilon)


def select_surrogate(X, y, seed: int, folds: int = 5,
                     pool: Mapping[str, SurrogateFactory] | None = None,
                     epsilon: float = MAPE_EPSILON) -> SurrogateSelection:
    """Section 3 step 5: pick the pool member with the lowest cross-validated MAPE.

    Every candidate is built by ``factory(seed)`` and scored by
    :func:`cross_validated_mape` on the same folds; ties go to the earlier pool entry.
    The winner is refitted on all of ``(X, y)``. Deterministic for ``seed``.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float).ravel()
    if len(X) != len(y) or len(X) < 2:
        raise ValueError(f"select_surrogate needs >= 2 paired samples, got X {X.shape}, y {y.shape}")
    pool = default_surrogate_pool() if pool is None else pool
    if not pool:
        raise ValueError("the surrogate pool is empty")
    with single_thread():
        scores = {name: cross_validated_mape(factory(seed), X, y, seed, folds, epsilon)
                  for name, factory in pool.items()}
        best = min(scores, key=lambda name: (scores[name], list(pool).index(name)))
        model = _fit(pool[best](seed), X, y)
    return SurrogateSelection(best, model, scores)
