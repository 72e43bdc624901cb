"""Benchmark: a Stage II (bilevel IAC search) worker's RSS after each step, per allocator.

    .venv/bin/python -m benchmarks.darts_allocator [--batch 16] [--steps 12] [--size 64]

Runs ``trainables.darts_trial.run_search`` on real MSD Hippocampus (``--data``, 30 cases) in
one fresh child per allocator (Ray's jemalloc with decay off, as ODE trial workers run; the same
with ``narenas:1``; jemalloc's default decay; glibc malloc) and prints RSS / peak RSS and seconds
after steps 1-3 and every 4th. Why the IAC search's workers run on glibc: docs/darts.md, "Memory".
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HIPPOCAMPUS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "segmentation",
                           "msd_hippocampus", "hippocampus_volumes.npz")
DECAY_OFF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
ALLOCATORS = {"jemalloc-decay-off": DECAY_OFF, "jemalloc-decay-off-narenas1": DECAY_OFF + ",narenas:1",
              "jemalloc-default": "", "glibc": None}


def rss_mib() -> dict:
    with open("/proc/self/status") as f:
        return {line.split(":")[0]: int(line.split()[1]) // 1024 for line in f if line.startswith(("VmRSS", "VmHWM"))}


def child(args) -> None:
    import torch

    from orchestrator.segmentation_data import load_segmentation
    from trainables import darts_trial
    from trainables.nets.unets import build_unet

    torch.set_num_threads(args.threads)
    data = load_segmentation(args.data, args.size, 2, 30, seed=0)
    original, steps, start = darts_trial.BilevelStep.__call__, [0], time.time()

    def step(self, model, x, y, ctx):
        loss = original(self, model, x, y, ctx)
        steps[0] += 1
        if steps[0] <= 3 or steps[0] % 4 == 0:
            print(json.dumps({"step": steps[0], "s": round(time.time() - start, 1), **rss_mib()}), flush=True)
        if steps[0] >= args.steps:
            raise SystemExit(0)
        return loss

    darts_trial.BilevelStep.__call__ = step
    torch.manual_seed(0)
    unet = build_unet("unet", 2, data.info.n_channels, data.info.n_outputs)
    darts_trial.run_search(unet, data, {"epochs": 1, "batch_size": args.batch, "seed": 0, "warmup": 0})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=HIPPOCAMPUS)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--allocators", nargs="+", default=list(ALLOCATORS), choices=list(ALLOCATORS))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from orchestrator.runtime import jemalloc_path

    for name in args.allocators:
        conf = ALLOCATORS[name]
        env = dict(os.environ, PYTHONPATH=os.getcwd(), LD_PRELOAD="" if conf is None else jemalloc_path(),
                   MALLOC_CONF=conf or "")
        print(f"== {name}", flush=True)
        subprocess.run([sys.executable, "-m", "benchmarks.darts_allocator", "--child", *sys.argv[1:]], env=env,
                       check=False)


if __name__ == "__main__":
    main()
