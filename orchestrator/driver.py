"""The generic driver: runs any registered search end to end.

Order matters and is the same for every search: validate the config; check the run folder
(``--out`` usable, ``--data-root`` not a file); take the run folder's lock (one driver per
folder, whatever the timing); check the folder holds this search's run (or none, or a run
to ``--resume``); load the data once; start or join Ray; refuse per-trial requests the
cluster cannot satisfy; run the stages (each stage's output kept for the next and written to
``stages/<stage>.json``); summarise; write the zoo; and refuse a run where every candidate
failed. Every refusal is one line (a MedtuneError) before work starts.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from medcore.errors import ConfigError, RunError, SearchFailed
from orchestrator import atomic, registry, status
from orchestrator.config import is_uri
from orchestrator.runlock import RunLock
from orchestrator.runtime import (check_reachable, check_trial_fits, largest_node_memory, local_node_cpus,
                                  local_node_memory, memory_share, node_capacities,
                                  ray_session, sigterm_as_interrupt)
from orchestrator.search import RunContext, Search, Stage, output_to_json

MANIFEST = "run.json"
STAGES = "stages"  # <out>/stages/<stage>.json: each finished stage's output


def run_search(search: str | Search, cfg, data=None) -> dict:
    """Run (or ``cfg.resume``) one search; returns the summary written to ``summary.json``."""
    if isinstance(search, str):
        search = registry.get(search)
    if not isinstance(cfg, search.config_cls):
        raise ConfigError(f"the {search.name} search takes a {search.config_cls.__name__}, "
                          f"got {type(cfg).__name__}")
    cfg.validate()
    out = prepare_folder(cfg)
    with RunLock(out, what=f"{search.name} driver"):
        manifest = check_manifest(search, cfg, out)
        started = time.time()
        status.update_status(out, search=search.name, state=status.RUNNING, stage=None, error=None,
                             pid=os.getpid(), started=started, stages={s: {"state": "pending"}
                                                                         for s in search.stage_names})
        try:
            summary = _run(search, cfg, data, out, manifest, started)
        except KeyboardInterrupt:
            status.update_status(out, state=status.INTERRUPTED)
            raise
        except BaseException as exc:
            status.update_status(out, state=status.FAILED, error=f"{type(exc).__name__}: {exc}"[:500])
            raise
        status.update_status(out, state=status.DONE, stage=None)
    evaluated, ok, reasons = search.failure_counts(summary)
    if evaluated and not ok:
        counted = ", ".join(f"{n} x {reason}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
        raise SearchFailed(f"every candidate failed ({evaluated} of {evaluated}: {counted}); results in {out}")
    return summary


def _run(search: Search, cfg, data, out: Path, manifest: dict, started: float) -> dict:
    address = cfg.resources.address or os.environ.get("RAY_ADDRESS")
    if address:
        check_reachable(address)  # an unreachable or token-refusing cluster, before the data loads
    if data is None:
        data = search.load_data(cfg)
    ctx = RunContext(search=search, cfg=cfg, data=data, run_id=manifest["run"])
    if not address:  # a local Ray: its memory is known before it starts
        memory = local_node_memory()
        plan_memory(search, ctx, memory, [{"CPU": local_node_cpus(), "memory": memory}])
    # after ray.init: it installs a SIGTERM handler of its own that exits at once
    with ray_session(cfg.resources.address, cfg.resources.jemalloc), sigterm_as_interrupt():
        r = cfg.resources
        check_trial_fits(r.cpus_per_trial, r.gpus_per_trial, r.memory_per_trial_gb * 2**30, r.autoscale)
        if address:
            plan_memory(search, ctx, largest_node_memory(), node_capacities())
        # the run exists from here on: everything before was a check that leaves nothing behind
        atomic.write_json(out / MANIFEST, manifest)
        for stage in search.stages(ctx):
            ctx.stage = stage.name
            status.update_status(out, stage=stage.name, stages={stage.name: {"state": status.RUNNING}})
            keep_output(ctx, stage, stage.run(ctx))
            status.update_status(out, stages={stage.name: {"state": status.DONE}})
    summary = search.summarize(ctx)
    summary.update(out=str(out), run=ctx.run_id, wall_time_s=round(time.time() - started, 1))
    if ctx.memory:
        summary["memory"] = {stage: plan.to_dict() for stage, plan in ctx.memory.items()}
    records = search.zoo_records(ctx)
    if records:
        summary["zoo"] = write_zoo(ctx, records)
    atomic.write_json(out / "summary.json", summary)
    return summary


def keep_output(ctx: RunContext, stage: Stage, output) -> None:
    """``output`` as ``ctx.outputs[stage]`` and, its persisted fields, in ``<out>/stages/<stage>.json``
    (rewritten when a resumed run re-runs the stage). A stage must return what it declares."""
    if stage.output is None:
        if output is not None:
            raise TypeError(f"stage {stage.name} declares no output but returned a {type(output).__name__}")
        return
    if not isinstance(output, stage.output):
        raise TypeError(f"stage {stage.name} returned a {type(output).__name__}, not a {stage.output.__name__}")
    ctx.outputs[stage.name] = output
    folder = ctx.out / STAGES
    folder.mkdir(exist_ok=True)
    atomic.write_json(folder / f"{stage.name}.json", output_to_json(output))


def plan_memory(search: Search, ctx: RunContext, node_memory: float, nodes: list[dict] | None = None) -> None:
    """Size every stage's trials before any starts (:meth:`Search.plan_memory`) against the
    largest node, or the fixed ``--memory-per-trial-gb`` when set; with ``--autoscale`` a larger
    node may come, so nothing is capped. A lowered batch is said on stderr. A trial's fair share
    of the ``nodes`` (:func:`orchestrator.runtime.memory_share`) is what per-trial requests that
    fit in it ask for (:func:`orchestrator.search.memory_bucket`)."""
    import sys

    r = ctx.cfg.resources
    limit = r.memory_per_trial_gb * 2**30 or (None if r.autoscale else node_memory)
    ctx.memory_limit = limit
    ctx.memory_share = memory_share(r.cpus_per_trial, nodes or []) if limit else None
    ctx.memory = search.plan_memory(ctx, limit)
    for plan in ctx.memory.values():
        if plan.lowered:
            print(f"medtune: {plan.describe()}", file=sys.stderr, flush=True)


def write_zoo(ctx: RunContext, records) -> dict:
    """Every evaluated model of the run into the zoo, one file per stage (rewritten on resume)."""
    from orchestrator import zoo

    info = ctx.data.info
    rows = zoo.rows_from_records(records, dataset=info.flag, size=info.size, spatial_dims=info.spatial_dims,
                                 task=info.task, input_shape=list(info.input_shape), run=ctx.run_id,
                                 synthetic=bool(info.synthetic))
    by_stage: dict[str, list] = {}
    for row in rows:
        by_stage.setdefault(row["stage"], []).append(row)
    for stage, stage_rows in by_stage.items():
        zoo.write_rows(ctx.cfg.zoo_path, stage_rows, writer_id=f"{ctx.run_id}-{ctx.search.name}-{stage}")
    return {"path": ctx.cfg.zoo_path, "rows": len(rows)}


def prepare_folder(cfg) -> Path:
    """Make ``--out``; refuse in one line an --out that is a file, lies under a file or cannot
    be written, and a --data-root that is a file."""
    out = cfg.out_dir
    for location, name in ((str(out), "out"), (cfg.storage_path, "storage"), (cfg.zoo_path, "zoo")):
        if not is_uri(location):
            _check_dir(Path(location), name)
    if cfg.data_root is not None:
        root = Path(cfg.data_root).expanduser()
        if root.exists() and not root.is_dir():
            raise ConfigError(f"{root} is a file; it must be the folder that holds the dataset files", "data_root")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {out}: {exc.strerror}", "out") from None
    return out


def _check_dir(path: Path, name: str) -> None:
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} is a file, not a folder", name)
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{path} lies under {parent}, which is a file", name)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{parent} is not writable", name)


def check_manifest(search: Search, cfg, out: Path) -> dict:
    """The run folder holds this search's run, or nothing: returns its manifest (a new one
    is written once the run's checks have passed).

    Refused: a folder holding another search's run, or a run.json that is no search's manifest
    (the coordinator's, one without a search name or run id); ``--resume`` where there is nothing to
    resume; a fresh start over an existing run (it would be overwritten).
    """
    path = out / MANIFEST
    manifest = atomic.read_json(path)
    if manifest is None and _has_experiments(cfg):
        raise RunError(f"{out} holds a run medtune cannot identify (Tune state without {MANIFEST}); "
                       f"choose another --out")
    broken = None if manifest is None else _not_a_search_manifest(manifest)
    if broken:
        raise RunError(f"{out} holds {broken}; choose another --out")
    if manifest is not None and manifest["search"] != search.name:
        raise RunError(f"{out} holds a '{manifest['search']}' run, not a '{search.name}' run; "
                       f"choose another --out")
    if manifest is not None and not (isinstance(manifest.get("run"), str) and manifest["run"]):
        raise RunError(f"{out} holds a '{search.name}' {MANIFEST} without a run id (its 'run' field); "
                       f"choose another --out")
    if cfg.resume and manifest is None:
        raise RunError(f"nothing to resume in {out} (no run there); drop --resume to start a new run")
    if not cfg.resume and manifest is not None:
        raise RunError(f"{out} already holds a {search.name} run; pass --resume to continue it or choose "
                       f"another --out")
    if manifest is None:
        manifest = {"search": search.name, "run": f"{search.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
                    "created": time.time(), "config": cfg.to_dict()}
    return manifest


def _not_a_search_manifest(manifest) -> str | None:
    """What a run folder's run.json holds when it is not a search's manifest, in words; None when
    it is one (a JSON object naming its search)."""
    if not isinstance(manifest, dict):
        return f"a {MANIFEST} that is not a JSON object (a {type(manifest).__name__})"
    if "searches" in manifest:  # orchestrator.manifest: the coordinator's, one folder above the searches'
        return f"a spec run (the coordinator's {MANIFEST}, from `medtune run`), not one search's run"
    if not (isinstance(manifest.get("search"), str) and manifest["search"]):
        return f"a {MANIFEST} without a search name (its 'search' field)"
    return None


def _has_experiments(cfg) -> bool:
    storage = Path(cfg.storage_path)
    return storage.is_dir() and any(p.is_dir() for p in storage.iterdir())
