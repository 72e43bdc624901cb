"""Surrogate-assisted CTAEA vs pure CTAEA at equal budget (paper section 5.2, Fig. 1), no Ray.

Problem: the SYNTHETIC analytic compression problem
``tests.searchers.synthetic_compression.synthetic_compression_objectives`` -- the 7 mixed variables of
section 2.2, f1 = FLOPs rate x non-zero-weight rate (normalised by the base model),
f2 = 1 - accuracy, g = 0.96 x base accuracy - accuracy (eq. 1); pruning without
fine-tuning, so only ~17 % of random configs are feasible. No network, no data.

Methods (section 4.3), budget 100 evaluations each, seeds 0..4:
  * surrogate loop: 50 LHS points + 25 iterations x 2 infill points; pool KNN / RF /
    LightGBM / GBM selected by 5-fold CV MAPE; CTAEA population 50 x 1000 generations;
  * CTAEA1: pure CTAEA, population 20 x 5 generations;
  * CTAEA2: pure CTAEA, population 10 x 10 generations.
The searchers are driven in-process through their Tune ``suggest``/``on_trial_complete``
API (``tests.searchers.drive.drive_without_ray``).

Hypervolume of D* (feasible non-dominated evaluated points), two normalisations:
  * default (``searchers.pareto``): ideal (0, 0), nadir (1, 1), reference (1.1, 1.1) --
    f1 / base FLOPs and error in [0, 1];
  * tolerance band: f2 mapped from the base model's error (0.20 -> 0) to the largest
    feasible error 1 - tau (0.232 -> 1), f1 as above, same reference point. With the
    default scale the feasible errors span only 0.032 of the f2 axis, so the default HV
    essentially measures the lowest feasible f1; the band scale also weighs accuracy.
Target: median HV ratio surrogate / CTAEA >= 1.2.

Attainable HV: pure CTAEA run on the same cheap function with a budget no real search has
(population 100 x 100 generations = 10,000 evaluations; 200 x 150 adds < 0.0002; same seed,
hence the same random subset) gives the best D* this problem allows. Each method is reported
as a fraction of it, and attainable / CTAEA is the largest ratio any searcher could reach
over that CTAEA run.

Run:  .venv/bin/python benchmarks/ctaea_hypervolume.py            (paper settings, ~45 min on 2 cores)
      .venv/bin/python benchmarks/ctaea_hypervolume.py --n-gen 100  (quick look)
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from searchers.ctaea import CTAEASearcher  # noqa: E402
from searchers.pareto import hypervolume  # noqa: E402
from searchers.surrogate_ctaea import SurrogateCTAEASearcher  # noqa: E402
from tests.searchers.drive import drive_without_ray  # noqa: E402
from tests.searchers.synthetic_compression import SYNTHETIC_LABEL, synthetic_compression_objectives  # noqa: E402

BAND_IDEAL = (0.0, 0.20)    # base model: error 1 - 0.80
BAND_NADIR = (1.0, 0.232)   # 1 - tau, tau = 0.96 x 0.80


def _measure(searcher) -> dict:
    d_star, hv = searcher.d_star()
    F = np.array([[r["objectives"]["f1_compute"], r["objectives"]["f2_error"]] for r in d_star])
    F = F.reshape(-1, 2)
    return {"hv": hv, "hv_band": hypervolume(F, BAND_IDEAL, BAND_NADIR),
            "f1_min": float(F[:, 0].min()) if len(F) else float("nan"),
            "n_dstar": len(d_star), "n_eval": searcher.n_evaluated,
            "n_feasible": sum(r["feasible"] for r in searcher.history)}


ATTAINABLE_SHAPE = (100, 100)  # population x generations of the reference run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--n-initial", type=int, default=50)
    parser.add_argument("--n-infill", type=int, default=2)
    parser.add_argument("--pop-size", type=int, default=50)
    parser.add_argument("--n-gen", type=int, default=1000)
    args = parser.parse_args()
    evaluate = synthetic_compression_objectives
    print(f"data: {SYNTHETIC_LABEL}")
    print(f"surrogate loop: n={args.n_initial}, budget={args.budget}, k={args.n_infill}, "
          f"CTAEA {args.pop_size} x {args.n_gen}; pure CTAEA 20 x {args.budget // 20} and 10 x {args.budget // 10}")
    methods = {"surrogate": None, "ctaea_20x5": (20, args.budget // 20), "ctaea_10x10": (10, args.budget // 10),
               "attainable": ATTAINABLE_SHAPE}
    rows: dict[str, list[dict]] = {m: [] for m in methods}
    for seed in range(args.seeds):
        line = [f"seed {seed}:"]
        for name, shape in methods.items():
            t0 = time.perf_counter()
            if shape is None:
                searcher = SurrogateCTAEASearcher(n_initial=args.n_initial, budget=args.budget,
                                                  n_infill=args.n_infill, pop_size=args.pop_size,
                                                  n_gen=args.n_gen, seed=seed)
            else:
                searcher = CTAEASearcher(pop_size=shape[0], n_gen=shape[1], seed=seed)
            drive_without_ray(searcher, evaluate)
            m = _measure(searcher)
            m["seconds"] = time.perf_counter() - t0
            rows[name].append(m)
            line.append(f"{name} HV {m['hv']:.4f} (band {m['hv_band']:.4f}, min f1 {m['f1_min']:.3f}, "
                        f"|D*| {m['n_dstar']}, feasible {m['n_feasible']}/{m['n_eval']}, {m['seconds']:.0f} s)")
        print("  ".join(line[:1]) + "\n    " + "\n    ".join(line[1:]), flush=True)

    print("\nsummary (median over seeds)")
    # Per method, the per-seed HVs on both scales (arrays over seeds, same seed order).
    hv = {name: np.array([r["hv"] for r in rows[name]]) for name in methods}
    band = {name: np.array([r["hv_band"] for r in rows[name]]) for name in methods}
    for name in methods:
        h, b = hv[name], band[name]
        print(f"  {name:12s} HV median {np.median(h):.4f} mean {h.mean():.4f} sd {h.std(ddof=1) if len(h) > 1 else 0:.4f}"
              f" | band HV median {np.median(b):.4f} mean {b.mean():.4f}")
    sur, sur_band = hv["surrogate"], band["surrogate"]
    top, top_band = hv["attainable"], band["attainable"]
    for name in ("ctaea_20x5", "ctaea_10x10"):
        other, other_band = hv[name], band[name]
        print(f"  ratio surrogate / {name}: median of per-seed ratios {np.median(sur / other):.3f}, "
              f"ratio of medians {np.median(sur) / np.median(other):.3f} | band: "
              f"{np.median(sur_band / other_band):.3f}, {np.median(sur_band) / np.median(other_band):.3f}"
              f" | surrogate wins {int((sur > other).sum())}/{len(sur)} seeds")
        print(f"  largest ratio the problem allows over {name} (attainable / {name}, median): "
              f"{np.median(top / other):.3f} | band: {np.median(top_band / other_band):.3f}")
    for name in ("surrogate", "ctaea_20x5", "ctaea_10x10"):
        print(f"  {name:12s} reaches {np.median(hv[name] / top):.1%} of the attainable HV (median)"
              f" | band: {np.median(band[name] / top_band):.1%}")
    print("target: median ratio >= 1.2")


if __name__ == "__main__":
    main()
