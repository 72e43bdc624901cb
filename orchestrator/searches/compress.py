"""The compression search (paper section 3, 4.3). Stages: ``base`` (train the base network,
or read ``--base-checkpoint``) -> ``search`` (evaluate the base uncompressed, then the
surrogate-assisted CTAEA loop or pure CTAEA).

The base network travels to the trials through Ray's object store, never as a path on the
driver's disk. Outputs: ``evaluated.csv``, D* with its hypervolume, the paper's Fig. 2/3
plots and ``summary.json``; the base (with weights) and every evaluated point go to the zoo, D*'s
float points with their weights (``candidate_weights/``), the others with a ``weights_reason`` saying why
not. The constraint's metric is ``constraint_metric`` (accuracy as in the paper, AUC or balanced
accuracy); a base or candidate that predicts one class for every case is flagged (``one_class``) and
the summary's ``warning`` says what that does to the accuracy changes and the hypervolume.
"""
from __future__ import annotations

import copy
import json
import math
from collections import Counter
from dataclasses import dataclass

import torch
from ray import tune

import trainables.compress_trial  # load_base looked up at call time: tests replace it on its module
from medcore.compression_genome import (CONFIG_KEYS, CONV_INTENSITY, CONV_SCOPE, CONV_TYPE, LINEAR_INTENSITY,
                                        LINEAR_SCOPE, LINEAR_TYPE, QUANTIZE, SUBSET_SEED, CompressionGenome)
from medcore.errors import RunError
from medcore.records import FAILED, OK, ModelRecord, one_class
from orchestrator import reports
from orchestrator.config import CompressSearchConfig
from orchestrator.search import RunContext, Search, Stage, runtime, trial_errors
from searchers.compression_space import encode
from searchers.ctaea import CTAEASearcher
from searchers.surrogate_ctaea import SurrogateCTAEASearcher
from trainables.compress_trial import (ACCURACY_TOLERANCE, base_build, base_estimate, candidate_estimate,
                                       compress_trial, read_build, train_base)
from trainables.compression import apply_pruning
from trainables.memory import plan_batch

BASE_NAME, BASE_EVAL_NAME, SEARCH_NAME = "compress_base", "compress_base_eval", "compress_search"
# No layer kind pruned (both scopes 0), not quantized: the base network measured by the same code
# path as every candidate.
UNCOMPRESSED = {LINEAR_SCOPE: 0, CONV_SCOPE: 0, LINEAR_INTENSITY: 50.0, CONV_INTENSITY: 50.0, LINEAR_TYPE: 0,
                CONV_TYPE: 0, QUANTIZE: 0, SUBSET_SEED: 0}
# f1 is divided by the base FLOPs (``f1_relative``), f2 is the error: both in [0, 1], so the
# hypervolume uses ideal (0, 0), nadir (1, 1) and reference point (1.1, 1.1).
OBJECTIVES = ("f1_relative", "f2_error")
BASE_BUILDER = "resnet"  # trainables.builders name


@dataclass
class CompressBaseOutput:
    """The base stage: ``ref``, where the base network's checkpoint is (``--base-checkpoint`` or
    the base trial's final checkpoint); ``base``, the network loaded from it
    (:class:`trainables.compress_trial.BaseCheckpoint`, runtime only: the stage loads it again
    on resume)."""

    ref: str
    base: object = runtime()


@dataclass
class CompressSearchOutput:
    """The search stage: ``base_eval``, the base measured uncompressed (its last report);
    ``measured``, trial id -> each candidate's measurements; ``history``, the searcher's records
    (with the reasons only Tune saw); ``d_star``, the records of D* (feasible non-dominated) and
    ``hypervolume``, its hypervolume (:meth:`searchers.ctaea.CTAEASearcher.d_star`)."""

    base_eval: dict
    measured: dict[str, dict]
    history: list[dict]
    d_star: list[dict]
    hypervolume: float


def constraint_of(metric: str, base_accuracy: float, base_eval: dict) -> dict:
    """The keyword arguments of :func:`trainables.compress_trial.compress_trial` that set the
    constraint of eq. (1) on ``metric``: accuracy against the base's recorded test accuracy (the
    paper), AUC or balanced accuracy against the base's value as the uncompressed evaluation
    measured it. Refused in one line (``RunError``) when that value is missing or undefined."""
    if metric == "accuracy":
        return {"constraint_metric": metric, "base_constraint": float(base_accuracy)}
    value = base_eval.get(metric)
    if base_eval.get("status") != OK or not _finite(value):
        why = base_eval.get("reason") or f"its test {metric} is {value}"
        raise RunError(f"the constraint is on {metric} but the base model's uncompressed evaluation gave none "
                       f"({why}); set constraint_metric to accuracy")
    return {"constraint_metric": metric, "base_constraint": float(value)}


def make_searcher(cfg: CompressSearchConfig):
    if cfg.searcher == "ctaea":
        return CTAEASearcher(pop_size=cfg.ctaea_pop, n_gen=cfg.ctaea_gens, seed=cfg.seed, objective_keys=OBJECTIVES)
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
        return [Stage("base", self.base, CompressBaseOutput), Stage("search", self.search, CompressSearchOutput)]

    def base(self, ctx: RunContext) -> CompressBaseOutput:
        cfg = ctx.cfg
        if cfg.base_checkpoint:
            return CompressBaseOutput(str(cfg.base_checkpoint),
                                      trainables.compress_trial.load_base(cfg.base_checkpoint))
        fit = cfg.fit
        batch, resources = ctx.stage_memory("base", fit.batch_size)
        grid = ctx.run_tuner(BASE_NAME, tune.with_parameters(train_base, data=ctx.data), resources=resources,
                             param_space={
            "model": cfg.model.lower(), "epochs": fit.max_epochs, "seed": cfg.seed, "lr": fit.lr,
            "weight_decay": fit.weight_decay, "batch_size": batch, "select_metric": fit.metric,
            "patience": fit.patience or fit.max_epochs}, metric="val_acc")
        result = grid[0]
        if result.error or result.checkpoint is None:
            raise RunError(f"training the base network failed: {trial_errors(grid) or result.error}")
        return CompressBaseOutput(result.checkpoint.path, trainables.compress_trial.load_base(result.checkpoint))

    def search(self, ctx: RunContext) -> CompressSearchOutput:
        cfg, base = ctx.cfg, ctx.output(CompressBaseOutput).base
        base_accuracy = float(base.meta["metrics"]["test_acc"])
        # never lowered (plan_memory refuses instead): the timed batch is part of what is measured
        batch, resources = ctx.stage_memory("search", cfg.inference_batch)

        def trainable(**constraint):
            return tune.with_parameters(compress_trial, data=ctx.data, base=base, base_accuracy=base_accuracy,
                                        options={"inference_batch": batch,
                                                 "inference_repeats": cfg.inference_repeats}, **constraint)

        # the base measured uncompressed first (its own constraint is on accuracy: it is not searched)
        grid = ctx.run_tuner(BASE_EVAL_NAME, trainable(), resources=resources, param_space=dict(UNCOMPRESSED))
        base_eval = grid[0].metrics or {}
        constraint = constraint_of(cfg.constraint_metric, base_accuracy, base_eval)
        searcher = make_searcher(cfg)
        grid = ctx.run_tuner(SEARCH_NAME, trainable(**constraint), resources=resources, metric="accuracy",
                             tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1))
        outcomes = ctx.outcomes(grid)
        measured = {o.metrics["trial_id"]: o.metrics for o in outcomes if "trial_id" in o.metrics}
        # ``searcher`` holds the search's final state now, fresh or restored (run_tuner)
        ctx.require_finished(searcher, SEARCH_NAME)
        errors = {o.trial_id: o.reason for o in outcomes if o.failed}  # what only Tune saw
        for rec in searcher.history:
            if rec["status"] != OK and rec.get("trial_id") in errors:
                rec["reason"] = errors[rec["trial_id"]]
        d_star, hv = searcher.d_star()
        return CompressSearchOutput(base_eval=base_eval, measured=measured, history=searcher.history, d_star=d_star,
                                    hypervolume=hv)

    # ---- outputs -----------------------------------------------------------------------
    def summarize(self, ctx: RunContext) -> dict:
        cfg, data, base_out, found = ctx.cfg, ctx.data, ctx.output(CompressBaseOutput), ctx.output(CompressSearchOutput)
        base, base_eval, measured = base_out.base, found.base_eval, found.measured
        out, synthetic = ctx.out, bool(data.info.synthetic)
        rows = [_row(r, measured) for r in found.history]
        reports.write_table([{k: v for k, v in r.items() if k != "confusion"} for r in rows], out / "evaluated.csv",
                            synthetic)
        pareto, hv = [_row(r, measured) for r in found.d_star], found.hypervolume
        base_summary = {"accuracy": base_eval.get("accuracy"), "auc": base_eval.get("auc"),
                        "balanced_accuracy": base_eval.get("balanced_accuracy"),
                        "test_pred_classes": base_eval.get("test_pred_classes"),
                        "flops": base_eval.get("flops"), "inference_ms": base_eval.get("inference_ms"),
                        "size_mb": base_eval.get("size_mb"), "model": base.build["name"],
                        "checkpoint": base_out.ref, "train_metrics": base.meta.get("metrics", {})}
        base_summary["one_class"] = one_class(base_summary)
        base_value = constraint_of(cfg.constraint_metric, base.meta["metrics"]["test_acc"], base_eval)["base_constraint"]
        reports.plot_compression_front(rows, base_eval, out / "objective_space.png", synthetic)
        reports.plot_time_vs_nonzero(rows, base_eval, out / "inference_vs_nonzero.png", synthetic,
                                     batch=cfg.inference_batch)
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
            "constraint": {"metric": cfg.constraint_metric, "tolerance": ACCURACY_TOLERANCE, "base_value": base_value,
                           "threshold": ACCURACY_TOLERANCE * base_value,
                           "definition": f"feasible iff test {cfg.constraint_metric} >= {ACCURACY_TOLERANCE} x the "
                                         f"base's"},
            "n_one_class": sum(bool(r.get("one_class")) for r in rows),
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
        text = one_class_warning(base_summary, rows, pareto, cfg.constraint_metric)
        if text:
            summary["warning"] = text
        return summary

    def zoo_records(self, ctx: RunContext) -> list[ModelRecord]:
        base_out, found = ctx.output(CompressBaseOutput), ctx.output(CompressSearchOutput)
        base, base_eval = base_out.base, found.base_eval
        build = {"builder": BASE_BUILDER, "kwargs": base.build}
        base_arch = {"model": base.build["name"]}
        train = base.meta.get("metrics", {})
        records = [ModelRecord(
            search="compress", stage="base", family="resnet", architecture=base_arch, encoding=[],
            status=OK, build=build, weights=base_out.ref, metrics={
                "val_acc": train.get("best_val_acc"), "val_auc": train.get("best_val_auc"),
                "test_acc": base_eval.get("accuracy", train.get("test_acc")),
                "test_auc": base_eval.get("auc", train.get("test_auc")), "params": train.get("params"),
                "flops": base_eval.get("flops"), "latency_ms": base_eval.get("inference_ms"),
                "size_mb": base_eval.get("size_mb"),
                "test_pred_classes": base_eval.get("test_pred_classes", train.get("test_pred_classes")),
                "test_balanced_accuracy": base_eval.get("balanced_accuracy")})]
        pareto_ids = {r["trial_id"] for r in found.d_star}
        for r in (_row(r, found.measured) for r in found.history):
            genome = {k: r[k] for k in CONFIG_KEYS}
            weights, note = candidate_weights(ctx, r, genome, r["trial_id"] in pareto_ids)
            records.append(ModelRecord(
                search="compress", stage="search", family="compression", architecture={**base_arch, "genome": genome},
                encoding=[float(v) for v in encode(genome)], status=OK if r["status"] == OK else FAILED,
                reason=r.get("reason", ""), trial_id=r["trial_id"], build=build if weights else None,
                weights=weights, metrics={
                    "test_acc": r.get("accuracy"), "test_auc": r.get("auc"), "flops": r.get("flops"),
                    "latency_ms": r.get("inference_ms"), "size_mb": r.get("size_mb"),
                    "test_pred_classes": r.get("test_pred_classes"),
                    "test_balanced_accuracy": r.get("balanced_accuracy"),
                    "f1_relative": r.get("f1_relative"), "nonzero_rate": r.get("nonzero_rate"),
                    **({"weights_reason": note} if note else {})}))
        return records

    def print_summary(self, summary: dict) -> None:
        if summary.get("synthetic"):
            print("NOTE: results come from SYNTHETIC data")
        if summary.get("warning"):
            print(f"WARNING: {summary['warning']}")
        print(json.dumps({k: summary[k] for k in ("search", "searcher", "dataset", "synthetic", "n_evaluated",
                                                   "hypervolume")}))
        mark = "  ONE CLASS" if summary["base"].get("one_class") else ""
        print(f"base accuracy {summary['base']['accuracy']}{mark}, {len(summary['pareto'])} points in D*")
        print(f"results in {summary['out']}")


WEIGHTS_DIR = "candidate_weights"  # under the search's output folder: <trial_id>/model.pt


def candidate_weights(ctx: RunContext, row: dict, genome: dict, in_pareto: bool) -> tuple[str | None, str]:
    """(weights reference, why none) of one evaluated candidate for its zoo row.

    Kept: the feasible non-dominated float points (D*, x7 = 0): the base's weights pruned by the
    genome again on the driver (magnitude pruning of fixed weights is deterministic, so they are
    the weights the trial measured), saved as ``<out>/candidate_weights/<trial_id>/model.pt``,
    a state_dict the base's build recipe loads, hence exportable. Not kept, with the reason: int8
    points (an FX-quantized graph, not a state_dict of the build recipe), points outside D* (each
    as large as the base; the genome rebuilds any of them) and failed points."""
    if row.get("status") != OK:
        return None, "no weights: the candidate failed"
    if not in_pareto:
        return None, ("weights not kept: only D* points are stored; apply this genome to the base's weights "
                      "(trainables.compression.evaluate_compression) to rebuild it")
    if int(genome[QUANTIZE]):
        return None, ("weights not kept: an int8 model is an FX-quantized graph the build recipe cannot load; "
                      "apply this genome to the base's weights (trainables.compression.evaluate_compression) "
                      "to rebuild it")
    path = ctx.out / WEIGHTS_DIR / str(row["trial_id"]) / "model.pt"
    if not path.is_file():  # a resumed summary keeps what an earlier one saved
        model = copy.deepcopy(ctx.output(CompressBaseOutput).base.model).cpu()
        apply_pruning(model, CompressionGenome.from_config(genome))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".model.pt.tmp")
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
        tmp.replace(path)
    return str(path.parent), ""


def _row(record: dict, measured: dict) -> dict:
    """One evaluated point: the searcher's record joined with the trial's measurements."""
    m = measured.get(record["trial_id"], {})
    row = {"trial_id": record["trial_id"], "iteration": record["iteration"], "status": record["status"],
           "reason": record.get("reason", ""), "feasible": record.get("feasible"),
           **{k: record["config"].get(k) for k in CONFIG_KEYS},
           **{k: v for k, v in (record.get("objectives") or {}).items()}, "g_accuracy": record.get("constraint")}
    for k in ("accuracy", "auc", "balanced_accuracy", "test_pred_classes", "f1_compute", "flops", "nonzero_rate",
              "size_mb", "inference_ms", "quantized", "float_layers", "confusion"):
        if k in m:
            row[k] = m[k]
    row["one_class"] = one_class(row)
    return row


def one_class_warning(base: dict, rows: list[dict], pareto: list[dict], constraint_metric: str) -> str:
    """A plain sentence for the summary when the base model, or candidates, predict one class for
    every case (:func:`medcore.records.one_class`): their accuracy is that class's share, so
    accuracy changes, D* and the hypervolume then describe compressing a constant. Empty when none do."""
    parts = []
    if base.get("one_class"):
        parts.append(f"The base model predicts one class for every case on the test split: its accuracy "
                     f"({_fmt(base.get('accuracy'))}) is that class's share, so the accuracy changes, D* and the "
                     f"hypervolume describe compressing a constant predictor"
                     + ("; train the base longer or set constraint_metric to auc or balanced_accuracy."
                        if constraint_metric == "accuracy" else "."))
    ok = [r for r in rows if r.get("status") == OK]
    flagged = [r for r in ok if r.get("one_class")]
    if flagged:
        in_front = sum(bool(r.get("one_class")) for r in pareto)
        parts.append(f"{len(flagged)} of {len(ok)} evaluated candidates predict one class for every case "
                     f"({in_front} of {len(pareto)} in D*).")
    return " ".join(parts)


def _fmt(value) -> str:
    return f"{value:.3g}" if _finite(value) else str(value)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)
