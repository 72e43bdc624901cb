"""Does int8 make these ResNets faster on this CPU? Float vs static int8 inference time.

    .venv/bin/python -m benchmarks.int8_speed [--threads 2] [--repeats 3]

Untrained MONAI ResNets (timing does not depend on the weights), batch 128 of random uint8
inputs, the same ``quantize`` / ``inference_ms`` the compression trial uses: 2D at 28 px
(the paper's setting, MedMNIST stem) and 3D at 28^3 (ImageNet stem, as AdrenalMNIST3D), each
int8 engine this torch build has (medtune uses the first of ``ENGINE_PREFERENCE``).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks.common import emit, ensure_jemalloc, machine
from trainables import compression
from trainables.nets.resnet import build_resnet

CASES = [("resnet50", 2, (3, 28, 28)), ("resnet18", 2, (3, 28, 28)), ("resnet18", 3, (1, 28, 28, 28))]


def main():
    ensure_jemalloc()  # the allocator trial workers run with
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    engines = [e for e in compression.ENGINE_PREFERENCE[:2] if e in torch.backends.quantized.supported_engines]
    rows = {}
    for name, dims, shape in CASES:
        torch.manual_seed(0)
        model = build_resnet(name, dims, shape[0], 2).eval()
        images = np.random.default_rng(0).integers(0, 256, (args.batch, *shape), dtype=np.uint8)
        f = compression.inference_ms(model, images, args.batch, args.repeats)
        row = rows[f"{name} {dims}D"] = {"float_ms": f}
        for engine in engines:
            int8, _, floating = compression.quantize(model, images[:64], engine=engine)
            q = compression.inference_ms(int8, images, args.batch, args.repeats)
            row[engine] = {"int8_ms": q, "int8_over_float": q / f, "float_layers": floating}
    emit("int8_speed", {"batch": args.batch, "threads": args.threads, "medtune_engine": compression.quantized_backend(),
                        "qconfig": compression.qconfig_backend(compression.quantized_backend()),
                        "cases": rows, "machine": machine()})


if __name__ == "__main__":
    main()
