"""Benchmark: trainables.memory's estimate vs the measured peak RSS of training, per model.

    .venv/bin/python -m benchmarks.memory_estimate [--threads 2] [--out memory.json]

Each model trains in a fresh subprocess the way a trial does: Ray's jemalloc preloaded with
decay off (orchestrator.runtime), the worker's imports (torch, Ray Tune, MONAI, medmnist),
``fit()`` for one epoch of 2 optimizer steps on AdrenalMNIST3D-shaped data (1, 28, 28, 28)
plus validation and test evaluation; the child reports its peak RSS (``VmHWM``; ``ru_maxrss``
would include the parent's RSS at fork). Models: the tiny CNN,
cell networks of the ODE space decoded from seeded genomes, MONAI's ResNet-18 3D; batch 128
and 32. One child runs at a time (the larger ones take several GB). The estimate should be
>= measured (ratio >= 1) and within about 2x; ``BASELINE_BYTES`` and ``SAFETY`` in
trainables/memory.py come from this table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SHAPE = (1, 28, 28, 28)
N_VAL = N_TEST = 98  # AdrenalMNIST3D's val split size
STEPS = 2  # the second step is the first with Adam's moments allocated
# feasible genomes of the ODE space whose cells are cheap to train on CPU (3x3 or no operations,
# 0.04-0.24 GFLOPs per volume): 32 maps and no cell operation; ReLU/IN/Mish convolutions; IN-Mish
GENOME_SEEDS = (64, 36, 232)


def builder(spec: dict):
    """A zero-argument constructor of the model ``spec`` names."""
    kind = spec["model"]
    if kind == "tiny_cnn":
        from trainables.nets.tiny_cnn import TinyCNN

        return lambda: TinyCNN(SHAPE[0], 1, spatial_dims=3)
    if kind == "cell":
        import numpy as np

        from searchers.cell_space import decode
        from trainables.nets.cell_net import CellNet

        arch = decode(np.random.default_rng(spec["genome_seed"]).random(29)).architecture
        return lambda: CellNet(arch, SHAPE[0], 1, spatial_dims=3)
    if kind == "resnet18":
        from trainables.nets.resnet import build_resnet

        return lambda: build_resnet("resnet18", 3, SHAPE[0], 1)
    raise ValueError(kind)


def peak_rss() -> int:
    """This process's peak resident set size in bytes (VmHWM of /proc/self/status)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def child(spec: dict) -> dict:
    """Train ``spec`` for STEPS steps with fit() in this process; report peak RSS."""
    from types import SimpleNamespace

    import medmnist  # noqa: F401  (a trial worker has these loaded)
    import monai  # noqa: F401
    import numpy as np
    import ray.tune  # noqa: F401
    import torch

    from medcore.records import DatasetInfo
    from trainables.fit import FitConfig, fit

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    sizes = {"train": STEPS * spec["batch"], "val": N_VAL, "test": N_TEST}
    info = DatasetInfo(flag="adrenalmnist3d", task="binary-class", n_channels=1, n_classes=2, spatial_dims=3,
                       size=28, synthetic=True, path="")
    data = SimpleNamespace(info=info, images={k: rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8)
                                              for k, n in sizes.items()},
                           labels={k: rng.integers(0, 2, (n, 1)) for k, n in sizes.items()})
    net = builder(spec)()
    base = peak_rss()
    t = time.perf_counter()
    fit(net, data, FitConfig(max_epochs=1, batch_size=spec["batch"], patience=1), evaluate_test=True)
    return {"baseline_rss": base, "peak_rss": peak_rss(),
            "fit_s": time.perf_counter() - t}


def measure(spec: dict) -> dict:
    from orchestrator.runtime import JEMALLOC_CONF, jemalloc_path

    env = dict(os.environ, MALLOC_CONF=JEMALLOC_CONF, PYTHONPATH=os.getcwd())
    lib = jemalloc_path()
    if lib:
        env["LD_PRELOAD"] = lib
    out = subprocess.run([sys.executable, "-m", "benchmarks.memory_estimate", "--child", json.dumps(spec)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads per child (a trial's CPUs)")
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 32])
    parser.add_argument("--out", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    from benchmarks.common import emit, machine
    from trainables.memory import BASELINE_BYTES, SAFETY, estimate_memory

    models = [{"model": "tiny_cnn"}] + [{"model": "cell", "genome_seed": s} for s in GENOME_SEEDS] \
        + [{"model": "resnet18"}]
    rows, mib = [], 2**20
    print(f"{'model':<12}{'batch':>6}{'sim MiB':>9}{'est MiB':>9}{'meas MiB':>10}{'ratio':>7}"
          f"{'need':>6}{'base MiB':>10}{'est s':>7}{'fit s':>7}", flush=True)
    for spec in models:
        for batch in args.batches:
            s = dict(spec, batch=batch, threads=args.threads)
            t = time.perf_counter()
            est = estimate_memory(builder(s), SHAPE, batch, n_train=STEPS * batch, n_eval=N_VAL + N_TEST)
            est_s = time.perf_counter() - t
            m = measure(s)
            peak = max(est.train_peak, est.eval_peak)
            # the safety factor that would make this estimate exact
            needed = (m["peak_rss"] - (est.total - est.safety * peak)) / peak
            name = spec["model"] + (f"#{spec['genome_seed']}" if "genome_seed" in spec else "")
            row = {"model": name, "batch": batch, "simulated_peak_bytes": peak, "estimate_bytes": est.total,
                   "measured_bytes": m["peak_rss"], "child_rss_before_fit_bytes": m["baseline_rss"],
                   "ratio": est.total / m["peak_rss"], "safety_needed": needed, "estimate_s": est_s,
                   "fit_s": m["fit_s"]}
            rows.append(row)
            print(f"{name:<12}{batch:>6}{peak / mib:>9.0f}{est.total / mib:>9.0f}{m['peak_rss'] / mib:>10.0f}"
                  f"{row['ratio']:>7.2f}{needed:>6.2f}{m['baseline_rss'] / mib:>10.0f}{est_s:>7.2f}"
                  f"{m['fit_s']:>7.1f}", flush=True)
    ratios = [r["ratio"] for r in rows]
    emit("memory_estimate", {"shape": SHAPE, "steps": STEPS, "threads": args.threads,
                             "baseline_bytes": BASELINE_BYTES, "safety": SAFETY,
                             "min_ratio": min(ratios), "max_ratio": max(ratios),
                             "max_safety_needed": max(r["safety_needed"] for r in rows),
                             "rows": rows, "machine": machine()}, args.out)


if __name__ == "__main__":
    main()
