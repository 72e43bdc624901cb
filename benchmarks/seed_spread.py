"""How much of a candidate's fitness is its training seed? (diagnosis for benchmark 4)

    .venv/bin/python -m benchmarks.seed_spread --top-models <ode run>/top_models.csv
        [--ranks 1 2] [--seeds 5] [--max-epochs 10] [--fraction 1.0] [--data-root ../shared/data/medmnist]

Trains each architecture of an ODE run's ``top_models.csv`` and the tiny 3D CNN baseline
with the search's recipe (Adam 1e-3, batch 128, early stopping after 5 epochs, val AUC
selects the epoch) on the real AdrenalMNIST3D, once per seed (init and batch order), and
prints mean, std and range of val and test AUC per architecture. When the spread over seeds
of ONE architecture is as wide as the spread between the architectures a search ranks, a
single training per candidate cannot tell them apart.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks.common import emit, ensure_jemalloc, machine
from orchestrator.data import load_medmnist
from trainables.fit import FitConfig, fit


def build(arch: dict | None, info):
    if arch is None:
        from trainables.nets.tiny_cnn import TinyCNN

        return TinyCNN(info.n_channels, info.n_outputs, info.spatial_dims)
    from trainables.ode_trial import build_from_config

    return build_from_config({"architecture": arch}, info)


def main():
    ensure_jemalloc()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--top-models", required=True, help="top_models.csv of an ODE run")
    p.add_argument("--ranks", type=int, nargs="*", default=None,
                   help="which ranks of top_models.csv to train (default: all; none: the tiny CNN only)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--max-epochs", type=int, default=10)
    p.add_argument("--fraction", type=float, default=1.0, help="share of train/val (stratified, seed 0)")
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"))
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args()
    torch.set_num_threads(2)
    data = load_medmnist("adrenalmnist3d", 28, args.data_root)
    data = data.low_fidelity(args.fraction, 0)
    top = pd.read_csv(args.top_models)
    models = [(f"ode rank {r.rank} (cand {r.candidate})", json.loads(r.architecture), r.search_val_metric)
              for r in top.itertuples() if args.ranks is None or r.rank in args.ranks] + [("tiny_cnn", None, float("nan"))]
    figures = {"machine": machine(), "args": vars(args), "models": {}}
    for name, arch, search_val in models:
        runs = []
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            net = build(arch, data.info)
            t = time.perf_counter()
            res = fit(net, data, FitConfig(max_epochs=args.max_epochs, select_metric="val_auc", seed=seed),
                      evaluate_test=True)
            runs.append({"seed": seed, "val_auc": res.best["val_auc"], "test_auc": res.test["test_auc"],
                         "test_acc": res.test["test_acc"], "best_epoch": res.best_epoch,
                         "wall_s": time.perf_counter() - t})
            print(name, json.dumps(runs[-1], default=float), flush=True)
        v, te = np.array([r["val_auc"] for r in runs]), np.array([r["test_auc"] for r in runs])
        figures["models"][name] = {"search_val_auc": search_val, "val_auc_mean": v.mean(), "val_auc_std": v.std(),
                                   "val_auc_range": [v.min(), v.max()], "test_auc_mean": te.mean(),
                                   "test_auc_std": te.std(), "test_auc_range": [te.min(), te.max()], "runs": runs}
    print(f"\n{'model':<24} {'search val':>10} {'val AUC over seeds':>28} {'test AUC over seeds':>28}")
    for name, m in figures["models"].items():
        print(f"{name:<24} {m['search_val_auc']:>10.3f} "
              f"{m['val_auc_mean']:.3f}+-{m['val_auc_std']:.3f} [{m['val_auc_range'][0]:.3f},{m['val_auc_range'][1]:.3f}] "
              f"{m['test_auc_mean']:.3f}+-{m['test_auc_std']:.3f} [{m['test_auc_range'][0]:.3f},{m['test_auc_range'][1]:.3f}]")
    emit("seed_spread", figures, args.out)


if __name__ == "__main__":
    main()
