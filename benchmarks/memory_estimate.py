"""Benchmark: each trainable's memory estimate vs the measured peak RSS of the same training.

    .venv/bin/python -m benchmarks.memory_estimate [--cases ode darts compress strategy mednns] [--quick]
        [--threads 2] [--out memory.json]

Every case trains in a fresh subprocess the way its trial does: with the allocator its search
gives trial workers (Ray's jemalloc with decay off for ODE, compression, strategy and MedNNS,
glibc for DARTS; orchestrator.runtime), the worker's imports (torch, Ray Tune, MONAI, medmnist),
the trial's own training function for a short run; the child reports its peak RSS (``VmHWM``;
``ru_maxrss`` would include the parent's RSS at fork). One child runs at a time (the larger
ones take several GB). The estimate is what the search requests from Ray for that trial; it
should be >= measured (ratio >= 1, never below) and within 1.5x. Data a trial receives through
Ray's object store is loaded once by the parent and handed to the child as a pickle, so the
child's peak holds no file decoding. Tune trainables are called as they are (outside a Tune
session ``tune.report`` records nothing; here it is recorded to check the trial did not fail)
with the trial's CPUs as ``set_threads_from_ray`` would read them from Ray. Cases:

- ``ode``: ODE candidates (tiny CNN, cell networks decoded from seeded genomes, MONAI's
  ResNet-18 3D) on AdrenalMNIST3D-shaped data, one epoch of 2 steps plus val and test
  evaluation (``trainables.memory.estimate_memory``, the ODE searcher's estimate);
- ``darts``: the IAC stages on real MSD Hippocampus (``--data``, ``--size`` px, ``--max-cases``),
  one epoch each: Stage I U-Net, Stage II bilevel search (no warm-up: every step is bilevel),
  Stage III with the heaviest discrete cell (``DartsSearch.plan_memory``'s estimates);
- ``compress``: on the shipped AdrenalMNIST3D sample, ``train_base`` for one epoch on a
  ``--compress-fraction`` of the train split (ResNet-10/18 at ``--compress-batches``;
  ``base_estimate``), and one ``compress_trial`` candidate -- 90 % conv / 50 % linear pruning of
  weights and biases, int8 quantization, the timed inference -- at ``--inference-batch`` on the
  full data, as the search passes it (``candidate_estimate``; the base is a seeded untrained
  ResNet: pruning and quantization cost the same whatever the weights);
- ``strategy``: one ``strategy_trial`` (one epoch, the default recipe with the space's largest
  dropout and L1 on: what ``memory_cost`` prices beyond batch and norm) on the real BreastMNIST
  28 px (tiny CNN, ResNet-18 at ``--strategy-batches``; ``memory_cost(...).request(config)``);
- ``mednns``: on ``--mednns-datasets`` (every trial receives all of them), a
  ``train_supernet_for`` trial of two epochs (the full network, then the elastic phase's
  FairNAS paths; ``supernet_memory``), an ``extract_zoo`` trial of ``--zoo-size`` subnets
  (``extraction_memory``) and a ``finetune`` trial of one epoch per strategy -- Tk for every
  k <= ``--top-k``, the largest subnet as each of the k recommendations (the estimate's bound),
  the scratch twin and the ResNet-18 baseline -- on the ``--finetune-fraction`` subsets
  (``finetune_memory``). The supernet they load is a seeded untrained one.

``--quick`` runs each case at its smallest configuration (one model, the smallest batch, DARTS
on 4 cases, T1 only), a few minutes in all. ``BASELINE_BYTES`` and ``SAFETY`` in
trainables/memory.py come from this table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager

SHAPE = (1, 28, 28, 28)
N_VAL = N_TEST = 98  # AdrenalMNIST3D's val split size
STEPS = 2  # the second step is the first with Adam's moments allocated
# feasible genomes of the ODE space whose cells are cheap to train on CPU (3x3 or no operations,
# 0.04-0.24 GFLOPs per volume): 32 maps and no cell operation; ReLU/IN/Mish convolutions; IN-Mish
GENOME_SEEDS = (64, 36, 232)
SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
HIPPOCAMPUS = os.path.join(SHARED_DATA, "segmentation", "msd_hippocampus")
MEDMNIST = os.path.join(SHARED_DATA, "medmnist")
QUICK_DARTS_CASES = 4  # --quick: DARTS on this many cases (load_segmentation needs >= 3: one per split)


def peak_rss() -> int:
    """This process's peak resident set size in bytes (VmHWM of /proc/self/status)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def cached(path: str, make):
    """``make()``, computed once per benchmark run (in the parent, by the estimate) and pickled
    at ``path``; a child unpickles it, as a trial deserializes what reaches it through Ray's
    object store."""
    import pickle

    if os.path.exists(path):
        with open(path, "rb") as f:
            return pickle.load(f)
    value = make()
    with open(path, "wb") as f:
        pickle.dump(value, f)
    return value


def pin_threads(module, threads: int) -> None:
    """``module``'s trials call ``set_threads_from_ray``, which outside a Ray worker takes every
    core: make it take ``threads``, the CPUs Ray would have assigned the trial."""
    import functools

    from trainables.fit import set_threads_from_ray

    module.set_threads_from_ray = functools.partial(set_threads_from_ray, threads)


@contextmanager
def tune_reports():
    """Record every ``ray.tune.report`` of a trial run outside Tune (the metrics only: its
    checkpoint folder is written by the trial as in a session; the upload is Ray's)."""
    from ray import tune

    rows, real = [], tune.report
    tune.report = lambda metrics, checkpoint=None, **_: rows.append(dict(metrics))
    try:
        yield rows
    finally:
        tune.report = real


def check_reports(rows: list, what: str) -> None:
    """A trial that reports a failure (OOM, NaN loss, ...) measured a peak it never reached."""
    failed = [r for r in rows if r.get("status") == "failed" or "error" in r]
    if not rows or failed:
        raise RuntimeError(f"{what}: the trial {'reported nothing' if not rows else 'failed: ' + str(failed[0])[:500]}")


def load_medmnist_file(flag: str, root: str):
    from orchestrator.data import load_medmnist

    return load_medmnist(flag, 28, root, download=False)


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


def ode_specs(args) -> list[dict]:
    models = [{"model": "tiny_cnn"}] + [{"model": "cell", "genome_seed": s} for s in GENOME_SEEDS] \
        + [{"model": "resnet18"}]
    models, batches = (models[:1], [min(args.batches)]) if args.quick else (models, args.batches)
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


def darts_specs(args, workdir: str) -> list[dict]:
    batches = [min(args.darts_batches)] if args.quick else args.darts_batches
    max_cases = min(args.max_cases or QUICK_DARTS_CASES, QUICK_DARTS_CASES) if args.quick else args.max_cases
    pickle_path = os.path.join(workdir, "segmentation.pkl")
    return [{"case": "darts", "stage": stage, "batch": b, "name": f"darts {stage}", "data": args.data,
             "size": args.size, "max_cases": max_cases, "data_pickle": pickle_path}
            for stage in ("stage1", "stage2", "stage3") for b in batches]


# ---- compression: base training and one candidate ------------------------------------------

# pruning of every conv (90 %) and linear (50 %) layer's weights and biases, then int8: the
# heaviest kind of candidate (PRUNE_COPIES is measured at 50-95 % pruned; int8 adds the copies of
# quantization); UNCOMPRESSED's order of keys
COMPRESS_CANDIDATE = {"x1": 1, "x2": 1, "x3": 50.0, "x4": 90.0, "x5": 2, "x6": 2, "x7": 1, "subset_seed": 0}
INFERENCE_REPEATS = 2  # timed runs: the first allocates what the later ones reuse (the search: 5)


def compress_data(spec: dict):
    """The sample AdrenalMNIST3D: the base trains on a stratified ``fraction`` of its train
    split, a candidate gets all of it (the search's ``ctx.data``)."""
    def make():
        from orchestrator.data import SAMPLE_FLAG, SAMPLE_ROOT

        data = load_medmnist_file(SAMPLE_FLAG, str(SAMPLE_ROOT))
        return data.subset("train", spec["fraction"], 0) if spec["stage"] == "base" else data

    return cached(spec["data_pickle"], make)


def compress_base(spec: dict):
    """The base network a candidate receives: a seeded ResNet (untrained), as a ``BaseCheckpoint``."""
    def make():
        import torch

        from trainables.compress_trial import BaseCheckpoint, base_build
        from trainables.nets.resnet import build_resnet

        build = base_build(spec["model"], compress_data(spec).info)
        torch.manual_seed(0)
        return BaseCheckpoint(model=build_resnet(**build).eval(), build=build, meta={"metrics": {"test_acc": 0.5}})

    return cached(spec["base_pickle"], make)


def compress_estimate(spec: dict) -> int:
    from trainables.compress_trial import base_build, base_estimate, candidate_estimate

    data, jemalloc = compress_data(spec), CASES["compress"][2]
    build = base_build(spec["model"], data.info)
    if spec["stage"] == "base":
        return base_estimate(build, data, jemalloc)(spec["batch"])
    compress_base(spec)  # pickled by the parent: the child only receives it
    return candidate_estimate(build, data, jemalloc=jemalloc)(spec["batch"])


def compress_child(spec: dict) -> None:
    from orchestrator.config import CompressSearchConfig
    from trainables import compress_trial as trial

    pin_threads(trial, spec["threads"])
    data = compress_data(spec)
    with tune_reports() as rows:
        if spec["stage"] == "base":
            fit = CompressSearchConfig().fit  # CompressSearch.base's param space, one epoch
            trial.train_base({"model": spec["model"], "epochs": 1, "seed": 0, "lr": fit.lr,
                              "weight_decay": fit.weight_decay, "batch_size": spec["batch"],
                              "select_metric": fit.metric, "patience": 1}, data)
        else:
            trial.compress_trial(dict(COMPRESS_CANDIDATE), data, compress_base(spec), base_accuracy=0.5,
                                 options={"inference_batch": spec["batch"], "inference_repeats": INFERENCE_REPEATS})
    check_reports(rows, spec["name"])


def compress_specs(args, workdir: str) -> list[dict]:
    models = args.compress_models[:1] if args.quick else args.compress_models
    batches = [min(args.compress_batches)] if args.quick else args.compress_batches
    base_pickle = os.path.join(workdir, f"adrenalmnist3d_train{args.compress_fraction}.pkl")
    specs = [{"case": "compress", "stage": "base", "model": m, "batch": b, "name": f"compress base {m}",
              "fraction": args.compress_fraction, "data_pickle": base_pickle} for m in models for b in batches]
    return specs + [{"case": "compress", "stage": "candidate", "model": m, "batch": args.inference_batch,
                     "name": f"compress candidate {m}", "data_pickle": os.path.join(workdir, "adrenalmnist3d.pkl"),
                     "base_pickle": os.path.join(workdir, f"base_{m}.pkl")} for m in models]


# ---- training strategies -------------------------------------------------------------------

# the default recipe with the options memory_cost prices beyond batch and norm: the space's
# largest dropout (its mask before the classifier) and L1 on (one more parameter-sized buffer)
STRATEGY = {"dropout": 0.5, "l1": 1e-4}


def strategy_data(spec: dict):
    return cached(spec["data_pickle"], lambda: load_medmnist_file(spec["dataset"], spec["root"]))


def strategy_config(spec: dict) -> dict:
    from trainables.strategy import Strategy

    return Strategy(**STRATEGY, batch_size=spec["batch"]).check().to_dict()


def strategy_estimate(spec: dict) -> int:
    from trainables.strategy import parse_space
    from trainables.strategy_trial import memory_cost, network_build

    data = strategy_data(spec)  # StrategySearch.plan_memory's search cost: the default space, no weights
    return memory_cost(data, network_build(spec["model"], data.info), parse_space()).request(strategy_config(spec))


def strategy_child(spec: dict) -> None:
    from orchestrator.config import StrategySearchConfig
    from trainables import strategy_trial as trial

    pin_threads(trial, spec["threads"])
    cfg, data = StrategySearchConfig(), strategy_data(spec)
    with tune_reports() as rows:  # StrategySearch._trainable's arguments, one epoch
        trial.strategy_trial(strategy_config(spec), data, trial.network_build(spec["model"], data.info),
                             cfg.fit.fit_config(0, epochs=1), objectives=[f"{cfg.fit.metric}@final"],
                             augment_backend=cfg.augment_backend)
    check_reports(rows, spec["name"])


def strategy_specs(args, workdir: str) -> list[dict]:
    models = args.strategy_models[:1] if args.quick else args.strategy_models
    batches = [min(args.strategy_batches)] if args.quick else args.strategy_batches
    return [{"case": "strategy", "model": m, "batch": b, "name": f"strategy {m}", "dataset": args.strategy_dataset,
             "root": args.medmnist_root, "data_pickle": os.path.join(workdir, f"{args.strategy_dataset}.pkl")}
            for m in models for b in batches]


# ---- MedNNS: supernet training, zoo extraction, fine-tuning ---------------------------------

SUPERNET_EPOCHS, SUPERNET_FULL_EPOCHS = 2, 1  # the full network alone, then one elastic epoch


def mednns_flags(spec: dict) -> list[str]:
    return spec["datasets"].split(",")


def mednns_data(spec: dict, subsets: bool = False) -> dict:
    """flag -> data, as every trial of a stage receives them; ``subsets``: the query stage's
    ``--finetune-fraction`` train subsets (MedNNSSearch.query)."""
    if subsets:  # made from the full data by the parent; a child unpickles the subsets alone
        return cached(spec["subset_pickle"], lambda: {f: d.subset("train", spec["fraction"], 0)
                                                       for f, d in mednns_data(spec).items()})
    return cached(spec["data_pickle"], lambda: {f: load_medmnist_file(f, spec["root"]) for f in mednns_flags(spec)})


def mednns_supernet(spec: dict) -> str:
    """A seeded (untrained) supernet of the first dataset saved as train_supernet saves one:
    the zoo's supernet, and the one every recommended model of the fine-tuning is built from."""
    folder = spec["supernet_dir"]
    if not os.path.isdir(folder):
        import torch

        from trainables.nets.ofa_resnet import OFAResNet, save_supernet

        info = mednns_data(spec)[mednns_flags(spec)[0]].info
        torch.manual_seed(0)
        os.makedirs(folder)
        save_supernet(OFAResNet(info.spatial_dims, info.n_channels, info.n_outputs, info.size), folder)
    return folder


def finetune_job(spec: dict, info) -> dict:
    """MedNNSSearch.query's job for the first dataset (``info``): Tk for every k <= top_k (the
    largest subnet as each recommendation), the scratch twin, the fixed ResNet; one epoch each."""
    from orchestrator.config import MedNNSSearchConfig
    from orchestrator.searches.mednns import BUILDER, STRATEGY_K
    from trainables.nets.ofa_resnet import OFASpace

    cfg, target = MedNNSSearchConfig(), mednns_flags(spec)[0]
    kwargs = {"config": OFASpace().largest().to_dict(), "spatial_dims": info.spatial_dims,
              "in_channels": info.n_channels, "n_outputs": info.n_outputs, "size": info.size}
    build = {"builder": BUILDER, "kwargs": {**kwargs, "supernet": spec["supernet_dir"]}}
    runs = [{"strategy": s, "candidates": [build] * k} for s, k in STRATEGY_K.items() if k <= spec["top_k"]]
    runs.append({"strategy": "scratch", "candidates": [{**build, "kwargs": {**kwargs, "supernet": None}}]})
    runs.append({"strategy": "resnet", "candidates": [{"builder": "resnet", "kwargs": {
        "name": cfg.baseline.lower(), "spatial_dims": info.spatial_dims, "in_channels": info.n_channels,
        "n_outputs": info.n_outputs}}]})
    return {"target": target, "runs": runs, "epochs": 1, "report_epochs": [1], "lr": cfg.lr,
            "batch_size": spec["batch"], "seed": 0, "bn_images": cfg.bn_images}


def mednns_estimate(spec: dict) -> int:
    from orchestrator.config import MedNNSSearchConfig
    from orchestrator.data import stratified_indices
    from trainables.supernet_trial import EXTRACT_BATCH, extraction_memory, finetune_memory, supernet_memory

    cfg, flags, data = MedNNSSearchConfig(), mednns_flags(spec), mednns_data(spec)
    if spec["stage"] == "supernet":
        return supernet_memory(data, flags, SUPERNET_EPOCHS, SUPERNET_FULL_EPOCHS)(spec["batch"])
    mednns_supernet(spec)  # saved by the parent: the child loads it as its trial would
    if spec["stage"] == "zoo":
        return extraction_memory(data, flags, cfg.bn_images, spec["zoo_size"], EXTRACT_BATCH)
    mednns_data(spec, subsets=True)
    rows = {f: len(stratified_indices(data[f].labels["train"], spec["fraction"], 0)) for f in flags}
    return finetune_memory(data, flags, cfg.baseline.lower(), spec["top_k"], cfg.bn_images, rows)(spec["batch"])


def mednns_child(spec: dict) -> None:
    from orchestrator.config import MedNNSSearchConfig
    from trainables import supernet_trial as trial

    pin_threads(trial, spec["threads"])
    cfg, flag = MedNNSSearchConfig(), mednns_flags(spec)[0]
    with tune_reports() as rows:
        if spec["stage"] == "supernet":  # MedNNSSearch.supernets' param space
            trial.train_supernet_for({"dataset": flag, "epochs": SUPERNET_EPOCHS, "full_epochs": SUPERNET_FULL_EPOCHS,
                                      "paths": cfg.supernet_paths, "sandwich": cfg.sandwich, "lr": cfg.lr,
                                      "batch_size": spec["batch"], "seed": 0}, mednns_data(spec))
        elif spec["stage"] == "zoo":  # MedNNSSearch.zoo's
            trial.extract_zoo({"dataset": flag, "n": spec["zoo_size"], "seed": 0, "bn_images": cfg.bn_images,
                               "bn_batch": spec["batch"], "eval_batch": spec["batch"]}, mednns_data(spec),
                              {flag: spec["supernet_dir"]})
        else:  # MedNNSSearch.query's
            data = mednns_data(spec, subsets=True)
            trial.finetune({"job": finetune_job(spec, data[flag].info)}, data)
    check_reports(rows, spec["name"])
    errors = {s: r["error"] for row in rows for s, r in row.get("results", {}).items() if "error" in r}
    if errors:
        raise RuntimeError(f"{spec['name']}: strategies failed: {errors}")


def mednns_specs(args, workdir: str) -> list[dict]:
    from trainables.supernet_trial import EXTRACT_BATCH

    batches = [min(args.mednns_batches)] if args.quick else args.mednns_batches
    top_ks = [min(args.top_k)] if args.quick else args.top_k
    common = {"case": "mednns", "datasets": args.mednns_datasets, "root": args.medmnist_root,
              "fraction": args.finetune_fraction, "zoo_size": args.zoo_size,
              "data_pickle": os.path.join(workdir, "mednns.pkl"),
              "subset_pickle": os.path.join(workdir, f"mednns_train{args.finetune_fraction}.pkl"),
              "supernet_dir": os.path.join(workdir, "supernet")}
    return ([dict(common, stage="supernet", batch=b, name="mednns supernet") for b in batches]
            + [dict(common, stage="zoo", batch=EXTRACT_BATCH, name=f"mednns zoo ({args.zoo_size})")]
            + [dict(common, stage="finetune", batch=b, top_k=k, name=f"mednns finetune T{k}") for k in top_ks
               for b in batches])


# case -> (estimate, child, jemalloc preloaded in its trial workers: the search's default)
CASES = {"ode": (ode_estimate, ode_child, True), "darts": (darts_estimate, darts_child, False),
         "compress": (compress_estimate, compress_child, True), "strategy": (strategy_estimate, strategy_child, True),
         "mednns": (mednns_estimate, mednns_child, True)}
SPECS = {"ode": lambda args, workdir: ode_specs(args), "darts": lambda args, workdir: darts_specs(args, workdir),
         "compress": compress_specs, "strategy": strategy_specs, "mednns": mednns_specs}


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
    parser.add_argument("--compress-models", nargs="+", default=["resnet10", "resnet18"],
                        help="compress: base networks (the first alone with --quick)")
    parser.add_argument("--compress-batches", type=int, nargs="+", default=[128, 32],
                        help="compress: base training batch sizes")
    parser.add_argument("--compress-fraction", type=float, default=0.25,
                        help="compress: share of the train split the base trains on (0.25: 297 images)")
    parser.add_argument("--inference-batch", type=int, default=128, help="compress: a candidate's timed batch")
    parser.add_argument("--medmnist-root", default=MEDMNIST, help="strategy, mednns: folder of MedMNIST npz files")
    parser.add_argument("--strategy-dataset", default="breastmnist", help="strategy: a 28 px MedMNIST flag")
    parser.add_argument("--strategy-models", nargs="+", default=["tiny_cnn", "resnet18"],
                        help="strategy: networks (the first alone with --quick)")
    parser.add_argument("--strategy-batches", type=int, nargs="+", default=[128, 32])
    parser.add_argument("--mednns-datasets", default="breastmnist,pneumoniamnist",
                        help="mednns: 28 px flags every trial receives (its trials train on the first)")
    parser.add_argument("--mednns-batches", type=int, nargs="+", default=[128, 32],
                        help="mednns: supernet and fine-tuning batch sizes")
    parser.add_argument("--top-k", type=int, nargs="+", default=[1, 10],
                        help="mednns: fine-tuning trials, each running Tk for every k <= this")
    parser.add_argument("--finetune-fraction", type=float, default=0.5, help="mednns: fine-tuning train share")
    parser.add_argument("--zoo-size", type=int, default=16, help="mednns: subnets of the zoo extraction trial")
    parser.add_argument("--quick", action="store_true",
                        help="each case at its smallest configuration: one model, the smallest batch, "
                             f"DARTS on {QUICK_DARTS_CASES} cases, MedNNS T1 only (a few minutes in all)")
    parser.add_argument("--out", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    import shutil
    import tempfile

    from benchmarks.common import emit, machine
    from trainables.memory import BASELINE_BYTES, SAFETY

    workdir = tempfile.mkdtemp(prefix="memest")  # the pickles and the supernet the children receive
    try:
        rows = run(args, [spec for case in args.cases for spec in SPECS[case](args, workdir)])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ratios = [r["ratio"] for r in rows]
    print(f"ratio estimate/measured: min {min(ratios):.2f}, max {max(ratios):.2f} (target: >= 1.0, <= 1.5)")
    emit("memory_estimate", {"cases": args.cases, "quick": args.quick, "threads": args.threads,
                             "baseline_bytes": BASELINE_BYTES, "safety": SAFETY, "min_ratio": min(ratios),
                             "max_ratio": max(ratios), "rows": rows, "machine": machine()}, args.out)


def run(args, specs: list[dict]) -> list[dict]:
    """Each spec's estimate (here) and measured peak (its child), one table row each."""
    rows, mib, width = [], 2**20, max([16] + [len(s["name"]) + 2 for s in specs])
    print(f"{'trainable':<{width}}{'batch':>6}{'est MiB':>9}{'meas MiB':>10}{'ratio':>7}{'base MiB':>10}"
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
        print(f"{spec['name']:<{width}}{spec['batch']:>6}{estimate / mib:>9.0f}{m['peak_rss'] / mib:>10.0f}"
              f"{row['ratio']:>7.2f}{m['baseline_rss'] / mib:>10.0f}{est_s:>7.2f}{m['fit_s']:>7.1f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
