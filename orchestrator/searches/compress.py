"""The compression search (paper section 3, 4.3). Stages: ``base`` (train the base network,
or read ``--base-checkpoint``) -> ``search`` (evaluate the base uncompressed, then the
surrogate-assisted CTAEA loop or pure CTAEA).

The base network travels to the trials through Ray's object store, never as a path on the
driver's disk. Outputs: ``evaluated.csv``, D* with its hypervolume, the paper's Fig. 2/3
plots and ``summary.json``; the base (with weights) and every evaluated point go to the zoo.
"""
from __future__ import annotations

import math
from collections import Counter

from medcore.records import FAILED, OK, ModelRecord
from orchestrator import reports
from orchestrator.config import CompressSearchConfig
from orchestrator.search import RunContext, Search, Stage, trial_errors

BASE_NAME, BASE_EVAL_NAME, SEARCH_NAME = "compress_base", "compress_base_eval", "compress_search"
# x1 = x2 = 0, x7 = 0: the base network measured by the same code path as every candidate.
UNCOMPRESSED = {"x1": 0, "x2": 0, "x3": 50.0, "x4": 50.0, "x5": 0, "x6": 0, "x7": 0, "subset_seed": 0}
# f1 is divided by the base FLOPs (``f1_relative``), f2 is the error: both in [0, 1], so the
# hypervolume uses ideal (0, 0), nadir (1, 1) and reference point (1.1, 1.1).
OBJECTIVES = ("f1_relative", "f2_error")
BASE_BUILDER = "trainables.nets.resnet:build_resnet"


def make_searcher(cfg: CompressSearchConfig):
    if cfg.searcher == "ctaea":
        from searchers.ctaea import CTAEASearcher

        return CTAEASearcher(pop_size=cfg.ctaea_pop, n_gen=cfg.ctaea_gens, seed=cfg.seed, objective_keys=OBJECTIVES)
    from searchers.surrogate_ctaea import SurrogateCTAEASearcher

    return SurrogateCTAEASearcher(n_initial=cfg.initial, budget=cfg.budget, n_infill=cfg.infill,
                                  pop_size=cfg.ctaea_pop, n_gen=cfg.ctaea_gens, seed=cfg.seed,
                                  objective_keys=OBJECTIVES)


class CompressSearch(Search):
    name = "compress"
    description = "surrogate-assisted CTAEA over pruning + quantization"
    config_cls = CompressSearchConfig
    stage_names = ("base", "search")

    def plan_memory(self, ctx: RunContext, limit: float | None) -> dict:
        """The base network's training trial (none with ``--base-checkpoint``) and every candidate
        trial, sized before Ray starts (:func:`trainables.compress_trial.base_estimate` and
        :func:`~trainables.compress_trial.candidate_estimate`). The base trains at ``--batch-size``
        halved until it fits ``limit``; a candidate's batch is the timed inference batch, a measured
        setting of the search (inference_ms, Fig. 2), so it is never lowered: refused in one line."""
        from trainables.compress_trial import base_build, base_estimate, candidate_estimate, read_build
        from trainables.memory import plan_batch

        cfg, data = ctx.cfg, ctx.data
        jemalloc = cfg.resources.jemalloc
        build = read_build(cfg.base_checkpoint) if cfg.base_checkpoint else base_build(cfg.model, data.info)
        where = f"{build['name']}, {data.info.size} px"
        plans = {}
        if not cfg.base_checkpoint:
            plans["base"] = plan_batch(f"training the base network ({where})", base_estimate(build, data, jemalloc),
                                       cfg.fit.batch_size, limit, "--batch-size, --size or --model")
        candidate = candidate_estimate(build, data, jemalloc=jemalloc)
        plans["search"] = plan_batch(f"a compression candidate ({where})", candidate, cfg.inference_batch, limit,
                                     "--inference-batch or --size", lowerable=False)
        return plans

    def stages(self, ctx: RunContext) -> list[Stage]:
        make_searcher(ctx.cfg)  # bad searcher settings fail before any training
        return [Stage("base", self.base), Stage("search", self.search)]

    def base(self, ctx: RunContext) -> None:
        from ray import tune

        from trainables.compress_trial import load_base, train_base

        cfg = ctx.cfg
        if cfg.base_checkpoint:
            ctx.state["base"], ctx.state["base_ref"] = load_base(cfg.base_checkpoint), str(cfg.base_checkpoint)
            return
        fit = cfg.fit
        batch, resources = ctx.stage_memory("base", fit.batch_size)
        grid = ctx.run_tuner(BASE_NAME, tune.with_parameters(train_base, data=ctx.data), resources=resources,
                             param_space={
            "model": cfg.model.lower(), "epochs": fit.max_epochs, "seed": cfg.seed, "lr": fit.lr,
            "weight_decay": fit.weight_decay, "batch_size": batch, "select_metric": fit.metric,
            "patience": fit.patience or fit.max_epochs}, metric="val_acc")
        result = grid[0]
        if result.error or result.checkpoint is None:
            from medcore.errors import RunError

            raise RunError(f"training the base network failed: {trial_errors(grid) or result.error}")
        ctx.state["base"], ctx.state["base_ref"] = load_base(result.checkpoint), result.checkpoint.path

    def search(self, ctx: RunContext) -> None:
        from ray import tune

        from trainables.compress_trial import compress_trial

        cfg, base = ctx.cfg, ctx.state["base"]
        base_accuracy = float(base.meta["metrics"]["test_acc"])
        # never lowered (plan_memory refuses instead): the timed batch is part of what is measured
        batch, resources = ctx.stage_memory("search", cfg.inference_batch)

        def trainable():
            return tune.with_parameters(compress_trial, data=ctx.data, base=base, base_accuracy=base_accuracy,
                                        options={"inference_batch": batch,
                                                 "inference_repeats": cfg.inference_repeats})

        grid = ctx.run_tuner(BASE_EVAL_NAME, trainable(), resources=resources, param_space=dict(UNCOMPRESSED))
        ctx.state["base_eval"] = grid[0].metrics or {}
        searcher = make_searcher(cfg)
        grid = ctx.run_tuner(SEARCH_NAME, trainable(), resources=resources, metric="accuracy",
                             tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=-1, max_concurrent_trials=cfg.resources.max_concurrent or None,
            reuse_actors=True))
        ctx.state["measured"] = {r.metrics["trial_id"]: r.metrics for r in grid if r.metrics and "trial_id" in r.metrics}
        searcher = make_searcher(cfg)
        searcher.restore_from_dir(ctx.experiment_path(SEARCH_NAME))
        ctx.require_finished(searcher, SEARCH_NAME)
        errors = trial_errors(grid)
        for rec in searcher.history:
            if rec["status"] != OK and rec.get("trial_id") in errors:
                rec["reason"] = errors[rec["trial_id"]]
        ctx.state["searcher"] = searcher

    # ---- outputs -----------------------------------------------------------------------
    def summarize(self, ctx: RunContext) -> dict:
        cfg, data, base, searcher = ctx.cfg, ctx.data, ctx.state["base"], ctx.state["searcher"]
        base_eval, measured = ctx.state["base_eval"], ctx.state["measured"]
        out, synthetic = ctx.out, bool(data.info.synthetic)
        rows = [_row(r, measured) for r in searcher.history]
        ctx.state["rows"] = rows
        reports.write_table([{k: v for k, v in r.items() if k != "confusion"} for r in rows], out / "evaluated.csv",
                            synthetic)
        d_star, hv = searcher.d_star()
        pareto = [_row(r, measured) for r in d_star]
        base_summary = {"accuracy": base_eval.get("accuracy"), "auc": base_eval.get("auc"),
                        "flops": base_eval.get("flops"), "inference_ms": base_eval.get("inference_ms"),
                        "size_mb": base_eval.get("size_mb"), "model": base.build["name"],
                        "checkpoint": ctx.state["base_ref"], "train_metrics": base.meta.get("metrics", {})}
        reports.plot_compression_front(rows, base_eval, out / "objective_space.png", synthetic)
        reports.plot_time_vs_nonzero(rows, base_eval, out / "inference_vs_nonzero.png", synthetic)
        ok = [r for r in rows if r["status"] == OK and r.get("confusion")]
        best = max(ok, key=lambda r: (r["accuracy"], -r["f1_relative"]), default=None)
        if base_eval.get("confusion") and best is not None:
            reports.plot_confusions(base_eval["confusion"], best["confusion"], out / "confusion_matrices.png",
                                    synthetic)
        n_ok = sum(r["status"] == OK for r in rows)
        summary = {
            "search": "compress", "searcher": cfg.searcher, "dataset": data.info.flag, "size": data.info.size,
            "synthetic": synthetic, "n_evaluated": len(rows), "n_ok": n_ok, "n_failed": len(rows) - n_ok,
            "failure_reasons": dict(Counter(r.get("reason") or "unknown" for r in rows if r["status"] != OK)),
            "base": base_summary,
            "pareto": [{k: v for k, v in r.items() if k != "confusion"} for r in pareto],
            "hypervolume": hv,
            "hypervolume_definition": "pymoo HV of D* on (FLOPs x non-zero rate / base FLOPs, 1 - accuracy), "
                                      "ideal (0, 0), nadir (1, 1), reference point (1.1, 1.1)",
            "most_accurate": None if best is None else {k: v for k, v in best.items() if k != "confusion"},
            "config": cfg.to_dict(),
        }
        # the fastest feasible point over every evaluated point, not only D* (D* ranks by f1
        # and error, and f1 does not see kernel speed)
        fastest = [r for r in rows if r["status"] == OK and r.get("feasible") and _finite(r.get("inference_ms"))]
        if fastest and _finite(base_eval.get("inference_ms")):
            f = min(fastest, key=lambda r: r["inference_ms"])
            summary["fastest_feasible"] = {"inference_ratio": f["inference_ms"] / base_eval["inference_ms"],
                                           "accuracy_delta": f["accuracy"] - base_eval["accuracy"], **{
                                               k: v for k, v in f.items() if k != "confusion"}}
        return summary

    def zoo_records(self, ctx: RunContext) -> list[ModelRecord]:
        from searchers.compression_space import encode

        base, base_eval = ctx.state["base"], ctx.state["base_eval"]
        build = {"builder": BASE_BUILDER, "kwargs": base.build}
        base_arch = {"model": base.build["name"]}
        train = base.meta.get("metrics", {})
        records = [ModelRecord(
            search="compress", stage="base", family="resnet", architecture=base_arch, encoding=[],
            status=OK, build=build, weights=ctx.state["base_ref"], metrics={
                "val_acc": train.get("best_val_acc"), "val_auc": train.get("best_val_auc"),
                "test_acc": base_eval.get("accuracy", train.get("test_acc")),
                "test_auc": base_eval.get("auc", train.get("test_auc")), "params": train.get("params"),
                "flops": base_eval.get("flops"), "latency_ms": base_eval.get("inference_ms"),
                "size_mb": base_eval.get("size_mb")})]
        for r in ctx.state["rows"]:
            genome = {k: r[k] for k in ("x1", "x2", "x3", "x4", "x5", "x6", "x7", "subset_seed")}
            records.append(ModelRecord(
                search="compress", stage="search", family="compression", architecture={**base_arch, "genome": genome},
                encoding=[float(v) for v in encode(genome)], status=OK if r["status"] == OK else FAILED,
                reason=r.get("reason", ""), trial_id=r["trial_id"], metrics={
                    "test_acc": r.get("accuracy"), "test_auc": r.get("auc"), "flops": r.get("flops"),
                    "latency_ms": r.get("inference_ms"), "size_mb": r.get("size_mb"),
                    "f1_relative": r.get("f1_relative"), "nonzero_rate": r.get("nonzero_rate")}))
        return records

    def print_summary(self, summary: dict) -> None:
        import json

        if summary.get("synthetic"):
            print("NOTE: results come from SYNTHETIC data")
        print(json.dumps({k: summary[k] for k in ("search", "searcher", "dataset", "synthetic", "n_evaluated",
                                                   "hypervolume")}))
        print(f"base accuracy {summary['base']['accuracy']}, {len(summary['pareto'])} points in D*")
        print(f"results in {summary['out']}")


def _row(record: dict, measured: dict) -> dict:
    """One evaluated point: the searcher's record joined with the trial's measurements."""
    m = measured.get(record["trial_id"], {})
    row = {"trial_id": record["trial_id"], "iteration": record["iteration"], "status": record["status"],
           "reason": record.get("reason", ""), "feasible": record.get("feasible"),
           **{k: record["config"].get(k) for k in ("x1", "x2", "x3", "x4", "x5", "x6", "x7", "subset_seed")},
           **{k: v for k, v in (record.get("objectives") or {}).items()}, "g_accuracy": record.get("constraint")}
    for k in ("accuracy", "auc", "f1_compute", "flops", "nonzero_rate", "size_mb", "inference_ms", "quantized",
              "float_layers", "confusion"):
        if k in m:
            row[k] = m[k]
    return row


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)
