"""Equal compute on real data: five ways to spend one wall-clock budget B, on VesselMNIST3D and
AdrenalMNIST3D 28^3, several seeds.

    ../shared/tools/heavy .venv/bin/python -m benchmarks.equal_compute               # every run not stored yet
    ../shared/tools/heavy .venv/bin/python -m benchmarks.equal_compute --max-new 1   # one more run, then the table
    .venv/bin/python -m benchmarks.equal_compute --table                             # the table from the JSONs
    smoke: ... --budget-min 2 --seeds 0 --datasets adrenalmnist3d --results /tmp/eqc_smoke

Methods, each given the same B (default 30 min) for everything it does, on this machine's cores
(2: the in-process trainings run 2 torch threads, the ODE runs 2 one-CPU Ray trials at a time):
- ``tiny_cnn``, ``resnet18``: the tiny 3D CNN / MONAI ResNet-18 3D on the full train split, early
  stopping, stopped at B at the latest;
- ``random``: seeded random cells in the FLOPs window, each trained at search fidelity (a quarter
  of train, the whole val split, <= --search-epochs) until the search share of B is spent; the
  best by val AUC (finished candidates before one B cut short) retrained on the full train split;
- ``ode_paper`` / ``ode_multi``: ``run_search("ode", ...)`` with ``fidelity: paper`` / ``multi``,
  ``search_minutes`` = the search share of B; its top ``--top-k`` retrained (in parallel) with a
  time limit that ends at B.
The recipe is the same everywhere: Adam 1e-3, batch 128, early stopping on val loss (patience 5),
the best val-AUC epoch tested, ``head_bias: prior``; final trainings stop at --max-epochs, at
early stopping or after the epoch that crosses B (so a run may pass B by up to one epoch plus
the test evaluation: the table shows the actual wall beside B). Searches give (1 - --retrain-share)
of B to the search and the rest to the retrain (stated in each JSON's ``split``).

One JSON per (dataset, method, seed) in ``--results`` (default benchmarks/results/equal_compute/),
with the actual wall and the load average before and after: a killed run loses only itself (a
budgeted run is not resumed; it starts again), and ``--table`` rebuilds the table without
retraining: per dataset and method test AUC / ACC mean +- sd, parameters, wall, runs that predict
one class or whose ACC is the majority share; a paired t-test over seeds of ``ode_multi`` against
the best of tiny_cnn / resnet18 / random by mean test AUC; MedMNIST v2's ResNet-18+3D and the
paper's figures (a GPU run of the same protocol: examples/pbcnas3d.yaml) as reference rows; the
runs done and to do.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks.common import ensure_jemalloc, machine

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "equal_compute"
WORK = REPO / "results" / "equal_compute_runs"  # ODE run folders (Tune state, zoo): not committed
DATASETS = ("vesselmnist3d", "adrenalmnist3d")
METHODS = ("tiny_cnn", "resnet18", "random", "ode_paper", "ode_multi")
BASELINES = ("tiny_cnn", "resnet18", "random")  # the best of these (mean test AUC) is what ode_multi is tested against
CHALLENGER = "ode_multi"
# MedMNIST v2 (Yang et al. 2023, Table 4), ResNet-18+3D at 28^3: (test AUC, test ACC)
MEDMNIST_RESNET18_3D = {"adrenalmnist3d": (0.827, 0.721), "vesselmnist3d": (0.874, 0.877)}
# the paper's ODE figures (a GPU run: examples/pbcnas3d.yaml): (test AUC, test ACC)
PAPER = {"adrenalmnist3d": (0.888, 0.834), "vesselmnist3d": (0.983, 0.963)}


class Budget:
    """One method's wall-clock budget, counted from its start (the data is loaded before)."""

    def __init__(self, seconds: float):
        self.total_s, self.started = float(seconds), time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.total_s - self.elapsed()

    def limit(self, reserve_s: float, until_s: float | None = None) -> float:
        """A fit time limit that ends ``reserve_s`` before ``until_s`` (default: B) into the budget;
        never 0, which fit() reads as "no limit" (a spent budget still trains one epoch)."""
        end = self.total_s if until_s is None else until_s
        return max(end - self.elapsed() - reserve_s, 1e-3)


def recipe(args, seed: int, max_epochs: int, time_limit_s: float):
    """The one training recipe of every method (trainables.fit defaults: Adam 1e-3, batch 128)."""
    from trainables.fit import FitConfig

    return FitConfig(max_epochs=max_epochs, patience=args.patience, batch_size=128, lr=1e-3, seed=seed,
                     select_metric="val_auc", head_bias="prior", time_limit_s=time_limit_s)


def early_stopped(history: list[dict], patience: int) -> bool:
    """Whether fit() ended by early stopping: the last ``patience`` epochs did not lower the best val loss."""
    losses = [h["val_loss"] for h in history]
    return bool(losses) and len(losses) - 1 - int(np.argmin(losses)) >= patience


def _scores(result, net, info) -> dict:
    from trainables.complexity import count_flops, count_params

    return {"test_auc": result.test["test_auc"], "test_acc": result.test["test_acc"],
            "test_pred_classes": result.test.get("test_pred_classes"), "val_auc": result.best["val_auc"],
            "val_acc": result.best["val_acc"], "epochs": result.epochs_run, "best_epoch": result.best_epoch,
            "params": count_params(net), "flops": count_flops(net, info.input_shape)}


def train_final(net, data, seed: int, args, budget: Budget) -> dict:
    """Full train split, early stopping, stopped at B at the latest; the best val-AUC epoch tested."""
    import torch

    from trainables.fit import fit

    t = time.perf_counter()
    r = fit(net, data, recipe(args, seed, args.max_epochs, budget.limit(args.reserve_s)), evaluate_test=True)
    return dict(_scores(r, net, data.info), train_wall_s=time.perf_counter() - t, threads=torch.get_num_threads(),
                early_stopped=early_stopped(r.history, args.patience))


def run_baseline(name: str, data, seed: int, args, budget: Budget) -> dict:
    import torch

    from trainables.ode_trial import build_baseline

    torch.manual_seed(seed)
    info = data.info
    net = build_baseline(name, info.n_channels, info.n_outputs, info.spatial_dims)
    return dict(train_final(net, data, seed, args, budget), split={"train_s": budget.total_s})


def cell_stream(seed: int, info, min_gflops: float, max_gflops: float):
    """Distinct feasible cells with FLOPs in [min, max] (the ODE's feasibility window), in the
    order a seeded stream of uniform genomes draws them."""
    from searchers.cell_space import CellSpace, decode
    from trainables.ode_trial import CandidateCost

    flops, rng, keys, dims = CandidateCost(info, 128, 1).flops, np.random.default_rng(seed), set(), CellSpace.dims
    while True:
        d = decode(rng.random(dims))
        if not d.feasible or d.key in keys:
            continue
        keys.add(d.key)
        arch = d.architecture.to_config()
        f = flops({"architecture": arch})
        if min_gflops * 1e9 <= f <= max_gflops * 1e9:
            yield arch, f


def run_random(data, seed: int, args, budget: Budget) -> dict:
    """Random search in this process, then the best cell retrained on the full train split."""
    import torch

    from trainables.complexity import count_params
    from trainables.fit import NonFiniteLoss, fit
    from trainables.ode_trial import build_network

    info, search_s = data.info, budget.total_s * (1 - args.retrain_share)
    low = data.low_fidelity(args.fraction, seed, 1.0)
    candidates, t = [], time.perf_counter()
    for arch, flops in cell_stream(seed, info, args.min_gflops, args.max_gflops):
        if budget.elapsed() >= search_s:
            break
        torch.manual_seed(seed)  # every candidate: the same seed (paired, as in the ODE search)
        net = build_network(arch, info.n_channels, info.n_outputs, info.spatial_dims)
        c = {"candidate": len(candidates), "architecture": arch, "flops": flops, "params": count_params(net)}
        try:
            r = fit(net, low, recipe(args, seed, args.search_epochs, budget.limit(0.0, search_s)))
        except NonFiniteLoss as exc:
            candidates.append(dict(c, status="failed", reason=str(exc), val_auc=0.0, finished=True, epochs=0))
            continue
        finished = r.epochs_run >= args.search_epochs or early_stopped(r.history, args.patience)
        candidates.append(dict(c, status="ok", val_auc=r.best["val_auc"], epochs=r.epochs_run, finished=finished))
    search_wall = time.perf_counter() - t
    if not candidates:
        raise SystemExit(f"equal_compute: random search trained no candidate in {search_s:.0f} s")
    ok = [c for c in candidates if c["status"] == "ok"] or candidates
    # a candidate the budget cut short ranks below those that finished (as the ODE's paper mode)
    best = max(ok, key=lambda c: (c["finished"], c["val_auc"] if math.isfinite(c["val_auc"]) else -1.0, -c["params"]))
    from medcore.cell_genotype import CellArchitecture

    torch.manual_seed(seed)
    net = build_network(best["architecture"], info.n_channels, info.n_outputs, info.spatial_dims)
    final = train_final(net, data, seed, args, budget)
    return dict(final, architecture=best["architecture"],
                description=CellArchitecture.from_config(best["architecture"]).describe(),
                search_val_auc=best["val_auc"], n_evaluated=len(candidates), search_wall_s=search_wall,
                retrain_wall_s=final["train_wall_s"],
                search_epochs_trained=sum(c["epochs"] for c in candidates),
                candidates=[{k: c[k] for k in ("candidate", "flops", "params", "status", "val_auc", "epochs",
                                               "finished")} for c in candidates],
                split={"search_s": search_s, "retrain_s": budget.total_s - search_s,
                       "retrain_share": args.retrain_share})


def budgeted_ode_search(budget: Budget, reserve_s: float):
    """The ODE search whose retrain trials stop at B (a fit time limit set when the retrain
    starts); it records when its search and retrain stages ran."""
    from orchestrator.searches.ode import ODESearch

    class BudgetedODESearch(ODESearch):
        def search(self, ctx):
            self.marks["search_start"] = budget.elapsed()
            output = super().search(ctx)
            self.marks["search_end"] = budget.elapsed()
            return output

        def retrain(self, ctx):
            self.marks["retrain_start"] = budget.elapsed()
            output = super().retrain(ctx)
            self.marks["retrain_end"] = budget.elapsed()
            return output

        def _full_data_trial(self, ctx):
            from ray import tune

            from trainables.ode_trial import train_candidate

            cfg = ctx.cfg
            limit = budget.limit(reserve_s)
            self.marks["retrain_time_limit_s"] = limit
            fit_config = dict(cfg.fit.fit_config(cfg.seed, cfg.retrain_epochs), time_limit_s=limit)
            trainable = tune.with_parameters(train_candidate, data=ctx.data, keep_weights=True, fit_config=fit_config)
            return trainable, ctx.trial_resources(self._memory(ctx, self._cost(ctx, ctx.data)))

    search = BudgetedODESearch()
    search.marks = {}
    return search


def run_ode(fidelity: str, data, seed: int, args, budget: Budget, work: Path) -> dict:
    from orchestrator.config import FitOptions, ODESearchConfig, Resources
    from orchestrator.driver import run_search

    flag = data.info.flag
    out = work / f"{flag}_ode_{fidelity}_seed{seed}"
    if out.exists():
        shutil.rmtree(out)  # a budgeted run is not resumed: a killed one starts again
    search_s = budget.total_s * (1 - args.retrain_share)
    cfg = ODESearchConfig(
        dataset=flag, out=str(out), seed=seed, budget=args.ode_budget, pop_size=args.pop_size,
        fraction=args.fraction, val_fraction=1.0, fidelity=fidelity, min_epochs=args.min_epochs, eta=args.eta,
        search_minutes=max(search_s - budget.elapsed(), 1.0) / 60, top_k=args.top_k,
        retrain_epochs=args.max_epochs, min_gflops=args.min_gflops, max_gflops=args.max_gflops, baseline="none",
        resources=Resources(cpus_per_trial=1, max_concurrent=2),
        fit=FitOptions(max_epochs=args.search_epochs, patience=args.patience, metric="val_auc", head_bias="prior"))
    search = budgeted_ode_search(budget, args.reserve_s)
    summary = run_search(search, cfg, data)
    pick = summary.get("pick")
    if not pick or pick.get("test_auc") is None:
        raise SystemExit(f"equal_compute: the {fidelity} ODE search retrained no model in B "
                         f"({summary.get('n_evaluated')} candidates evaluated); results in {out}")
    m = search.marks
    return {"test_auc": pick["test_auc"], "test_acc": pick["test_acc"],
            "test_pred_classes": pick.get("test_pred_classes"), "val_auc": pick["val_auc"],
            "val_acc": pick.get("val_acc"), "epochs": pick.get("epochs"),
            "params": pick["params"], "flops": pick.get("flops"), "architecture": pick["architecture"],
            "description": pick.get("description"), "search_val_auc": pick.get("search_val_metric"),
            "n_evaluated": summary["n_evaluated"], "rungs": summary.get("rungs"),
            "search_epochs_trained": summary.get("epochs_trained"), "ended": summary.get("ended", ""),
            "search_wall_s": m.get("search_end", 0) - m.get("search_start", 0),
            "retrain_wall_s": m.get("retrain_end", 0) - m.get("retrain_start", 0),
            "retrain_time_limit_s": m.get("retrain_time_limit_s"), "threads": 1, "trials_at_a_time": 2,
            "split": {"search_s": search_s, "search_minutes_given": cfg.search_minutes,
                      "retrain_s": budget.total_s - search_s, "retrain_share": args.retrain_share,
                      "top_k": args.top_k}, "run_dir": str(out)}


def majority_share(labels) -> float:
    y = np.asarray(labels).reshape(len(labels), -1)[:, 0].astype(int)
    return float(np.bincount(y).max() / len(y))


def run_one(method: str, data, source: str, seed: int, args, work: Path) -> dict:
    load_before, started = os.getloadavg(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    budget = Budget(args.budget_min * 60)
    if method in ("tiny_cnn", "resnet18"):
        row = run_baseline(method, data, seed, args, budget)
    elif method == "random":
        row = run_random(data, seed, args, budget)
    else:
        row = run_ode(method.removeprefix("ode_"), data, seed, args, budget, work)
    return {"dataset": data.info.flag, "method": method, "seed": seed, "budget_s": budget.total_s,
            "wall_s": budget.elapsed(), **row, "test_majority_share": majority_share(data.labels["test"]),
            "load_before": load_before, "load_after": os.getloadavg(), "started": started, "data": source,
            "settings": {k: getattr(args, k) for k in ("fraction", "min_gflops", "max_gflops", "search_epochs",
                                                       "max_epochs", "patience", "pop_size", "min_epochs", "eta",
                                                       "retrain_share", "reserve_s")},
            "recipe": "Adam 1e-3, batch 128, early stopping on val loss, best val-AUC epoch tested, head_bias prior",
            "machine": machine()}


# ---- the table -----------------------------------------------------------------------------
def flagged(r: dict) -> bool:
    """A run whose model predicts one class on test, or whose test ACC is the majority share."""
    pred = r.get("test_pred_classes")
    return (pred is not None and int(pred) == 1) or abs(r["test_acc"] - r["test_majority_share"]) < 1e-9


def _ms(values) -> str:
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.3f} +- {sd:.3f}"


def _count(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


def best_baseline(by_method: dict[str, dict[int, dict]]) -> str | None:
    """The baseline (tiny_cnn, resnet18, random) with the highest mean test AUC over its seeds."""
    present = [m for m in BASELINES if by_method.get(m)]
    return max(present, key=lambda m: np.mean([r["test_auc"] for r in by_method[m].values()]), default=None)


def paired_test(a: dict[int, dict], b: dict[int, dict]) -> dict | None:
    """Test AUC of ``a`` minus ``b`` over the seeds both have: mean, sd, paired t-test p (None below 2 seeds)."""
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    x, y = [a[s]["test_auc"] for s in seeds], [b[s]["test_auc"] for s in seeds]
    d = np.subtract(x, y)
    return {"seeds": seeds, "mean": float(d.mean()), "sd": float(d.std(ddof=1)),
            "p": float(stats.ttest_rel(x, y).pvalue)}


def load_rows(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(results).glob("*.json"))]


def run_path(results: Path, dataset: str, method: str, seed: int) -> Path:
    return Path(results) / f"{dataset}_{method}_seed{seed}.json"


def dataset_table(rows: list[dict], dataset: str) -> list[str]:
    rows = [r for r in rows if r["dataset"] == dataset]
    by = {m: {r["seed"]: r for r in rows if r["method"] == m} for m in METHODS}
    if not rows:
        return [f"{dataset}: no runs yet"]
    budgets = sorted({r["budget_s"] for r in rows})
    majority = rows[0]["test_majority_share"]
    lines = [f"{dataset} (B = {', '.join(f'{b / 60:g}' for b in budgets)} min; test majority share {majority:.3f})",
             f"{'method':<28} {'seeds':>5} {'test AUC':>15} {'test ACC':>15} {'params':>8} {'wall s / B':>12} "
             f"{'load':>9}  flags"]
    for m in METHODS:
        rs = list(by[m].values())
        if not rs:
            continue
        n_flag = sum(flagged(r) for r in rs)
        flags = f"{n_flag} of {len(rs)} one class or ACC = majority" if n_flag else ""
        load = f"{max(r['load_before'][0] for r in rs):.1f}-{max(r['load_after'][0] for r in rs):.1f}"
        wall = f"{max(r['wall_s'] for r in rs):.0f} / {max(r['budget_s'] for r in rs):.0f}"
        lines.append(f"{m:<28} {len(rs):>5} {_ms([r['test_auc'] for r in rs]):>15} "
                     f"{_ms([r['test_acc'] for r in rs]):>15} {_count(np.mean([r['params'] for r in rs])):>8} "
                     f"{wall:>12} "
                     f"{load:>9}  {flags}".rstrip())
    for name, ref in (("MedMNIST v2 ResNet-18+3D", MEDMNIST_RESNET18_3D), ("paper (GPU, pbcnas3d.yaml)", PAPER)):
        if dataset in ref:
            lines.append(f"{name:<28} {'':>5} {ref[dataset][0]:>15.3f} {ref[dataset][1]:>15.3f}")
    best = best_baseline(by)
    if best and by[CHALLENGER]:
        t = paired_test(by[CHALLENGER], by[best])
        if t is None:
            lines.append(f"{CHALLENGER} - {best} (best baseline by mean test AUC): needs >= 2 paired seeds")
        else:
            lines.append(f"{CHALLENGER} - {best} (best baseline by mean test AUC) test AUC over {len(t['seeds'])} "
                         f"paired seeds: {t['mean']:+.3f} +- {t['sd']:.3f} (paired t-test p = {t['p']:.3f})")
    if by[CHALLENGER]:
        rs = list(by[CHALLENGER].values())
        auc, acc = np.mean([r["test_auc"] for r in rs]), np.mean([r["test_acc"] for r in rs])
        ref = MEDMNIST_RESNET18_3D.get(dataset)
        beats = best is not None and auc > np.mean([r["test_auc"] for r in by[best].values()])
        meets = ref is not None and auc >= ref[0] and acc >= ref[1]
        lines.append(f"targets for {CHALLENGER}: beats the best baseline on mean test AUC: {'yes' if beats else 'no'}; "
                     + (f">= MedMNIST ResNet-18+3D on AUC and ACC: {'yes' if meets else 'no'}; " if ref else "")
                     + f"ACC above the majority share in every run: "
                       f"{'yes' if all(r['test_acc'] > r['test_majority_share'] for r in rs) else 'no'}")
    return lines


def runs_status(rows: list[dict], datasets, methods, seeds) -> list[str]:
    """Which runs of the grid are stored, and which are still to do."""
    have = {(r["dataset"], r["method"], r["seed"]) for r in rows}
    done, todo = [], []
    for d in datasets:
        for m in methods:
            got = [s for s in seeds if (d, m, s) in have]
            missing = [s for s in seeds if (d, m, s) not in have]
            if got:
                done.append(f"{d} {m} seeds {' '.join(map(str, got))}")
            if missing:
                todo.append(f"{d} {m} seeds {' '.join(map(str, missing))}")
    return ["runs done: " + ("; ".join(done) or "none"), "runs to do: " + ("; ".join(todo) or "none")]


def table(results: Path = RESULTS, datasets=DATASETS, methods=METHODS, seeds=(0, 1, 2)) -> list[str]:
    rows = load_rows(results)
    lines = []
    for d in datasets:
        lines += dataset_table(rows, d) + [""]
    return lines + runs_status(rows, datasets, methods, seeds)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    p.add_argument("--budget-min", type=float, default=30.0, help="the wall-clock budget B of every run, in minutes")
    p.add_argument("--retrain-share", type=float, default=0.3, help="share of B a search leaves for its retrain")
    p.add_argument("--reserve-s", type=float, default=20.0, help="final trainings stop this long before B "
                   "(test evaluation, Ray teardown)")
    p.add_argument("--fraction", type=float, default=0.25, help="share of train at search time (paper: 0.25)")
    p.add_argument("--min-gflops", type=float, default=0.06, help="cells' FLOPs floor at 28^3 (the demo's)")
    p.add_argument("--max-gflops", type=float, default=0.2, help="cells' FLOPs cap at 28^3 (the demo's)")
    p.add_argument("--search-epochs", type=int, default=50, help="epoch cap of a search candidate (paper: 50)")
    p.add_argument("--max-epochs", type=int, default=100, help="epoch cap of a final training (baselines, retrains)")
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--pop-size", type=int, default=10, help="ODE population (paper: 20; its initialisation alone "
                   "trains 2 x pop_size candidates)")
    p.add_argument("--ode-budget", type=int, default=10000, help="ODE candidate budget (B ends the search first)")
    p.add_argument("--min-epochs", type=int, default=3, help="ode_multi: the first rung's epochs")
    p.add_argument("--eta", type=int, default=3, help="ode_multi: 1/eta of a rung goes on")
    p.add_argument("--top-k", type=int, default=2, help="ODE: architectures retrained (in parallel, 1 CPU each)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the in-process trainings")
    p.add_argument("--max-new", type=int, default=0, help="train at most this many new runs, then print the table "
                   "(0: all); lets other heavy jobs run between runs")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of the per-run JSONs")
    p.add_argument("--work", type=Path, default=None, help="folder of the ODE run folders (default: "
                   f"{WORK.relative_to(REPO)} for the default --results, else <results>/runs)")
    p.add_argument("--table", action="store_true", help="only print the table of the stored results")
    args = p.parse_args(argv)
    if not 0 < args.retrain_share < 1:
        p.error(f"--retrain-share must be in (0, 1), got {args.retrain_share}")
    if not args.table:
        import torch

        from benchmarks.train_speed import load

        ensure_jemalloc()
        torch.set_num_threads(args.threads)
        work = args.work or (WORK if args.results.resolve() == RESULTS.resolve() else args.results / "runs")
        args.results.mkdir(parents=True, exist_ok=True)
        todo = [(d, m, s) for s in args.seeds for d in args.datasets for m in args.methods
                if not run_path(args.results, d, m, s).exists()]
        loaded = {}
        for d, m, s in todo[:args.max_new or None]:
            if d not in loaded:
                loaded[d] = load(d)
            data, source = loaded[d]
            row = run_one(m, data, source, s, args, work)
            run_path(args.results, d, m, s).write_text(json.dumps(row, indent=1, default=float))
            print(f"{d} {m} seed {s}: test AUC {row['test_auc']:.3f} ACC {row['test_acc']:.3f}, "
                  f"{row['params']} params, {row['wall_s']:.0f} s of {row['budget_s']:.0f}; load "
                  f"{row['load_before'][0]:.1f} -> {row['load_after'][0]:.1f}", flush=True)
    print("\n".join(table(args.results, args.datasets, args.methods, args.seeds)))


if __name__ == "__main__":
    main()
