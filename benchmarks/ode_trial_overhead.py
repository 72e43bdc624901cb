"""What Tune adds per ODE candidate: short real candidates through Tune vs the same fits in a loop.

    .venv/bin/python -m benchmarks.ode_trial_overhead [--trials 10 --fraction 0.1]

Each candidate is a cell network drawn from the search space (the demo's FLOPs window), trained
1 epoch on a stratified ``--fraction`` of real AdrenalMNIST3D's train split and ranked on all of
val, test evaluated, as ``medtune search ode`` trains it: ``trainables.ode_trial.train_candidate``
with its per-epoch checkpoints, one 1-CPU trial at a time, ``reuse_actors`` on, each trial
requesting memory for its own estimate. Two Tune runs: requests rounded to whole GiB (main
before: most consecutive candidates differ, so most start a fresh worker) and what the driver
asks now (:func:`orchestrator.search.memory_bucket`: a trial that fits in its 1-CPU share of the
node asks for that share). The plain loop (``fit()`` on the same candidates in this process, 1
thread) runs before and after (A-B-A; the ratio uses the mean). Target: Tune / loop <= 1.15.
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time

from benchmarks.common import emit, ensure_jemalloc, machine, sample_architectures
from benchmarks.train_speed import load

GIB = 2**30


def subset(data, fraction: float, seed: int = 0):
    from types import SimpleNamespace

    from orchestrator.data import stratified_indices

    idx = stratified_indices(data.labels["train"], fraction, seed)
    images, labels = dict(data.images), dict(data.labels)
    images["train"], labels["train"] = images["train"][idx], labels["train"][idx]
    return SimpleNamespace(info=data.info, images=images, labels=labels, synthetic=False)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    ensure_jemalloc()
    import torch
    from ray import tune

    from orchestrator.runtime import local_node_cpus, local_node_memory, ray_session
    from orchestrator.search import memory_bucket
    from trainables.fit import FitConfig, fit
    from trainables.ode_trial import CandidateCost, build_from_config, train_candidate

    torch.set_num_threads(1)
    full, source = load("adrenalmnist3d")
    data = subset(full, args.fraction)
    configs = [dict(c, candidate=i) for i, c in enumerate(sample_architectures(args.trials, 0, 0.2, full.info))]
    fit_config = {"max_epochs": 1, "patience": 1, "batch_size": 128, "select_metric": "val_auc", "seed": 0}
    cost = CandidateCost(full.info, 128, len(data.images["train"]),
                         len(data.images["val"]) + len(data.images["test"]))

    def plain_loop() -> float:
        t = time.perf_counter()
        for c in configs:
            torch.manual_seed(c["candidate"])
            fit(build_from_config(c, full.info), data, FitConfig(**dict(fit_config, seed=c["candidate"])),
                evaluate_test=True)
        return time.perf_counter() - t

    limit = local_node_memory()
    share = limit * 1 / local_node_cpus()  # a 1-CPU trial's share of this node, as the driver computes it
    requests = {"whole_gib": lambda c: int(math.ceil(cost.memory(c) / GIB) * GIB),
                "share": lambda c: memory_bucket(cost.memory(c), limit, share)}
    loop_before, walls = plain_loop(), {}
    with ray_session(jemalloc=True, num_cpus=2):
        for name, request in requests.items():
            resources = lambda t, request=request: tune.PlacementGroupFactory(
                [{"CPU": 1, "memory": request(configs[t["i"]])}])
            trial = lambda t, data, fit_config: train_candidate(dict(configs[t["i"]]), data, fit_config)
            trainable = tune.with_resources(tune.with_parameters(trial, data=data, fit_config=fit_config), resources)
            tuner = tune.Tuner(trainable, param_space={"i": tune.grid_search(list(range(len(configs))))},
                               tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=True),
                               run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(), name=name, verbose=0))
            t = time.perf_counter()
            grid = tuner.fit()
            walls[name] = time.perf_counter() - t
            assert not grid.errors, grid.errors
    loop_after = plain_loop()
    loop = (loop_before + loop_after) / 2
    distinct = {name: len({request(c) for c in configs}) for name, request in requests.items()}
    figures = {"trials": args.trials, "data": source, "fraction": args.fraction,
               "train_samples": len(data.images["train"]), "distinct_requests": distinct,
               "wall_s": {"plain_loop_before": loop_before, **{f"tune_{k}": v for k, v in walls.items()},
                          "plain_loop_after": loop_after},
               "ratio": {k: v / loop for k, v in walls.items()},
               "per_trial_overhead_s": {k: (v - loop) / args.trials for k, v in walls.items()},
               "memory_gib": [round(cost.memory(c) / GIB, 2) for c in configs], "machine": machine()}
    emit("ode_trial_overhead", figures, args.out)
    print("ratio (Tune / plain loop): " + ", ".join(f"{k} {v:.2f}x" for k, v in figures["ratio"].items()))


if __name__ == "__main__":
    main()
