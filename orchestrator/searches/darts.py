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
stage and validation slices with baseline vs IAC masks (tables, statistics and figures:
:mod:`orchestrator.searches.darts_report`). The zoo gets the Stage I U-Nets and the Stage III
models with their weights.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from ray import tune

import trainables.darts_trial  # memory_estimates looked up at call time: tests replace it on its module
from medcore.errors import RunError
from medcore.records import FAILED, OK, ModelRecord
from orchestrator import reports
from orchestrator.config import DartsSearchConfig
from orchestrator.search import RunContext, Search, Stage, runtime
from orchestrator.searches.darts_report import (IAC, REPLACE, by_genotype, genotype_row, improvement_table,
                                                last_epoch, paired_tests, plot_alpha_beta, plot_cell,
                                                plot_dice_per_stage, plot_slices)
from orchestrator.segmentation_data import load_segmentation
from trainables.darts_trial import search_trial, skips_trial
from trainables.memory import plan_batch
from trainables.nets.iac_cell import PRIMITIVES
from trainables.unet_trial import load_unet, train_unet

STAGE1, STAGE2, STAGE3 = "darts_stage1", "darts_stage2", "darts_stage3"


@dataclass
class Stage1Output:
    """Stage I: one row per trained U-Net (backbone, Dice, best epoch, params, checkpoint path),
    backbone -> why the others failed, and ``unets``: backbone -> the loaded U-Net
    (:func:`trainables.unet_trial.load_unet`, runtime only: loaded again on resume)."""

    rows: list[dict]
    failed: dict[str, str]
    unets: dict = runtime()


@dataclass
class Stage2Output:
    """Stage II: one entry per (backbone, epoch) of the searches (search Dice, genotype, alphas,
    betas), and backbone -> why its search failed."""

    history: list[dict]
    failed: dict[str, str]


@dataclass
class Stage3Output:
    """Stage III: one row per cell or baseline run (status, Dice, gain, checkpoint path)."""

    rows: list[dict]


class DartsSearch(Search):
    name = "darts"
    description = "PC-DARTS Implantable Adaptive Cells in the skips of frozen U-Nets (Stage I -> II -> III)"
    config_cls = DartsSearchConfig
    stage_names = ("stage1", "stage2", "stage3")

    def load_data(self, cfg: DartsSearchConfig):
        return load_segmentation(cfg.data, cfg.size, cfg.spatial_dims, cfg.max_cases or None, seed=cfg.seed)

    def plan_memory(self, ctx: RunContext, limit: float | None) -> dict:
        """Every stage's trials sized before Ray starts: per stage the largest backbone's
        estimate (:func:`trainables.darts_trial.memory_estimates`), the batch halved until it
        fits the largest node (the stage's trials all train at that batch)."""
        cfg = ctx.cfg
        per_backbone = [trainables.darts_trial.memory_estimates(
            ctx.data, b, {"features": cfg.features()} if cfg.features() and b == "unet" else {}, cfg.k,
            cfg.baseline_names(), cfg.resources.jemalloc) for b in cfg.backbones()]
        what = {"stage1": "a Stage I U-Net trial", "stage2": "a Stage II search trial",
                "stage3": "a Stage III cell or baseline trial"}
        return {stage: plan_batch(f"{what[stage]} ({cfg.size} px)",
                                  lambda batch, stage=stage: max(e[stage](batch) for e in per_backbone),
                                  cfg.batch_size, limit, "--batch-size, --size or --max-cases")
                for stage in what}

    def stages(self, ctx: RunContext) -> list[Stage]:
        return [Stage("stage1", self.stage1, Stage1Output), Stage("stage2", self.stage2, Stage2Output),
                Stage("stage3", self.stage3, Stage3Output)]

    # ---- Stage I: the U-Nets --------------------------------------------------------------
    def stage1(self, ctx: RunContext) -> Stage1Output:
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
        return Stage1Output(rows, failed, unets=unets)

    # ---- Stage II: one bilevel search per backbone ---------------------------------------------
    def stage2(self, ctx: RunContext) -> Stage2Output:
        cfg, unets = ctx.cfg, ctx.output(Stage1Output).unets
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
        return Stage2Output(history, failed)

    # ---- Stage III: discrete cells and baselines on the frozen U-Nets ---------------------------
    def candidates(self, ctx: RunContext) -> list[dict]:
        """One run per (backbone, distinct snapshot genotype, seed) and per (backbone, baseline, seed)."""
        cfg = ctx.cfg
        snapshots = set(cfg.snapshot_epochs())
        genotypes: dict = {}
        for h in ctx.output(Stage2Output).history:
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

    def stage3(self, ctx: RunContext) -> Stage3Output:
        cfg = ctx.cfg
        runs = self.candidates(ctx)
        batch, resources = ctx.stage_memory("stage3", cfg.batch_size)
        grid = ctx.run_tuner(STAGE3, tune.with_parameters(skips_trial, data=ctx.data, unets=ctx.output(Stage1Output).unets),
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
        return Stage3Output(rows)

    # ---- outputs -----------------------------------------------------------------------------
    def summarize(self, ctx: RunContext) -> dict:
        cfg, data, out = ctx.cfg, ctx.data, ctx.out
        synthetic = bool(data.info.synthetic)
        first, second = ctx.output(Stage1Output), ctx.output(Stage2Output)
        stage1 = {r["backbone"]: r for r in first.rows}
        history, stage3 = second.history, ctx.output(Stage3Output).rows
        ok = [r for r in stage3 if r["status"] == OK]
        iac = by_genotype([r for r in ok if r["skip"] == IAC])
        best = max(iac, key=lambda g: (g["dice"], -g["epoch"]), default=None)
        table = [genotype_row(h, iac) for h in history]
        reports.write_table(table, out / "genotypes.csv", synthetic)
        reports.write_table([{k: v for k, v in r.items()} for r in stage3], out / "stage3.csv", synthetic)
        table2, stats = improvement_table(stage1, ok), paired_tests(stage1, ok)
        summary = {
            "search": "darts", "dataset": data.info.flag, "synthetic": synthetic, "data": data.describe(),
            "implant": cfg.implant,
            "baseline_dice": stage1[best["backbone"]]["val_dice"] if best else None,
            "best": None if best is None else {k: best[k] for k in ("genotype", "epoch", "dice", "backbone",
                                                                    "epochs", "runs", "gain")},
            "stage1": list(stage1.values()), "stage1_failed": first.failed, "stage2_failed": second.failed,
            "stage2_final": {b: last_epoch(history, b) for b in stage1 if last_epoch(history, b)},
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
            plots["slices"] = plot_slices(data, first.unets[best["backbone"]], stage3, best, out / "val_slices.png",
                                          synthetic)
        plots["dice_per_stage"] = plot_dice_per_stage(summary, stage3, out / "dice_per_stage.png",
                                                                    synthetic)
        summary["plots"] = {k: str(v) for k, v in plots.items() if v}
        return summary

    def zoo_records(self, ctx: RunContext) -> list[ModelRecord]:
        records, unets = [], ctx.output(Stage1Output).unets
        for r in ctx.output(Stage1Output).rows:
            unet = unets[r["backbone"]]
            records.append(ModelRecord(
                search="darts", stage="stage1", family="unet", architecture={"backbone": r["backbone"]},
                encoding=[], status=OK, weights=r["checkpoint"],
                build={"builder": "unet", "kwargs": {"build": unet.build}},
                metrics={"val_dice": r["val_dice"], "test_dice": r["test_dice"], "dice": r["val_dice"],
                         "params": r["params"], "epochs": r["best_epoch"]}))
        for r in ctx.output(Stage3Output).rows:
            unet = unets[r["backbone"]]
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


def genotype_encoding(genotype: dict) -> list[float]:
    """A fixed-length vector of a genotype for the zoo: per edge, the op index and the input."""
    return [float(v) for op, i in genotype["edges"] for v in (PRIMITIVES.index(op), i)]
