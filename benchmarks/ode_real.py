"""Benchmark 4: ODE on the real AdrenalMNIST3D vs two hand-made baselines, same recipe.

    .venv/bin/python -m benchmarks.ode_real [--seeds 0 1 2] [--budget 24] [--max-epochs 10]
        [--fraction 0.25] [--val-fraction F] [--data-root ../shared/data/medmnist] [--resnet-seeds 1]
        [--out results/bench_ode_real]

Per seed: an ODE search (1/4 of train/val, <= --max-epochs, early stopping), its top 3
retrained on the full train split with the same epoch budget, the val-selected one tested;
baselines trained with the same recipe: a tiny 3-block 3D CNN and MONAI's ResNet-18 3D.
Prints one table (test AUC/ACC, params, FLOPs, wall time) and mean +- std over seeds.
Results are appended to <out>/results.json after every model so nothing is lost.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import ensure_jemalloc, machine
from orchestrator.config import FitOptions, ODESearchConfig, Resources
from orchestrator.data import load_medmnist
from trainables.complexity import count_flops, count_params
from trainables.fit import FitConfig, fit


def baseline(name: str, data, epochs: int, seed: int, metric: str) -> dict:
    torch.manual_seed(seed)
    if name == "tiny_cnn":
        from trainables.nets.tiny_cnn import TinyCNN

        net = TinyCNN(1, data.info.n_outputs, 3)
    else:
        from monai.networks.nets import resnet18

        net = resnet18(spatial_dims=3, n_input_channels=1, num_classes=data.info.n_outputs)
    shape = (1, 28, 28, 28)
    t = time.perf_counter()
    res = fit(net, data, FitConfig(max_epochs=epochs, patience=epochs, select_metric=metric, seed=seed),
              evaluate_test=True)
    return {"model": name, "seed": seed, "test_auc": res.test["test_auc"], "test_acc": res.test["test_acc"],
            "val_acc": res.best["val_acc"], "val_auc": res.best["val_auc"], "best_epoch": res.best_epoch,
            "params": count_params(net), "flops": count_flops(net, shape), "wall_s": time.perf_counter() - t}


def main():
    ensure_jemalloc()
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget", type=int, default=24)
    p.add_argument("--pop-size", type=int, default=8)
    p.add_argument("--max-epochs", type=int, default=10)
    p.add_argument("--fraction", type=float, default=0.25)
    p.add_argument("--val-fraction", type=float, default=None, help="default: --fraction (the paper)")
    p.add_argument("--max-gflops", type=float, default=0.3)
    p.add_argument("--metric", default="val_auc", choices=["val_acc", "val_auc"])
    p.add_argument("--resnet-seeds", type=int, default=1, help="ResNet-18 is ~30x slower: seeds to run it for")
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"))
    p.add_argument("--out", default="results/bench_ode_real")
    args = p.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "results.json"
    rows = json.loads(log.read_text())["rows"] if log.exists() else []
    done = {(r["model"], r["seed"]) for r in rows}

    def save(row):
        rows.append(row)
        log.write_text(json.dumps({"args": vars(args), "machine": machine(), "rows": rows}, indent=2))
        print(json.dumps(row, default=float), flush=True)

    data = load_medmnist("adrenalmnist3d", 28, args.data_root)
    from orchestrator.driver import run_search

    for seed in args.seeds:
        if ("ode", seed) not in done:
            run_dir = out / f"ode_seed{seed}"
            cfg = ODESearchConfig(dataset="adrenalmnist3d", data_root=args.data_root, out=str(run_dir),
                                  budget=args.budget, pop_size=args.pop_size, fraction=args.fraction,
                                  val_fraction=args.val_fraction, max_gflops=args.max_gflops, top_k=3, seed=seed,
                                  resume=(run_dir / "run.json").exists(), resources=Resources(max_concurrent=2),
                                  fit=FitOptions(max_epochs=args.max_epochs, metric=args.metric))
            t = time.perf_counter()
            s = run_search("ode", cfg, data)
            b = s["best"]
            save({"model": "ode", "seed": seed, "test_auc": b["test_auc"], "test_acc": b["test_acc"],
                  "params": b["params"], "flops": b["flops"], "wall_s": time.perf_counter() - t,
                  "architecture": b["description"], "n_evaluated": s["n_evaluated"]})
        torch.set_num_threads(2)
        if ("tiny_cnn", seed) not in done:
            save(baseline("tiny_cnn", data, args.max_epochs, seed, args.metric))
        if seed in args.seeds[: args.resnet_seeds] and ("resnet18_3d", seed) not in done:
            save(dict(baseline("resnet18", data, args.max_epochs, seed, args.metric), model="resnet18_3d"))
    print_table(rows)


def print_table(rows):
    print(f"\n{'model':<12} {'n':>2} {'test AUC':>15} {'test ACC':>15} {'params':>10} {'GFLOPs':>8} {'wall s':>8}")
    for model in ("ode", "tiny_cnn", "resnet18_3d"):
        rs = [r for r in rows if r["model"] == model]
        if not rs:
            continue
        f = lambda k: f"{np.mean([r[k] for r in rs]):.3f}+-{np.std([r[k] for r in rs]):.3f}"  # noqa: E731
        print(f"{model:<12} {len(rs):>2} {f('test_auc'):>15} {f('test_acc'):>15} "
              f"{np.mean([r['params'] for r in rs]):>10.0f} {np.mean([r['flops'] for r in rs]) / 1e9:>8.3f} "
              f"{np.mean([r['wall_s'] for r in rs]):>8.0f}")


if __name__ == "__main__":
    main()
