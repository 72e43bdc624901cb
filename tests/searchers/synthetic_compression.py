"""A SYNTHETIC analytic stand-in of the compression problem (eq. 1): no network, no data.

Used by the searcher tests and the searcher benchmarks (``benchmarks/ctaea_hypervolume.py``,
``benchmarks/ctaea_overhead.py``) to run the CTAEA searchers in milliseconds per evaluation.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from medcore.compression_genome import CompressionGenome

#: Tag carried by every result of :func:`synthetic_compression_objectives`.
SYNTHETIC_LABEL = "synthetic analytic compression problem (no network, no data)"


def _sigmoid(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-z)))


def synthetic_compression_objectives(config: Mapping, base_accuracy: float = 0.80,
                                     tolerance: float = 0.96) -> dict:
    """A cheap, deterministic, SYNTHETIC analytic problem shaped like eq. (1), for tests/benchmarks.

    It mimics the structure of pruning + quantization of a CNN *without fine-tuning* (the
    paper's procedure prunes a trained model and evaluates it directly), not any real network:

    * parameters: 85 % in conv layers, 15 % in linear layers; within a layer kind 97 %
      weights and 3 % biases ("both" = 100 %). Scope "all" prunes every layer of the kind;
      "random subset" prunes a fraction in [0.3, 0.5] drawn from ``subset_seed`` (fixed per
      search, as the real trainable's subset is).
    * effective pruning ``e`` of a layer kind = scope share x intensity.
    * ``f1_compute`` = FLOPs rate x non-zero-weight rate, normalised by the base model
      (base = 1.0); quantization scales FLOPs by 0.55.
    * accuracy = base + up to +1 % for mild conv pruning (a regularisation effect)
      - a gentle quadratic loss - a sharp collapse (logistic, width 1.5 %) once ``e`` passes
      the kind's *cliff* - 0.5 % for quantization. Cliffs (fraction pruned): conv 0.30
      weights / 0.10 biases / 0.22 both; linear 0.25 / 0.12 / 0.20; quantization lowers
      every cliff by 0.04 (sparse weights quantize worse). Without retraining, a 4 %
      accuracy tolerance is exceeded early, so only ~17 % of random configs are feasible --
      the regime the paper's constraint is for ("avoid spending computational resources on
      the evaluation of poor solutions", section 2.3).
    * ``f2_error`` = 1 - accuracy, ``g_accuracy`` = tolerance x base - accuracy (feasible iff <= 0).

    The best feasible trade-offs (quantized, conv scope "all", weights, intensity just below
    the lowered cliff, f1 ~ 0.42) form a narrow region of the mixed space.
    """
    c = CompressionGenome.from_config(config).canonical().variables()
    seed = int(config.get("subset_seed", 0))
    subset_lin, subset_conv = np.random.default_rng([seed, 0x5EED]).uniform(0.3, 0.5, size=2)
    scope_share = ({0: 0.0, 1: 1.0, 2: subset_lin}[c["x1"]], {0: 0.0, 1: 1.0, 2: subset_conv}[c["x2"]])
    param_share = (0.97, 0.03, 1.0)        # weights, biases, both: share of a layer's parameters
    quantized = c["x7"] == 1
    conv_cliff = (0.30, 0.10, 0.22)[c["x6"]] - (0.04 if quantized else 0.0)
    lin_cliff = (0.25, 0.12, 0.20)[c["x5"]] - (0.04 if quantized else 0.0)
    e_lin = scope_share[0] * c["x3"] / 100.0
    e_conv = scope_share[1] * c["x4"] / 100.0
    pruned = 0.85 * e_conv * param_share[c["x6"]] + 0.15 * e_lin * param_share[c["x5"]]
    f1 = (0.55 if quantized else 1.0) * (1.0 - pruned)
    accuracy = (base_accuracy
                + 0.010 * np.sin(np.pi * min(e_conv / conv_cliff, 1.0))
                - 0.020 * (e_conv / conv_cliff) ** 2
                - 0.010 * (e_lin / lin_cliff) ** 2
                - 0.30 * _sigmoid((e_conv - conv_cliff) / 0.015)
                - 0.20 * _sigmoid((e_lin - lin_cliff) / 0.015)
                - (0.005 if quantized else 0.0))
    accuracy = float(np.clip(accuracy, 0.0, 1.0))
    return {
        "f1_compute": float(f1),
        "f2_error": 1.0 - accuracy,
        "g_accuracy": tolerance * base_accuracy - accuracy,
        "accuracy": accuracy,
        "status": "ok",
        "data": SYNTHETIC_LABEL,
    }
