"""Benchmark 2: one generation of 8 candidates through Tune at 1 vs 2 concurrent trials.

    .venv/bin/python -m benchmarks.parallel_scaling [--epochs 2]
Each trial gets 1 CPU and torch uses that many threads; target speedup >= 1.7x on 2 cores.
The same 8 trainings also run in plain processes (no Ray: a pool of 1 vs 2 single-threaded
workers, jemalloc preloaded like Tune's workers): that speedup is the machine's own ceiling, and
Tune's speedup / ceiling is the part of the loss that orchestration could still win back.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
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


def _train_plain(job) -> None:
    """``train_candidate`` itself (same FLOPs count, fit, test evaluation), outside Tune."""
    import types

    import torch

    from trainables import ode_trial

    arch, data, fit_config = job
    # Outside Ray there is no trial to report to and no CPU assignment to read: 1 thread, as Tune gives.
    ode_trial.tune = types.SimpleNamespace(report=lambda metrics: None)
    ode_trial.set_threads_from_ray = lambda: torch.set_num_threads(1)
    ode_trial.train_candidate(arch, data, fit_config)


def run_plain(archs, data, fit_config, workers: int) -> float:
    """The same trainings through a plain process pool that takes one job at a time like Tune;
    timed from pool start, so process start-up and imports count as they do for Tune's actors."""
    from orchestrator.runtime import worker_env

    saved = dict(os.environ)
    os.environ.update(worker_env(jemalloc=True))  # spawned children start with it preloaded
    try:
        t = time.perf_counter()
        with mp.get_context("spawn").Pool(workers) as pool:
            pool.map(_train_plain, [(a, data, fit_config) for a in archs], chunksize=1)
        return time.perf_counter() - t
    finally:
        os.environ.clear()
        os.environ.update(saved)


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
    plain = {n: run_plain(archs, data, fit_config, n) for n in (1, 2)}
    with ray_session(jemalloc=True, num_cpus=2):
        one = run_generation(archs, data, fit_config, 1, storage)
        two = run_generation(archs, data, fit_config, 2, storage)
    emit("parallel_scaling", {"candidates": len(archs), "epochs": args.epochs, "data": "AdrenalMNIST3D 1/4 (real)",
                              "wall_s": {"1_concurrent": one, "2_concurrent": two,
                                         "plain_1_process": plain[1], "plain_2_processes": plain[2]},
                              "speedup": one / two, "machine_ceiling": plain[1] / plain[2],
                              "tune_vs_ceiling": (one / two) / (plain[1] / plain[2]),
                              "machine": machine()})


if __name__ == "__main__":
    main()
