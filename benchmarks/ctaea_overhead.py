"""Searcher-side overhead of one surrogate-CTAEA iteration (paper section 3, steps 2-8).

One iteration = select a surrogate for each of the 3 targets (f1, f2, g) by 5-fold CV MAPE
over the 4-model pool, refit, then CTAEA (population 50, 1000 generations) on the
surrogate problem, then pick the k = 2 infill points. Measured at 50 evaluated points (the
first iteration after the initial sample) and 98 (the last iteration at budget 100).
Target: <= 30 s per iteration on 2 CPU cores. Data: the SYNTHETIC analytic problem of
``tests.searchers.synthetic_compression.synthetic_compression_objectives`` (no network, no data).

Run:  .venv/bin/python benchmarks/ctaea_overhead.py [--n-gen 1000] [--repeats 1]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from searchers import compression_space as space  # noqa: E402
from searchers.surrogate_ctaea import fit_surrogates, propose_infill  # noqa: E402
from tests.searchers.synthetic_compression import SYNTHETIC_LABEL, synthetic_compression_objectives  # noqa: E402


def _data(n: int, seed: int):
    configs = space.latin_hypercube_configs(n, seed=seed, subset_seed=seed)
    results = [synthetic_compression_objectives(c) for c in configs]
    X = space.encode_many(configs)
    F = np.array([[r["f1_compute"], r["f2_error"]] for r in results])
    G = np.array([r["g_accuracy"] for r in results])
    return configs, X, F, G


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-gen", type=int, default=1000)
    parser.add_argument("--pop-size", type=int, default=50)
    parser.add_argument("--points", type=int, nargs="+", default=[50, 98])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    print(f"data: {SYNTHETIC_LABEL}")
    print(f"CPU cores visible: {os.cpu_count()}; CTAEA {args.pop_size} x {args.n_gen} generations")
    for n in args.points:
        for rep in range(args.repeats):
            configs, X, F, G = _data(n, seed=rep)
            excluded = {space.canonical_key(c) for c in configs}
            t0 = time.perf_counter()
            fit_surrogates(space.canonical_vectors(X), F, G, seed=rep,
                           target_names=("f1_compute", "f2_error", "g_accuracy"))
            t_fit = time.perf_counter() - t0
            t0 = time.perf_counter()
            proposal = propose_infill(X, F, G, k=2, seed=rep, excluded_keys=excluded,
                                      pop_size=args.pop_size, n_gen=args.n_gen, subset_seed=rep)
            t_total = time.perf_counter() - t0
            chosen = {t: s.name for t, s in proposal.surrogates.items()}
            print(f"n={n:3d} rep={rep}: surrogate selection (3 targets x 4 models x 5 folds + refit) "
                  f"{t_fit:5.2f} s | full iteration (selection + CTAEA + infill) {t_total:5.2f} s "
                  f"| solve ~{t_total - t_fit:5.2f} s | selected {chosen}", flush=True)
    print("target: <= 30 s per iteration")


if __name__ == "__main__":
    main()
