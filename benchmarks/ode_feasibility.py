"""How fast the ODE searcher finds trainable cells inside a FLOPs window: Deb's feasibility rules
(infeasible candidates ranked by violation, the default) vs every infeasible candidate tied at
the worst fitness (the earlier behaviour), on the demo's space (28^3, 0.06-0.2 GFLOPs, <= 9 edges).

No training: a candidate's fitness is a fixed pseudo-random number per architecture (a proxy
that favours no region), so the figures measure only how the search reaches the window:
candidates trained of the budget, draws spent, restarts, over seeds.

    python -m benchmarks.ode_feasibility --seeds 10 --budget 8 --pop-size 8
"""
from __future__ import annotations

import argparse
import hashlib
import statistics

from benchmarks.common import emit


class Tied:
    """Wraps a space and a feasibility rule so every infeasible candidate has violation 0:
    selection then sees them all at the same worst fitness (no constraint handling)."""

    def __init__(self, space, rule):
        self.space, self.rule = space, rule
        self.dims, self.name = space.dims, space.name

    def decode(self, genome):
        d = self.space.decode(genome)
        return d if d.feasible else type(d)(None, False, d.reason, 0.0)

    def config(self, decoded):
        return self.space.config(decoded)

    def check(self, config):
        refused = self.rule(config)
        return None if refused is None else type(refused)(refused.reason, 0.0)


def proxy_fitness(config: dict) -> float:
    key = repr(sorted(config["architecture"].items())).encode()
    return int(hashlib.sha256(key).hexdigest()[:8], 16) / 16**8


def run(seed: int, budget: int, pop_size: int, tied: bool, rule) -> dict:
    from searchers.cell_space import CellSpace
    from searchers.ode import ODESearcher

    space, fn = CellSpace(), rule
    if tied:
        wrapped = Tied(space, rule)
        space, fn = wrapped, wrapped.check
    s = ODESearcher(space=space, metric="fitness", pop_size=pop_size, budget=budget, seed=seed, feasibility_fn=fn)
    n = 0
    while True:
        cfg = s.suggest(f"t{n}")
        if cfg is None or cfg == ODESearcher.FINISHED:
            if cfg == ODESearcher.FINISHED or not s.trial_to_record:
                break
            tid = next(iter(s.trial_to_record))
            s.on_trial_complete(tid, {"fitness": proxy_fitness(s.history[s.trial_to_record[tid]]["config"]),
                                      "status": "ok"})
            continue
        n += 1
    return {"trained": len(s.evaluated()), "draws": len(s.history), "restarts": s.restarts}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--budget", type=int, default=8)
    p.add_argument("--pop-size", type=int, default=8)
    p.add_argument("--min-gflops", type=float, default=0.06)
    p.add_argument("--max-gflops", type=float, default=0.2)
    p.add_argument("--out", default=None, help="also write the figures to this JSON file")
    a = p.parse_args(argv)

    from orchestrator.config import ODESearchConfig, Resources
    from orchestrator.data import load_sample
    from orchestrator.searches.ode import FeasibilityRule
    from trainables.ode_trial import CandidateCost

    cfg = ODESearchConfig(min_gflops=a.min_gflops, max_gflops=a.max_gflops,
                          resources=Resources(memory_per_trial_gb=1)).validate()
    rule = FeasibilityRule(cfg, CandidateCost(load_sample().info, cfg.fit.batch_size, 100))
    figures = {"budget": a.budget, "pop_size": a.pop_size, "window_gflops": [a.min_gflops, a.max_gflops]}
    for name, tied in (("violation_ranked", False), ("tied_worst", True)):
        runs = [run(seed, a.budget, a.pop_size, tied, rule) for seed in range(a.seeds)]
        figures[name] = {"budget_reached": sum(r["trained"] == a.budget for r in runs),
                         "trained_median": statistics.median(r["trained"] for r in runs),
                         "trained": [r["trained"] for r in runs],
                         "draws_median": statistics.median(r["draws"] for r in runs),
                         "restarts_median": statistics.median(r["restarts"] for r in runs)}
    emit("ode_feasibility", figures, a.out)


if __name__ == "__main__":
    main()
