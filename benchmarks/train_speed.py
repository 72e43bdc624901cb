"""Training speed per model and fit option, beside the machine's matmul / conv roofline.

    .venv/bin/python -m benchmarks.train_speed            # every model x option, 384 train samples each
    .venv/bin/python -m benchmarks.train_speed --quick    # the demo cell net, fp32 vs the defaults (< 3 min)

Each figure is one epoch of ``trainables.fit.fit`` -- the loop every trial runs, on real
AdrenalMNIST3D 28^3 (BreastMNIST for the 2D ResNet) at batch 128, in this process with
``--threads`` intra-op threads (default 1: a 1-CPU trial). The epoch is the second one (the
first builds oneDNN's kernels), validation included. GFLOP/s counts 3x the forward FLOPs per
training sample (forward + backward) plus the validation forwards. Options:

* ``fp32``: fp32, default (NCDHW) layout -- fit() on a CPU before these options;
* ``fp32_cl``: fp32, channels-last; ``bf16``: bf16 autocast; ``bf16_cl``: both;
* ``auto``: fit()'s defaults (``precision: auto``, ``memory_format: auto``).

The U-Net step trains on random 64x64 slices (timing only, no result). Ends with
``speedup: <x>``: the demo cell net's epoch with ``auto`` vs ``fp32``, in one process.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from benchmarks.common import emit, ensure_jemalloc, machine
from medcore.cell_genotype import CellArchitecture

OPTIONS = {"fp32": ("fp32", "contiguous"), "fp32_cl": ("fp32", "channels_last"), "bf16": ("bf16", "contiguous"),
           "bf16_cl": ("bf16", "channels_last"), "auto": ("auto", "auto")}
# The demo's kind of cell (0.06-0.2 GFLOPs, no InstanceNorm) and one with InstanceNorm.
DEMO_CELL = CellArchitecture(nodes=((1, "relu_conv3"), (2, "mish_conv3")), edges=((0, 1), (1, 2), (2, 6), (0, 6)),
                             n_stacks=1, n_modules=1, n_f_init=8)
IN_CELL = CellArchitecture(nodes=((1, "conv3_in_relu"), (2, "conv3_in_mish")), edges=((0, 1), (1, 2), (2, 6), (0, 6)),
                           n_stacks=1, n_modules=1, n_f_init=8)
REAL_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"


def load(flag: str):
    """Real data: ../shared/data/medmnist when present, else the shipped AdrenalMNIST3D sample."""
    from orchestrator.data import load_medmnist, load_sample

    if (REAL_ROOT / f"{flag}.npz").is_file():
        return load_medmnist(flag, 28, REAL_ROOT, download=False), f"{flag} (real, {REAL_ROOT})"
    if flag == "adrenalmnist3d":
        return load_sample(), "adrenalmnist3d (real, the shipped sample)"
    raise SystemExit(f"train_speed: {REAL_ROOT / (flag + '.npz')} not found")


def random_segmentation(n: int = 256, size: int = 64, classes: int = 3):
    g = np.random.default_rng(0)
    images = {s: g.random((n, 1, size, size), dtype=np.float32) for s in ("train", "val")}
    labels = {s: g.integers(0, classes, (n, 1, size, size)).astype(np.int64) for s in ("train", "val")}
    info = SimpleNamespace(task="segmentation", spatial_dims=2, n_outputs=classes)
    return SimpleNamespace(info=info, images=images, labels=labels)


def subset(data, n: int):
    """The first ``n`` train samples (fit() gives every split row-major strides, so a subset runs the same kernels)."""
    images, labels = dict(data.images), dict(data.labels)
    images["train"], labels["train"] = images["train"][:n], labels["train"][:n]
    return SimpleNamespace(info=data.info, images=images, labels=labels)


def models(quick: bool):
    """name -> (builder, dataset flag or 'segmentation')."""
    from trainables.nets.cell_net import CellNet
    from trainables.nets.resnet import build_resnet
    from trainables.nets.tiny_cnn import TinyCNN
    from trainables.nets.unets import build_unet

    table = {"cell_net": (lambda info: CellNet(DEMO_CELL, 1, info.n_outputs, 3), "adrenalmnist3d")}
    if quick:
        return table
    table |= {
        "cell_net_instnorm": (lambda info: CellNet(IN_CELL, 1, info.n_outputs, 3), "adrenalmnist3d"),
        "tiny_cnn": (lambda info: TinyCNN(1, info.n_outputs, 3), "adrenalmnist3d"),
        "resnet10_3d": (lambda info: build_resnet("resnet10", 3, 1, info.n_outputs), "adrenalmnist3d"),
        "resnet18_2d": (lambda info: build_resnet("resnet18", 2, 1, info.n_outputs), "breastmnist"),
        "unet_2d": (lambda info: build_unet("unet", 2, 1, info.n_outputs), "segmentation"),
    }
    return table


def epoch_time(build, data, precision: str, memory_format: str, batch: int, task=None) -> dict:
    """The second epoch of fit() (validation included) and its last train loss."""
    from trainables.fit import FitConfig, fit

    torch.manual_seed(0)
    model = build(data.info)
    stamps = []
    cfg = FitConfig(max_epochs=2, patience=10, batch_size=batch, seed=0, precision=precision,
                    memory_format=memory_format, select_metric="val_loss" if task is not None else None)
    result = fit(model, data, cfg, report=lambda row: stamps.append(time.perf_counter()), task=task)
    return {"epoch_s": stamps[1] - stamps[0], "train_loss": result.history[-1]["train_loss"],
            "val_loss": result.history[-1]["val_loss"]}


def roofline(repeats: int = 5) -> dict:
    """Achieved GFLOP/s of a 2048^2 matmul and a 32-channel 16^3 Conv3d forward at this thread count."""
    out = {}
    a = torch.randn(2048, 2048)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        x = a.to(dtype)
        x @ x
        t = time.perf_counter()
        for _ in range(repeats):
            x @ x
        out[f"matmul_{name}"] = 2 * 2048 ** 3 * repeats / (time.perf_counter() - t) / 1e9
    conv = torch.nn.Conv3d(32, 32, 3, padding=1, bias=False)
    flops = 2 * 27 * 32 * 32 * 16 ** 3 * 8
    for name, dtype, fmt in (("fp32", torch.float32, torch.contiguous_format),
                             ("fp32_cl", torch.float32, torch.channels_last_3d),
                             ("bf16_cl", torch.bfloat16, torch.channels_last_3d)):
        c = conv.to(dtype=dtype, memory_format=fmt)
        x = torch.randn(8, 32, 16, 16, 16).to(dtype=dtype, memory_format=fmt)
        with torch.no_grad():
            c(x)
            t = time.perf_counter()
            for _ in range(repeats):
                c(x)
        out[f"conv3d_{name}"] = flops * repeats / (time.perf_counter() - t) / 1e9
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="the demo cell net only, fp32 vs auto (< 3 min)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (a trial's CPUs)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--train-samples", type=int, default=None,
                   help="train on the first N of each train split (default: all with --quick, 384 otherwise)")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    ensure_jemalloc()
    from trainables.complexity import count_flops
    from trainables.fit import cpu_has_bf16
    from trainables.unet_trial import dice_task

    torch.set_num_threads(args.threads)
    roof = roofline()
    print(f"threads {args.threads}, native bf16: {cpu_has_bf16()}; roofline GFLOP/s: "
          + ", ".join(f"{k} {v:.0f}" for k, v in roof.items()))
    options = {k: OPTIONS[k] for k in ("fp32", "auto")} if args.quick else OPTIONS
    cache, rows = {}, []
    print(f"{'model':<18} {'option':<8} {'epoch s':>8} {'GFLOP/s':>8} {'vs fp32':>8} {'train loss':>10} {'val loss':>9}")
    for name, (build, flag) in models(args.quick).items():
        if flag not in cache:
            cache[flag] = (random_segmentation(), "random 64x64 slices (timing only)") if flag == "segmentation" \
                else load(flag)
        data, source = cache[flag]
        n_train = args.train_samples or (None if args.quick else 384)
        if n_train and n_train < len(data.images["train"]):
            data = subset(data, n_train)
            source += f", first {n_train} train"
        task = dice_task() if flag == "segmentation" else None
        shape = tuple(data.images["train"].shape[1:])
        fwd = count_flops(build(data.info), shape)
        work = 3 * fwd * len(data.images["train"]) + fwd * len(data.images["val"])
        base = None
        for option, (precision, memory_format) in options.items():
            r = epoch_time(build, data, precision, memory_format, args.batch, task)
            base = base or r["epoch_s"]
            row = {"model": name, "data": source, "option": option, **r, "gflops_per_s": work / r["epoch_s"] / 1e9,
                   "forward_gflops": fwd / 1e9, "speedup_vs_fp32": base / r["epoch_s"]}
            rows.append(row)
            print(f"{name:<18} {option:<8} {r['epoch_s']:>8.2f} {row['gflops_per_s']:>8.1f} "
                  f"{row['speedup_vs_fp32']:>7.2f}x {r['train_loss']:>10.4f} {r['val_loss']:>9.4f}", flush=True)
    speedup = next(r["speedup_vs_fp32"] for r in rows if r["model"] == "cell_net" and r["option"] == "auto")
    emit("train_speed", {"machine": machine(), "threads": args.threads, "batch": args.batch,
                         "native_bf16": cpu_has_bf16(), "roofline_gflops_per_s": roof, "rows": rows,
                         "speedup": speedup}, args.out)
    print(f"speedup: {speedup:.2f}x")


if __name__ == "__main__":
    main()
