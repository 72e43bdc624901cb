"""The IAC search (IAC paper III, IV-B): Implantable Adaptive Cells searched by PC-DARTS in the
skips of frozen, pre-trained U-Nets. Stages:

* ``stage1`` -- one U-Net per backbone (Tune trials in parallel), trained on train_dt and
  selected by val_dt Dice: the baselines every later figure is compared with;
* ``stage2`` -- one bilevel search per backbone (one trial = one search, Algorithms 1-2):
  Dice and genotype every epoch, genotypes kept at the snapshot epochs;
* ``stage3`` -- every distinct snapshot genotype of every backbone as discrete cells in every
  skip of its frozen U-Net (Algorithm 3), and the skip baselines (attention gates, UNet++
  nested dense skips) on the same frozen U-Nets, all as parallel trials; best by val Dice.

``implant`` (``--implant replace|residual``) sets how the cells of Stages II and III enter the
decoder: in place of the skip tensor (the paper's) or added to it through a zero-initialised
output conv (the network starts as the frozen U-Net). The baselines do not use it. It is recorded
in ``summary.json``, ``stage3.csv`` and the IAC rows of the zoo.

Outputs: ``genotypes.csv`` (every Stage II genotype with its search Dice and, for snapshots,
its Stage III Dice), ``stage3.csv``, ``summary.json`` (the DSC gain per backbone as in Table II,
paired t-test and Wilcoxon over runs), the best cell's diagram, alpha/beta evolution, Dice per
stage and validation slices with baseline vs IAC masks. The zoo gets the Stage I U-Nets and the
Stage III models with their weights.
"""
from __future__ import annotations

import json
import math
from collections import Counter

from medcore.errors import RunError
from medcore.records import FAILED, OK, ModelRecord
from orchestrator import reports
from orchestrator.config import DartsSearchConfig
from orchestrator.search import RunContext, Search, Stage

STAGE1, STAGE2, STAGE3 = "darts_stage1", "darts_stage2", "darts_stage3"
IAC = "iac"
REPLACE = "replace"  # the paper's implant (rows written before --implant existed have none)


class DartsSearch(Search):
    name = "darts"
    description = "PC-DARTS Implantable Adaptive Cells in the skips of frozen U-Nets (Stage I -> II -> III)"
    config_cls = DartsSearchConfig
    stage_names = ("stage1", "stage2", "stage3")

    def load_data(self, cfg: DartsSearchConfig):
        from orchestrator.segmentation_data import load_segmentation

        return load_segmentation(cfg.data, cfg.size, cfg.spatial_dims, cfg.max_cases or None, seed=cfg.seed)

    def plan_memory(self, ctx: RunContext, limit: float | None) -> dict:
        """Every stage's trials sized before Ray starts: per stage the largest backbone's
        estimate (:func:`trainables.darts_trial.memory_estimates`), the batch halved until it
        fits the largest node (the stage's trials all train at that batch)."""
        from trainables.darts_trial import memory_estimates
        from trainables.memory import plan_batch

        cfg = ctx.cfg
        per_backbone = [memory_estimates(ctx.data, b, {"features": cfg.features()} if cfg.features() and b == "unet"
                                         else {}, cfg.k, cfg.baseline_names(), cfg.resources.jemalloc)
                        for b in cfg.backbones()]
        what = {"stage1": "a Stage I U-Net trial", "stage2": "a Stage II search trial",
                "stage3": "a Stage III cell or baseline trial"}
        return {stage: plan_batch(f"{what[stage]} ({cfg.size} px)",
                                  lambda batch, stage=stage: max(e[stage](batch) for e in per_backbone),
                                  cfg.batch_size, limit, "--batch-size, --size or --max-cases")
                for stage in what}

    def stages(self, ctx: RunContext) -> list[Stage]:
        return [Stage("stage1", self.stage1), Stage("stage2", self.stage2), Stage("stage3", self.stage3)]

    # ---- Stage I: the U-Nets --------------------------------------------------------------
    def stage1(self, ctx: RunContext) -> None:
        from ray import tune

        from trainables.unet_trial import load_unet, train_unet

        cfg = ctx.cfg
        features = cfg.features()
        batch, resources = ctx.stage_memory("stage1", cfg.batch_size)
        grid = ctx.run_tuner(STAGE1, tune.with_parameters(train_unet, data=ctx.data), metric="val_dice",
                             resources=resources, param_space={
            "backbone": tune.grid_search(cfg.backbones()), "epochs": cfg.stage1_epochs, "lr": 1e-3,
            "batch_size": batch, "seed": cfg.seed,
            "unet_kwargs": tune.sample_from(
                lambda spec: {"features": features} if features and spec.config.backbone == "unet" else {})})
        unets, rows, failed = {}, [], {}
        for o in ctx.outcomes(grid):
            backbone = o.config["backbone"]
            if o.failed or o.checkpoint is None or not o.metrics.get("final"):
                failed[backbone] = o.reason or "no final checkpoint"
                continue
            with o.checkpoint.as_directory() as d:  # local or remote storage
                unets[backbone] = load_unet(d)
            m = o.metrics
            rows.append({"backbone": backbone, "val_dice": m["best_val_dice"], "test_dice": m["test_dice"],
                         "best_epoch": m["best_epoch"], "params": m["params"], "checkpoint": o.checkpoint.path})
        if not unets:
            raise RunError(f"Stage I failed for every backbone: {failed}")
        ctx.state.update(unets=unets, stage1=rows, stage1_failed=failed)

    # ---- Stage II: one bilevel search per backbone ---------------------------------------------
    def stage2(self, ctx: RunContext) -> None:
        from ray import tune

        from trainables.darts_trial import search_trial

        cfg, unets = ctx.cfg, ctx.state["unets"]
        batch, resources = ctx.stage_memory("stage2", cfg.batch_size)
        grid = ctx.run_tuner(STAGE2, tune.with_parameters(search_trial, data=ctx.data, unets=unets),
                             metric="val_dice", resources=resources, param_space={
                                 "backbone": tune.grid_search(sorted(unets)), "epochs": cfg.search_epochs,
                                 "warmup": cfg.warmup, "k": cfg.k, "tan_beta": cfg.tan_beta,
                                 "batch_size": batch, "seed": cfg.seed, "implant": cfg.implant})
        history, failed = [], {}
        for o in ctx.outcomes(grid):
            backbone = o.config["backbone"]
            df = o.metrics_dataframe
            if o.failed or df is None or "genotype" not in df:
                failed[backbone] = o.reason or "no epochs reported"
                continue
            df = df.dropna(subset=["genotype"]).drop_duplicates("epoch", keep="last").sort_values("epoch")
            for row in df.itertuples():
                history.append({"backbone": backbone, "epoch": int(row.epoch), "search_dice": float(row.val_dice),
                                "searching": bool(row.searching), "genotype": json.loads(row.genotype),
                                "alphas": json.loads(row.alphas), "betas": json.loads(row.betas)})
        if not history:
            raise RunError(f"Stage II failed for every backbone: {failed}")
        ctx.state.update(history=history, stage2_failed=failed)

    # ---- Stage III: discrete cells and baselines on the frozen U-Nets ---------------------------
    def candidates(self, ctx: RunContext) -> list[dict]:
        """One run per (backbone, distinct snapshot genotype, seed) and per (backbone, baseline, seed)."""
        cfg = ctx.cfg
        snapshots = set(cfg.snapshot_epochs())
        genotypes: dict = {}
        for h in ctx.state["history"]:
            if h["epoch"] in snapshots:
                key = (h["backbone"], json.dumps(h["genotype"], sort_keys=True))
                genotypes.setdefault(key, []).append(h["epoch"])
        runs = []
        for (backbone, g), epochs in sorted(genotypes.items(), key=lambda kv: (kv[0][0], kv[1][0])):
            for r in range(cfg.runs):
                runs.append({"backbone": backbone, "skip": IAC,
                             "skip_kwargs": {"genotype": json.loads(g), "implant": cfg.implant},
                             "snapshot_epochs": epochs, "seed": cfg.seed + r})
        for backbone in sorted({b for b, _ in genotypes}):
            for name in cfg.baseline_names():
                for r in range(cfg.runs):
                    runs.append({"backbone": backbone, "skip": name, "skip_kwargs": {}, "snapshot_epochs": [],
                                 "seed": cfg.seed + r})
        return runs

    def stage3(self, ctx: RunContext) -> None:
        from ray import tune

        from trainables.darts_trial import skips_trial

        cfg = ctx.cfg
        runs = self.candidates(ctx)
        batch, resources = ctx.stage_memory("stage3", cfg.batch_size)
        grid = ctx.run_tuner(STAGE3, tune.with_parameters(skips_trial, data=ctx.data, unets=ctx.state["unets"]),
                             metric="val_dice", resources=resources, param_space={
                                 "run": tune.grid_search(runs), "epochs": cfg.stage3_epochs,
                                 "batch_size": batch, "lr": 1e-3})
        rows = []
        for o in ctx.outcomes(grid):
            run = o.config["run"]
            m = o.metrics
            row = {"backbone": run["backbone"], "skip": run["skip"], "seed": run["seed"],
                   "snapshot_epochs": run["snapshot_epochs"], "genotype": run["skip_kwargs"].get("genotype"),
                   "implant": run["skip_kwargs"].get("implant"),  # None: a baseline (no cell)
                   "trial_id": o.trial_id}
            if o.failed or not m.get("final"):
                row.update(status=FAILED, reason=o.reason or "no final report")
            else:
                row.update(status=OK, reason="", val_dice=m["best_val_dice"], test_dice=m["test_dice"],
                           baseline_dice=m["baseline_dice"], dice_gain=m["dice_gain"],
                           skip_params=m["skip_params"], best_epoch=m["best_epoch"],
                           checkpoint=o.checkpoint.path if o.checkpoint else None)
            rows.append(row)
        ctx.state["stage3"] = rows

    # ---- outputs -----------------------------------------------------------------------------
    def summarize(self, ctx: RunContext) -> dict:
        cfg, data, out = ctx.cfg, ctx.data, ctx.out
        synthetic = bool(data.info.synthetic)
        stage1 = {r["backbone"]: r for r in ctx.state["stage1"]}
        history, stage3 = ctx.state["history"], ctx.state["stage3"]
        ok = [r for r in stage3 if r["status"] == OK]
        iac = _by_genotype([r for r in ok if r["skip"] == IAC])
        best = max(iac, key=lambda g: (g["dice"], -g["epoch"]), default=None)
        table = [_genotype_row(h, iac) for h in history]
        reports.write_table(table, out / "genotypes.csv", synthetic)
        reports.write_table([{k: v for k, v in r.items()} for r in stage3], out / "stage3.csv", synthetic)
        table2, stats = improvement_table(stage1, ok), paired_tests(stage1, ok)
        summary = {
            "search": "darts", "dataset": data.info.flag, "synthetic": synthetic, "data": data.describe(),
            "implant": cfg.implant,
            "baseline_dice": stage1[best["backbone"]]["val_dice"] if best else None,
            "best": None if best is None else {k: best[k] for k in ("genotype", "epoch", "dice", "backbone",
                                                                    "epochs", "runs", "gain")},
            "stage1": list(stage1.values()), "stage1_failed": ctx.state.get("stage1_failed", {}),
            "stage2_failed": ctx.state.get("stage2_failed", {}),
            "stage2_final": {b: _last(history, b) for b in stage1 if _last(history, b)},
            "improvement": table2, "statistics": stats,
            "n_evaluated": len(stage3), "n_ok": len(ok), "n_failed": len(stage3) - len(ok),
            "failure_reasons": dict(Counter(r["reason"] for r in stage3 if r["status"] != OK)),
            "dice_split": "val_dt (Stages I, III); val_search (Stage II)",
            "config": cfg.to_dict(),
        }
        plots = {}
        if best is not None:
            plots["cell"] = plot_cell(best["genotype"], out / "best_cell.png", synthetic,
                                                    f"best IAC ({best['backbone']}, epoch {best['epoch']})")
            plots["alpha_beta"] = plot_alpha_beta(
                [h for h in history if h["backbone"] == best["backbone"]], out / "alpha_beta.png", synthetic)
            plots["slices"] = plot_slices(ctx, best, out / "val_slices.png", synthetic)
        plots["dice_per_stage"] = plot_dice_per_stage(summary, stage3, out / "dice_per_stage.png",
                                                                    synthetic)
        summary["plots"] = {k: str(v) for k, v in plots.items() if v}
        return summary

    def zoo_records(self, ctx: RunContext) -> list[ModelRecord]:
        records = []
        for r in ctx.state["stage1"]:
            unet = ctx.state["unets"][r["backbone"]]
            records.append(ModelRecord(
                search="darts", stage="stage1", family="unet", architecture={"backbone": r["backbone"]},
                encoding=[], status=OK, weights=r["checkpoint"],
                build={"builder": "unet", "kwargs": {"build": unet.build}},
                metrics={"val_dice": r["val_dice"], "test_dice": r["test_dice"], "dice": r["val_dice"],
                         "params": r["params"], "epochs": r["best_epoch"]}))
        for r in ctx.state["stage3"]:
            unet = ctx.state["unets"][r["backbone"]]
            arch = {"backbone": r["backbone"], "skip": r["skip"], "seed": r["seed"]}
            kwargs = {}
            if r["genotype"]:
                implant = r.get("implant") or REPLACE
                arch.update(genotype=r["genotype"], snapshot_epochs=r["snapshot_epochs"], implant=implant)
                kwargs = {"genotype": r["genotype"], "implant": implant}
            records.append(ModelRecord(
                search="darts", stage="stage3", family=r["skip"], architecture=arch,
                encoding=genotype_encoding(r["genotype"]) if r["genotype"] else [],
                status=r["status"], reason=r.get("reason", ""), trial_id=r["trial_id"],
                weights=r.get("checkpoint"),
                build={"builder": "darts_skip_model",
                       "kwargs": {"unet_build": unet.build, "skip": r["skip"], "skip_kwargs": kwargs}},
                metrics={"val_dice": r.get("val_dice"), "test_dice": r.get("test_dice"), "dice": r.get("val_dice"),
                         "params": r.get("skip_params"), "dice_gain": r.get("dice_gain"),
                         "baseline_dice": r.get("baseline_dice")}))
        return records

    def print_summary(self, summary: dict) -> None:
        if summary.get("synthetic"):
            print("NOTE: results come from SYNTHETIC data")
        print(json.dumps({k: summary[k] for k in ("search", "dataset", "synthetic", "n_evaluated", "baseline_dice")}))
        best = summary.get("best")
        if best:
            print(f"best IAC: {best['backbone']} epoch {best['epoch']} val Dice {best['dice']:.4f} "
                  f"(Stage I {summary['baseline_dice']:.4f}): {best['genotype']}")
        print(f"results in {summary['out']}")


# ---- tables and statistics ---------------------------------------------------------------

def _key(genotype) -> str:
    return json.dumps(genotype, sort_keys=True)


def _by_genotype(rows: list[dict]) -> list[dict]:
    """Stage III IAC runs grouped by (backbone, genotype): mean val Dice over runs."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["backbone"], _key(r["genotype"])), []).append(r)
    out = []
    for (backbone, _), rs in groups.items():
        dice = [r["val_dice"] for r in rs]
        epochs = sorted({e for r in rs for e in r["snapshot_epochs"]})
        out.append({"backbone": backbone, "genotype": rs[0]["genotype"], "epochs": epochs, "epoch": epochs[0],
                    "dice": sum(dice) / len(dice), "runs": len(dice),
                    "gain": sum(r["dice_gain"] for r in rs) / len(rs)})
    return out


def _genotype_row(h: dict, iac: list[dict]) -> dict:
    match = next((g for g in iac if g["backbone"] == h["backbone"] and _key(g["genotype"]) == _key(h["genotype"])
                  and h["epoch"] in g["epochs"]), None)
    from trainables.nets.iac_cell import Genotype

    return {"backbone": h["backbone"], "epoch": h["epoch"], "searching": h["searching"],
            "search_dice": h["search_dice"], "genotype": str(Genotype.from_dict(h["genotype"])),
            "genotype_json": h["genotype"], "stage3_dice": match["dice"] if match else None,
            "stage3_gain": match["gain"] if match else None}


def _last(history: list[dict], backbone: str) -> dict | None:
    rows = [h for h in history if h["backbone"] == backbone]
    if not rows:
        return None
    last = max(rows, key=lambda h: h["epoch"])
    return {"epoch": last["epoch"], "search_dice": last["search_dice"], "genotype": last["genotype"]}


def _mean_var(values: list[float]) -> dict:
    import numpy as np

    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "variance": float(v.var(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}


def _best_iac_runs(rows: list[dict], backbone: str) -> list[dict]:
    """The runs of the backbone's best IAC genotype (by mean val Dice over runs)."""
    groups = [g for g in _by_genotype([r for r in rows if r["skip"] == IAC and r["backbone"] == backbone])]
    if not groups:
        return []
    best = max(groups, key=lambda g: g["dice"])
    return [r for r in rows if r["skip"] == IAC and r["backbone"] == backbone
            and _key(r["genotype"]) == _key(best["genotype"])]


def improvement_table(stage1: dict, rows: list[dict]) -> dict:
    """Table II: per backbone and skip kind, the DSC improvement over the frozen Stage I U-Net
    (mean and variance over runs); IAC is its best genotype's runs."""
    table = {}
    for backbone, s1 in stage1.items():
        entry = {"baseline_dice": s1["val_dice"]}
        kinds = {IAC: _best_iac_runs(rows, backbone)}
        for r in rows:
            if r["skip"] != IAC and r["backbone"] == backbone:
                kinds.setdefault(r["skip"], []).append(r)
        for kind, rs in kinds.items():
            if rs:
                entry[kind] = {"dice": _mean_var([r["val_dice"] for r in rs]),
                               "gain": _mean_var([r["val_dice"] - s1["val_dice"] for r in rs])}
        table[backbone] = entry
    return table


def paired_tests(stage1: dict, rows: list[dict]) -> dict:
    """Paired t-test and Wilcoxon signed-rank test (scipy.stats) of each skip kind against the
    frozen Stage I U-Net, over the runs (backbone x seed): IAC is each backbone's best genotype."""
    from scipy import stats

    out = {}
    kinds = [IAC] + sorted({r["skip"] for r in rows if r["skip"] != IAC})
    for kind in kinds:
        pairs = []
        for backbone, s1 in stage1.items():
            rs = _best_iac_runs(rows, backbone) if kind == IAC else \
                [r for r in rows if r["skip"] == kind and r["backbone"] == backbone]
            pairs += [(s1["val_dice"], r["val_dice"]) for r in sorted(rs, key=lambda r: r["seed"])]
        entry = {"n": len(pairs), "mean_gain": (sum(b - a for a, b in pairs) / len(pairs)) if pairs else None,
                 "ttest_p": None, "wilcoxon_p": None}
        diffs = [b - a for a, b in pairs]
        if len(pairs) < 2 or all(d == diffs[0] for d in diffs):
            entry["reason"] = "needs at least 2 runs with differing gains (--runs, more backbones)"
        else:
            entry["ttest_p"] = _finite(stats.ttest_rel([b for _, b in pairs], [a for a, _ in pairs]).pvalue)
            if any(d != 0 for d in diffs):
                entry["wilcoxon_p"] = _finite(stats.wilcoxon(diffs).pvalue)
        out[kind] = entry
    return out


def genotype_encoding(genotype: dict) -> list[float]:
    """A fixed-length vector of a genotype for the zoo: per edge, the op index and the input."""
    from trainables.nets.iac_cell import PRIMITIVES

    return [float(v) for op, i in genotype["edges"] for v in (PRIMITIVES.index(op), i)]


def _finite(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


# ---- plots ---------------------------------------------------------------------------------

def plot_cell(genotype: dict, path, synthetic: bool, title: str = "IAC genotype"):
    """The cell as a DAG: the two inputs, four nodes (each with its two op-labelled edges), the output."""
    from trainables.nets.iac_cell import INPUT_NAMES, STEPS, Genotype

    plt = reports._plt()
    g = Genotype.from_dict(genotype)
    pos = {0: (0.0, 2.2), 1: (0.0, 0.8)}
    for k in range(STEPS):
        pos[2 + k] = (1.3 + 1.2 * k, 1.5 + (0.9 if k % 2 else -0.9))
    out = (1.3 + 1.2 * STEPS + 0.3, 1.5)
    names = {0: f"input0\n({INPUT_NAMES[0]})", 1: f"input1\n({INPUT_NAMES[1]})",
             **{2 + k: f"node {k}" for k in range(STEPS)}}
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for k in range(STEPS):
        for n, (op, i) in enumerate(g.node_edges(k)):
            (x0, y0), (x1, y1) = pos[i], pos[2 + k]
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                        arrowprops={"arrowstyle": "->", "color": f"C{k}", "lw": 1.5, "shrinkA": 18, "shrinkB": 18,
                                    "connectionstyle": f"arc3,rad={0.15 if n else -0.15}"})
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + (0.12 if n else -0.12), op, fontsize=7, color=f"C{k}",
                    ha="center", va="center", bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 0.5})
    for node in g.concat:
        ax.annotate("", xy=out, xytext=pos[node], arrowprops={"arrowstyle": "->", "color": "grey", "lw": 0.8,
                                                              "shrinkA": 18, "shrinkB": 22, "ls": "--"})
    for node, (x, y) in pos.items():
        ax.text(x, y, names[node], ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round", "fc": "lightblue" if node < 2 else "khaki"})
    ax.text(*out, "concat\n1x1 conv\n(output)", ha="center", va="center", fontsize=8,
            bbox={"boxstyle": "round", "fc": "lightgreen"})
    ax.set_xlim(-0.6, out[0] + 0.6)
    ax.set_ylim(0.0, 3.0)
    ax.axis("off")
    reports._title(ax, title, synthetic)
    return reports.save_figure(fig, path, dpi=110)


def plot_alpha_beta(history: list[dict], path, synthetic: bool):
    """Per search epoch: the edge weights Psi (normalised beta, one line per edge) and the op
    weights softmax(alpha) averaged over the 14 edges (one line per operation)."""
    import numpy as np

    from trainables.nets.iac_cell import PRIMITIVES, node_slices

    plt = reports._plt()
    history = sorted(history, key=lambda h: h["epoch"])
    epochs = [h["epoch"] for h in history]
    betas = np.asarray([h["betas"] for h in history])
    alphas = np.asarray([h["alphas"] for h in history]).mean(axis=1)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for node, s in enumerate(node_slices()):
        for e in range(s.start, s.stop):
            a1.plot(epochs, betas[:, e], color=f"C{node}", lw=1, marker="." if len(epochs) < 30 else None,
                    label=f"node {node}" if e == s.start else None)
    a1.set_xlabel("search epoch")
    a1.set_ylabel("edge weight Psi")
    a1.legend(fontsize=7)
    reports._title(a1, "beta (edge normalisation)", synthetic)
    for o, name in enumerate(PRIMITIVES):
        a2.plot(epochs, alphas[:, o], label=name, marker="." if len(epochs) < 30 else None)
    a2.set_xlabel("search epoch")
    a2.set_ylabel("softmax(alpha), mean over edges")
    a2.legend(fontsize=7)
    reports._title(a2, "alpha (operations)", synthetic)
    return reports.save_figure(fig, path, dpi=110)


def plot_dice_per_stage(summary: dict, stage3: list[dict], path, synthetic: bool):
    """Per backbone: Stage I val Dice, the last Stage II search Dice (val_search), the best IAC
    and each baseline (val Dice, mean over runs)."""
    import numpy as np

    plt = reports._plt()
    backbones = [r["backbone"] for r in summary["stage1"]]
    kinds = ["stage I", "stage II (val_search)", "stage III IAC"] + sorted(
        {r["skip"] for r in stage3 if r["skip"] != IAC and r["status"] == OK})
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(backbones) + 2), 4))
    width = 0.8 / len(kinds)
    for k, kind in enumerate(kinds):
        vals = []
        for b in backbones:
            entry = summary["improvement"].get(b, {})
            if kind == "stage I":
                vals.append(entry.get("baseline_dice"))
            elif kind == "stage II (val_search)":
                vals.append((summary["stage2_final"].get(b) or {}).get("search_dice"))
            else:
                vals.append((entry.get(IAC if kind == "stage III IAC" else kind) or {}).get("dice", {}).get("mean"))
        xs = np.arange(len(backbones)) + (k - (len(kinds) - 1) / 2) * width
        ax.bar(xs, [v if v is not None else 0.0 for v in vals], width, label=kind)
    ax.set_xticks(np.arange(len(backbones)), backbones)
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    reports._title(ax, "Dice per stage (val_dt unless noted)", synthetic)
    return reports.save_figure(fig, path, dpi=110)


def _best_model(ctx: RunContext, best: dict):
    """The frozen Stage I U-Net and the best IAC model (its best run's weights), both on CPU."""
    import torch

    from trainables.darts_trial import build_skip_model
    from trainables.unet_trial import SKIPS_FILE

    unet = ctx.state["unets"][best["backbone"]]
    runs = [r for r in ctx.state["stage3"] if r["status"] == OK and r["skip"] == IAC
            and r["backbone"] == best["backbone"] and _key(r["genotype"]) == _key(best["genotype"])
            and r.get("checkpoint")]
    if not runs:
        return None, None
    run = max(runs, key=lambda r: r["val_dice"])
    model = build_skip_model(unet.build, IAC, {"genotype": best["genotype"], "implant": run.get("implant") or REPLACE})
    model.load_state_dict(torch.load(f"{run['checkpoint']}/{SKIPS_FILE}", map_location="cpu", weights_only=True))
    return unet.model().eval(), model.eval()


def plot_slices(ctx: RunContext, best: dict, path, synthetic: bool, n: int = 4):
    """A few val_dt slices (those with the most foreground; 3D: the middle axial slice) with
    the ground truth, the Stage I U-Net's mask and the best IAC model's mask as contours."""
    import numpy as np
    import torch

    base, iac = _best_model(ctx, best)
    if base is None:
        return None
    data = ctx.data
    x_all, y_all = data.images["val_dt"], data.labels["val_dt"]
    order = np.argsort(-y_all.reshape(len(y_all), -1).sum(1))[:n]
    x = torch.from_numpy(np.ascontiguousarray(x_all[order])).float()
    with torch.no_grad():
        pb, pi = (base(x) > 0).numpy(), (iac(x) > 0).numpy()
    y = y_all[order]
    plt = reports._plt()
    fig, axes = plt.subplots(1, len(order), figsize=(3.2 * len(order), 3.6), squeeze=False)

    def show(a):  # 3D: the middle slice along the last axis
        a = a[0]
        return a[..., a.shape[-1] // 2] if a.ndim == 3 else a

    for j, ax in enumerate(axes[0]):
        ax.imshow(show(x[j].numpy()), cmap="gray")
        for mask, color in ((y[j], "white"), (pb[j], "red"), (pi[j], "lime")):
            m = show(mask.astype(float))
            if m.any():
                ax.contour(m, levels=[0.5], colors=color, linewidths=1)
        ax.axis("off")
        reports._title(ax, f"val slice {int(order[j])}", synthetic)
    fig.suptitle("ground truth (white), Stage I U-Net (red), best IAC (green)", fontsize=9)
    return reports.save_figure(fig, path, dpi=110)
