"""The training-strategy search (transfer-learning survey section III; MedNNS section 3).

Stages: ``search`` -> ``retrain``.

* ``search``: Ray Tune's ``OptunaSearch`` over :data:`trainables.strategy.DEFAULT_SPACE`
  (initialisation, normalisation, dropout, L1, L2, optimizer, learning rate, schedule, batch
  size, augmentation), the default recipe enqueued as the first trial. One objective (the best
  ``--metric`` of a trial): TPE with ASHA over epochs; a trial ASHA stops reaches the study as
  PRUNED (:class:`PruningOptunaSearch`). Two objectives (``--objectives val_acc@10,val_acc@final``):
  NSGA-II through OptunaSearch's metric/mode lists with FIFO, every trial trained to
  ``--max-epochs`` -- ASHA needs one scalar, and a trial it stops has no value at the final epoch,
  so it would vanish from the front it is meant to populate. The search space (Tune domains,
  :func:`tune_space`) becomes a dict of Optuna distributions held by the searcher, which Tune
  saves with the experiment every few seconds: ``Tuner.restore`` continues the same study (trials neither lost nor repeated).
  With ``--optuna-storage`` the study also lives in ``<out>/optuna.db`` (SQLite) for
  ``optuna-dashboard sqlite:///<out>/optuna.db``, and is read back from there after the run
  (:func:`final_study`); each study trial names its Tune trial (:func:`trial_numbers`).
* ``retrain``: the best strategy and the default recipe trained again with test evaluation at
  every epoch; the best's weights go to the zoo.

Memory (:meth:`StrategySearch.plan_memory`, before Ray starts): every trial trains at the batch
size its own strategy names, so each trial requests its own estimate as Ray's ``memory``
(:func:`trainables.strategy_trial.memory_cost`: its batch and normalisation; whole GiB, so
equal requests reuse a worker) and Ray packs trials by their real need. The space's batch
choices are checked at the heaviest normalisation: none fits -> refused in one line; the
largest does not -> the choices that do not fit are dropped from the space (said on stderr and
in ``summary["memory"]``), since a trial that fits no node would wait forever. The default
recipe's ``--batch-size`` is halved until its retrain fits, like the other searches' batches.

Outputs in ``--out``: ``trials.csv`` (every trial's strategy, Optuna state, values),
``curves.csv`` (every trial's per-epoch metrics), ``summary.json``, ``learning_curves.png``
(best strategies vs the default recipe), ``param_importances.png`` (Optuna's fANOVA) and, for
two objectives, ``pareto_front.png``: tables, statistics and plots in
:mod:`orchestrator.searches.strategy_report`.
"""
from __future__ import annotations

import json
import math
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch
from torch import nn

from medcore.errors import ConfigError, MedtuneError, RunError
from medcore.records import FAILED, OK, ModelRecord
from orchestrator import reports
from orchestrator.config import StrategySearchConfig
from orchestrator.export import read_state_dict
from orchestrator.metaspace import MetaSpace
from orchestrator.search import RunContext, Search, Stage, runtime
from orchestrator.searches.strategy_report import (COMPLETE, PRUNED, network_label, param_importances,
                                                   plot_importances, plot_learning_curves, plot_pareto,
                                                   retrain_report, trial_rows)
from orchestrator.zoo import get_model
from trainables.initializers import SCHEMES
from trainables.memory import plan_batch
from trainables.strategy import (DEFAULT_SPACE, NORMS, OPTIMIZERS, POLICIES, SCHEDULES, Strategy, load_pretrained,
                                 parse_objectives, parse_space)
from trainables.strategy_trial import (BUILD_FILE, StrategyMemory, call_builder, memory_cost, network_build,
                                       retrain_trial, strategy_trial, zoo_build)

SEARCH_NAME, RETRAIN_NAME = "strategy_search", "strategy_retrain"
FAMILY = "strategy"
STORAGE_FILE = "optuna.db"
TUNE_TRIAL_ID = "tune_trial_id"  # the Optuna user attr naming the Tune trial of a study trial


class PruningOptunaSearch(OptunaSearch):
    """OptunaSearch where a trial that ends before its last epoch (stopped by the scheduler:
    its final result says ``finished=False``) is told to the study as PRUNED, not COMPLETE
    with a premature value (Ray's OptunaSearch marks it COMPLETE); each study trial records
    its Tune trial id (user attr :data:`TUNE_TRIAL_ID`), so the study alone, read back from
    its storage after the run, maps Tune trials to Optuna numbers (:func:`trial_numbers`).
    Ray's private attributes are read here only, in the subclass."""

    def suggest(self, trial_id):
        new = trial_id not in self._ot_trials
        config = super().suggest(trial_id)
        if new:  # asked just now: still running, so its attrs can be set (saved with the study)
            self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ID, trial_id)
        return config

    @property
    def study(self):
        """The study as this searcher holds it (the only copy without an Optuna storage)."""
        return self._ot_study

    def on_trial_complete(self, trial_id, result=None, error=False):
        if (result and not error and result.get("finished") is False and trial_id in self._ot_trials
                and trial_id not in self._completed_trials):
            self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)


def tune_space(space: dict) -> dict:
    """A parsed space (:func:`trainables.strategy.parse_space`) as Tune's own domains: a choice
    is ``tune.choice``, a float range ``tune.loguniform`` on a log scale, else ``tune.quniform``
    with a step or ``tune.uniform``."""
    out = {}
    for name, spec in space.items():
        if spec[0] == "choice":
            out[name] = tune.choice(list(spec[1]))
        else:
            _, low, high, log, step = spec
            out[name] = (tune.loguniform(low, high) if log else
                         tune.quniform(low, high, step) if step else tune.uniform(low, high))
    return out


def optuna_space(space: dict) -> dict:
    """The Optuna distributions OptunaSearch makes of :func:`tune_space` (its own converter, given
    explicitly: handed Tune domains, the searcher converts them but logs a warning each run)."""
    return OptunaSearch.convert_search_space(tune_space(space))


def trial_numbers(study) -> dict[str, int]:
    """Tune trial id -> Optuna trial number, from the user attr the searcher sets when it asks."""
    return {t.user_attrs[TUNE_TRIAL_ID]: t.number for t in study.trials if TUNE_TRIAL_ID in t.user_attrs}


def final_study(searcher, storage_url: str | None, study_name: str):
    """The study after the run: loaded from its Optuna storage (``--optuna-storage``: the record
    itself, the one ``optuna-dashboard`` reads); without one the study lives only in the searcher
    (Tune saves it with the experiment; :meth:`~orchestrator.search.RunContext.run_tuner` leaves
    the searcher in its final state), so it is the searcher's."""
    if storage_url is None:
        return searcher.study
    return optuna.load_study(study_name=study_name, storage=storage_url)


def default_strategy(cfg: StrategySearchConfig, batch_size: int | None = None) -> dict:
    """The default recipe (:class:`trainables.strategy.Strategy` defaults, with --lr,
    --batch-size and --weight-decay); ``batch_size``: the memory plan's, when it lowered --batch-size."""
    return Strategy(lr=cfg.fit.lr, batch_size=batch_size or cfg.fit.batch_size,
                    l2=cfg.fit.weight_decay).check().to_dict()


def in_space(point: dict, space: dict) -> bool:
    for name, value in point.items():
        spec = space[name]
        if spec[0] == "choice" and value not in spec[1]:
            return False
        if spec[0] == "float":
            low, high, step = spec[1], spec[2], spec[4]
            if not low <= value <= high or (step and abs(round((value - low) / step) * step + low - value) > 1e-9):
                return False
    return True


def objective_setup(cfg: StrategySearchConfig) -> tuple[list[str], list[str]]:
    """(metrics, modes) the searcher optimises: ``best_<metric>``, or the two objectives."""
    keys = parse_objectives(cfg.objectives, cfg.fit.max_epochs)
    return (keys, ["max"] * len(keys)) if keys else ([f"best_{cfg.fit.metric}"], ["max"])


class PicklableLock:
    """A ``threading.Lock`` that pickles (as a fresh, unlocked lock). Optuna 5's GA samplers
    (NSGA-II) hold a bare lock, so Ray could neither checkpoint nor resume the searcher."""

    def __init__(self):
        self._lock = threading.Lock()

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *exc):
        return self._lock.__exit__(*exc)

    def __getstate__(self):
        return {}

    def __setstate__(self, _state):
        self._lock = threading.Lock()


def make_searcher(cfg: StrategySearchConfig, space: dict, storage_url: str | None = None, study_name: str = "strategy",
                  default: dict | None = None):
    """The Optuna searcher over ``space``; ``default`` (the default recipe, :func:`default_strategy`
    unless given) is its first trial when the space holds it."""
    metrics, modes = objective_setup(cfg)
    if len(metrics) == 2:
        population = max(4, min(50, cfg.budget // 3))
        sampler = optuna.samplers.NSGAIISampler(population_size=population, seed=cfg.seed)
        if hasattr(sampler, "_thread_lock"):  # optuna>=5: make the sampler picklable
            sampler._thread_lock = PicklableLock()
        metric, mode = metrics, modes
    else:
        sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=min(10, max(2, cfg.budget // 3)))
        metric, mode = metrics[0], modes[0]
    storage = optuna.storages.RDBStorage(storage_url) if storage_url else None
    default = default or default_strategy(cfg)
    points = [default] if in_space(default, space) else []
    return PruningOptunaSearch(space=optuna_space(space), metric=metric, mode=mode, sampler=sampler,
                                storage=storage, study_name=study_name, points_to_evaluate=points)


def strategy_encoding(strategy: dict) -> list[float]:
    """Fixed-length numeric encoding of a strategy (zoo family ``strategy``): the index of each
    categorical choice, then dropout, log10 of L1/L2/lr (1e-12 for zero) and the batch size."""
    s = strategy
    return [float(SCHEMES.index(s["init"])), float(NORMS.index(s["norm"])), float(OPTIMIZERS.index(s["optimizer"])),
            float(SCHEDULES.index(s["schedule"])), float(list(POLICIES).index(s["augment"])), float(s["dropout"]),
            math.log10(s["l1"] or 1e-12), math.log10(s["l2"] or 1e-12), math.log10(s["lr"]), float(s["batch_size"])]


# What to lower when a strategy trial cannot fit: the sampled batch sizes, or the default recipe's.
SPACE_SETTINGS = "the batch_size choices of --space (e.g. '{\"batch_size\": [16, 32]}'), --size or the network"
DEFAULT_SETTINGS = "--batch-size, --size or the network"


@dataclass
class StrategySetup:
    """What the search derives once, before its stages (the memory plan needs it too), kept as
    ``ctx.setup`` (runtime only: derived again when a run resumes): the network's build recipe
    ``net``, its ``pretrained`` state dict or None, the ``source`` description (summary and zoo)
    and the parsed ``space`` (its batch choices cut to those that fit, :meth:`StrategySearch.stages`)."""

    net: dict
    pretrained: object
    source: dict
    space: dict


@dataclass
class StrategySearchOutput:
    """The search stage: one row per trial (strategy, Optuna state and values, :func:`trial_rows`)
    and their per-epoch ``curves``; ``study``: the Optuna study after the run (:func:`final_study`,
    runtime only: loaded again on resume)."""

    rows: list[dict]
    curves: list[dict]
    study: object = runtime()


@dataclass
class StrategyRetrainOutput:
    """The retrain stage: the search's ``best`` row (None: no trial completed), label -> the
    ``strategies`` retrained ("default", and "best" when the search found one) and label -> what
    each retrain came to (``report``, ``weights``: the final checkpoint's path or None, per-epoch
    ``curve``); "best" is the default's entry when the default recipe won."""

    best: dict | None
    strategies: dict[str, dict]
    retrained: dict[str, dict]


class StrategySearch(Search):
    name = "strategy"
    description = "Optuna (TPE + ASHA, or NSGA-II) over training strategies: init, norm, dropout, L1/L2, optimizer, augmentation"
    config_cls = StrategySearchConfig
    stage_names = ("search", "retrain")

    # ---- setup ---------------------------------------------------------------------------
    def stages(self, ctx: RunContext) -> list[Stage]:
        setup = self._prepare(ctx)
        plan = ctx.memory.get("search")
        if isinstance(plan, StrategyMemory) and plan.dropped:  # Optuna samples only batches that fit
            setup.space = dict(setup.space, batch_size=("choice", tuple(plan.batches)))
        return [Stage("search", self.search, StrategySearchOutput), Stage("retrain", self.retrain, StrategyRetrainOutput)]

    def _prepare(self, ctx: RunContext) -> StrategySetup:
        """The network to train, its pretrained weights and the space, once per run (the memory
        plan needs them before the stages)."""
        if ctx.setup is None:
            net, pretrained, source = self._network(ctx)
            ctx.setup = StrategySetup(net=net, pretrained=pretrained, source=source, space=parse_space(
                ctx.cfg.space, pretrained_available=pretrained is not None))
        return ctx.setup

    def plan_memory(self, ctx: RunContext, limit: float | None) -> dict:
        """The search's and the retrain's trials sized before Ray starts
        (:func:`trainables.strategy_trial.memory_cost`, the network as trials build it).

        ``search``: a batch choice of the space fits when its retrain, at the heaviest
        normalisation, fits ``limit`` (the best strategy is retrained at it); the smallest not
        fitting is refused in one line naming the space, the largest not fitting drops the
        choices that do not (rather than training a trial at another batch than Optuna sampled).
        ``retrain``: the default recipe at --batch-size, halved until it fits. Trials of both
        request their own strategy's estimate (:meth:`_resources`)."""
        setup = self._prepare(ctx)
        cfg, space, info = ctx.cfg, setup.space, ctx.data.info
        net, pretrained = setup.net, setup.pretrained
        search_cost = memory_cost(ctx.data, net, space, pretrained)
        retrain_cost = memory_cost(ctx.data, net, space, pretrained, retrain=True)
        label = f"{network_label(setup.source)}, {info.size} px"
        batches = sorted({int(b) for b in space["batch_size"][1]})
        plan_batch(f"a strategy trial ({label})", retrain_cost, batches[0], limit, SPACE_SETTINGS, lowerable=False)
        fits = tuple(b for b in batches if limit is None or retrain_cost(b) <= limit)
        dropped = tuple(b for b in batches if b not in fits)
        search = StrategyMemory(f"a strategy search trial ({label})", fits[-1], batches[-1], search_cost(fits[-1]),
                                batches=fits, dropped=dropped, cost=search_cost)
        default = plan_batch(f"the default recipe's retrain ({label})", retrain_cost, cfg.fit.batch_size, limit,
                             DEFAULT_SETTINGS)
        retrain = StrategyMemory(f"a retrain trial ({label})", default.batch_size, default.requested_batch,
                                 max(retrain_cost(b) for b in (*fits, default.batch_size)),
                                 batches=tuple(sorted({*fits, default.batch_size})), cost=retrain_cost)
        return {"search": search, "retrain": retrain}

    def _resources(self, ctx: RunContext, stage: str, strategies: dict | None = None):
        """Ray resources of ``stage``'s trials: each requests its own strategy's estimate (a
        callable of the trial config; ``strategies``: the retrain's label -> strategy)."""
        plan = ctx.memory.get(stage)
        cost = getattr(plan, "cost", None)
        if cost is None:
            return ctx.trial_resources(plan.bytes if plan is not None else None)
        return ctx.trial_resources((cost.for_labels(strategies) if strategies else cost).request)

    def _default(self, ctx: RunContext) -> dict:
        """The default recipe at the batch the memory plan gave it."""
        plan = ctx.memory.get("retrain")
        return default_strategy(ctx.cfg, plan.batch_size if plan is not None else None)

    def _network(self, ctx: RunContext):
        """(build recipe, pretrained state dict or None, description) of the network to train."""
        cfg, info = ctx.cfg, ctx.data.info
        if cfg.metaspace:
            return self._recommended(ctx)
        if cfg.from_zoo:
            try:
                row = get_model(cfg.zoo_path, cfg.from_zoo)
            except MedtuneError as exc:
                raise ConfigError(str(exc), "from_zoo") from None
            shape = [int(v) for v in (row.get("input_shape") or [])]
            if shape != list(info.input_shape) or row.get("task") != info.task or not row.get("build"):
                raise ConfigError(f"zoo model {cfg.from_zoo} takes input {shape} for task '{row.get('task')}'; "
                                  f"{info.flag} has {list(info.input_shape)}, '{info.task}'", "from_zoo")
            net = json.loads(row["build"])
            weights = row.get("weights")
            state = read_state_dict(weights) if weights and not cfg.checkpoint else None
            source = {"from_zoo": cfg.from_zoo, "family": row.get("family"), "weights": weights}
        else:
            net = network_build(cfg.model, info)
            state, source = None, {"model": cfg.model.lower()}
        if cfg.checkpoint:
            state = read_state_dict(str(Path(cfg.checkpoint).expanduser()))
            source["checkpoint"] = cfg.checkpoint
        if state is not None:  # the weights must fit before any trial starts
            load_pretrained(call_builder(net), state)
        return net, state, source

    def _recommended(self, ctx: RunContext):
        """The meta-space's top model for this dataset (MedNNS eq. 5, queried with the train
        images): its build recipe with this dataset's outputs, its weights without a classifier
        that does not fit (another dataset's classes), as ``pretrained``."""
        cfg, info = ctx.cfg, ctx.data.info
        top = MetaSpace.load(Path(cfg.metaspace).expanduser()).query_images(ctx.data.images["train"], top_k=1)
        row = top.iloc[0]
        if not row.get("build") or not row.get("weights"):
            raise ConfigError(f"the meta-space's top model {row['model_id']} has no build recipe or weights",
                              "metaspace")
        net = json.loads(row["build"]) if isinstance(row["build"], str) else dict(row["build"])
        kwargs = net.setdefault("kwargs", {})
        target = kwargs["net"]["kwargs"] if "net" in kwargs else kwargs  # a strategy-trained model nests its net
        target.update({k: v for k, v in (("n_outputs", info.n_outputs), ("in_channels", info.n_channels))
                       if k in target})
        state = read_state_dict(str(row["weights"]))
        model = call_builder(net)
        own = model.state_dict()
        state = {k: v for k, v in state.items() if k not in own or own[k].shape == v.shape or
                 not any(k.startswith(f"{n}.") for n, m in model.named_modules() if isinstance(m, nn.Linear))}
        load_pretrained(model, state)
        return net, state, {"metaspace": str(cfg.metaspace), "recommended": row["model_id"],
                            "score": float(row["score"]), "source_dataset": row.get("dataset"),
                            "family": row.get("family"), "weights": row["weights"]}

    def _trainable(self, ctx: RunContext, strategies: dict | None = None):
        """The search's trainable, or with ``strategies`` (label -> strategy) the retrain's."""
        cfg = ctx.cfg
        metrics, _ = objective_setup(cfg)
        kwargs = dict(data=ctx.data, net=ctx.setup.net, pretrained=ctx.setup.pretrained,
                      fit_options=cfg.fit.fit_config(cfg.seed), augment_backend=cfg.augment_backend,
                      objectives=[m for m in metrics if "@" in m] or [f"{cfg.fit.metric}@final"])
        if strategies is not None:
            return tune.with_parameters(retrain_trial, strategies=strategies, **kwargs)
        return tune.with_parameters(strategy_trial, **kwargs)

    def storage_url(self, ctx: RunContext) -> str | None:
        return f"sqlite:///{ctx.out / STORAGE_FILE}" if ctx.cfg.optuna_storage else None

    # ---- stages --------------------------------------------------------------------------
    def search(self, ctx: RunContext) -> StrategySearchOutput:
        cfg = ctx.cfg
        metrics, modes = objective_setup(cfg)
        searcher = make_searcher(cfg, ctx.setup.space, self.storage_url(ctx), study_name=ctx.run_id,
                                 default=self._default(ctx))
        if len(metrics) == 1 and cfg.scheduler == "asha":
            scheduler = ASHAScheduler(time_attr="epoch", metric=metrics[0], mode=modes[0], max_t=cfg.fit.max_epochs,
                                      grace_period=min(cfg.grace_period, cfg.fit.max_epochs),
                                      reduction_factor=cfg.reduction_factor)
        else:
            scheduler = FIFOScheduler()
        grid = ctx.run_tuner(SEARCH_NAME, self._trainable(ctx), metric=metrics[0], mode=modes[0],
                             resources=self._resources(ctx, "search"), tune_config=tune.TuneConfig(
                                 search_alg=searcher, scheduler=scheduler, num_samples=cfg.budget))
        study = final_study(searcher, self.storage_url(ctx), ctx.run_id)
        rows, curves = trial_rows(ctx.outcomes(grid), study, trial_numbers(study), metrics, self._default(ctx))
        if len(rows) < cfg.budget:
            raise RunError(f"the {SEARCH_NAME} experiment stopped after {len(rows)} of {cfg.budget} trials; "
                           f"everything evaluated is saved in {ctx.experiment_path(SEARCH_NAME)}; rerun with --resume")
        return StrategySearchOutput(rows, curves, study=study)

    def best_row(self, ctx: RunContext) -> dict | None:
        """One objective: the COMPLETE trial with the highest value (ties: fewer epochs, lower
        number). Two objectives: of the Pareto front, the highest second objective (the final
        epoch's), then the first."""
        cfg, found = ctx.cfg, ctx.output(StrategySearchOutput)
        rows = found.rows
        metrics, _ = objective_setup(cfg)
        done = [r for r in rows if r["optuna_state"] == COMPLETE and r["status"] == OK]
        if not done:
            return None
        if len(metrics) == 1:
            return max(done, key=lambda r: (r["value"], -r["optuna_number"]))
        front = {t.number for t in found.study.best_trials}
        pareto = [r for r in done if r["optuna_number"] in front] or done
        return max(pareto, key=lambda r: (r[f"value_{metrics[1]}"], r[f"value_{metrics[0]}"], -r["optuna_number"]))

    def retrain(self, ctx: RunContext) -> StrategyRetrainOutput:
        best = self.best_row(ctx)
        strategies = {"default": self._default(ctx)}
        if best is not None:
            strategies["best"] = {k: best[k] for k in DEFAULT_SPACE}
        labels = ["default"] if strategies.get("best") in (None, strategies["default"]) else ["best", "default"]
        out = StrategyRetrainOutput(best, strategies, {})
        grid = ctx.run_tuner(RETRAIN_NAME, self._trainable(ctx, strategies), param_space={
            "label": tune.grid_search(labels)}, metric="test_auc",
            resources=self._resources(ctx, "retrain", strategies))
        # an errored trial restored on resume keeps no config: it is left out
        for o in ctx.outcomes(grid, configured_only=True):
            df = o.metrics_dataframe
            curve = df.to_dict("records") if df is not None else []
            out.retrained[o.config["label"]] = {"report": o.report(), "weights": None if o.checkpoint is None
                                                else o.checkpoint.path, "curve": curve}
        if "best" not in labels and "default" in out.retrained:  # the default recipe won
            out.retrained["best"] = out.retrained["default"]
        return out

    # ---- outputs ------------------------------------------------------------------------------
    def summarize(self, ctx: RunContext) -> dict:
        cfg, data = ctx.cfg, ctx.data
        out, synthetic = ctx.out, bool(data.info.synthetic)
        found, retrain = ctx.output(StrategySearchOutput), ctx.output(StrategyRetrainOutput)
        rows, curves, study = found.rows, found.curves, found.study
        metrics, _ = objective_setup(cfg)
        reports.write_table(rows, out / "trials.csv", synthetic)
        reports.write_table(curves, out / "curves.csv", synthetic)
        best = retrain.best
        importances = param_importances(study, metrics)
        plots = {"learning_curves": str(plot_learning_curves(rows, curves, best, metrics, cfg.fit.metric,
                                                             out / "learning_curves.png", synthetic))}
        if importances.get("values"):
            plots["param_importances"] = str(plot_importances(importances["values"], out / "param_importances.png",
                                                              synthetic))
        if len(metrics) == 2:
            plots["pareto_front"] = str(plot_pareto(rows, study, metrics, out / "pareto_front.png", synthetic))
        trial_epochs = sum(r["epochs"] for r in rows)
        full = cfg.budget * cfg.fit.max_epochs
        states = Counter(r["optuna_state"] for r in rows)
        failed = [r for r in rows if r["status"] == FAILED]
        retrained = retrain.retrained
        final_best, final_default = (retrain_report(retrained.get(label), metrics) for label in ("best", "default"))
        summary = {
            "search": "strategy", "dataset": data.info.flag, "size": data.info.size, "synthetic": synthetic,
            "network": ctx.setup.source, "sampler": "NSGA-II" if len(metrics) == 2 else "TPE",
            "scheduler": "FIFO" if len(metrics) == 2 or cfg.scheduler == "fifo" else "ASHA",
            "objectives": metrics, "n_evaluated": len(rows), "n_ok": len(rows) - len(failed), "n_failed": len(failed),
            "n_pruned": states.get(PRUNED, 0), "n_complete": states.get(COMPLETE, 0),
            "failure_reasons": dict(Counter(r["reason"] or "unknown" for r in failed)),
            "trial_epochs": trial_epochs, "trial_epochs_without_early_stopping": full,
            "trial_epochs_saved": 1 - trial_epochs / full if full else 0.0,
            "best": None if best is None else {
                "strategy": {k: best[k] for k in DEFAULT_SPACE}, "trial_id": best["trial_id"],
                "optuna_number": best["optuna_number"], "search_value": best.get("value"),
                "val_acc": (final_best or {}).get("val_acc"), "val_auc": (final_best or {}).get("val_auc"),
                "test_acc": (final_best or {}).get("test_acc"), "test_auc": (final_best or {}).get("test_auc"),
                "retrained": final_best},
            "default": {"strategy": retrain.strategies["default"], "retrained": final_default,
                        "in_search": any(r["default_recipe"] for r in rows)},
            "importances": importances, "plots": plots,
            "optuna_storage": str(out / STORAGE_FILE) if cfg.optuna_storage else None,
            "study_name": ctx.run_id, "config": cfg.to_dict(),
            "experiments": {"search": ctx.experiment_path(SEARCH_NAME), "retrain": ctx.experiment_path(RETRAIN_NAME)},
        }
        if len(metrics) == 2:
            front = {t.number for t in study.best_trials}
            summary["pareto"] = [{k: r.get(k) for k in ("trial_id", "optuna_number", *DEFAULT_SPACE,
                                                        *(f"value_{m}" for m in metrics))}
                                 for r in rows if r["optuna_number"] in front]
        return summary

    def zoo_records(self, ctx: RunContext) -> list[ModelRecord]:
        info, net = ctx.data.info, ctx.setup.net
        arch_net, retrain = ctx.setup.source, ctx.output(StrategyRetrainOutput)
        records = []
        for r in ctx.output(StrategySearchOutput).rows:
            strategy = {k: r.get(k) for k in DEFAULT_SPACE}
            if any(v is None for v in strategy.values()):
                continue
            records.append(ModelRecord(
                search="strategy", stage="search", family=FAMILY, architecture={"network": arch_net,
                                                                                 "strategy": strategy},
                encoding=strategy_encoding(strategy), status=r["status"], reason=r.get("reason", ""),
                metrics={"val_acc": r.get("best_val_acc"), "val_auc": r.get("best_val_auc"), "epochs": r["epochs"],
                         "optuna_state": r["optuna_state"]}, trial_id=r["trial_id"],
                build=zoo_build(net, Strategy.from_dict(strategy), info.spatial_dims)))
        for label, trained in retrain.retrained.items():
            if label == "best" and retrain.strategies.get("best") is None:
                continue
            m, weights = trained["report"], trained["weights"]
            strategy = retrain.strategies.get(label) or retrain.strategies["default"]
            build = zoo_build(net, Strategy.from_dict(strategy), info.spatial_dims)
            if weights is not None and Path(weights, BUILD_FILE).is_file():
                build = json.loads(Path(weights, BUILD_FILE).read_text())
            records.append(ModelRecord(
                search="strategy", stage=f"retrain-{label}", family=FAMILY,
                architecture={"network": arch_net, "strategy": strategy, "label": label},
                encoding=strategy_encoding(strategy), status=m.get("status", FAILED), reason=m.get("reason", ""),
                metrics={k: m.get(k) for k in ("val_acc", "val_auc", "test_acc", "test_auc", "params") if
                         m.get(k) is not None} | {"epochs": m.get("epoch")},
                build=build, weights=weights, trial_id=m.get("trial_id")))
        return records

    def print_summary(self, summary: dict) -> None:
        super().print_summary(summary)
        best = summary.get("best") or {}
        if best:
            print(f"best strategy: {json.dumps(best['strategy'])}")
            print(f"  test_acc={best.get('test_acc')} test_auc={best.get('test_auc')}; trial-epochs saved by "
                  f"early stopping: {summary['trial_epochs_saved']:.0%}")
