"""Compression on real RetinaMNIST (paper surrogate-ctaea-compression, section 4, Table 1, Figs. 1-3).

Three sub-commands, each writing under ``--out`` (default ``results/retina``, git-ignored):

* ``base``: MONAI ResNet-50 2D at 28 px (3-channel input, MedMNIST stem) trained with the
  MedMNIST recipe the paper adopts (4.2: Adam 1e-3, L2 1e-3, batch 128, best val-ACC epoch)
  for a CPU budget of ``--epochs``; the val-selected weights are saved in
  ``trainables.compress_trial``'s checkpoint format (``model.pt`` + ``base.json``) under
  ``--base`` so every later step reuses them (``load_base``).
* ``hv``: surrogate-assisted CTAEA vs pure CTAEA (20x5 and 10x10) at a budget of real
  evaluations, several seeds, hypervolume of D* as section 3/4.3 defines it (objectives
  f1 / base FLOPs and 1 - accuracy, ideal (0, 0), nadir (1, 1), reference (1.1, 1.1)).
  Every point is the real compressed RetinaMNIST network measured by
  ``trainables.compress_trial.evaluate_candidate`` -- the function the Tune trainable
  calls -- called in-process here (no Tune) to save start-up time. Writes Fig. 1 (box
  plot), the one-sided Mann-Whitney U tests and each method's share of the attainable HV.
* ``fastest``: the fastest feasible point found by ``hv`` re-measured against the base in
  one process (alternating repeats), with accuracy delta, Fig. 2 (inference time vs
  non-zero rate) and Fig. 3 (confusion matrices, sklearn).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

import numpy as np  # noqa: E402
import torch  # noqa: E402

DATA_ROOT = "/work/shared/data/medmnist"
FLAG = "retinamnist"


def load_data(root: str):
    from orchestrator.data import load_medmnist

    return load_medmnist(FLAG, 28, root)


# ---------------------------------------------------------------------------------------------
# base
# ---------------------------------------------------------------------------------------------
def cmd_base(args) -> int:
    from trainables.complexity import count_flops, count_params
    from trainables.compress_trial import BASE_DEFAULTS, META_FILE, MODEL_FILE
    from trainables.fit import DeviceSplit, FitConfig, evaluate, fit
    from trainables.nets.resnet import build_resnet, default_stem

    data = load_data(args.data_root)
    info = data.info
    base_dir = Path(args.base)
    base_dir.mkdir(parents=True, exist_ok=True)
    build = {"name": "resnet50", "spatial_dims": info.spatial_dims, "in_channels": info.n_channels,
             "n_outputs": info.n_outputs, "stem": default_stem(info.spatial_dims)}
    torch.manual_seed(args.seed)
    model = build_resnet(**build)
    cfg = FitConfig(max_epochs=args.epochs, lr=BASE_DEFAULTS["lr"], weight_decay=BASE_DEFAULTS["weight_decay"],
                    batch_size=BASE_DEFAULTS["batch_size"], patience=args.epochs, select_metric="val_acc",
                    seed=args.seed, device="cpu")
    test = DeviceSplit(data.images["test"], data.labels["test"], torch.device("cpu"))
    print(f"data {info.flag} {data.sizes()} synthetic={info.synthetic}; resnet50 {count_params(model) / 1e6:.2f} M "
          f"params; threads {torch.get_num_threads()}", flush=True)
    t0, best, history = time.perf_counter(), {"val_acc": -1.0}, []

    def report(row):
        # called after validation with the model at this epoch's weights: keep the best val-ACC one
        t = evaluate(model, test, info.task)
        row = {**row, "test_acc": t["acc"], "test_auc": t["auc"], "seconds": time.perf_counter() - t0}
        history.append(row)
        if row["val_acc"] > best["val_acc"]:
            best.update(row)
            torch.save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, base_dir / MODEL_FILE)
            write_meta(final=False)
        print(f"  epoch {row['epoch']:3d} train_loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f} "
              f"val_acc {row['val_acc']:.4f} val_auc {row['val_auc']:.4f} test_acc {t['acc']:.4f} "
              f"test_auc {t['auc']:.4f} [{row['seconds']:.0f} s]", flush=True)

    def write_meta(final: bool):
        shape = tuple(data.images["train"].shape[1:])
        metrics = {"best_epoch": best.get("epoch"), "best_val_acc": best["val_acc"],
                   "best_val_auc": best.get("val_auc"), "test_acc": best.get("test_acc"),
                   "test_auc": best.get("test_auc"), "epochs_run": len(history), "epochs_budget": args.epochs,
                   "params": count_params(model), "flops": count_flops(model, shape),
                   "train_seconds": time.perf_counter() - t0, "synthetic": bool(info.synthetic), "final": final}
        meta = {"build": build, "dataset": {"flag": info.flag, "task": info.task, "size": info.size,
                                            "synthetic": bool(info.synthetic)},
                "metrics": metrics, "recipe": {**BASE_DEFAULTS, "epochs": args.epochs, "seed": args.seed},
                "history": history}
        (base_dir / META_FILE).write_text(json.dumps(meta, indent=1, default=float))

    fit(model, data, cfg, report=report)
    write_meta(final=True)
    print(f"base: best epoch {best['epoch']}/{len(history)} val_acc {best['val_acc']:.4f} "
          f"test_acc {best['test_acc']:.4f} test_auc {best['test_auc']:.4f}; saved {base_dir}", flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# hv: the real evaluation function, cached by canonical config
# ---------------------------------------------------------------------------------------------
OBJECTIVES = ("f1_relative", "f2_error")  # as orchestrator.searches.compress: both in [0, 1]
KEEP = ("accuracy", "auc", "f1_relative", "f2_error", "g_accuracy", "feasible", "nonzero_rate", "flops",
        "inference_ms", "size_mb", "quantized", "status", "reason", "confusion")


class RealFunction:
    """``config -> result`` of ``trainables.compress_trial.evaluate_candidate`` on a fresh copy of the base.

    The function is deterministic in its objectives (magnitude pruning, seeded subsets, seeded
    calibration images, one-thread CPU inference), so results are cached by canonical config
    (``medcore.compression_genome.canonical_key``, the key the searchers de-duplicate by) in
    ``cache_path`` (JSON lines): a config another method or seed already evaluated is not
    evaluated twice. Timing is not an objective; ``opts`` sets its batch/repeats.
    """

    def __init__(self, base, data, opts: dict, cache_path: Path, base_accuracy: float):
        from trainables.complexity import count_flops

        self.base, self.data, self.opts = base, data, opts
        self.base_accuracy = float(base_accuracy)
        self.base_flops = float(count_flops(base.model, tuple(data.images["test"].shape[1:])))
        self.cache_path, self.cache = cache_path, {}
        self.calls, self.hits, self.seconds = 0, 0, 0.0
        if cache_path.exists():
            for line in cache_path.read_text().splitlines():
                row = json.loads(line)
                self.cache[row["key"]] = row["result"]

    @staticmethod
    def key(config) -> str:
        from medcore.compression_genome import canonical_key

        return json.dumps([round(v, 6) if isinstance(v, float) else v for v in canonical_key(config)])

    def __call__(self, config) -> dict:
        from trainables.compress_trial import evaluate_candidate

        self.calls += 1
        k = self.key(config)
        if k in self.cache:
            self.hits += 1
            return dict(self.cache[k])
        t = time.perf_counter()
        r = evaluate_candidate(copy.deepcopy(self.base.model), self.data, {**config, **self.opts},
                               self.base_accuracy, self.base_flops)
        r = {name: r.get(name) for name in KEEP}
        r["eval_s"] = time.perf_counter() - t
        self.seconds += r["eval_s"]
        self.cache[k] = r
        with self.cache_path.open("a") as f:
            f.write(json.dumps({"key": k, "config": dict(config), "result": r}, default=float) + "\n")
        return dict(r)


def search_split(data, base, split: str):
    """The data the search measures on, and the base accuracy tau is taken from (eq. 1).

    ``test``: the paper's choice (4.3 step 4). ``val``: the 120 validation images stand in
    for the test split (``evaluate_candidate`` measures on ``data.images["test"]``), so the
    test split stays unseen until the chosen model is re-measured on it, at 3.3x less cost.
    """
    from orchestrator.data import MedMNISTData
    from trainables.fit import DeviceSplit, evaluate

    if split == "test":
        return data, float(base.meta["metrics"]["test_acc"])
    view = MedMNISTData(data.info, {"train": data.images["train"], "test": data.images[split]},
                        {"train": data.labels["train"], "test": data.labels[split]})
    t = evaluate(base.model.eval(), DeviceSplit(view.images["test"], view.labels["test"], torch.device("cpu")),
                 data.info.task)
    return view, float(t["acc"])


def make_searcher(method: str, seed: int, args):
    """The searchers exactly as ``orchestrator.searches.compress.make_searcher`` builds them."""
    from searchers.ctaea import CTAEASearcher
    from searchers.surrogate_ctaea import SurrogateCTAEASearcher

    if method == "surrogate":
        return SurrogateCTAEASearcher(n_initial=args.n_initial, budget=args.budget, n_infill=args.n_infill,
                                      pop_size=args.pop_size, n_gen=args.n_gen, folds=args.folds, seed=seed,
                                      objective_keys=OBJECTIVES)
    pop, gens = (int(v) for v in method.split("_")[1].split("x"))  # ctaea_20x5 -> 20 x 5
    return CTAEASearcher(pop_size=pop, n_gen=gens, seed=seed, objective_keys=OBJECTIVES)


def cmd_hv(args) -> int:
    from tests.searchers.drive import drive_without_ray
    from trainables.compress_trial import load_base

    data = load_data(args.data_root)
    base = load_base(args.base)
    args.out.mkdir(parents=True, exist_ok=True)
    opts = {"inference_batch": args.inference_batch, "inference_repeats": args.repeats,
            "calibration_samples": args.calibration_samples}
    data, base_accuracy = search_split(data, base, args.split)
    fn = RealFunction(base, data, opts, args.out / f"eval_cache_{args.split}.jsonl", base_accuracy)
    runs_path = args.out / "hv_runs.jsonl"
    done = set()
    if runs_path.exists():
        done = {(r["method"], r["seed"]) for r in map(json.loads, runs_path.read_text().splitlines())}
    print(f"base {args.split} acc {fn.base_accuracy:.4f} (threshold {0.96 * fn.base_accuracy:.4f}); "
          f"{len(fn.cache)} cached evaluations; threads {torch.get_num_threads()}", flush=True)
    for seed in args.seeds:
        for method in args.methods:
            if (method, seed) in done:
                continue
            searcher = make_searcher(method, seed, args)
            t0, calls0, hits0, ev0 = time.perf_counter(), fn.calls, fn.hits, fn.seconds
            drive_without_ray(searcher, fn)
            d_star, hv = searcher.d_star()
            hist = [{"config": r["config"], "status": r["status"], **r["objectives"], "g": r["constraint"],
                     "feasible": r["feasible"]} for r in searcher.history]
            row = {"method": method, "seed": seed, "hv": hv, "n_eval": searcher.n_evaluated,
                   "n_feasible": sum(bool(r["feasible"]) for r in searcher.history), "n_dstar": len(d_star),
                   "seconds": time.perf_counter() - t0, "eval_seconds": fn.seconds - ev0,
                   "new_evals": (fn.calls - calls0) - (fn.hits - hits0), "history": hist,
                   "budget": args.budget, "split": args.split, "n_gen": args.n_gen,
                   "n_initial": args.n_initial, "synthetic": bool(data.info.synthetic)}
            with runs_path.open("a") as f:
                f.write(json.dumps(row, default=float) + "\n")
            print(f"seed {seed} {method:12s} HV {hv:.4f} |D*| {len(d_star)} feasible {row['n_feasible']}/"
                  f"{row['n_eval']} new evals {row['new_evals']} ({row['eval_seconds']:.0f} s eval, "
                  f"{row['seconds']:.0f} s total)", flush=True)
    return 0


def _front_hv(points) -> float:
    from searchers.pareto import feasible_nondominated_indices, hypervolume

    ok = [p for p in points if p["status"] == "ok"]
    if not ok:
        return 0.0
    F = np.array([[p[k] for k in OBJECTIVES] for p in ok], dtype=float)
    G = np.array([p["g"] for p in ok], dtype=float)
    return hypervolume(F[feasible_nondominated_indices(F, G)])


def cmd_report(args) -> int:
    """Fig. 1, medians, IQRs, one-sided Mann-Whitney U tests, shares of the attainable HV."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import mannwhitneyu

    runs = [json.loads(line) for line in (args.out / "hv_runs.jsonl").read_text().splitlines()]
    methods = list(dict.fromkeys(["surrogate"] + [r["method"] for r in runs]))
    methods = [m for m in methods if any(r["method"] == m for r in runs)]
    hv = {m: np.array([r["hv"] for r in sorted(runs, key=lambda r: r["seed"]) if r["method"] == m]) for m in methods}
    # Attainable HV: D* of every real evaluation any run made (all methods, all seeds).
    everything = [p for r in runs for p in r["history"]]
    attainable = _front_hv(everything)
    summary = {"n_runs": len(runs), "attainable_hv": attainable, "attainable_from": f"D* of all {len(everything)} "
               "evaluated points of all runs", "methods": {}, "tests": {}, "synthetic": False}
    for m in methods:
        h = hv[m]
        q1, q3 = np.percentile(h, [25, 75])
        summary["methods"][m] = {"seeds": [r["seed"] for r in runs if r["method"] == m], "hv": h.tolist(),
                                 "median": float(np.median(h)), "iqr": [float(q1), float(q3)],
                                 "sd": float(h.std(ddof=1)) if len(h) > 1 else 0.0,
                                 "share_of_attainable_median": float(np.median(h) / attainable) if attainable else None}
    if "surrogate" in hv:
        for m in methods:
            if m == "surrogate":
                continue
            u = mannwhitneyu(hv["surrogate"], hv[m], alternative="greater")
            summary["tests"][f"surrogate > {m}"] = {"U": float(u.statistic), "p": float(u.pvalue)}
    fig, ax = plt.subplots(figsize=(5, 4))
    names = {m: "Surrogate" if m == "surrogate" else f"CTAEA ({m.split('_')[1]})" for m in methods}
    ax.boxplot([hv[m] for m in methods], tick_labels=[names[m] for m in methods])
    for i, m in enumerate(methods, 1):
        ax.scatter(np.full(len(hv[m]), i) + np.linspace(-0.08, 0.08, len(hv[m])), hv[m], s=12, alpha=0.7)
    ax.axhline(attainable, ls="--", c="grey", lw=1, label=f"attainable {attainable:.4f}")
    ax.set_ylabel("hypervolume of D* (f1/base FLOPs, error; ref 1.1, 1.1)")
    ax.set_title(f"RetinaMNIST ResNet-50, {runs[0]['budget']} real evaluations")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "fig1_hv_boxplot.png", dpi=120)
    (args.out / "hv_summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


# ---------------------------------------------------------------------------------------------
# fastest: re-measure the feasible front on the test split, pick the fastest, Figs. 2 and 3
# ---------------------------------------------------------------------------------------------
UNCOMPRESSED = {"x1": 0, "x2": 0, "x3": 50.0, "x4": 50.0, "x5": 0, "x6": 0, "x7": 0, "subset_seed": 0}


def _front_configs(cache_path: Path, limit: int) -> list[dict]:
    """Feasible non-dominated configs of every cached evaluation (D* of all runs), fewest FLOPs first."""
    from searchers.pareto import feasible_nondominated_indices

    rows = [json.loads(line) for line in cache_path.read_text().splitlines()]
    rows = [r for r in rows if r["result"]["status"] == "ok"]
    F = np.array([[r["result"][k] for k in OBJECTIVES] for r in rows], dtype=float)
    G = np.array([r["result"]["g_accuracy"] for r in rows], dtype=float)
    idx = sorted(feasible_nondominated_indices(F, G), key=lambda i: F[i, 0])
    return [rows[i]["config"] for i in idx[:limit]]


def cmd_fastest(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    from trainables import compression
    from trainables.compress_trial import evaluate_candidate, load_base
    from trainables.complexity import count_flops

    data = load_data(args.data_root)
    base = load_base(args.base)
    base_acc = float(base.meta["metrics"]["test_acc"])
    base_flops = count_flops(base.model, tuple(data.images["test"].shape[1:]))
    opts = {"inference_batch": args.inference_batch, "inference_repeats": args.repeats,
            "calibration_samples": args.calibration_samples}
    configs = _front_configs(args.out / f"eval_cache_{args.split}.jsonl", args.limit)
    print(f"{len(configs)} feasible non-dominated configs (measured on {args.split}) re-measured on test", flush=True)

    def measure(config):
        return evaluate_candidate(copy.deepcopy(base.model), data, {**config, **opts}, base_acc, base_flops)

    base_eval = measure(UNCOMPRESSED)
    rows = []
    for c in configs:
        r = measure(c)
        r["config"] = c
        rows.append(r)
        print(f"  {c} acc {r['accuracy']:.4f} nonzero {r['nonzero_rate']:.3f} int8 {r['quantized']} "
              f"{r['inference_ms']:.0f} ms (base {base_eval['inference_ms']:.0f} ms)", flush=True)
    ok = [r for r in rows if r["status"] == "ok"]
    feasible = [r for r in ok if r["feasible"]] or ok
    pick = min(feasible, key=lambda r: r["inference_ms"])
    # One process, alternating base / pick so drift on the shared machine hits both alike.
    model_pick = copy.deepcopy(base.model)
    genome_cfg = {**pick["config"]}
    from medcore.compression_genome import CompressionGenome

    genome = CompressionGenome.from_config(genome_cfg)
    compression.apply_pruning(model_pick, genome)
    if genome.x7:
        model_pick = compression.quantize(model_pick, compression.calibration_images(
            data, args.calibration_samples, 0))[0]
    t_base, t_pick = [], []
    for _ in range(args.pairs):
        t_base.append(compression.inference_ms(base.model, data.images["test"], args.inference_batch, args.repeats))
        t_pick.append(compression.inference_ms(model_pick, data.images["test"], args.inference_batch, args.repeats))
    ratio = float(np.mean(t_pick) / np.mean(t_base))
    summary = {"base": {k: base_eval[k] for k in ("accuracy", "auc", "inference_ms", "nonzero_rate", "size_mb")},
               "pick": {"config": pick["config"], **{k: pick[k] for k in ("accuracy", "auc", "inference_ms",
                                                                         "nonzero_rate", "size_mb", "quantized",
                                                                         "f1_relative", "feasible")}},
               "paired_ms": {"base": t_base, "pick": t_pick}, "latency_ratio": ratio,
               "accuracy_delta_points": 100 * (pick["accuracy"] - base_eval["accuracy"]),
               "auc_delta": pick["auc"] - base_eval["auc"], "inference_batch": args.inference_batch,
               "threads": torch.get_num_threads(), "candidates": [
                   {"config": r["config"], **{k: r[k] for k in ("accuracy", "auc", "inference_ms", "nonzero_rate",
                                                                "quantized", "feasible", "f1_relative")}} for r in ok],
               "synthetic": bool(data.info.synthetic)}
    # Fig. 2: inference time vs non-zero weight rate (test split, batch inference_batch).
    fig, ax = plt.subplots(figsize=(5, 4))
    for q, colour, label in ((True, "tab:blue", "pruning + int8"), (False, "tab:orange", "pruning only")):
        pts = [r for r in ok if bool(r["quantized"]) == q]
        ax.scatter([r["nonzero_rate"] for r in pts], [r["inference_ms"] for r in pts], c=colour, label=label)
    ax.scatter([base_eval["nonzero_rate"]], [base_eval["inference_ms"]], marker="x", c="green", s=60, label="base")
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("non-zero weight rate")
    ax.set_ylabel(f"inference ms / batch of {args.inference_batch} (CPU, {torch.get_num_threads()} thread)")
    ax.set_title("RetinaMNIST ResNet-50: D* re-measured on test")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "fig2_time_vs_nonzero.png", dpi=120)
    # Fig. 3: confusion matrices, base vs the pick.
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, r, title in ((axes[0], base_eval, f"base (acc {base_eval['accuracy']:.3f})"),
                         (axes[1], pick, f"fastest feasible (acc {pick['accuracy']:.3f})")):
        ConfusionMatrixDisplay(np.array(r["confusion"])).plot(ax=ax, colorbar=False)
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(args.out / "fig3_confusion.png", dpi=120)
    (args.out / "fastest_summary.json").write_text(json.dumps(summary, indent=1, default=float))
    print(json.dumps({k: v for k, v in summary.items() if k != "candidates"}, indent=1, default=float))
    return 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=DATA_ROOT)
    p.add_argument("--base", default="/tmp/retina_base", help="base checkpoint directory (model.pt + base.json)")
    p.add_argument("--out", type=Path, default=Path("results/retina"))
    p.add_argument("--threads", type=int, default=1)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("base", help="train the ResNet-50 base (MedMNIST recipe, CPU epoch budget)")
    b.add_argument("--epochs", type=int, default=10)
    b.add_argument("--seed", type=int, default=0)
    h = sub.add_parser("hv", help="surrogate CTAEA vs pure CTAEA on the real function, several seeds")
    h.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    h.add_argument("--methods", nargs="+", default=["surrogate", "ctaea_20x5", "ctaea_10x10"],
                   help="surrogate | ctaea_PxG (pure CTAEA, population P x G generations)")
    h.add_argument("--budget", type=int, default=100)
    h.add_argument("--n-initial", type=int, default=50)
    h.add_argument("--n-infill", type=int, default=2)
    h.add_argument("--pop-size", type=int, default=50)
    h.add_argument("--n-gen", type=int, default=1000)
    h.add_argument("--folds", type=int, default=5, help="surrogate selection CV folds")
    h.add_argument("--inference-batch", type=int, default=1, help="timing only (not an objective)")
    h.add_argument("--repeats", type=int, default=1, help="timing only (not an objective)")
    h.add_argument("--calibration-samples", type=int, default=64, help="int8 calibration images (trial default 256)")
    h.add_argument("--split", choices=("val", "test"), default="val", help="split the search measures accuracy on")
    sub.add_parser("report", help="Fig. 1 box plot, Mann-Whitney U, shares of the attainable HV")
    f = sub.add_parser("fastest", help="fastest feasible point vs the base on test; Figs. 2 and 3")
    f.add_argument("--split", choices=("val", "test"), default="val", help="split the hv runs measured on")
    f.add_argument("--limit", type=int, default=6, help="re-measure at most this many D* points")
    f.add_argument("--inference-batch", type=int, default=128)
    f.add_argument("--repeats", type=int, default=3)
    f.add_argument("--pairs", type=int, default=3, help="alternating base/pick timing pairs")
    f.add_argument("--calibration-samples", type=int, default=64)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    return {"base": cmd_base, "hv": cmd_hv, "report": cmd_report, "fastest": cmd_fastest}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
