"""Benchmark: each trainable's memory estimate vs the measured peak RSS of the same training.

    .venv/bin/python -m benchmarks.memory_estimate [--cases ode darts] [--threads 2] [--out memory.json]

Every case trains in a fresh subprocess the way its trial does: with the allocator its search
gives trial workers (Ray's jemalloc with decay off for ODE, glibc for DARTS; orchestrator.runtime),
the worker's imports (torch, Ray Tune, MONAI, medmnist), the
trial's own training function for a short run; the child reports its peak RSS (``VmHWM``;
``ru_maxrss`` would include the parent's RSS at fork). One child runs at a time (the larger
ones take several GB). The estimate is what the search requests from Ray for that trial; it
should be >= measured (ratio >= 1, never below) and within 1.5x. Cases:

- ``ode``: ODE candidates (tiny CNN, cell networks decoded from seeded genomes, MONAI's
  ResNet-18 3D) on AdrenalMNIST3D-shaped data, one epoch of 2 steps plus val and test
  evaluation (``trainables.memory.estimate_memory``, the ODE searcher's estimate);
- ``darts``: the IAC stages on real MSD Hippocampus (``--data``, ``--size`` px, ``--max-cases``),
  one epoch each: Stage I U-Net, Stage II bilevel search (no warm-up: every step is bilevel),
  Stage III with the heaviest discrete cell (``DartsSearch.plan_memory``'s estimates).
``BASELINE_BYTES`` and ``SAFETY`` in trainables/memory.py come from this table.
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
HIPPOCAMPUS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "segmentation",
                           "msd_hippocampus")


def peak_rss() -> int:
    """This process's peak resident set size in bytes (VmHWM of /proc/self/status)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


# ---- ODE candidates ------------------------------------------------------------------------

def ode_builder(spec: dict):
    """A zero-argument constructor of the ODE-stage model ``spec`` names."""
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


def ode_estimate(spec: dict) -> int:
    from trainables.memory import estimate_memory

    return estimate_memory(ode_builder(spec), SHAPE, spec["batch"], n_train=STEPS * spec["batch"],
                           n_eval=N_VAL + N_TEST).total


def ode_child(spec: dict) -> None:
    from types import SimpleNamespace

    import numpy as np
    import torch

    from medcore.records import DatasetInfo
    from trainables.fit import FitConfig, fit

    rng = np.random.default_rng(0)
    sizes = {"train": STEPS * spec["batch"], "val": N_VAL, "test": N_TEST}
    info = DatasetInfo(flag="adrenalmnist3d", task="binary-class", n_channels=1, n_classes=2, spatial_dims=3,
                       size=28, synthetic=True, path="")
    data = SimpleNamespace(info=info, images={k: rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8)
                                              for k, n in sizes.items()},
                           labels={k: rng.integers(0, 2, (n, 1)) for k, n in sizes.items()})
    torch.manual_seed(0)
    fit(ode_builder(spec)(), data, FitConfig(max_epochs=1, batch_size=spec["batch"], patience=1), evaluate_test=True)


def ode_specs(batches) -> list[dict]:
    models = [{"model": "tiny_cnn"}] + [{"model": "cell", "genome_seed": s} for s in GENOME_SEEDS] \
        + [{"model": "resnet18"}]
    return [dict(m, case="ode", batch=b,
                 name=m["model"] + (f"#{m['genome_seed']}" if "genome_seed" in m else "")) for m in models
            for b in batches]


# ---- DARTS (IAC) stages --------------------------------------------------------------------

def darts_data(spec: dict):
    """The splits as a trial gets them: loaded once by the parent (as the driver does) and
    handed over as arrays (a pickle, as through Ray's object store), so the child's peak holds
    no NIfTI decoding."""
    import pickle

    path = spec.get("data_pickle")
    if path and os.path.exists(path):
        with open(path, "rb") as f:
            return pickle.load(f)
    from orchestrator.segmentation_data import load_segmentation

    data = load_segmentation(spec["data"], spec["size"], 2, spec["max_cases"], seed=0)
    if path:
        with open(path, "wb") as f:
            pickle.dump(data, f)
    return data


def darts_estimate(spec: dict) -> int:
    from trainables.darts_trial import memory_estimates

    return memory_estimates(darts_data(spec), "unet", {}, 4, ())[spec["stage"]](spec["batch"])


def darts_child(spec: dict) -> None:
    import torch

    from trainables.darts_trial import discrete_skip, run_search, worst_genotype
    from trainables.nets.unets import build_unet
    from trainables.unet_trial import fit_skips, fit_unet

    data = darts_data(spec)
    info = data.info
    torch.manual_seed(0)
    unet = build_unet("unet", 2, info.n_channels, info.n_outputs)
    c = {"epochs": 1, "lr": 1e-3, "batch_size": spec["batch"], "seed": 0}
    if spec["stage"] == "stage1":
        fit_unet(unet, data, c)
    elif spec["stage"] == "stage2":
        run_search(unet, data, {**c, "warmup": 0})
    else:
        model = unet.freeze()
        model.set_skips(model.make_skips(discrete_skip, genotype=worst_genotype().to_dict()))
        fit_skips(model, data, c)


def darts_specs(args) -> list[dict]:
    import tempfile

    pickle_path = os.path.join(tempfile.mkdtemp(prefix="memest"), "segmentation.pkl")
    return [{"case": "darts", "stage": stage, "batch": b, "name": f"darts {stage}", "data": args.data,
             "size": args.size, "max_cases": args.max_cases, "data_pickle": pickle_path}
            for stage in ("stage1", "stage2", "stage3") for b in args.darts_batches]


# case -> (estimate, child, jemalloc preloaded in its trial workers: the search's default)
CASES = {"ode": (ode_estimate, ode_child, True), "darts": (darts_estimate, darts_child, False)}


# ---- the harness ---------------------------------------------------------------------------

def child(spec: dict) -> dict:
    """Run ``spec``'s training in this process, as its trial worker would; report peak RSS."""
    import medmnist  # noqa: F401  (a trial worker has these loaded)
    import monai  # noqa: F401
    import ray.tune  # noqa: F401
    import torch

    torch.set_num_threads(spec["threads"])
    base = peak_rss()
    t = time.perf_counter()
    CASES[spec["case"]][1](spec)
    return {"baseline_rss": base, "peak_rss": peak_rss(), "fit_s": time.perf_counter() - t}


def measure(spec: dict) -> dict:
    from orchestrator.runtime import JEMALLOC_CONF, jemalloc_path

    env = dict(os.environ, PYTHONPATH=os.getcwd(), LD_PRELOAD="", MALLOC_CONF="")
    lib = jemalloc_path() if CASES[spec["case"]][2] else None
    if lib:
        env.update(LD_PRELOAD=lib, MALLOC_CONF=JEMALLOC_CONF)
    out = subprocess.run([sys.executable, "-m", "benchmarks.memory_estimate", "--child", json.dumps(spec)],
                         env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{spec['name']} batch {spec['batch']}: child failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--threads", type=int, default=2, help="torch threads per child (a trial's CPUs)")
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 32], help="ODE batch sizes")
    parser.add_argument("--darts-batches", type=int, nargs="+", default=[64, 16])
    parser.add_argument("--data", default=HIPPOCAMPUS, help="DARTS: a Decathlon folder or its npz")
    parser.add_argument("--size", type=int, default=64, help="DARTS: pixels per axis")
    parser.add_argument("--max-cases", type=int, default=30, help="DARTS: cases loaded")
    parser.add_argument("--out", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    from benchmarks.common import emit, machine
    from trainables.memory import BASELINE_BYTES, SAFETY

    specs = []
    if "ode" in args.cases:
        specs += ode_specs(args.batches)
    if "darts" in args.cases:
        specs += darts_specs(args)
    rows, mib = [], 2**20
    print(f"{'trainable':<16}{'batch':>6}{'est MiB':>9}{'meas MiB':>10}{'ratio':>7}{'base MiB':>10}"
          f"{'est s':>7}{'fit s':>7}", flush=True)
    for spec in specs:
        spec = dict(spec, threads=args.threads)
        t = time.perf_counter()
        estimate = CASES[spec["case"]][0](spec)
        est_s = time.perf_counter() - t
        m = measure(spec)
        row = {"trainable": spec["name"], "case": spec["case"], "batch": spec["batch"], "estimate_bytes": estimate,
               "measured_bytes": m["peak_rss"], "child_rss_before_fit_bytes": m["baseline_rss"],
               "ratio": estimate / m["peak_rss"], "estimate_s": est_s, "fit_s": m["fit_s"]}
        rows.append(row)
        print(f"{spec['name']:<16}{spec['batch']:>6}{estimate / mib:>9.0f}{m['peak_rss'] / mib:>10.0f}"
              f"{row['ratio']:>7.2f}{m['baseline_rss'] / mib:>10.0f}{est_s:>7.2f}{m['fit_s']:>7.1f}", flush=True)
    ratios = [r["ratio"] for r in rows]
    print(f"ratio estimate/measured: min {min(ratios):.2f}, max {max(ratios):.2f} (target: >= 1.0, <= 1.5)")
    emit("memory_estimate", {"cases": args.cases, "threads": args.threads, "baseline_bytes": BASELINE_BYTES,
                             "safety": SAFETY, "min_ratio": min(ratios), "max_ratio": max(ratios),
                             "rows": rows, "machine": machine()}, args.out)


if __name__ == "__main__":
    main()
