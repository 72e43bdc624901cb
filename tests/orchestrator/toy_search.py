"""A tiny search for testing the generic driver: ``n_trials`` trials of an instant trainable
that appends its index to ``<out>/runs.log`` and fails where ``fail`` says so. Registered
under the name ``toy`` by the tests that use it (never by the product)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from medcore.records import FAILED, OK
from orchestrator.config import SearchConfig
from orchestrator.schema import opt
from orchestrator.search import Search, Stage, result_trial_id, trial_errors


@dataclass
class ToyOutput:
    """The search stage's output: one row (index, status, reason) per trial."""

    rows: list[dict]


@dataclass
class ToyConfig(SearchConfig):
    out: str = opt("results/toy", "run folder")
    n_trials: int = opt(3, "trials")
    fail: str = opt("", "indices that raise (comma separated), or 'all'")
    sleep: float = opt(0.0, "seconds each trial sleeps")

    def medmnist_flags(self) -> list[str]:
        return []  # the toy reads no data


def finished_trials(out: Path, before: float | None = None) -> set[int]:
    """The toy index of every trial of the run in ``out`` whose result Tune recorded (its one
    report: it finished); with ``before`` (a time.time()), only those recorded before it."""
    done = set()
    for result in (Path(out) / "tune" / "toy").glob("*/result.json"):
        if result.read_text().strip() and (before is None or result.stat().st_mtime < before):
            done.add(json.loads((result.parent / "params.json").read_text())["i"])
    return done


def toy_trainable(config, log: str, fail: str, sleep: float):
    from ray import tune

    with open(log, "a") as f:
        f.write(f"{config['i']}\n")
    time.sleep(sleep)
    if fail == "all" or str(config["i"]) in fail.split(","):
        raise RuntimeError(f"toy failure {config['i']}")
    tune.report({"score": float(config["i"]), "status": "ok"})


class ToySearch(Search):
    name = "toy"
    description = "test-only search"
    config_cls = ToyConfig
    stage_names = ("search",)

    def load_data(self, cfg):
        return None  # the toy reads no data

    def stages(self, ctx):
        return [Stage("search", self.search, ToyOutput)]

    def search(self, ctx):
        from ray import tune

        cfg = ctx.cfg
        trainable = tune.with_parameters(toy_trainable, log=str(Path(cfg.out_dir) / "runs.log"), fail=cfg.fail,
                                         sleep=cfg.sleep)
        grid = ctx.run_tuner("toy", trainable, param_space={"i": tune.grid_search(list(range(cfg.n_trials)))},
                             metric="score")
        errors = trial_errors(grid)
        # a restored errored trial's Result has no config: its index is not needed to count it
        return ToyOutput([{"i": (r.config or {}).get("i"), "status": FAILED if r.error else OK,
                           "reason": errors.get(result_trial_id(r), "")} for r in grid])

    def summarize(self, ctx):
        rows = ctx.output(ToyOutput).rows
        failed = [r for r in rows if r["status"] == FAILED]
        reasons = {}
        for r in failed:
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        return {"search": "toy", "dataset": ctx.cfg.dataset, "synthetic": False, "n_evaluated": len(rows),
                "n_ok": len(rows) - len(failed), "failure_reasons": reasons}
