"""Does bf16 autocast change what a model learns? fp32 vs bf16, trained to a plateau, 3 seeds.

    .venv/bin/python -m benchmarks.bf16_results --seeds 0 1 2      # trains what is not in results yet
    .venv/bin/python -m benchmarks.bf16_results --table            # rebuild the table from the JSONs

The demo's kind of cell net and the tiny 3D CNN on real AdrenalMNIST3D 28^3 (the full splits),
each trained by ``trainables.fit.fit`` with early stopping on val loss (patience 5, at most
``--max-epochs``), the best val-AUC epoch evaluated on test -- once with ``precision: fp32`` and
once with ``bf16``, same seed, same data order, same layout (channels-last: both models have no
InstanceNorm). One JSON per (model, precision, seed) goes to ``benchmarks/results/bf16/``, so a
killed run loses at most one training, and the table is rebuilt without retraining. The table
gives mean +- sd over seeds and a paired t-test of bf16 - fp32 on test AUC (scipy).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import ensure_jemalloc, machine
from benchmarks.train_speed import DEMO_CELL, load

RESULTS = Path(__file__).parent / "results" / "bf16"
MODELS = ("cell_net", "tiny_cnn")
PRECISIONS = ("fp32", "bf16")


def build(name: str, info):
    from trainables.nets.cell_net import CellNet
    from trainables.nets.tiny_cnn import TinyCNN

    return CellNet(DEMO_CELL, 1, info.n_outputs, 3) if name == "cell_net" else TinyCNN(1, info.n_outputs, 3)


def train(name: str, precision: str, seed: int, data, source: str, max_epochs: int) -> dict:
    from trainables.fit import FitConfig, fit

    torch.manual_seed(seed)
    model = build(name, data.info)
    cfg = FitConfig(max_epochs=max_epochs, patience=5, batch_size=128, seed=seed, select_metric="val_auc",
                    precision=precision, memory_format="channels_last")
    t = time.perf_counter()
    r = fit(model, data, cfg, evaluate_test=True)
    return {"model": name, "precision": precision, "seed": seed, "data": source, "wall_s": time.perf_counter() - t,
            "epochs": r.epochs_run, "best_epoch": r.best_epoch, "val_auc": r.best["val_auc"],
            "val_acc": r.best["val_acc"], "test_auc": r.test["test_auc"], "test_acc": r.test["test_acc"],
            "test_pred_classes": r.test["test_pred_classes"], "threads": torch.get_num_threads(),
            "machine": machine()}


def table(results: Path = RESULTS) -> list[str]:
    from scipy import stats

    rows = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    lines = [f"{'model':<10} {'precision':<9} {'seeds':>5} {'epochs':>7} {'val AUC':>15} {'test AUC':>15} "
             f"{'test ACC':>15} {'s/epoch':>8}"]
    for model in MODELS:
        by = {p: {r["seed"]: r for r in rows if r["model"] == model and r["precision"] == p} for p in PRECISIONS}
        for p in PRECISIONS:
            rs = list(by[p].values())
            if not rs:
                continue
            f = lambda k: f"{np.mean([r[k] for r in rs]):.3f} +- {np.std([r[k] for r in rs], ddof=1) if len(rs) > 1 else 0:.3f}"
            per_epoch = np.mean([r["wall_s"] / r["epochs"] for r in rs])
            lines.append(f"{model:<10} {p:<9} {len(rs):>5} {np.mean([r['epochs'] for r in rs]):>7.1f} "
                         f"{f('val_auc'):>15} {f('test_auc'):>15} {f('test_acc'):>15} {per_epoch:>8.1f}")
        seeds = sorted(set(by["fp32"]) & set(by["bf16"]))
        if len(seeds) >= 2:
            d = [by["bf16"][s]["test_auc"] - by["fp32"][s]["test_auc"] for s in seeds]
            test = stats.ttest_rel([by["bf16"][s]["test_auc"] for s in seeds], [by["fp32"][s]["test_auc"] for s in seeds])
            lines.append(f"{model:<10} bf16 - fp32 test AUC over {len(seeds)} paired seeds: {np.mean(d):+.3f} "
                         f"+- {np.std(d, ddof=1):.3f} (paired t-test p = {test.pvalue:.2f})")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    p.add_argument("--max-epochs", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--table", action="store_true", help="only print the table of the stored results")
    args = p.parse_args(argv)
    if not args.table:
        ensure_jemalloc()
        torch.set_num_threads(args.threads)
        RESULTS.mkdir(parents=True, exist_ok=True)
        data, source = load("adrenalmnist3d")
        for seed in args.seeds:
            for model in args.models:
                for precision in PRECISIONS:
                    path = RESULTS / f"{model}_{precision}_seed{seed}.json"
                    if path.exists():
                        continue
                    row = train(model, precision, seed, data, source, args.max_epochs)
                    path.write_text(json.dumps(row, indent=1, default=float))
                    print(f"{model} {precision} seed {seed}: {row['epochs']} epochs, val AUC {row['val_auc']:.3f}, "
                          f"test AUC {row['test_auc']:.3f}, {row['wall_s']:.0f} s", flush=True)
    print("\n".join(table()))


if __name__ == "__main__":
    main()
