"""The ODE search end to end (paper Fig. 3): search on low-fidelity data, retrain the top
architectures on the full train split, evaluate on test, write tables, plots and a summary.

``run_ode_search(config)`` is the Python API; ``medtune search ode`` calls it.
"""
from __future__ import annotations

import math
import time

from orchestrator import reports
from orchestrator.config import ODESearchConfig
from orchestrator.data import MedMNISTData, load_medmnist
from orchestrator.experiments import experiment_path, require_finished, run_experiment, trial_resources
from orchestrator.runtime import ray_session

SEARCH_NAME, RETRAIN_NAME = "ode_search", "ode_retrain"


def make_searcher(cfg: ODESearchConfig, info):
    from searchers.ode import ODESearcher
    from trainables.ode_trial import CandidateFlops

    return ODESearcher(metric=f"best_{cfg.metric}", mode="max", pop_size=cfg.pop_size, F=cfg.F, CR=cfg.CR,
                       jump_rate=cfg.jump_rate, budget=cfg.budget, seed=cfg.seed, cost_fn=CandidateFlops(info),
                       max_cost=cfg.max_gflops * 1e9 if cfg.max_gflops else None)


def short_trial_name(trial) -> str:
    """Trial folders named by candidate, not by the (very long) architecture config."""
    cfg = trial.config
    tag = f"cand{cfg['candidate']:04d}" if "candidate" in cfg else "top"
    return f"{tag}_{trial.trial_id}"


def top_architectures(records: list[dict], k: int) -> list[dict]:
    """The k best distinct trained architectures by fitness (ties: fewer parameters)."""
    trained = [r for r in records if r["status"] == "trained" and math.isfinite(r["fitness"])]
    trained.sort(key=lambda r: (-r["fitness"], r["metrics"].get("params", 0), r["candidate"]))
    return trained[:k]


def run_ode_search(cfg: ODESearchConfig, data: MedMNISTData | None = None) -> dict:
    """Run (or ``cfg.resume``) the whole search; returns the summary written to summary.json."""
    from ray import tune

    from trainables.ode_trial import train_candidate

    cfg.validate()
    if data is None:
        data = load_medmnist(cfg.dataset, cfg.size, cfg.data_root)
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    synthetic = bool(data.info.synthetic)
    started = time.time()
    search_data = data.low_fidelity(cfg.fraction, cfg.seed, cfg.val_fraction)
    with ray_session(cfg.address, cfg.jemalloc):
        searcher = make_searcher(cfg, data.info)
        trainable = tune.with_resources(
            tune.with_parameters(train_candidate, data=search_data, fit_config=cfg.fit_config()),
            trial_resources(cfg))
        tune_config = tune.TuneConfig(search_alg=searcher, num_samples=cfg.budget,
                                      max_concurrent_trials=cfg.max_concurrent or None, reuse_actors=True,
                                      trial_name_creator=short_trial_name, trial_dirname_creator=short_trial_name)
        run_experiment(SEARCH_NAME, trainable, cfg, tune_config=tune_config)
        # The searcher Tune ran (fresh or restored) saved its state beside the experiment.
        searcher = make_searcher(cfg, data.info)
        searcher.restore_from_dir(experiment_path(cfg, SEARCH_NAME))
        require_finished(searcher, SEARCH_NAME, cfg)
        top = top_architectures(searcher.history, cfg.top_k)
        final = []
        if top:
            retrain = tune.with_resources(
                tune.with_parameters(train_candidate, data=data,
                                     fit_config=cfg.fit_config(cfg.retrain_epochs or cfg.max_epochs)),
                trial_resources(cfg))
            grid, _ = run_experiment(
                RETRAIN_NAME, retrain, cfg, param_space={"architecture": tune.grid_search(
                    [r["config"]["architecture"] for r in top]), "rank": 0},
                tune_config=tune.TuneConfig(max_concurrent_trials=cfg.max_concurrent or None, reuse_actors=True,
                                            trial_name_creator=short_trial_name,
                                            trial_dirname_creator=short_trial_name))
            final = _retrained(grid, top)
    return _write_outputs(cfg, data, searcher, final, time.time() - started)


def _retrained(grid, top: list[dict]) -> list[dict]:
    by_arch = {}
    for result in grid:
        if result.metrics is not None:
            by_arch[repr(result.config["architecture"])] = result.metrics
    rows = []
    for rank, rec in enumerate(top, 1):
        m = by_arch.get(repr(rec["config"]["architecture"]), {})
        rows.append({"rank": rank, "candidate": rec["candidate"], "architecture": rec["config"]["architecture"],
                     "search_val_metric": rec["fitness"], "status": m.get("status", "missing"),
                     "val_acc": m.get("val_acc"), "val_auc": m.get("val_auc"), "test_acc": m.get("test_acc"),
                     "test_auc": m.get("test_auc"), "params": m.get("params"), "flops": m.get("flops"),
                     "epochs": m.get("epoch")})
    return rows


def _candidate_rows(history: list[dict]) -> list[dict]:
    rows = []
    for r in history:
        m = r.get("metrics", {})
        rows.append({"candidate": r["candidate"], "generation": r["generation"], "phase": r["phase"],
                     "status": r["status"], "reason": r.get("reason", ""), "fitness": r["fitness"],
                     "duplicate_of": r.get("duplicate_of"), "genome": r["genome"],
                     "architecture": (r["config"] or {}).get("architecture"),
                     **{k: m.get(k) for k in ("val_acc", "val_auc", "test_acc", "test_auc", "params", "flops",
                                              "epoch", "best_epoch")}})
    return rows


def _write_outputs(cfg: ODESearchConfig, data: MedMNISTData, searcher, final: list[dict], seconds: float) -> dict:
    from searchers.cell_space import CellArchitecture

    out, synthetic = cfg.out_dir, bool(data.info.synthetic)
    rows = _candidate_rows(searcher.history)
    reports.write_table(rows, out / "candidates.csv", synthetic)
    reports.write_table(final, out / "top_models.csv", synthetic)
    reports.plot_best_per_generation(searcher.best_per_generation(), out / "best_fitness_per_generation.png",
                                     cfg.metric, synthetic)
    reports.plot_metric_vs_params(rows, final, out / "test_auc_vs_params.png", synthetic)
    evaluated = [r for r in rows if r["status"] in ("trained", "failed")]
    # Val-selected: of the retrained models, the best on the validation split (ties: search rank).
    done = [f for f in final if f.get("status") == "ok" and f.get("test_acc") is not None]
    best = max(done, key=lambda f: (f[cfg.metric] if f[cfg.metric] is not None else -1.0, -f["rank"]), default=None)
    summary = {
        "search": "ode", "dataset": data.info.flag, "size": data.info.size, "synthetic": synthetic,
        "data_file": data.info.path, "n_evaluated": len(evaluated),
        "n_failed": sum(r["status"] == "failed" for r in rows),
        "n_infeasible": sum(r["status"] == "infeasible" for r in rows),
        "n_duplicates": sum(r["status"] == "duplicate" for r in rows),
        "generations": searcher.generation, "restarts": searcher.restarts, "metric": cfg.metric,
        "wall_time_s": round(seconds, 1),
        "best": None if best is None else {
            "architecture": best["architecture"],
            "description": CellArchitecture.from_config(best["architecture"]).describe(),
            "val_metric": best["search_val_metric"], "test_acc": best["test_acc"], "test_auc": best["test_auc"],
            "params": best["params"], "flops": best["flops"]},
        "top": final, "config": cfg.to_dict(),
        "experiments": {"search": experiment_path(cfg, SEARCH_NAME), "retrain": experiment_path(cfg, RETRAIN_NAME)},
    }
    reports.write_json(summary, out / "summary.json")
    return summary
