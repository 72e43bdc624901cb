"""Benchmark 1: data delivery from memory vs medmnist Dataset + DataLoader, and one epoch.

    .venv/bin/python -m benchmarks.input_pipeline
Prints samples/s of delivery alone (target >= 4x) and of a whole training epoch, both with
the allocator trial workers use (jemalloc). In-memory: float32 preloaded once (fit.DeviceSplit).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks.common import emit, ensure_jemalloc, machine
from orchestrator.data import SAMPLE_FLAG, SAMPLE_ROOT, load_sample
from medcore.cell_genotype import CellArchitecture
from trainables import metrics
from trainables.fit import DeviceSplit
from trainables.nets.cell_net import CellNet


def medmnist_loader(batch_size: int, workers: int):
    import medmnist

    # The usual MedMNIST recipe: per-sample __getitem__ (3D: already (1, D, H, W) in [0, 1]),
    # a transform to a float tensor, collation.
    to_tensor = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))  # noqa: E731
    ds = medmnist.AdrenalMNIST3D(split="train", root=str(SAMPLE_ROOT), size=28, transform=to_tensor)
    return DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers)


def delivery(iterable_fn, repeats: int) -> float:
    n, t = 0, time.perf_counter()
    for _ in range(repeats):
        for x, y in iterable_fn():
            n += len(y)
    return n / (time.perf_counter() - t)


def epoch(iterable_fn, task) -> float:
    torch.manual_seed(0)
    arch = CellArchitecture(nodes=((1, "conv3_in_relu"),), edges=((0, 1), (0, 6), (1, 6)), n_stacks=1,
                            n_modules=1, n_f_init=8)
    net = CellNet(arch, 1, 1, 3)
    opt, loss_fn = torch.optim.Adam(net.parameters(), 1e-3), metrics.loss_fn(task)
    n, t = 0, time.perf_counter()
    for x, y in iterable_fn():
        loss = loss_fn(net(x), y.long())
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(y)
    return n / (time.perf_counter() - t)


def main():
    ensure_jemalloc()  # the allocator trial workers run with
    p = argparse.ArgumentParser()
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args()
    data = load_sample()
    split = DeviceSplit(data.images["train"], data.labels["train"], torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    memory = lambda: split.batches(args.batch_size, gen)  # noqa: E731
    loader = medmnist_loader(args.batch_size, args.workers)
    d_mem, d_dl = delivery(memory, args.repeats), delivery(lambda: loader, args.repeats)
    e_mem, e_dl = epoch(memory, data.info.task), epoch(lambda: loader, data.info.task)
    emit("input_pipeline", {
        "dataset": f"{SAMPLE_FLAG} 28^3 train (real, {len(split)} samples)", "batch_size": args.batch_size,
        "delivery_samples_per_s": {"in_memory": d_mem, "medmnist_dataloader": d_dl, "ratio": d_mem / d_dl},
        "epoch_samples_per_s": {"in_memory": e_mem, "medmnist_dataloader": e_dl, "ratio": e_mem / e_dl},
        "machine": machine()})


if __name__ == "__main__":
    main()
