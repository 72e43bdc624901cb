"""Per-trial overhead of a search run through ``medtune run`` (coordinator -> driver process ->
``RunContext.run_tuner``) against a bare ``tune.Tuner`` with the same trainable.

    .venv/bin/python -m benchmarks.coordinator_overhead [--trials 20 --seconds 2]

The trainable sleeps ``--seconds`` and reports when it started and ended; both runs take one
1-CPU trial at a time with actor reuse. The figure is the trial span (first start to last end)
through the coordinator over the bare span, minus 1 (target <= 5%), and the gap between trials
in each. Fixed costs (starting the Ray node and the driver process, the report) are printed
apart: they do not grow with the number of trials.

The ``sleep`` search exists only here. The coordinator starts each driver as ``python -m
orchestrator.cli search TYPE``, so the search is registered in those processes by a
``sitecustomize.py`` on ``PYTHONPATH`` (Python's start-up hook), written to a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import emit, machine
from orchestrator.config import SearchConfig
from orchestrator.schema import opt
from orchestrator.search import Search, Stage

ROOT = Path(__file__).resolve().parent.parent
SITE = """try:
    from orchestrator import registry
    registry.SEARCHES.setdefault("sleep", "benchmarks.coordinator_overhead:SleepSearch")
except ImportError:
    pass
"""


@dataclass
class SleepConfig(SearchConfig):
    out: str = opt("results/sleep", "run folder")
    trials: int = opt(20, "trials")
    seconds: float = opt(2.0, "seconds each trial sleeps")


def sleep_trainable(config):
    from ray import tune

    start = time.time()
    time.sleep(config["seconds"])
    tune.report({"score": float(config["i"]), "t_start": start, "t_end": time.time()})


def tune_config():
    from ray import tune

    return tune.TuneConfig(max_concurrent_trials=1, reuse_actors=True)


@dataclass
class SleepOutput:
    n: int  # trials run


class SleepSearch(Search):
    name = "sleep"
    description = "benchmark only: trials that sleep"
    config_cls = SleepConfig
    stage_names = ("sleep",)

    def load_data(self, cfg):
        return None

    def stages(self, ctx):
        return [Stage("sleep", self.run, SleepOutput)]

    def run(self, ctx):
        from ray import tune

        grid = ctx.run_tuner("sleep", sleep_trainable, tune_config=tune_config(), metric="score", param_space={
            "seconds": ctx.cfg.seconds, "i": tune.grid_search(list(range(ctx.cfg.trials)))})
        return SleepOutput(len(grid))

    def summarize(self, ctx):
        n = ctx.output(SleepOutput).n
        return {"search": "sleep", "dataset": ctx.cfg.dataset, "synthetic": False, "n_evaluated": n, "n_ok": n}


def spans(experiment: Path) -> dict:
    """First start to last end of the trials stored in ``experiment``, and the mean gap between trials."""
    rows = []
    for result in experiment.glob("*/result.json"):
        lines = [ln for ln in result.read_text().splitlines() if ln.strip()]
        last = json.loads(lines[-1])
        rows.append((last["t_start"], last["t_end"]))
    rows.sort()
    span = rows[-1][1] - rows[0][0]
    gaps = [b[0] - a[1] for a, b in zip(rows, rows[1:])]
    return {"trials": len(rows), "span_s": span, "mean_gap_s": sum(gaps) / len(gaps)}


def bare(trials: int, seconds: float, storage: str) -> dict:
    from ray import tune

    from orchestrator.runtime import ray_session

    t = time.perf_counter()
    with ray_session(jemalloc=False):
        tuner = tune.Tuner(tune.with_resources(sleep_trainable, tune.PlacementGroupFactory([{"CPU": 1}])),
                           param_space={"seconds": seconds, "i": tune.grid_search(list(range(trials)))},
                           tune_config=tune_config(),
                           run_config=tune.RunConfig(storage_path=storage, name="bare", verbose=0))
        assert not tuner.fit().errors
    return {"wall_s": time.perf_counter() - t, **spans(Path(storage) / "bare")}


def through_coordinator(trials: int, seconds: float, folder: Path) -> dict:
    import yaml

    from orchestrator.coordinator import core
    from orchestrator.data import SAMPLE_FLAG, SAMPLE_ROOT

    spec = folder / "spec.yaml"
    spec.write_text(yaml.safe_dump({"searches": [{
        "name": "sleep", "type": "sleep", "dataset": SAMPLE_FLAG, "data_root": str(SAMPLE_ROOT), "trials": trials,
        "seconds": seconds, "resources": {"cpus_per_trial": 1, "max_concurrent": 1, "jemalloc": False}}]}))
    t = time.perf_counter()
    code = core.run(str(spec), str(folder / "run"))
    wall = time.perf_counter() - t
    assert code == 0, (folder / "run" / "sleep" / "driver.log").read_text()[-3000:]
    status = json.loads((folder / "run" / "sleep" / "status.json").read_text())
    return {"wall_s": wall, "driver_s": status["updated"] - status["started"],
            **spans(folder / "run" / "sleep" / "tune" / "sleep")}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seconds", type=float, default=2.0)
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="coordinator_overhead_"))
    (folder / "site").mkdir()
    (folder / "site" / "sitecustomize.py").write_text(SITE)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(folder / "site"), str(ROOT),
                                                *filter(None, [os.environ.get("PYTHONPATH")])])
    os.environ.pop("RAY_ADDRESS", None)
    sys.path.insert(0, str(folder / "site"))
    import sitecustomize  # noqa: F401  (registers the search in this process too)

    plain = bare(args.trials, args.seconds, str(folder / "bare"))
    coord = through_coordinator(args.trials, args.seconds, folder)
    emit("coordinator_overhead", {
        "trials": args.trials, "seconds_per_trial": args.seconds, "bare_tuner": plain, "coordinator": coord,
        "span_ratio_minus_1": coord["span_s"] / plain["span_s"] - 1,
        "per_trial_overhead_s": (coord["span_s"] - plain["span_s"]) / args.trials,
        "fixed_cost_s": coord["wall_s"] - coord["span_s"] - (plain["wall_s"] - plain["span_s"]),
        "folder": str(folder), "machine": machine()})


if __name__ == "__main__":
    main()
