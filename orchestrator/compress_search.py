"""The compression search end to end (paper section 3, 4.3): train (or load) the base
network, evaluate it uncompressed, run the surrogate-assisted CTAEA loop (or pure CTAEA),
and write every evaluated point, D* with its hypervolume, and the paper's plots.

``run_compress_search(config)`` is the Python API; ``medtune search compress`` calls it.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from orchestrator import reports
from orchestrator.config import CompressSearchConfig
from orchestrator.data import MedMNISTData, load_medmnist
from orchestrator.errors import MedtuneError
from orchestrator.experiments import experiment_path, require_finished, run_experiment, trial_resources
from orchestrator.runtime import ray_session

BASE_NAME, BASE_EVAL_NAME, SEARCH_NAME = "compress_base", "compress_base_eval", "compress_search"
# x1 = x2 = 0, x7 = 0: the base network measured by the same code path as every candidate.
UNCOMPRESSED = {"x1": 0, "x2": 0, "x3": 50.0, "x4": 50.0, "x5": 0, "x6": 0, "x7": 0, "subset_seed": 0}
# f1 is divided by the base FLOPs (``f1_relative``), f2 is the error: both in [0, 1], so the
# hypervolume uses ideal (0, 0), nadir (1, 1) and reference point (1.1, 1.1).
OBJECTIVES = ("f1_relative", "f2_error")


def make_searcher(cfg: CompressSearchConfig):
    if cfg.searcher == "ctaea":
        from searchers.ctaea import CTAEASearcher

        return CTAEASearcher(pop_size=cfg.ctaea_pop, n_gen=cfg.ctaea_gens, seed=cfg.seed, objective_keys=OBJECTIVES)
    from searchers.surrogate_ctaea import SurrogateCTAEASearcher

    return SurrogateCTAEASearcher(n_initial=cfg.initial, budget=cfg.budget, n_infill=cfg.infill,
                                  pop_size=cfg.ctaea_pop, n_gen=cfg.ctaea_gens, seed=cfg.seed,
                                  objective_keys=OBJECTIVES)


def _train_base(cfg: CompressSearchConfig, data: MedMNISTData) -> str:
    from ray import tune

    from trainables.compress_trial import train_base

    trainable = tune.with_resources(tune.with_parameters(train_base, data=data), trial_resources(cfg))
    grid, _ = run_experiment(BASE_NAME, trainable, cfg, param_space={
        "model": cfg.model.lower(), "epochs": cfg.train_epochs, "seed": cfg.seed})
    result = grid[0]
    if result.error or result.checkpoint is None:
        raise MedtuneError(f"training the base network failed: {result.error}")
    return result.checkpoint.path


def run_compress_search(cfg: CompressSearchConfig, data: MedMNISTData | None = None) -> dict:
    """Run (or ``cfg.resume``) the whole compression search; returns the summary."""
    from ray import tune

    from trainables.compress_trial import compress_trial, load_base

    cfg.validate()
    if data is None:
        data = load_medmnist(cfg.dataset, cfg.size, cfg.data_root)
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    searcher = make_searcher(cfg)  # bad searcher settings fail before any training
    with ray_session(cfg.address, cfg.jemalloc):
        base_dir = cfg.base_checkpoint or _train_base(cfg, data)
        base = load_base(base_dir)
        base_accuracy = float(base.meta["metrics"]["test_acc"])

        def trainable():
            return tune.with_resources(
                tune.with_parameters(compress_trial, data=data, base_dir=str(Path(base_dir).resolve()),
                                     base_accuracy=base_accuracy, options={
                                         "inference_batch": cfg.inference_batch,
                                         "inference_repeats": cfg.inference_repeats}), trial_resources(cfg))

        grid, _ = run_experiment(BASE_EVAL_NAME, trainable(), cfg, param_space=dict(UNCOMPRESSED))
        base_eval = grid[0].metrics or {}
        grid, _ = run_experiment(SEARCH_NAME, trainable(), cfg, tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=-1, max_concurrent_trials=cfg.max_concurrent or None,
            reuse_actors=True))
    measured = {r.metrics["trial_id"]: r.metrics for r in grid if r.metrics and "trial_id" in r.metrics}
    searcher = make_searcher(cfg)
    searcher.restore_from_dir(experiment_path(cfg, SEARCH_NAME))
    require_finished(searcher, SEARCH_NAME, cfg)
    return _write_outputs(cfg, data, base, base_dir, base_eval, searcher, measured, time.time() - started)


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


def _write_outputs(cfg, data, base, base_dir, base_eval: dict, searcher, measured: dict, seconds: float) -> dict:
    out, synthetic = cfg.out_dir, bool(data.info.synthetic)
    rows = [_row(r, measured) for r in searcher.history]
    reports.write_table([{k: v for k, v in r.items() if k != "confusion"} for r in rows], out / "evaluated.csv",
                        synthetic)
    d_star, hv = searcher.d_star()
    pareto = [_row(r, measured) for r in d_star]
    base_summary = {"accuracy": base_eval.get("accuracy"), "auc": base_eval.get("auc"),
                    "flops": base_eval.get("flops"), "inference_ms": base_eval.get("inference_ms"),
                    "size_mb": base_eval.get("size_mb"), "model": base.build["name"], "checkpoint": str(base_dir),
                    "train_metrics": base.meta.get("metrics", {})}
    reports.plot_compression_front(rows, base_eval, out / "objective_space.png", synthetic)
    reports.plot_time_vs_nonzero(rows, base_eval, out / "inference_vs_nonzero.png", synthetic)
    ok = [r for r in rows if r["status"] == "ok" and r.get("confusion")]
    best = max(ok, key=lambda r: (r["accuracy"], -r["f1_relative"]), default=None)
    if base_eval.get("confusion") and best is not None:
        reports.plot_confusions(base_eval["confusion"], best["confusion"], out / "confusion_matrices.png", synthetic)
    summary = {
        "search": "compress", "searcher": cfg.searcher, "dataset": data.info.flag, "size": data.info.size,
        "synthetic": synthetic, "n_evaluated": len(rows), "n_failed": sum(r["status"] != "ok" for r in rows),
        "base": base_summary,
        "pareto": [{k: v for k, v in r.items() if k != "confusion"} for r in pareto],
        "hypervolume": hv,
        "hypervolume_definition": "pymoo HV of D* on (FLOPs x non-zero rate / base FLOPs, 1 - accuracy), "
                                  "ideal (0, 0), nadir (1, 1), reference point (1.1, 1.1)",
        "most_accurate": None if best is None else {k: v for k, v in best.items() if k != "confusion"},
        "wall_time_s": round(seconds, 1), "config": cfg.to_dict(),
    }
    # the "best feasible compressed model" for time: over every feasible evaluated
    # point, not only D* (D* ranks by f1 and error, and f1 does not see kernel speed)
    fastest = [r for r in rows if r["status"] == "ok" and r.get("feasible") and _finite(r.get("inference_ms"))]
    if fastest and _finite(base_eval.get("inference_ms")):
        f = min(fastest, key=lambda r: r["inference_ms"])
        summary["fastest_feasible"] = {"inference_ratio": f["inference_ms"] / base_eval["inference_ms"],
                                       "accuracy_delta": f["accuracy"] - base_eval["accuracy"], **{
                                           k: v for k, v in f.items() if k != "confusion"}}
    reports.write_json(summary, out / "summary.json")
    return summary


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)
