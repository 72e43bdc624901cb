"""A trial worker killed by Ray's memory monitor is a failed candidate ('out of memory'), and the
search goes on: through the generic driver, with a test-only search whose one trial allocates
a few GB while the others stay small."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from medcore.records import FAILED, OK, OUT_OF_MEMORY
from orchestrator import registry
from orchestrator.config import SearchConfig
from orchestrator.schema import opt
from orchestrator.driver import run_search
from orchestrator.search import Search, Stage, result_trial_id, trial_errors
from tests.conftest import release_shared_ray

# Memory the monitor's threshold leaves above what the machine uses before Ray starts: room for
# Ray's own processes (about 1 GB with a trial worker) and for other processes on the machine,
# whose growth counts too (the monitor watches the whole node): at 2 GB, other test sessions'
# trials pushed the node over it and the monitor killed this test's small trials.
HEADROOM_GB = 5.0
# The hog grows in steps up to this much above the threshold; the monitor kills it on the way.
OVERSHOOT_GB = 4.0


@dataclass
class HogConfig(SearchConfig):
    out: str = opt("results/hog", "run folder")
    n_trials: int = opt(3, "trials")
    hog: int = opt(1, "the candidate that allocates hog_gb")
    hog_gb: float = opt(HEADROOM_GB + OVERSHOOT_GB, "GB the hog allocates (and touches) before it would report")


def hog_trainable(config, hog: int, hog_gb: float):
    """Candidate ``hog`` fills ``hog_gb`` GB in 256 MB steps and holds it for a minute (the monitor
    should kill it once the node crosses the threshold); every other candidate reports at once."""
    import numpy as np
    from ray import tune

    if config["candidate"] == hog:
        blocks = []
        for _ in range(int(hog_gb * 4)):
            blocks.append(np.ones(2**25))  # 256 MB, every page written
            time.sleep(0.02)
        time.sleep(60)
    tune.report({"score": float(config["candidate"])})


@dataclass
class HogOutput:
    """candidate -> (status, reason) of every trial."""

    rows: dict[int, tuple[str, str]]


class HogSearch(Search):
    name = "memhog"
    description = "test-only: one trial exceeds the memory monitor's threshold"
    config_cls = HogConfig
    stage_names = ("search",)

    def stages(self, ctx):
        return [Stage("search", self.search, HogOutput)]

    def search(self, ctx):
        from ray import tune

        cfg = ctx.cfg
        trainable = tune.with_parameters(hog_trainable, hog=cfg.hog, hog_gb=cfg.hog_gb)
        # one trial at a time: the hog is then the only worker the monitor can pick
        grid = ctx.run_tuner("memhog", trainable, param_space={
            "candidate": tune.grid_search(list(range(cfg.n_trials)))},
            tune_config=tune.TuneConfig(max_concurrent_trials=1), metric="score")
        errors = trial_errors(grid)
        # a trial killed before it reported has no config in its Result: its folder names the candidate
        return HogOutput({int(Path(r.path).name[4:8]): (FAILED, errors[result_trial_id(r)]) if r.error
                          else (OK, "") for r in grid})

    def summarize(self, ctx):
        rows = ctx.output(HogOutput).rows
        reasons: dict[str, int] = {}
        for status, reason in rows.values():
            if status == FAILED:
                reasons[reason] = reasons.get(reason, 0) + 1
        return {"search": self.name, "dataset": ctx.cfg.dataset, "synthetic": False, "n_evaluated": len(rows),
                "n_ok": sum(s == OK for s, _ in rows.values()), "failure_reasons": reasons,
                "rows": {str(i): list(v) for i, v in sorted(rows.items())}}

    def load_data(self, cfg):
        return None


def used_fraction() -> float:
    """Node memory in use as Ray's monitor counts it: (total - available) / total."""
    vm = psutil.virtual_memory()
    return (vm.total - vm.available) / vm.total


@pytest.mark.cluster
def test_a_worker_killed_by_the_memory_monitor_is_an_out_of_memory_candidate(tmp_path, monkeypatch):
    import ray

    total = psutil.virtual_memory().total
    if used_fraction() + (HEADROOM_GB + 2) * 2**30 / total > 0.95:
        pytest.skip(f"needs about {HEADROOM_GB + 2:g} GB of free memory")
    monkeypatch.setitem(registry.SEARCHES, "memhog", f"{__name__}:HogSearch")
    threshold = used_fraction() + HEADROOM_GB * 2**30 / total
    release_shared_ray()
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _system_config={"memory_usage_threshold": threshold, "memory_monitor_refresh_ms": 100})
    try:
        summary = run_search("memhog", HogConfig(out=str(tmp_path / "run"), n_trials=3, hog=1))
    finally:
        ray.shutdown()
    assert summary["rows"] == {"0": [OK, ""], "1": [FAILED, OUT_OF_MEMORY], "2": [OK, ""]}, summary
    assert summary["failure_reasons"] == {OUT_OF_MEMORY: 1}
