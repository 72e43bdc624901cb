"""Benchmark 2: one generation of 8 candidates through Tune at 1 vs 2 concurrent trials.

    .venv/bin/python -m benchmarks.parallel_scaling [--epochs 2]
Each trial gets 1 CPU and torch uses that many threads; target speedup >= 1.7x on 2 cores.
"""
from __future__ import annotations

import argparse
import tempfile
import time

from benchmarks.common import emit, machine, sample_architectures
from orchestrator.data import load_sample
from orchestrator.runtime import ray_session


def run_generation(archs, data, fit_config, concurrent: int, storage: str) -> float:
    from ray import tune

    from trainables.ode_trial import train_candidate

    trainable = tune.with_resources(tune.with_parameters(train_candidate, data=data, fit_config=fit_config),
                                    {"cpu": 1})
    tuner = tune.Tuner(trainable, param_space={"architecture": tune.grid_search([a["architecture"] for a in archs])},
                       tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, reuse_actors=True),
                       run_config=tune.RunConfig(storage_path=storage, name=f"c{concurrent}", verbose=0))
    t = time.perf_counter()
    grid = tuner.fit()
    assert not grid.errors
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--max-gflops", type=float, default=0.1)
    args = p.parse_args()
    data = load_sample().low_fidelity(0.25, seed=0)
    archs = sample_architectures(args.candidates, seed=0, max_gflops=args.max_gflops, info=data.info)
    fit_config = {"max_epochs": args.epochs, "patience": args.epochs, "seed": 0}
    storage = tempfile.mkdtemp()
    with ray_session(jemalloc=True, num_cpus=2):
        one = run_generation(archs, data, fit_config, 1, storage)
        two = run_generation(archs, data, fit_config, 2, storage)
    emit("parallel_scaling", {"candidates": len(archs), "epochs": args.epochs, "data": "AdrenalMNIST3D 1/4 (real)",
                              "wall_s": {"1_concurrent": one, "2_concurrent": two}, "speedup": one / two,
                              "machine": machine()})


if __name__ == "__main__":
    main()
