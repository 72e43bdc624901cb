"""ODE through a real Tuner vs uniform random genomes on an analytic function, equal budget,
several seeds (a comparison over seeds: a benchmark, not a test).

    .venv/bin/python -m benchmarks.ode_vs_random [--seeds 0 1 2] [--budget 60]
"""
from __future__ import annotations

import argparse
import tempfile

import numpy as np

TARGET = np.linspace(0.1, 0.9, 29)


def sphere(genome) -> float:
    return -float(np.sum((np.asarray(genome) - TARGET) ** 2))


class GenomeSpace:
    """Every genome feasible; identity = genes rounded to 3 decimals."""

    dims, name = 29, "genes"

    def decode(self, genome):
        from searchers.cell_space import Decoded

        class _Key(Decoded):
            key = property(lambda self: self.reason)

        return _Key(None, True, ",".join(f"{g:.3f}" for g in genome))

    def config(self, decoded):
        return {}


def _trainable(config):
    from ray import tune

    tune.report({"best_val_acc": sphere(config["genome"]), "status": "ok"})


def main() -> None:
    import ray
    from ray import tune

    from searchers.ode import ODESearcher

    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget", type=int, default=60)
    args = p.parse_args()
    ray.init(address="local", num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            searcher = ODESearcher(space=GenomeSpace(), pop_size=10, budget=args.budget, seed=seed)
            grid = tune.Tuner(tune.with_resources(_trainable, {"cpu": 0.25}),
                              tune_config=tune.TuneConfig(search_alg=searcher, num_samples=args.budget),
                              run_config=tune.RunConfig(name=f"ode{seed}", storage_path=tmp, verbose=0)).fit()
            ode_best = max(r.metrics["best_val_acc"] for r in grid)
            rng = np.random.default_rng(100 + seed)
            random_best = max(sphere(rng.random(29)) for _ in range(args.budget))
            print(f"seed {seed}: ODE best {ode_best:.4f}  random best {random_best:.4f}  "
                  f"gap {ode_best - random_best:+.4f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
