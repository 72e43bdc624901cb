"""ODE on the real VesselMNIST3D (PBC-NAS-3D paper, Table 2) vs hand-made 3D baselines, same recipe.

    nice -n 10 .venv/bin/python -m benchmarks.ode_vessel [--seeds 0 1 2] [--budget 8] [--pop-size 4]
        [--max-epochs 5] [--search-epochs E] [--fraction 0.25] [--val-fraction 1.0] [--max-gflops 0.13]
        [--min-gflops 0.06] [--resnet-seeds 1]
        [--data-root ../shared/data/medmnist] [--out results/bench_ode_vessel]
    .venv/bin/python -m benchmarks.ode_vessel --table-only --out results/bench_ode_vessel

Per seed: one ODE search (``--fraction`` of train, ``--val-fraction`` of val, <= ``--max-epochs``
per candidate, FLOPs cap), its top 3 retrained on the full train split with the same epoch
budget, the val-selected one tested, and ``--baseline tiny_cnn`` trained in the same run with
the retrain's recipe, seed and epochs. MONAI's ResNet-18 3D (torchvision stem, see
``trainables.nets.resnet``) is trained in this process with that same recipe for the first
``--resnet-seeds`` seeds. One trial at a time, one torch thread. Results are appended to
``<out>/results.json`` after every model (a rerun skips what is there) and printed as one table
beside the paper's Table 2 figures (ODE "Ours #3*", mean of 3 runs; ResNets from MedMNIST v2).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from medcore.records import HEAD_BIAS

# PBC-NAS-3D paper, Table 2, VesselMNIST3D: (test AUC, test ACC)
PAPER = {"ODE (Ours #3*, mean of 3)": (0.983, 0.963), "ResNet-18+3D": (0.874, 0.877),
         "ResNet-50+3D": (0.907, 0.918)}
MODELS = ("ode", "ode_top3_mean", "tiny_cnn", "resnet18_3d")


def search_config(args, seed: int, out: Path):
    from orchestrator.config import FitOptions, ODESearchConfig, Resources

    run_dir = out / f"ode_seed{seed}"
    return ODESearchConfig(
        dataset=args.dataset, data_root=args.data_root, out=str(run_dir), budget=args.budget,
        pop_size=args.pop_size, fraction=args.fraction, val_fraction=args.val_fraction,
        max_gflops=args.max_gflops, min_gflops=args.min_gflops, top_k=3, retrain_epochs=args.max_epochs, seed=seed, baseline="tiny_cnn",
        resume=(run_dir / "run.json").exists(), resources=Resources(cpus_per_trial=1, max_concurrent=1),
        fit=FitOptions(max_epochs=args.search_epochs or args.max_epochs, metric=args.metric,
                       head_bias=args.head_bias))


def train_reference(name, data, cfg, seed: int) -> dict:
    """``name`` (a baseline name, or a cell architecture as a dict) trained exactly as the search's
    ``--baseline`` stage trains it (full train split, the retrain's fit config and seed, the
    val-selected epoch tested)."""
    import torch

    from trainables.complexity import count_flops, count_params
    from trainables.fit import FitConfig, fit
    from trainables.ode_trial import build_baseline, build_network

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    info = data.info
    build = build_network if isinstance(name, dict) else build_baseline
    net = build(name, info.n_channels, info.n_outputs, info.spatial_dims)
    t = time.perf_counter()
    res = fit(net, data, FitConfig(**cfg.fit.fit_config(seed, cfg.retrain_epochs)), evaluate_test=True)
    return {"test_auc": res.test["test_auc"], "test_acc": res.test["test_acc"], "val_auc": res.best["val_auc"],
            "val_acc": res.best["val_acc"], "best_epoch": res.best_epoch, "params": count_params(net),
            "flops": count_flops(net, info.input_shape), "wall_s": time.perf_counter() - t}


def main():
    from benchmarks.common import ensure_jemalloc, machine

    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="vesselmnist3d")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget", type=int, default=8)
    p.add_argument("--pop-size", type=int, default=4)
    p.add_argument("--max-epochs", type=int, default=5, help="epochs of the retrained picks and the baselines")
    p.add_argument("--search-epochs", type=int, default=0, help="epochs per search candidate (0: --max-epochs)")
    p.add_argument("--fraction", type=float, default=0.25)
    p.add_argument("--val-fraction", type=float, default=1.0)
    p.add_argument("--max-gflops", type=float, default=0.13)
    p.add_argument("--min-gflops", type=float, default=0.06, help="FLOPs floor: keeps stem-only cells out")
    p.add_argument("--metric", default="val_auc", choices=["val_acc", "val_auc"])
    p.add_argument("--head-bias", choices=HEAD_BIAS, default="default",
                   help="output bias at the start (FitOptions.head_bias), for every model of the run")
    p.add_argument("--resnet-seeds", type=int, default=1, help="seeds (the first N) to train ResNet-18 3D for")
    p.add_argument("--only", choices=["ode", "resnet18"], default=None,
                   help="run only the searches (with their tiny CNN) or only ResNet-18, e.g. as two processes; "
                        "each writes its own results file in --out")
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"))
    p.add_argument("--out", default="results/bench_ode_vessel")
    p.add_argument("--cross", default=None, help="cross-dataset ablation: retrain each seed's best cell on this "
                   "MedMNIST 3D flag beside --cross-own's best (paper Table 5), and stop")
    p.add_argument("--cross-root", default="orchestrator/sample_data", help="data folder of --cross")
    p.add_argument("--cross-own", default=None, help="summary.json of an ODE search run on --cross")
    p.add_argument("--table-only", action="store_true", help="print the table of <out>/results.json and stop")
    p.add_argument("--census", type=int, default=0,
                   help="decode N random genomes, print what the FLOPs window lets through, and stop (no training)")
    args = p.parse_args()
    out = Path(args.out).resolve()
    log = out / f"results{'_' + args.only if args.only else ''}.json"
    rows = json.loads(log.read_text())["rows"] if log.exists() else []
    others = [r for f in sorted(out.glob("results*.json")) if f != log for r in json.loads(f.read_text())["rows"]]
    from orchestrator.data import load_medmnist

    data = load_medmnist(args.dataset, 28, args.data_root)
    labels = data.labels["test"].ravel()
    majority = float(np.bincount(labels).max() / len(labels))
    if args.census:
        census(data.info, args.census, args.min_gflops, args.max_gflops)
        return
    if args.cross:
        if not args.cross_own:
            p.error("--cross needs --cross-own SUMMARY_JSON (an ODE search on that dataset)")
        cross_dataset(args, out)
        return
    if args.table_only:
        print_table(rows + others, majority)
        print_curves(out)
        return
    ensure_jemalloc()
    out.mkdir(parents=True, exist_ok=True)
    done = {(r["model"], r["seed"]) for r in rows}

    def save(row):
        rows.append(row)
        log.write_text(json.dumps({"args": vars(args), "machine": machine(), "rows": rows}, indent=2, default=float))
        print(json.dumps(row, default=float), flush=True)

    from orchestrator.driver import run_search

    for i, seed in enumerate(args.seeds):
        cfg = search_config(args, seed, out)
        if args.only != "resnet18" and ("ode", seed) not in done:
            t = time.perf_counter()
            s = run_search("ode", cfg, data)
            wall = time.perf_counter() - t
            b, ref = s["best"], s["baseline"]
            if b is None:  # no candidate retrained: nothing to tabulate for this seed
                print(f"seed {seed}: no retrained pick ({s['n_ok']} of {s['n_evaluated']} candidates ok, failures "
                      f"{s['failure_reasons']}); see {cfg.out}/summary.json", flush=True)
                continue
            top = [r for r in s["top"] if r["status"] == "ok"]
            save({"model": "ode", "seed": seed, "test_auc": b["test_auc"], "test_acc": b["test_acc"],
                  "params": b["params"], "flops": b["flops"], "wall_s": wall, "architecture": b["description"],
                  "n_evaluated": s["n_evaluated"], "restarts": s["restarts"],
                  "top": [{k: r[k] for k in ("rank", "val_auc", "val_acc", "test_auc", "test_acc", "params",
                                              "flops")} for r in top]})
            save({"model": "ode_top3_mean", "seed": seed, "wall_s": 0.0,
                  **{k: float(np.mean([r[k] for r in top])) for k in ("test_auc", "test_acc", "params", "flops")}})
            save({"model": "tiny_cnn", "seed": seed, "test_auc": ref["test_auc"], "test_acc": ref["test_acc"],
                  "params": ref["params"], "flops": ref["flops"], "val_auc": ref["val_auc"], "wall_s": None})
        if args.only != "ode" and i < args.resnet_seeds and ("resnet18_3d", seed) not in done:
            save({"model": "resnet18_3d", "seed": seed, **train_reference("resnet18", data, cfg, seed)})
    print_table(rows + others, majority)
    print_curves(out)


def cross_dataset(args, out: Path) -> None:
    """Paper Table 5's shape: each seed's best Vessel3D cell, retrained from scratch on
    ``--cross`` (e.g. adrenalmnist3d), beside the best cell of a search run on that dataset
    (``--cross-own``: its summary.json), both trained here with the same recipe and seed
    (full train split, ``--max-epochs``, ``--head-bias``, val-selected epoch tested)."""
    from orchestrator.data import load_medmnist

    target = load_medmnist(args.cross, 28, args.cross_root)
    cfg = search_config(args, 0, out)
    log = out / f"cross_{args.cross}.json"  # not results*.json: those are the Vessel3D table's rows
    rows = json.loads(log.read_text())["rows"] if log.exists() else []
    cells = [(f"{args.cross} search's own best", json.loads(Path(args.cross_own).read_text())["best"])]
    cells += [(f"Vessel3D seed {s['config']['seed']} best", s["best"])
              for s in (json.loads(f.read_text()) for f in sorted(out.glob("ode_seed*/summary.json"))) if s["best"]]
    for source, best in cells:
        if any(r["source"] == source for r in rows):
            continue
        row = {"source": source, "architecture": best["description"], "searched_on_test_auc": best["test_auc"],
               **train_reference(best["architecture"], target, cfg, args.seeds[0])}
        rows.append(row)
        log.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2, default=float))
        print(json.dumps(row, default=float), flush=True)
    print(f"\ntrained on {args.cross}, {args.max_epochs} epochs, seed {args.seeds[0]}, head bias {args.head_bias}")
    print(f"{'cell':<34} {'test AUC':>8} {'test ACC':>8} {'params':>7}  architecture")
    for r in rows:
        print(f"{r['source']:<34} {r['test_auc']:>8.3f} {r['test_acc']:>8.3f} {r['params']:>7}  {r['architecture']}")


def census(info, n: int, min_gflops: float, max_gflops: float, seed: int = 0) -> None:
    """What a FLOPs window leaves of the cell space: of n uniform random genomes (the ODE's
    initial population is drawn this way), how many decode to a feasible cell, how many of those
    fall under each cap, and how many of those are stem-only (no operation node)."""
    from searchers.cell_space import decode
    from trainables.ode_trial import CandidateCost

    cost, rng, flops, ops = CandidateCost(info, 128, 1), np.random.default_rng(seed), [], []
    for _ in range(n):
        d = decode(rng.random(29))
        if d.feasible:
            flops.append(cost.flops({"architecture": d.architecture.to_config()}) / 1e9)
            ops.append(len(d.architecture.nodes))
    flops, ops = np.array(flops), np.array(ops)
    print(f"{n} random genomes: {len(flops)} feasible (edge limit); GFLOPs percentiles 10/50/90: "
          + " / ".join(f"{v:.3f}" for v in np.percentile(flops, [10, 50, 90])))
    print(f"stem-only cells: {int((ops == 0).sum())}, at most {flops[ops == 0].max():.3f} GFLOPs; "
          f"cells with an operation: at least {flops[ops > 0].min():.3f} GFLOPs")
    for lo, hi in ((0, 0.1), (0, 0.3), (0, 1.0), (min_gflops, max_gflops)):
        m = (flops >= lo) & (flops <= hi)
        print(f"window [{lo:g}, {hi:g}] GFLOPs: {int(m.sum())} of {n} draws ({m.sum() / n:.1%}), "
              f"{int((m & (ops == 0)).sum())} of them stem-only")


def print_curves(out: Path) -> None:
    """Learning curves read back from the runs' Tune logs (no extra training): per epoch, the
    train loss and val AUC of each retrained pick and of the tiny CNN, trained identically."""
    import pandas as pd

    for run in sorted(out.glob("ode_seed*")):
        for stage in ("ode_retrain", "ode_baseline"):
            for trial in sorted((run / "tune" / stage).glob("*/progress.csv")):
                df = pd.read_csv(trial)
                name = "tiny_cnn" if stage == "ode_baseline" else f"cell {int(df.params.iloc[-1])} params"
                curve = "  ".join(f"{r.epoch}: {r.train_loss:.3f}/{r.val_auc:.3f}" for r in df.itertuples()
                                  if pd.notna(r.train_loss) and pd.notna(r.val_auc))
                print(f"{run.name} {name:<18} epoch: train loss / val AUC  {curve}")


def print_table(rows: list[dict], majority: float) -> None:
    if not rows:
        print("no results yet")
        return
    print(f"\n{'model':<28} {'n':>2} {'test AUC':>13} {'test ACC':>13} {'params':>10} {'GFLOPs':>7} {'wall s':>7}")
    for model in MODELS:
        rs = [r for r in rows if r["model"] == model]
        if not rs:
            continue
        f = lambda k: f"{np.mean([r[k] for r in rs]):.3f}+-{np.std([r[k] for r in rs]):.3f}"  # noqa: E731
        walls = [r["wall_s"] for r in rs if r.get("wall_s")]
        print(f"{model:<28} {len(rs):>2} {f('test_auc'):>13} {f('test_acc'):>13} "
              f"{np.mean([r['params'] for r in rs]):>10.0f} {np.mean([r['flops'] for r in rs]) / 1e9:>7.3f} "
              f"{(f'{np.mean(walls):.0f}' if walls else '-'):>7}")
    for name, (auc, acc) in PAPER.items():
        print(f"{'paper: ' + name:<28} {'':>2} {auc:>13.3f} {acc:>13.3f}")
    print(f"(test ACC of calling every volume the majority class: {majority:.3f})")
    for r in rows:
        if r["model"] == "ode":
            print(f"seed {r['seed']}: pick {r['architecture']} ({r['n_evaluated']} trained, {r['restarts']} "
                  f"restarts); top 3 test AUC " + ", ".join(f"{t['test_auc']:.3f}" for t in r["top"]))


if __name__ == "__main__":
    main()
