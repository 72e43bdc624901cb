"""The ODE search (paper Fig. 3): search on low-fidelity data, retrain the top architectures
on the full train split, evaluate on test. Stages: ``search`` -> ``retrain`` -> ``baseline``.

``fidelity``: ``paper`` trains every candidate up to ``max_epochs`` (early stopping, patience 5);
``multi`` adds epoch rungs (``min_epochs * eta^k``) where only the best ``1/eta`` of a rung train
on, in their own trial (:class:`searchers.ode.RungScheduler`), and ranks candidates by the rung
reached, then the score there. Candidates share the training seed (paired comparisons).

With ``--baseline NAME`` a hand-made network (the tiny 3D CNN or a MONAI ResNet) is trained
exactly like the retrained picks (full train split, same recipe, seed and epoch budget, the
val-selected epoch tested): the reference the search's pick is read against (the paper's
Table 2 puts its cells beside MedMNIST's ResNets). Without it the stage does nothing.

Outputs: ``candidates.csv``, ``top_models.csv``, two PNG plots and ``summary.json``; every
trained candidate goes to the zoo (stage ``search``), the retrained ones with their weights
(stage ``retrain``), the baseline with its weights (stage ``baseline``).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from ray import tune

from medcore.cell_genotype import CellArchitecture
from medcore.records import FAILED, INFEASIBLE, DUPLICATE, OK, ModelRecord, one_class
from orchestrator import reports
from orchestrator.config import ODESearchConfig
from orchestrator.runtime import largest_node_memory
from orchestrator.search import RunContext, Search, Stage, result_trial_id, trial_errors
from searchers.de import Infeasible
from searchers.ode import ODESearcher, RungScheduler, rung_epochs
from trainables.ode_trial import BUILDER, CandidateCost, build_kwargs, builder_of, train_candidate

SEARCH_NAME, RETRAIN_NAME, BASELINE_NAME = "ode_search", "ode_retrain", "ode_baseline"
FAMILY = "cell3d"


@dataclass
class ODESearchOutput:
    """The search stage: the searcher's final state as the other stages and the summary read it.
    ``history``: one record per candidate genome considered (``ODESearcher.history``, with the
    reasons only Tune saw); ``best_per_generation``: (generation, best fitness so far) pairs;
    ``rungs``: candidates reaching each rung; ``ended``: why the search ended early, or empty;
    ``top``: the ``top_k`` distinct trained architectures the retrain stage trains, best first
    (by the searcher's rank: rung reached, then fitness)."""

    history: list[dict]
    best_per_generation: list
    generation: int
    restarts: int
    rungs: list[dict]
    epochs_trained: int
    ended: str
    top: list[dict]


@dataclass
class ODERetrainOutput:
    """The retrain stage: architecture key (its JSON, sorted keys) -> ``report`` (the last report,
    status and reason included) and ``weights`` (the final checkpoint's path, or None)."""

    retrained: dict[str, dict]


@dataclass
class ODEBaselineOutput:
    """The baseline stage: the ``--baseline`` network's last ``report`` (None: no baseline trained)
    and ``weights`` (its final checkpoint's path, or None)."""

    report: dict | None = None
    weights: str | None = None


def _path(checkpoint) -> str | None:
    return None if checkpoint is None else checkpoint.path


def top_architectures(records: list[dict], k: int, rank_key=None) -> list[dict]:
    """The k best distinct trained architectures by fitness (ties: fewer parameters);
    ``rank_key(record)`` (the searcher's: rung reached, then fitness) replaces fitness."""
    trained = [r for r in records if r["status"] == OK and math.isfinite(r["fitness"])]
    key = rank_key or (lambda r: (-r["fitness"],))
    trained.sort(key=lambda r: (*key(r), r["metrics"].get("params", 0), r["candidate"]))
    return trained[:k]


class ODESearch(Search):
    name = "ode"
    description = "opposition-based DE over the 3D cell space"
    config_cls = ODESearchConfig
    stage_names = ("search", "retrain", "baseline")

    def stages(self, ctx: RunContext) -> list[Stage]:
        return [Stage("search", self.search, ODESearchOutput), Stage("retrain", self.retrain, ODERetrainOutput),
                Stage("baseline", self.baseline, ODEBaselineOutput)]

    # ---- stages ------------------------------------------------------------------------
    def _cost(self, ctx: RunContext, data):
        return CandidateCost(data.info, ctx.cfg.fit.batch_size, len(data.labels["train"]),
                             n_eval=len(data.labels["val"]) + len(data.labels["test"]))

    def _searcher(self, ctx: RunContext, cost):
        cfg = ctx.cfg
        # paper: one rung, the full budget (a candidate a time budget cut short ranks below those
        # that finished); multi: successive-halving rungs
        rungs = rung_epochs(cfg.min_epochs, cfg.eta, cfg.fit.max_epochs) if cfg.fidelity == "multi" \
            else [cfg.fit.max_epochs]
        return ODESearcher(metric=f"best_{cfg.fit.metric}", mode="max", pop_size=cfg.pop_size, F=cfg.F, CR=cfg.CR,
                           jump_rate=cfg.jump_rate, budget=cfg.budget, seed=cfg.seed,
                           feasibility_fn=FeasibilityRule(cfg, cost), rungs=rungs, eta=cfg.eta)

    def _memory(self, ctx: RunContext, cost):
        """Per-trial Ray memory request: the estimate, unless the user fixed one."""
        return None if ctx.cfg.resources.memory_per_trial_gb else cost.memory

    def search(self, ctx: RunContext) -> ODESearchOutput:
        cfg = ctx.cfg
        data = ctx.data.low_fidelity(cfg.fraction, cfg.seed, cfg.val_fraction)
        cost = self._cost(ctx, data)
        searcher = self._searcher(ctx, cost)
        # the scheduler holds the searcher itself: Tune pickles both in one tuner state, so a
        # restored run's scheduler reads the restored searcher's rung records
        scheduler = RungScheduler(searcher) if len(searcher.rungs) > 1 else None
        trainable = tune.with_parameters(train_candidate, data=data, fit_config=cfg.fit.fit_config(cfg.seed))
        grid = ctx.run_tuner(SEARCH_NAME, trainable, resources=ctx.trial_resources(self._memory(ctx, cost)),
                             metric=searcher.metric, tune_config=tune.TuneConfig(
                                 search_alg=searcher, scheduler=scheduler, num_samples=cfg.budget,
                                 time_budget_s=cfg.search_minutes * 60 or None))
        # ``searcher`` holds the search's final state now, fresh or restored (run_tuner)
        if cfg.search_minutes and not searcher.is_finished and searcher.elapsed() >= 0.95 * cfg.search_minutes * 60:
            last = {result_trial_id(r): dict(r.metrics) for r in grid if r.metrics}  # what Tune stopped mid-way
            searcher.end(f"the search's time budget ({cfg.search_minutes:g} min) ran out", last)
        ctx.require_finished(searcher, SEARCH_NAME)
        errors = trial_errors(grid)
        for rec in searcher.history:  # what only Tune saw: why an errored trial failed
            if rec["status"] == FAILED and rec.get("trial_id") in errors:
                rec["reason"] = errors[rec["trial_id"]]
        return ODESearchOutput(
            history=searcher.history, best_per_generation=searcher.best_per_generation(),
            generation=searcher.generation, restarts=searcher.restarts, rungs=searcher.rungs_reached(),
            epochs_trained=searcher.epochs_trained(), ended=getattr(searcher, "ended", "") or "",
            top=top_architectures(searcher.history, cfg.top_k, searcher.rank_key))

    def _full_data_trial(self, ctx: RunContext):
        """The trainable and resources of a full-data training (the retrained picks and the
        baseline): the retrain's recipe, seed and epochs, weights kept."""
        cfg = ctx.cfg
        trainable = tune.with_parameters(train_candidate, data=ctx.data, keep_weights=True,
                                         fit_config=cfg.fit.fit_config(cfg.seed, cfg.retrain_epochs))
        return trainable, ctx.trial_resources(self._memory(ctx, self._cost(ctx, ctx.data)))

    def retrain(self, ctx: RunContext) -> ODERetrainOutput:
        cfg = ctx.cfg
        top = ctx.output(ODESearchOutput).top
        out = ODERetrainOutput({})
        if not top:
            return out
        trainable, resources = self._full_data_trial(ctx)
        grid = ctx.run_tuner(
            RETRAIN_NAME, trainable, resources=resources,
            param_space={"architecture": tune.grid_search([r["config"]["architecture"] for r in top]), "rank": 0},
            metric=f"best_{cfg.fit.metric}")
        # an errored trial restored on resume keeps no config: it is left out
        for o in ctx.outcomes(grid, configured_only=True):
            key = json.dumps(o.config["architecture"], sort_keys=True)
            out.retrained[key] = {"report": o.report(), "weights": _path(o.checkpoint)}
        return out

    def baseline(self, ctx: RunContext) -> ODEBaselineOutput:
        """Train ``--baseline`` as one more retrain trial: full data, the retrain's recipe,
        seed and epochs. Its own experiment, so a resumed run restores it like the others."""
        cfg = ctx.cfg
        out = ODEBaselineOutput()
        if cfg.baseline == "none":
            return out
        trainable, resources = self._full_data_trial(ctx)
        grid = ctx.run_tuner(
            BASELINE_NAME, trainable, resources=resources,
            param_space={"baseline": cfg.baseline}, metric=f"best_{cfg.fit.metric}",
            tune_config=tune.TuneConfig(num_samples=1))
        for o in ctx.outcomes(grid):
            out = ODEBaselineOutput(o.report(), _path(o.checkpoint))
        return out

    # ---- outputs -----------------------------------------------------------------------
    def _baseline_row(self, ctx: RunContext) -> dict | None:
        """The baseline's summary entry (None without ``--baseline``)."""
        if ctx.cfg.baseline == "none":
            return None
        m = ctx.output(ODEBaselineOutput).report or {}
        row = {"name": ctx.cfg.baseline, "status": m.get("status", FAILED if m else "missing"),
               "reason": m.get("reason", ""), **{k: m.get(k) for k in RETRAINED_KEYS}, "epochs": m.get("epoch")}
        row["one_class"] = one_class(row)
        return row

    def _final_rows(self, ctx: RunContext) -> list[dict]:
        rows = []
        retrained = ctx.output(ODERetrainOutput).retrained
        for rank, rec in enumerate(ctx.output(ODESearchOutput).top, 1):
            key = json.dumps(rec["config"]["architecture"], sort_keys=True)
            m = retrained.get(key, {}).get("report", {})
            row = {"rank": rank, "candidate": rec["candidate"], "architecture": rec["config"]["architecture"],
                   "search_val_metric": rec["fitness"], "status": m.get("status", "missing"),
                   "reason": m.get("reason", ""), **{k: m.get(k) for k in RETRAINED_KEYS}, "epochs": m.get("epoch")}
            row["one_class"] = one_class(row)
            rows.append(row)
        return rows

    def summarize(self, ctx: RunContext) -> dict:
        cfg, data, searcher = ctx.cfg, ctx.data, ctx.output(ODESearchOutput)
        out, synthetic = ctx.out, bool(data.info.synthetic)
        rows = candidate_rows(searcher.history)
        final = self._final_rows(ctx)
        reports.write_table(rows, out / "candidates.csv", synthetic)
        reports.write_table(final, out / "top_models.csv", synthetic)
        reports.plot_best_per_generation(searcher.best_per_generation, out / "best_fitness_per_generation.png",
                                         cfg.fit.metric, synthetic)
        baseline = self._baseline_row(ctx)
        reports.plot_metric_vs_params(rows, final, out / "test_auc_vs_params.png", synthetic,
                                      baselines=[baseline] if baseline else ())
        evaluated = [r for r in rows if r["status"] in (OK, FAILED)]
        failures: dict[str, int] = {}
        for r in evaluated:
            if r["status"] == FAILED:
                failures[r["reason"] or "unknown"] = failures.get(r["reason"] or "unknown", 0) + 1
        infeasible: dict[str, int] = {}
        for r in rows:
            if r["status"] == INFEASIBLE:
                reason = _reason_kind(r["reason"])
                infeasible[reason] = infeasible.get(reason, 0) + 1
        # Val-selected: of the retrained models, the best on the validation split (ties: search rank).
        metric = cfg.fit.metric
        done = [f for f in final if f.get("status") == OK and f.get("test_acc") is not None]
        best = max(done, key=lambda f: (f[metric] if f[metric] is not None else -1.0, -f["rank"]), default=None)
        pick = None if best is None else pick_entry(best, cfg)
        return {
            "search": "ode", "dataset": data.info.flag, "size": data.info.size, "synthetic": synthetic,
            "data_file": data.info.path, "n_evaluated": len(evaluated),
            "n_ok": sum(r["status"] == OK for r in rows), "n_failed": len(evaluated) - sum(r["status"] == OK for r in rows),
            "failure_reasons": failures, "infeasible_reasons": infeasible,
            "n_infeasible": sum(r["status"] == INFEASIBLE for r in rows),
            "n_duplicates": sum(r["status"] == DUPLICATE for r in rows),
            "generations": searcher.generation, "restarts": searcher.restarts, "metric": metric,
            # paper: one budget; multi: one entry per rung, the candidates that trained that far
            "fidelity": cfg.fidelity, "rungs": searcher.rungs, "epochs_trained": searcher.epochs_trained,
            **({"ended": searcher.ended} if searcher.ended else {}),
            # the pick's retrained scores, read beside the baseline's (trained the same way)
            "pick": pick, "baseline": baseline,
            **({"warning": text} if (text := one_class_warning(pick, baseline)) else {}),
            # the same entry under its former name, for readers of ``best`` (status tables, tests)
            "best": pick,
            "top": final, "config": cfg.to_dict(),
            "experiments": {"search": ctx.experiment_path(SEARCH_NAME), "retrain": ctx.experiment_path(RETRAIN_NAME),
                            **({"baseline": ctx.experiment_path(BASELINE_NAME)} if baseline else {})},
        }

    def zoo_records(self, ctx: RunContext) -> list[ModelRecord]:
        info = ctx.data.info
        records = []
        for r in ctx.output(ODESearchOutput).history:
            if r["status"] not in (OK, FAILED):
                continue
            arch = r["config"]["architecture"]
            # the learning curve (the selection metric per epoch) and the epochs its score stands for
            metrics = dict(_vocabulary(r["metrics"]), val_curve=r.get("curve") or [], fidelity=r.get("fidelity"))
            records.append(ModelRecord(
                search="ode", stage="search", family=FAMILY, architecture=arch,
                encoding=CellArchitecture.from_config(arch).encoding(),
                status=r["status"], reason=r.get("reason", ""), metrics=metrics,
                build={"builder": BUILDER, "kwargs": build_kwargs({"architecture": arch}, info)},
                trial_id=r.get("trial_id")))
        for key, trained in ctx.output(ODERetrainOutput).retrained.items():
            arch, m = json.loads(key), trained["report"]
            records.append(ModelRecord(
                search="ode", stage="retrain", family=FAMILY, architecture=arch,
                encoding=CellArchitecture.from_config(arch).encoding(),
                status=m.get("status", FAILED), reason=m.get("reason", ""), metrics=_vocabulary(m),
                build={"builder": BUILDER, "kwargs": build_kwargs({"architecture": arch}, info)},
                weights=trained["weights"], trial_id=m.get("trial_id")))
        baseline = ctx.output(ODEBaselineOutput)
        if baseline.report is not None:
            m = baseline.report
            config = {"baseline": ctx.cfg.baseline}
            records.append(ModelRecord(
                search="ode", stage="baseline", family="baseline", architecture={"model": ctx.cfg.baseline},
                encoding=[], status=m.get("status", FAILED), reason=m.get("reason", ""), metrics=_vocabulary(m),
                build={"builder": builder_of(config), "kwargs": build_kwargs(config, info)},
                weights=baseline.weights, trial_id=m.get("trial_id")))
        return records

    def failure_counts(self, summary: dict) -> tuple[int, int, dict]:
        """A search that could train nothing (every candidate infeasible) failed as well."""
        if summary["n_evaluated"]:
            return super().failure_counts(summary)
        return summary["n_infeasible"], 0, {f"infeasible, {k}": n for k, n in summary["infeasible_reasons"].items()}

    def print_summary(self, summary: dict) -> None:
        super().print_summary(summary)
        if summary.get("ended"):
            print(f"search ended early: {summary['ended']} ({summary['n_evaluated']} candidates evaluated)")
        if summary.get("fidelity") == "multi":
            rungs = ", ".join(f"{r['epochs']} epochs: {r['candidates']}" for r in summary.get("rungs", []))
            print(f"multi-fidelity rungs (candidates reaching each): {rungs}; "
                  f"{summary.get('epochs_trained')} epochs trained in all")
        best, ref = summary.get("pick") or summary.get("best") or {}, summary.get("baseline") or {}
        if best:
            print(f"best: {best.get('description', '')} (retrained) val_auc={_num(best.get('val_auc'))} "
                  f"test_acc={_num(best.get('test_acc'))} test_auc={_num(best.get('test_auc'))} "
                  f"params={best.get('params')}{ONE_CLASS_MARK if best.get('one_class') else ''}")
        if ref:
            if ref.get("status") == OK:
                print(f"baseline: {ref['name']} (same data, recipe and epochs) val_auc={_num(ref.get('val_auc'))} "
                      f"test_acc={_num(ref.get('test_acc'))} test_auc={_num(ref.get('test_auc'))} "
                      f"params={ref['params']}{ONE_CLASS_MARK if ref.get('one_class') else ''}")
            else:
                print(f"baseline: {ref['name']} {ref.get('status')}: {ref.get('reason') or 'no result'}")
        if summary.get("warning"):
            print(f"WARNING: {summary['warning']}")


class FeasibilityRule:
    """Why a candidate cannot be trained (FLOPs over --max-gflops or under --min-gflops, memory
    over the largest node), or None. The floor is not in the paper: at a few CPU epochs the
    stem-only cell (no operation node; at most 0.05 GFLOPs at 28^3, one 3x3 op costs 0.085 or
    more) tends to win the search on its training speed, and a floor keeps it out. Memory is checked only when Ray sizes trials by the estimate. A class,
    not a closure: the searcher pickles it with its state."""

    def __init__(self, cfg: ODESearchConfig, cost):
        self.cost, self.batch_size, self.max_gflops = cost, cfg.fit.batch_size, cfg.max_gflops
        self.min_gflops = cfg.min_gflops
        fixed = cfg.resources.memory_per_trial_gb or cfg.resources.autoscale
        self.max_memory = None if fixed else largest_node_memory()

    def __call__(self, config: dict) -> Infeasible | None:
        """None, or why not and by how much (ln of the ratio to the bound it misses)."""
        min_gflops = getattr(self, "min_gflops", 0.0)  # a rule pickled before the floor existed has none
        flops = self.cost.flops(config) if self.max_gflops or min_gflops else None
        if self.max_gflops and flops > self.max_gflops * 1e9:
            return Infeasible(f"{flops / 1e9:.3g} GFLOPs exceeds the cap of {self.max_gflops:g}",
                              math.log(flops / (self.max_gflops * 1e9)))
        if min_gflops and flops < min_gflops * 1e9:
            return Infeasible(f"{flops / 1e9:.3g} GFLOPs is below the floor of {min_gflops:g}",
                              math.log(min_gflops * 1e9 / flops))
        if self.max_memory:
            need = self.cost.memory(config)
            if need > self.max_memory:
                return Infeasible(f"needs about {need / 2**30:.1f} GB to train at batch {self.batch_size}; the "
                                  f"largest node offers {self.max_memory / 2**30:.1f} GB",
                                  math.log(need / self.max_memory))
        return None


# What a retrained pick, or the baseline, carries into the summary (scores of the full-data training).
RETRAINED_KEYS = ("val_acc", "val_auc", "test_acc", "test_auc", "params", "flops", "val_pred_classes",
                  "test_pred_classes")
ONE_CLASS_MARK = "  ONE CLASS"


def pick_entry(best: dict, cfg: ODESearchConfig) -> dict:
    """The summary's headline entry for the val-selected retrained model: ``val_acc`` / ``val_auc``
    are its retrained scores, the ones to read beside ``baseline.val_auc`` (trained the same way);
    ``search_val_metric`` is its short search-phase score on the low-fidelity data (the fitness
    the search ranked by, named by ``search_val_metric_name``), not comparable with either."""
    entry = {"architecture": best["architecture"],
             "description": CellArchitecture.from_config(best["architecture"]).describe(),
             **{k: best.get(k) for k in RETRAINED_KEYS}, "epochs": best.get("epochs"),
             "search_val_metric": best["search_val_metric"],
             "search_val_metric_name": f"search phase best_{cfg.fit.metric} ({cfg.fraction:g} of the train split, "
                                       f"{cfg.val_fraction or cfg.fraction:g} of val, up to {cfg.fit.max_epochs} "
                                       f"epochs)"}
    entry["one_class"] = one_class(entry)
    return entry


def one_class_warning(pick: dict | None, baseline: dict | None) -> str:
    """A plain sentence for the summary when the pick or the baseline predicts one class for every
    case (:func:`medcore.records.one_class`); empty otherwise."""
    names = [name for name, entry in (("the pick", pick), ("the baseline", baseline)) if entry and entry.get("one_class")]
    if not names:
        return ""
    one = len(names) == 1
    return (f"{' and '.join(names).capitalize()} predict{'s' if one else ''} one class for every case: "
            f"{'its' if one else 'their'} accuracy is that class's share; compare AUCs instead.")


def _num(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def _reason_kind(reason: str) -> str:
    """Infeasibility reasons counted by kind (the numbers in them differ per candidate)."""
    for kind in ("edges after pruning", "GFLOPs exceeds the cap", "GFLOPs is below the floor", "to train at batch"):
        if kind in reason:
            return {"to train at batch": "memory above the largest node"}.get(kind, kind)
    return reason


def _vocabulary(m: dict) -> dict:
    out = {k: m.get(k) for k in ("val_loss", "val_acc", "val_auc", "test_acc", "test_auc", "params", "flops")}
    out["epochs"] = m.get("epoch")
    return {k: v for k, v in out.items() if v is not None}


def candidate_rows(history: list[dict]) -> list[dict]:
    rows = []
    for r in history:
        m = r.get("metrics", {})
        rows.append({"candidate": r["candidate"], "generation": r["generation"], "phase": r["phase"],
                     "status": r["status"], "reason": r.get("reason", ""), "fitness": r["fitness"],
                     "duplicate_of": r.get("duplicate_of"), "genome": r["genome"],
                     "architecture": (r["config"] or {}).get("architecture"),
                     "fidelity": r.get("fidelity"), "stopped_at_rung": r.get("stopped_at"),
                     **{k: m.get(k) for k in ("val_acc", "val_auc", "test_acc", "test_auc", "params", "flops",
                                              "epoch", "best_epoch")}})
    return rows
