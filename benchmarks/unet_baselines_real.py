"""Stage I U-Net and the two skip baselines on real MSD hippocampus cases, at a CPU size, over seeds.

IAC paper IV-B / V-A, Table II: a U-Net trained (Stage I), then frozen, and hand-designed skip
modules (attention gates, UNet++ nested dense skips) trained in its skips with Stage I's
hyperparameters; val Dice (on val_dt, the paper's selection split) of each. The functions are
importable so the IAC (Stage III) joins the same comparison on the same data, U-Nets and seeds:
``compare(data, unet, {"iac": (factory, kwargs)}, recipe, seed)``.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.unet_baselines_real \
        [--data ../shared/data/segmentation/msd_hippocampus] [--cases 24] [--size 64] [--seeds 0 1 2] \
        [--stage1-epochs 8] [--skip-epochs 6] [--batch-size 32] [--json out.json]

Runs in-process (no Ray) through the same ``fit`` loop the Tune trainables use. The split is
by case (seeded by ``--split-seed``, the same for every training seed); training seeds vary the
U-Net's and the skip modules' initialisation and batch order.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import emit, machine

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "segmentation" / "msd_hippocampus"
CPU_FEATURES = (16, 16, 32, 64, 128, 16)  # BasicUNet widths at the CPU budget (MONAI default: 32, 32, 64, 128, 256, 32)


def baselines() -> dict:
    """name -> (skip factory, kwargs): the hand-designed skip modules of Table II."""
    from trainables.nets.skip_baselines import BASELINES

    return {name: (cls, {}) for name, cls in BASELINES.items()}


def stage1(data, backbone: str, unet_kwargs: dict, recipe: dict, seed: int):
    """Train one Stage I U-Net; returns (UNetCheckpoint, best val Dice, seconds)."""
    from trainables.nets.unets import build_unet
    from trainables.unet_trial import UNetCheckpoint, fit_unet

    info = data.info
    torch.manual_seed(seed)
    model = build_unet(backbone, info.spatial_dims, info.n_channels, info.n_outputs, **unet_kwargs)
    t = time.perf_counter()
    result = fit_unet(model, data, {**recipe, "seed": seed})
    seconds = time.perf_counter() - t
    unet = UNetCheckpoint(build=model.build, state={k: v.clone() for k, v in model.unet_state_dict().items()},
                          meta={"metrics": {"best_val_dice": result.best["val_dice"]}, "recipe": recipe})
    return unet, float(result.best["val_dice"]), seconds


def skip_run(data, unet, factory, kwargs: dict, recipe: dict, seed: int):
    """Skip modules from ``factory`` trained on the frozen ``unet``; (best val Dice, seconds, params)."""
    from trainables.unet_trial import fit_skips, skip_unet

    model = skip_unet(unet, factory, seed, **kwargs)
    t = time.perf_counter()
    result = fit_skips(model, data, {**recipe, "seed": seed})
    return float(result.best["val_dice"]), time.perf_counter() - t, sum(p.numel() for p in model.skips.parameters())


def compare(data, unet, methods: dict, recipe: dict, seed: int) -> dict:
    """Every method's val Dice on the same frozen U-Net: {name: {"val_dice", "seconds", "params"}}."""
    out = {}
    for name, (factory, kwargs) in methods.items():
        dice, seconds, params = skip_run(data, unet, factory, kwargs, recipe, seed)
        out[name] = {"val_dice": dice, "seconds": seconds, "params": params}
    return out


def summarise(runs: list[dict], methods) -> dict:
    def stats(values):
        v = np.asarray(values, float)
        return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                "min": float(v.min()), "max": float(v.max())}

    out = {"stage1": stats([r["stage1_dice"] for r in runs])}
    for name in methods:
        out[name] = stats([r["methods"][name]["val_dice"] for r in runs])
        out[f"{name}_gain_over_stage1"] = stats([r["methods"][name]["val_dice"] - r["stage1_dice"] for r in runs])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--cases", type=int, default=24)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--backbone", default="unet")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--stage1-epochs", type=int, default=8)
    p.add_argument("--skip-epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from orchestrator.segmentation_data import load_segmentation

    t = time.perf_counter()
    data = load_segmentation(args.data, args.size, 2, max_cases=args.cases, seed=args.split_seed)
    load_s = time.perf_counter() - t
    unet_kwargs = {"features": CPU_FEATURES} if args.backbone == "unet" else {}
    methods = baselines()
    runs = []
    for seed in args.seeds:
        recipe = {"lr": 1e-3, "batch_size": args.batch_size, "epochs": args.stage1_epochs}
        unet, dice, seconds = stage1(data, args.backbone, unet_kwargs, recipe, seed)
        res = compare(data, unet, methods, {**recipe, "epochs": args.skip_epochs}, seed)
        runs.append({"seed": seed, "stage1_dice": dice, "stage1_seconds": seconds, "methods": res})
        print(f"seed {seed}: stage1 {dice:.4f} ({seconds:.0f} s) | "
              + " | ".join(f"{n} {r['val_dice']:.4f} ({r['seconds']:.0f} s, {r['params']} params)"
                           for n, r in res.items()), flush=True)
    emit("unet_baselines_real", {
        "data": data.describe(), "synthetic": data.synthetic, "load_seconds": load_s, "backbone": args.backbone,
        "unet_kwargs": {k: list(v) for k, v in unet_kwargs.items()}, "stage1_epochs": args.stage1_epochs,
        "skip_epochs": args.skip_epochs, "batch_size": args.batch_size, "lr": 1e-3, "loss": "dice",
        "dice_split": "val_dt (Decathlon test labels are not public)", "runs": runs,
        "summary": summarise(runs, methods), "machine": {**machine(), "threads": args.threads,
                                                        "note": "2-core machine shared with other jobs"}},
         args.json)


if __name__ == "__main__":
    main()
