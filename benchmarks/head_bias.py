"""``--head-bias prior`` vs PyTorch's default output bias, everything else equal (issue 14, part 2).

    nice -n 10 .venv/bin/python -m benchmarks.head_bias --summary results/bench_ode_vessel/ode_seed0/summary.json \
        [--dataset vesselmnist3d] [--epochs 3] [--seeds 0]

Trains the search's pick (the ``best`` architecture of an ODE run's summary.json) and the tiny
3D CNN on the full train split with the ODE retrain recipe (Adam 1e-3, batch 128, val-AUC
selected epoch), once with each head bias, and prints the per-epoch val AUC/ACC and the test
figures. On an imbalanced split the default bias starts at p ~ 0.5; the first Adam steps then
lower every weight of the head, so the score falls with the (non-negative) pooled features and
the classes are ranked backwards; the prior bias starts at p = the positives' share.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from medcore.records import HEAD_BIAS


def main() -> None:
    import torch

    from benchmarks.common import ensure_jemalloc, machine
    from orchestrator.data import load_medmnist
    from trainables.fit import FitConfig, fit
    from trainables.ode_trial import build_baseline, build_network

    p = argparse.ArgumentParser()
    p.add_argument("--summary", required=True, help="summary.json of an ODE run: its best architecture is trained")
    p.add_argument("--dataset", default="vesselmnist3d")
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args()
    ensure_jemalloc()
    torch.set_num_threads(1)
    data = load_medmnist(args.dataset, 28, args.data_root)
    info = data.info
    best = json.loads(Path(args.summary).read_text())["best"]
    models = {f"pick {best['description']}": lambda: build_network(best["architecture"], info.n_channels,
                                                                     info.n_outputs, info.spatial_dims),
              "tiny_cnn": lambda: build_baseline("tiny_cnn", info.n_channels, info.n_outputs, info.spatial_dims)}
    rows = []
    for name, build in models.items():
        for seed in args.seeds:
            for head_bias in HEAD_BIAS:
                torch.manual_seed(seed)
                curve, t = [], time.perf_counter()
                res = fit(build(), data, FitConfig(max_epochs=args.epochs, patience=args.epochs, select_metric="val_auc",
                                                   seed=seed, head_bias=head_bias, device="cpu"),
                          report=lambda r: curve.append([r["epoch"], r["val_auc"], r["val_acc"]]), evaluate_test=True)
                row = {"model": name, "seed": seed, "head_bias": head_bias, "test_auc": res.test["test_auc"],
                       "test_acc": res.test["test_acc"], "val_curve": curve, "wall_s": time.perf_counter() - t}
                rows.append(row)
                print(f"{name[:40]:<40} seed {seed} {head_bias:<7} val AUC/epoch "
                      + " ".join(f"{a:.3f}" for _, a, _ in curve)
                      + f"  test AUC {row['test_auc']:.3f} ACC {row['test_acc']:.3f}  [{row['wall_s']:.0f} s]", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "machine": machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
