"""Real-data benchmark of the training-strategy search (issue 13) at a CPU budget.

Three parts, each printed as JSON lines (and collected in ``--json``):

* ``augment``: the augmentation policies' cost per batch, batched on the device
  (:class:`trainables.strategy.BatchedAugment`) vs MONAI's per-sample transforms looped over
  the batch (:class:`trainables.strategy.LoopAugment`), 2D 28^2 and 3D 28^3, batch 64.
* ``search``: the strategy search on a real MedMNIST flag twice with the same budget and
  seed: TPE + ASHA, and TPE + FIFO (every trial to ``--max-epochs``): trial-epochs, wall
  time and the best validation value of each (ASHA target: >= 40 % of trial-epochs saved at
  an equal best).
* ``seeds``: the ASHA search's best strategy vs the default recipe, retrained under
  ``--seeds`` without Ray; test ACC/AUC at epoch ``--early`` and at the final epoch, mean and
  spread (sample standard deviation).

    nice -n 10 .venv/bin/python benchmarks/strategy_real.py --flag breastmnist --budget 8 \\
        --max-epochs 8 --seeds 0 1 2 --json /tmp/strategy_breast.json
    nice -n 10 .venv/bin/python benchmarks/strategy_real.py --flag adrenalmnist3d --model tiny_cnn ...
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

import torch  # noqa: E402

DATA_ROOT = "/work/shared/data/medmnist"


def emit(store: list, record: dict) -> None:
    store.append(record)
    print(json.dumps(record, default=float), flush=True)


def bench_augment(store: list, repeats: int = 3) -> None:
    from trainables.strategy import POLICIES, make_augment

    for dims in (2, 3):
        x, y = torch.rand(64, 1, *(28,) * dims), torch.zeros(64, 1, dtype=torch.long)
        for policy in POLICIES:
            if policy == "none":
                continue
            times = {}
            for backend in ("batched", "loop"):
                aug = make_augment(policy, dims, backend)
                aug(x, y, torch.Generator().manual_seed(0))  # warm-up (imports, first build)
                t = time.perf_counter()
                for r in range(repeats):
                    aug(x, y, torch.Generator().manual_seed(r))
                times[backend] = (time.perf_counter() - t) / repeats * 1000
            emit(store, {"part": "augment", "dims": dims, "policy": policy, "batch": 64,
                         "batched_ms": round(times["batched"], 2), "loop_ms": round(times["loop"], 2),
                         "speedup": round(times["loop"] / times["batched"], 1)})


def run_search(args, scheduler: str, out: Path, data) -> dict:
    from orchestrator.config import Resources, StrategyFitOptions, StrategySearchConfig
    from orchestrator.driver import run_search as drive

    cfg = StrategySearchConfig(dataset=args.flag, data_root=DATA_ROOT, out=str(out), model=args.model,
                               budget=args.budget, scheduler=scheduler, grace_period=args.grace,
                               reduction_factor=args.reduction_factor, seed=args.search_seed,
                               fit=StrategyFitOptions(max_epochs=args.max_epochs),
                               resources=Resources(max_concurrent=args.concurrent))
    t = time.time()
    s = drive("strategy", cfg, data)
    return {"scheduler": scheduler, "wall_s": round(time.time() - t, 1), "trial_epochs": s["trial_epochs"],
            "trial_epochs_full": s["trial_epochs_without_early_stopping"], "saved": round(s["trial_epochs_saved"], 3),
            "n_pruned": s["n_pruned"], "best_search_value": s["best"]["search_value"],
            "best_strategy": s["best"]["strategy"], "best_test_auc": s["best"]["test_auc"],
            "best_test_acc": s["best"]["test_acc"], "default_test_auc": s["default"]["retrained"]["test_auc"],
            "out": str(out)}


def seeds(args, store: list, data, strategies: dict) -> None:
    from trainables.strategy import Strategy
    from trainables.strategy_trial import network_build, train_strategy

    net = network_build(args.model, data.info)
    for label, strategy in strategies.items():
        per_seed = []
        for seed in args.seeds:
            rows = []
            t = time.time()
            train_strategy(Strategy.from_dict(strategy), data, net, {"max_epochs": args.max_epochs, "seed": seed},
                           report=rows.append, test_every_epoch=True)
            early = [r for r in rows if r["epoch"] == args.early]
            per_seed.append({"seed": seed, "test_acc@early": early[0]["test_acc"] if early else None,
                             "test_auc@early": early[0]["test_auc"] if early else None,
                             "test_acc@final": rows[-1]["test_acc"], "test_auc@final": rows[-1]["test_auc"],
                             "wall_s": round(time.time() - t, 1)})
        summary = {"part": "seeds", "flag": args.flag, "model": args.model, "label": label, "strategy": strategy,
                   "early_epoch": args.early, "final_epoch": args.max_epochs, "seeds": per_seed}
        for key in ("test_acc@early", "test_auc@early", "test_acc@final", "test_auc@final"):
            vals = [p[key] for p in per_seed if p[key] is not None]
            if vals:
                summary[key] = {"mean": round(statistics.mean(vals), 4),
                                "sd": round(statistics.stdev(vals), 4) if len(vals) > 1 else 0.0}
        emit(store, summary)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flag", default="breastmnist")
    p.add_argument("--model", default="tiny_cnn")
    p.add_argument("--budget", type=int, default=8)
    p.add_argument("--max-epochs", type=int, default=8)
    p.add_argument("--early", type=int, default=3, help="the early epoch of test@early (MedNNS: 10 of 100)")
    p.add_argument("--grace", type=int, default=1)
    p.add_argument("--reduction-factor", type=int, default=3)
    p.add_argument("--concurrent", type=int, default=1)
    p.add_argument("--search-seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--parts", nargs="+", default=["augment", "search", "seeds"])
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    store: list = []
    if "augment" in args.parts:
        bench_augment(store)
    from orchestrator.data import load_medmnist

    data = load_medmnist(args.flag, 28, DATA_ROOT)
    best = None
    if "search" in args.parts:
        import ray

        ray.init(address="local", num_cpus=max(1, args.concurrent), include_dashboard=False, log_to_driver=False,
                 configure_logging=False, _node_ip_address="127.0.0.1")
        with tempfile.TemporaryDirectory() as d:
            runs = {}
            for scheduler in ("asha", "fifo"):
                runs[scheduler] = run_search(args, scheduler, Path(d) / scheduler, data)
                emit(store, {"part": "search", "flag": args.flag, "model": args.model, "budget": args.budget,
                             "max_epochs": args.max_epochs, **runs[scheduler]})
            a, f = runs["asha"], runs["fifo"]
            emit(store, {"part": "asha_vs_fifo", "trial_epochs_saved": round(1 - a["trial_epochs"] / f["trial_epochs"], 3),
                         "wall_saved": round(1 - a["wall_s"] / f["wall_s"], 3),
                         "best_value_asha": a["best_search_value"], "best_value_fifo": f["best_search_value"]})
            best = a["best_strategy"]
        ray.shutdown()
    if "seeds" in args.parts and best is not None:
        from orchestrator.searches.strategy import default_strategy
        from orchestrator.config import StrategySearchConfig

        default = default_strategy(StrategySearchConfig())
        if best == default:  # the search picked the default recipe: nothing else to compare
            emit(store, {"part": "note", "text": "the search's best strategy is the default recipe"})
        seeds(args, store, data, {"default": default} if best == default else {"best": best, "default": default})
    if args.json:
        Path(args.json).write_text(json.dumps(store, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
