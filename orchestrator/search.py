"""The interface every search implements, and the context its stages run in.

A :class:`Search` has a name (``medtune search NAME``), a typed config class, named stages
(ODE: search -> retrain; compression: base -> search), a ``summarize`` step that writes its
tables and plots, and the :class:`~medcore.records.ModelRecord` s it adds to the zoo. The
generic driver (:mod:`orchestrator.driver`) runs the stages; each stage runs its Tune
experiments through :meth:`RunContext.run_tuner`, where fresh-versus-resume, failure
handling, TensorBoard logging, progress, per-trial resources and the searcher's final state are
handled once, and reads what each trial came to through :meth:`RunContext.outcomes`. A stage
returns its outputs as a typed dataclass (:class:`Stage` ``output``) that later stages,
``summarize`` and ``zoo_records`` read with :meth:`RunContext.output`; the driver keeps it and
writes its JSON fields to ``<out>/stages/<stage>.json`` (:func:`output_to_json`).
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from medcore.errors import RunError
from medcore.records import FAILED, OK, ModelRecord

# Save experiment + searcher state at least every few seconds, so a killed driver loses at
# most the trials that were still running (those re-run on resume).
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
# Ctrl+C / SIGTERM stop the driver at once (the CLI says how to resume). Tune's own handler
# would end the experiment as if it had finished and the driver would go on to summarise a
# half-done search. The state saved every 2 s is what resume uses.
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")

# Retries of a trial before it counts as failed: its worker died (node lost, process killed,
# Ray's memory monitor) or its trainable raised something it does not report as a result.
TRIAL_RETRIES = 2
# Memory requests are rounded up to whole GiB, the estimate is coarse anyway.
MEMORY_GRANULE = 2**30
# Per-epoch checkpoints kept per trial: the latest is what a retried trial resumes from, and a
# trial's final checkpoint (its weights) is always the latest.
CHECKPOINTS_KEPT = 2


# A stage output field that exists only in the driver's memory (a loaded network, a searcher, a
# data frame): not written to stages/<stage>.json, derived again when a resumed run re-runs the stage.
RUNTIME = "medtune_runtime"


def runtime(default=None):
    """A :data:`RUNTIME` field of a stage output (after its persisted fields)."""
    return field(default=default, repr=False, compare=False, metadata={RUNTIME: True})


def output_to_json(output) -> dict:
    """The persisted fields of a stage output (every field but the :func:`runtime` ones), as the
    driver writes them to ``stages/<stage>.json``; they hold JSON values only."""
    return {f.name: getattr(output, f.name) for f in dataclasses.fields(output) if not f.metadata.get(RUNTIME)}


@dataclass
class Stage:
    """A named step of a search: ``run(ctx)`` returns an ``output`` instance (a dataclass of the
    search's module), or None for a stage without ``output``."""

    name: str
    run: Callable[["RunContext"], object]
    output: type | None = None


class Search:
    """Base class of every search. Subclasses set ``name``, ``config_cls``, ``stage_names``,
    ``description`` and implement :meth:`stages`, :meth:`summarize` and :meth:`zoo_records`."""

    name: str = ""
    description: str = ""
    config_cls: type = object
    stage_names: tuple[str, ...] = ()

    def load_data(self, cfg):
        """The dataset, loaded once by the driver and shared with every trial via Ray."""
        from orchestrator.data import load_medmnist

        return load_medmnist(cfg.dataset, cfg.size, cfg.data_root)

    def stages(self, ctx: "RunContext") -> list[Stage]:
        raise NotImplementedError

    def summarize(self, ctx: "RunContext") -> dict:
        """Write tables/plots to ``ctx.out``; return the summary (search, dataset, synthetic, ...)."""
        raise NotImplementedError

    def zoo_records(self, ctx: "RunContext") -> list[ModelRecord]:
        return []

    def plan_memory(self, ctx: "RunContext", limit: float | None) -> dict:
        """Stage -> :class:`~trainables.memory.TrialMemory` of its trials, before any trial starts:
        the estimated peak RSS requested as Ray's ``memory``, the batch lowered where the search
        allows it so a trial fits ``limit`` (the largest node's memory; None: no cap), refused in
        one line (ResourceError) where nothing fits. Searches that size each candidate on their
        own (ODE) return nothing here."""
        return {}

    def failure_counts(self, summary: dict) -> tuple[int, int, dict]:
        """(evaluated, succeeded, reasons -> count) of a summary, to refuse an all-failed run."""
        return summary.get("n_evaluated", 0), summary.get("n_ok", 0), summary.get("failure_reasons", {})

    def print_summary(self, summary: dict) -> None:
        import json

        if summary.get("synthetic"):
            print("NOTE: results come from SYNTHETIC data")
        print(json.dumps({k: summary[k] for k in ("search", "dataset", "synthetic", "n_evaluated") if k in summary}))
        print(f"results in {summary['out']}")


def progress_reporter(metric: str | None, mode: str = "max"):
    """The console's progress table with the selection ``metric`` first, trials sorted by it.

    Tune's newer console output picks the first four numbers of each trial's last report
    (params, FLOPs, test metrics) and cannot be told otherwise, so a run with a selection metric
    uses Tune's ``CLIReporter`` (``RAY_AIR_NEW_OUTPUT=0``, read when the experiment starts).
    None (Tune's default table) without a metric.
    """
    if not metric:
        return None
    from ray.tune import CLIReporter

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"

    class SortedReporter(CLIReporter):
        """Trials best first (:func:`best_first`); Tune's own ``sort_by_metric`` fails on a trial
        that never reported (one a time budget stopped before its first epoch)."""

        def _progress_str(self, trials, *args, **kwargs):
            return super()._progress_str(best_first(trials, metric, mode), *args, **kwargs)

    columns = [metric] + [c for c in ("epoch", "val_loss", "status") if c != metric]
    return SortedReporter(metric_columns=columns, metric=metric, mode=mode, max_report_frequency=30)


def best_first(trials, metric: str, mode: str = "max") -> list:
    """``trials`` by their last ``metric``, best first; those without a finite value last."""
    def key(trial):
        value = (trial.last_result or {}).get(metric)
        ok = isinstance(value, (int, float)) and math.isfinite(value)
        return (not ok, (-value if mode == "max" else value) if ok else 0.0)

    return sorted(trials, key=key)


def memory_bucket(nbytes: float, limit: float | None = None, share: float | None = None) -> int:
    """A per-trial memory request: the trial's fair ``share`` of a node where the estimate fits in
    it, else the estimate rounded up to 1, 2, 4, 8, ... GiB.

    Tune reuses a trial's worker process (``reuse_actors``) only for a trial with the very same
    resources, and keeps one idle worker: requests rounded to whole GiB differed between most
    consecutive candidates, so each started a fresh worker (torch imported, data fetched: ~10 s
    each, benchmarks/ode_trial_overhead.py). A trial that fits in its share of the node (the
    node's memory per CPU times the trial's CPUs) asks for exactly that share: every such trial
    has one request and trials pack by CPUs, as they would anyway. Larger ones get power-of-two
    buckets, so memory limits how many run at once. A bucket above ``limit`` (what one trial may
    get on the largest node) falls back to ``limit`` in whole GiB, or to the estimate where that
    is more; the request never drops below the estimate.
    """
    whole_share = int(share // MEMORY_GRANULE * MEMORY_GRANULE) if share else 0
    if whole_share and nbytes <= whole_share:
        return whole_share
    granular = int(math.ceil(max(float(nbytes), 1.0) / MEMORY_GRANULE))
    bucket = 2 ** math.ceil(math.log2(granular)) * MEMORY_GRANULE
    if limit and bucket > limit:
        return int(max(math.ceil(nbytes), limit // MEMORY_GRANULE * MEMORY_GRANULE))
    return int(bucket)


def tune_defaults(tune_config, max_concurrent: int, reuse_actors: bool = True):
    """``tune_config`` with medtune's trial names, ``reuse_actors`` and, unless it sets
    ``max_concurrent_trials`` (or limits concurrency with its own ConcurrencyLimiter, which Tune
    refuses to combine with another limit), ``max_concurrent`` (0: as many as fit) at a time."""
    from ray.tune.search import ConcurrencyLimiter

    limit = tune_config.max_concurrent_trials
    if limit is None and not isinstance(tune_config.search_alg, ConcurrencyLimiter):
        limit = max_concurrent or None
    return dataclasses.replace(tune_config, trial_name_creator=tune_config.trial_name_creator or trial_name,
                               trial_dirname_creator=trial_name, reuse_actors=reuse_actors,
                               max_concurrent_trials=limit)


@dataclass
class TrialOutcome:
    """What one trial of a finished experiment came to, as the searches read it: ``status`` is
    FAILED where Tune saw the trial error (``reason``: the error in one line,
    :func:`describe_error`), else OK (``reason`` empty; a trainable's own ``status`` / ``reason``
    report stays in ``metrics``). ``metrics``: the last report, ``{}`` when none."""

    trial_id: str
    config: dict
    metrics: dict
    status: str
    reason: str = ""
    checkpoint: object = None  # ray.tune.Checkpoint of the latest report, or None
    metrics_dataframe: object = None  # every report (pandas), or None

    @property
    def failed(self) -> bool:
        return self.status == FAILED

    def report(self) -> dict:
        """A copy of the last report, with ``status`` FAILED and the ``reason`` where Tune saw the
        trial error (a retrained pick's or baseline's summary entry reads both from the report)."""
        return {**self.metrics, "status": FAILED, "reason": self.reason} if self.failed else dict(self.metrics)


def trial_outcomes(grid, configured_only: bool = False) -> list[TrialOutcome]:
    """One :class:`TrialOutcome` per result of a Tune ResultGrid, in its order; ``configured_only``
    leaves out results without a config (an errored trial of a restored experiment keeps none)."""
    out = []
    for r in grid:
        if configured_only and not r.config:
            continue
        errored = r.error is not None
        out.append(TrialOutcome(trial_id=result_trial_id(r), config=dict(r.config or {}), metrics=dict(r.metrics or {}),
                                status=FAILED if errored else OK, reason=describe_error(r.error) if errored else "",
                                checkpoint=r.checkpoint, metrics_dataframe=r.metrics_dataframe))
    return out


@dataclass
class RunContext:
    """What a stage sees: the validated config, the data, the run folders and the outputs of the
    stages before it."""

    search: Search
    cfg: object
    data: object
    run_id: str
    outputs: dict = field(default_factory=dict)  # stage name -> its output (set by the driver)
    setup: object = None  # what a search derives before its stages, its own dataclass (runtime only)
    memory: dict = field(default_factory=dict)  # stage -> TrialMemory (Search.plan_memory)
    memory_limit: float | None = None  # what one trial may request on the largest node (None: no cap)
    memory_share: float | None = None  # a trial's fair share of that node: its CPUs' part of the memory
    stage: str | None = None  # the stage running now (set by the driver)

    @property
    def out(self) -> Path:
        return self.cfg.out_dir

    def output(self, cls: type):
        """The output of the stage that returned a ``cls`` (KeyError when none has yet)."""
        for value in self.outputs.values():
            if isinstance(value, cls):
                return value
        raise KeyError(f"no stage has returned a {cls.__name__}")

    # what each trial of a finished experiment came to (:func:`trial_outcomes`)
    outcomes = staticmethod(trial_outcomes)

    def stage_memory(self, stage: str, default_batch: int):
        """(batch size, Ray resources) of ``stage``'s trials from the memory plan."""
        plan = self.memory.get(stage)
        if plan is None:
            return default_batch, self.trial_resources()
        return plan.batch_size, self.trial_resources(plan.bytes)

    def experiment_path(self, name: str) -> str:
        return str(Path(self.cfg.storage_path) / name)

    def trial_resources(self, memory_bytes: Callable[[dict], int] | int | None = None):
        """Ray resources of one trial: CPUs, GPUs and memory (a callable: per trial config)."""
        from ray import tune

        r = self.cfg.resources
        fixed = int(r.memory_per_trial_gb * 2**30)

        def bundle(memory: int) -> dict:
            b = {"CPU": r.cpus_per_trial}
            if r.gpus_per_trial:
                b["GPU"] = r.gpus_per_trial
            if memory:
                b["memory"] = memory
            return b

        if fixed or not callable(memory_bytes):
            return tune.PlacementGroupFactory([bundle(fixed or int(memory_bytes or 0))])
        limit, share = self.memory_limit, self.memory_share
        return lambda config: tune.PlacementGroupFactory([bundle(memory_bucket(memory_bytes(config), limit, share))])

    def run_tuner(self, name: str, trainable, *, param_space=None, tune_config=None, resources=None,
                  metric: str | None = None, mode: str = "max", reuse_actors: bool = True):
        """Fit experiment ``name`` fresh, or restore and finish it when the run is resumed.

        Errored trials of a restored experiment stay errored (their failure is a result and
        is never trained again); trials whose worker died are retried ``TRIAL_RETRIES`` times.
        Trials reuse their worker process (no fresh torch import per trial; TuneConfig's
        ``reuse_actors`` default cannot be told from an explicit False, so it is this keyword)
        and run ``--max-concurrent`` at a time unless ``tune_config`` sets
        ``max_concurrent_trials``. A :class:`~ray.tune.search.Searcher` passed as
        ``tune_config.search_alg`` holds the experiment's final state on return: fresh, it is
        the object Tune ran; restored (Tune ran its own unpickled copy) or over Ray Client
        (Tune ran in another process), it is restored from the state Tune saved.
        """
        import ray
        from ray import tune
        from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
        from ray.tune.search import Searcher

        from orchestrator.status import StatusCallback
        from orchestrator.tensorboard import EpochTBXLogger

        path = self.experiment_path(name)
        tune_config = tune_defaults(tune_config or tune.TuneConfig(), self.cfg.resources.max_concurrent,
                                    reuse_actors and self.cfg.resources.reuse_workers)
        trainable = tune.with_resources(trainable, resources if resources is not None else self.trial_resources())
        restored = tune.Tuner.can_restore(path)
        if restored:
            if not self.cfg.resume:
                raise RunError(f"an experiment already exists at {path}; pass --resume to continue it "
                               f"or choose another --out")
            tuner = tune.Tuner.restore(path, trainable=trainable, param_space=param_space, resume_unfinished=True,
                                       resume_errored=False, restart_errored=False)
        else:
            tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=tune.RunConfig(
                name=name, storage_path=self.cfg.storage_path, verbose=1, progress_reporter=progress_reporter(metric, mode),
                failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
                callbacks=[JsonLoggerCallback(), CSVLoggerCallback(), EpochTBXLogger(), StatusCallback(str(self.out), name, self.stage, metric, mode)]))
        grid = tuner.fit()
        searcher = tune_config.search_alg
        if isinstance(searcher, Searcher) and (restored or ray.util.client.ray.is_connected()):
            searcher.restore_from_dir(path)
        return grid

    def require_finished(self, searcher, name: str) -> None:
        """Refuse to report on a search that stopped early (Tune also ends a run on SIGUSR1)."""
        if not searcher.is_finished:
            raise RunError(f"the {name} experiment stopped before its searcher finished; everything "
                           f"evaluated is saved in {self.experiment_path(name)}; rerun with --resume")


def trial_name(trial) -> str:
    """Trial folders end in the trial id (so errors can be matched to trials); a candidate
    number, when the config has one, says which candidate it is."""
    cfg = trial.config
    tag = f"cand{cfg['candidate']:04d}" if "candidate" in cfg else trial.trainable_name.split("_")[0]
    return f"{tag}_{trial.trial_id}"


def trial_errors(grid) -> dict[str, str]:
    """trial_id -> one-line reason of every errored trial of a ResultGrid (Tune saw these, the
    searcher only saw ``error=True``). A worker killed by Ray's memory monitor is 'out of memory'."""
    return {result_trial_id(r): describe_error(r.error) for r in grid if r.error is not None}


def result_trial_id(result) -> str:
    """The trial id of a Result, also for a trial that errored before reporting anything
    (its folder, named by :func:`trial_name`, ends in the id: ``<experiment>_<counter>``)."""
    return (result.metrics or {}).get("trial_id") or "_".join(Path(result.path).name.split("_")[-2:])


def describe_error(error: BaseException) -> str:
    from medcore.records import OUT_OF_MEMORY

    text = f"{type(error).__name__}: {error}"
    if "OutOfMemoryError" in text or "memory monitor" in text.lower() or "out of memory" in text.lower():
        return OUT_OF_MEMORY
    cause = getattr(error, "cause", None)
    if cause is not None and cause is not error:
        text = f"{type(cause).__name__}: {cause}"
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]
