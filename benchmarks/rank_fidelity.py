"""Rank fidelity: does a cell's search-time score rank cells like their fully trained test AUC?

    .venv/bin/python -m benchmarks.rank_fidelity --cells 12          # trains the cells not in results yet
    .venv/bin/python -m benchmarks.rank_fidelity --cells 12 --max-new 1   # one more cell, then the table
    .venv/bin/python -m benchmarks.rank_fidelity --table             # rebuild the table from the JSONs

Real AdrenalMNIST3D 28^3. ``--cells`` distinct cells are drawn from the search space (seeded
genomes, FLOPs in [--min-gflops, --max-gflops], the demo's range). Each cell is trained twice by
``trainables.fit.fit``, both with the search's shared seed (paired) and early stopping on val
loss (patience 5):
- search time, as a multi-fidelity ODE candidate sees it: a quarter of train, the whole val
  split, up to the last rung's epochs; its score at each rung (1, 3, 9, 27 epochs) is the best
  val AUC up to that epoch (the early-stopped metric the searcher ranks by);
- full: the whole train split, up to ``--full-epochs``; the best val-AUC epoch tested.
The table prints, per fidelity, Kendall's tau between the search-time score and the full test
AUC (and the full val AUC). One JSON per cell in ``benchmarks/results/rank_fidelity/``, so a
killed run loses at most one cell and the table is rebuilt without retraining.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import ensure_jemalloc, machine
from benchmarks.train_speed import load

RESULTS = Path(__file__).parent / "results" / "rank_fidelity"
RUNGS = (1, 3, 9, 27)


def _fit(arch: dict, data, seed: int, max_epochs: int, evaluate_test: bool):
    from medcore.cell_genotype import CellArchitecture
    from trainables.fit import FitConfig, fit
    from trainables.nets.cell_net import CellNet

    torch.manual_seed(seed)
    net = CellNet(CellArchitecture.from_config(arch), 1, data.info.n_outputs, 3)
    cfg = FitConfig(max_epochs=max_epochs, patience=5, batch_size=128, seed=seed, select_metric="val_auc")
    t = time.perf_counter()
    r = fit(net, data, cfg, evaluate_test=evaluate_test)
    return r, time.perf_counter() - t, sum(p.numel() for p in net.parameters())


def draw_cells(n: int, seed: int, min_gflops: float, max_gflops: float, info) -> list[dict]:
    """n distinct cells with FLOPs in the window, from seeded genomes in draw order (stable for a
    seed). Most draws miss the window (about 1 in 50 for the demo's), so FLOPs are counted only
    for the architectures the edge limit lets through."""
    from searchers.cell_space import decode
    from trainables.ode_trial import CandidateCost

    flops, rng, out, seen = CandidateCost(info, 128, 1).flops, np.random.default_rng(seed), [], set()
    while len(out) < n:
        d = decode(rng.random(29))
        if not d.feasible or d.key in seen:
            continue
        seen.add(d.key)
        cfg = {"architecture": d.architecture.to_config()}
        if min_gflops * 1e9 <= flops(cfg) <= max_gflops * 1e9:
            out.append(cfg)
    return out


def rung_scores(curve: list[float], rungs=RUNGS) -> dict:
    """The best val AUC up to each rung's epoch (a curve that stopped early keeps its best)."""
    return {str(r): float(np.nanmax(curve[:r])) for r in rungs}


def train_cell(i: int, arch: dict, data, seed: int, fraction: float, full_epochs: int, source: str) -> dict:
    load_before = os.getloadavg()
    low = data.low_fidelity(fraction, seed, 1.0)
    r_low, wall_low, params = _fit(arch, low, seed, RUNGS[-1], evaluate_test=False)
    curve = [h["val_auc"] for h in r_low.history]
    r_full, wall_full, _ = _fit(arch, data, seed, full_epochs, evaluate_test=True)
    return {"cell": i, "architecture": arch, "params": params, "seed": seed, "data": source, "fraction": fraction,
            "search_curve": curve, "search_epochs": r_low.epochs_run, "search_wall_s": wall_low,
            "rung_scores": rung_scores(curve),
            "full_epochs": r_full.epochs_run, "full_best_epoch": r_full.best_epoch, "full_wall_s": wall_full,
            "full_val_auc": r_full.best["val_auc"], "test_auc": r_full.test["test_auc"],
            "test_acc": r_full.test["test_acc"], "test_pred_classes": r_full.test["test_pred_classes"],
            "threads": torch.get_num_threads(), "load_before": load_before, "load_after": os.getloadavg(),
            "machine": machine()}


def table(results: Path = RESULTS) -> list[str]:
    from scipy import stats

    rows = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    if len(rows) < 3:
        return [f"rank fidelity: {len(rows)} cells in {results}; at least 3 are needed for a rank correlation"]
    test = [r["test_auc"] for r in rows]
    val = [r["full_val_auc"] for r in rows]
    lines = [f"rank fidelity over {len(rows)} cells (real AdrenalMNIST3D; full training: "
             f"{np.mean([r['full_epochs'] for r in rows]):.1f} epochs on average; test AUC "
             f"{min(test):.3f}-{max(test):.3f})",
             f"{'search epochs':>13} {'tau vs test AUC':>16} {'p':>6} {'tau vs full val AUC':>20}"]
    for rung in RUNGS:
        score = [r["rung_scores"][str(rung)] for r in rows]
        t_test, t_val = stats.kendalltau(score, test), stats.kendalltau(score, val)
        lines.append(f"{rung:>13} {t_test.statistic:>16.2f} {t_test.pvalue:>6.2f} {t_val.statistic:>20.2f}")
    t = stats.kendalltau(val, test)
    lines.append(f"{'full val AUC':>13} {t.statistic:>16.2f} {t.pvalue:>6.2f}")
    lines.append(f"one class on test (pred_classes == 1): {sum(r['test_pred_classes'] == 1 for r in rows)} of {len(rows)}")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", type=int, default=12)
    p.add_argument("--seed", type=int, default=0, help="seed of the cell draw and of every training (paired)")
    p.add_argument("--fraction", type=float, default=0.25, help="share of train at search time (paper: 0.25)")
    p.add_argument("--full-epochs", type=int, default=30)
    p.add_argument("--min-gflops", type=float, default=0.06)
    p.add_argument("--max-gflops", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-new", type=int, default=0, help="train at most this many new cells, then print the table "
                   "(0: all); lets other heavy jobs run between cells")
    p.add_argument("--table", action="store_true", help="only print the table of the stored results")
    args = p.parse_args(argv)
    if not args.table:
        ensure_jemalloc()
        torch.set_num_threads(args.threads)
        RESULTS.mkdir(parents=True, exist_ok=True)
        data, source = load("adrenalmnist3d")
        cells = draw_cells(args.cells, args.seed, args.min_gflops, args.max_gflops, data.info)
        todo = [(i, c) for i, c in enumerate(cells) if not (RESULTS / f"seed{args.seed}_cell{i:02d}.json").exists()]
        for i, cfg in todo[:args.max_new or None]:
            path = RESULTS / f"seed{args.seed}_cell{i:02d}.json"
            row = train_cell(i, cfg["architecture"], data, args.seed, args.fraction, args.full_epochs, source)
            path.write_text(json.dumps(row, indent=1, default=float))
            print(f"cell {i}: search {row['search_epochs']} epochs ({row['search_wall_s']:.0f} s), rungs "
                  f"{row['rung_scores']}, full {row['full_epochs']} epochs ({row['full_wall_s']:.0f} s) test AUC "
                  f"{row['test_auc']:.3f}; load {row['load_before'][0]:.1f} -> {row['load_after'][0]:.1f}", flush=True)
    print("\n".join(table()))


if __name__ == "__main__":
    main()
