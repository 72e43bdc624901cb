"""IAC on real data at a CPU budget: MSD Task04 Hippocampus, Stages I -> II -> III per seed.

Per seed (the split, every initialisation and batch order follow it), without Ray, through the
trainables the search's trials run: a Stage I U-Net (``fit_unet``), a Stage II search on its
frozen skips (``run_search``), the searched genotype as discrete cells trained on the frozen
U-Net (``fit_skips``, Stage III), and the attention-gate and UNet++ nested skips on the same
frozen U-Net. Prints val_dt Dice of each and the gains over the frozen U-Net (mean and
spread over seeds; paper: average DSC gain +0.06), plus Stage II epoch time at the CPU size
and, from ``--time-steps`` measured bilevel steps, at 128 x 128.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.darts_real --seeds 0 1 2 \\
        --max-cases 12 --size 64 --stage1-epochs 10 --search-epochs 6 --warmup 2 --stage3-epochs 10
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

HIPPOCAMPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "segmentation" / "msd_hippocampus"


def one_seed(a, seed: int) -> dict:
    from orchestrator.segmentation_data import load_segmentation
    from trainables.darts_trial import discrete_skip, run_search
    from trainables.nets.skip_baselines import BASELINES
    from trainables.nets.unets import build_unet
    from trainables.unet_trial import UNetCheckpoint, fit_skips, fit_unet, skip_unet

    data = load_segmentation(a.data, a.size, 2, a.max_cases, seed=seed)
    info = data.info
    kw = {"features": a.features} if a.backbone == "unet" and a.features else {}
    torch.manual_seed(seed)
    unet = build_unet(a.backbone, 2, info.n_channels, info.n_outputs, **kw)
    rec = {"lr": 1e-3, "batch_size": a.batch_size, "seed": seed}
    t = time.perf_counter()
    r1 = fit_unet(unet, data, {**rec, "epochs": a.stage1_epochs})
    out = {"seed": seed, "samples": data.sizes(), "stage1_val_dice": r1.best["val_dice"],
           "stage1_s": time.perf_counter() - t}
    ck = UNetCheckpoint(build=unet.build, state={k: v.clone() for k, v in unet.unet_state_dict().items()},
                        meta={"metrics": {"best_val_dice": r1.best["val_dice"]}})
    t = time.perf_counter()
    _, step, _ = run_search(ck.model(), data, {"epochs": a.search_epochs, "warmup": a.warmup, "k": a.k,
                                               "batch_size": a.batch_size, "seed": seed})
    out["stage2_s"], out["stage2_epoch_s"] = time.perf_counter() - t, (time.perf_counter() - t) / a.search_epochs
    genotype = step.arch.genotype()
    out["genotype"] = str(genotype)
    for name, factory, kwargs in [("iac", discrete_skip, {"genotype": genotype.to_dict()}),
                                  *[(b, BASELINES[b], {}) for b in ("attention", "nested")]]:
        t = time.perf_counter()
        model = skip_unet(ck, factory, seed, **kwargs)
        r = fit_skips(model, data, {**rec, "epochs": a.stage3_epochs})
        out[f"{name}_val_dice"] = r.best["val_dice"]
        out[f"{name}_gain"] = r.best["val_dice"] - out["stage1_val_dice"]
        out[f"{name}_s"] = time.perf_counter() - t
    print(json.dumps(out), flush=True)
    return out


def step_time(a, size: int) -> float:
    """Median seconds of one bilevel step (arch step + weight step) at ``size`` x ``size``."""
    from orchestrator.segmentation_data import load_segmentation
    from trainables.darts_trial import BilevelStep, run_search

    data = load_segmentation(a.data, size, 2, 3, seed=0)
    data.images["train_search"] = data.images["train_search"][:a.batch_size * a.time_steps]
    data.labels["train_search"] = data.labels["train_search"][:a.batch_size * a.time_steps]
    times = []

    class Timed(BilevelStep):
        def __call__(self, model, x, y, ctx):
            t = time.perf_counter()
            loss = super().__call__(model, x, y, ctx)
            times.append(time.perf_counter() - t)
            return loss

    from trainables.nets.unets import build_unet

    kw = {"features": a.features} if a.backbone == "unet" and a.features else {}
    unet = build_unet(a.backbone, 2, data.info.n_channels, 1, **kw)
    run_search(unet, data, {"epochs": 1, "warmup": 0, "k": a.k, "batch_size": a.batch_size}, step_cls=Timed)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(HIPPOCAMPUS / "hippocampus_volumes.npz"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-cases", type=int, default=12)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--backbone", default="unet")
    p.add_argument("--features", type=int, nargs=6, default=None)
    p.add_argument("--stage1-epochs", type=int, default=10)
    p.add_argument("--search-epochs", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--stage3-epochs", type=int, default=10)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--time-steps", type=int, default=0, help="bilevel steps timed at 128 x 128 (0: skip)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    runs = [one_seed(a, s) for s in a.seeds]
    summary = {"runs": len(runs), "config": vars(a), "note": "shared 2-core CPU machine"}
    for key in ("stage1_val_dice", "iac_val_dice", "attention_val_dice", "nested_val_dice", "iac_gain",
                "attention_gain", "nested_gain", "stage2_epoch_s"):
        v = [r[key] for r in runs]
        summary[key] = {"mean": statistics.mean(v), "sd": statistics.stdev(v) if len(v) > 1 else 0.0}
    summary["iac_above_baseline_every_seed"] = all(r["iac_gain"] > 0 for r in runs)
    if a.time_steps:
        s128 = step_time(a, 128)
        summary["stage2_step_s_128"] = s128
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
