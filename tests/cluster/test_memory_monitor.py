"""A trial worker killed by Ray's memory monitor is a failed candidate ('out of memory'), and the
search goes on: through the generic driver, with a test-only search whose one trial allocates
a few GB while the others stay small."""
from __future__ import annotations

import time
from dataclasses import dataclass

import psutil
import pytest

from medcore.records import FAILED, OK, OUT_OF_MEMORY
from orchestrator import registry
from orchestrator.config import SearchConfig, opt
from orchestrator.driver import run_search
from orchestrator.search import Search, Stage, result_trial_id, trial_errors

# Memory the monitor's threshold leaves above what the machine uses before Ray starts: room for
# Ray's own processes, the trial workers and other processes' drift, far below the hog's share.
HEADROOM_GB = 2.0
HOG_GB = 6.0


@dataclass
class HogConfig(SearchConfig):
    out: str = opt("results/hog", "run folder")
    n_trials: int = opt(3, "trials")
    hog: int = opt(1, "index of the trial that allocates hog_gb")
    hog_gb: float = opt(HOG_GB, "GB the hog allocates (and touches) before it would report")


def hog_trainable(config, hog: int, hog_gb: float):
    """Trial ``hog`` fills ``hog_gb`` GB and holds it for a minute (the monitor should kill it
    within a second); every other trial reports at once."""
    import numpy as np
    from ray import tune

    if config["i"] == hog:
        block = np.ones(int(hog_gb * 2**30) // 8)
        time.sleep(60)
        del block
    tune.report({"score": float(config["i"])})


class HogSearch(Search):
    name = "memhog"
    description = "test-only: one trial exceeds the memory monitor's threshold"
    config_cls = HogConfig
    stage_names = ("search",)

    def stages(self, ctx):
        return [Stage("search", self.search)]

    def search(self, ctx):
        from ray import tune

        cfg = ctx.cfg
        trainable = tune.with_parameters(hog_trainable, hog=cfg.hog, hog_gb=cfg.hog_gb)
        # one trial at a time: the hog is then the only worker the monitor can pick
        grid = ctx.run_tuner("memhog", trainable, param_space={"i": tune.grid_search(list(range(cfg.n_trials)))},
                             tune_config=tune.TuneConfig(max_concurrent_trials=1), metric="score")
        errors = trial_errors(grid)
        ctx.state["rows"] = {r.config["i"]: (FAILED, errors[result_trial_id(r)]) if r.error else (OK, "")
                             for r in grid}

    def summarize(self, ctx):
        rows = ctx.state["rows"]
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
    if used_fraction() + (HEADROOM_GB + HOG_GB + 1) * 2**30 / total > 0.95:
        pytest.skip(f"needs about {HEADROOM_GB + HOG_GB + 1:g} GB of free memory")
    monkeypatch.setitem(registry.SEARCHES, "memhog", f"{__name__}:HogSearch")
    threshold = used_fraction() + HEADROOM_GB * 2**30 / total
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _system_config={"memory_usage_threshold": threshold, "memory_monitor_refresh_ms": 100})
    try:
        started = time.time()
        summary = run_search("memhog", HogConfig(out=str(tmp_path / "run"), n_trials=3, hog=1))
        took = time.time() - started
    finally:
        ray.shutdown()
    assert summary["rows"] == {"0": [OK, ""], "1": [FAILED, OUT_OF_MEMORY], "2": [OK, ""]}, summary
    assert summary["failure_reasons"] == {OUT_OF_MEMORY: 1}
    assert took < 60  # killed by the monitor, not finished after its minute of holding memory
