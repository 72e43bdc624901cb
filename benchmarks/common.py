"""Shared helpers for the benchmark scripts (run from the repo root with the venv python)."""
from __future__ import annotations

import json
import os
import platform
import time
from contextlib import contextmanager

import numpy as np


@contextmanager
def timer(store: dict, key: str):
    t = time.perf_counter()
    yield
    store[key] = time.perf_counter() - t


def machine() -> dict:
    import torch

    return {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.is_available(), "ld_preload": os.environ.get("LD_PRELOAD", "")}


def sample_architectures(n: int, seed: int, max_gflops: float, info) -> list[dict]:
    """n distinct feasible cell architectures under a FLOPs cap, drawn from seeded genomes."""
    from searchers.cell_space import decode
    from trainables.ode_trial import CandidateCost

    flops, rng, out, keys = CandidateCost(info, 128, 1).flops, np.random.default_rng(seed), [], set()
    while len(out) < n:
        d = decode(rng.random(29))
        if d.feasible and d.key not in keys:
            cfg = {"architecture": d.architecture.to_config()}
            if flops(cfg) <= max_gflops * 1e9:
                keys.add(d.key)
                out.append(cfg)
    return out


def emit(name: str, figures: dict, path: str | None = None):
    print(json.dumps({"benchmark": name, **figures}, indent=2, default=float))
    if path:
        with open(path, "w") as f:
            json.dump({"benchmark": name, **figures}, f, indent=2, default=float)


def ensure_jemalloc():
    """Re-exec this benchmark with Ray's jemalloc preloaded (it must be set before start)."""
    import sys

    from orchestrator.runtime import JEMALLOC_CONF, jemalloc_path

    lib = jemalloc_path()
    if lib and lib not in os.environ.get("LD_PRELOAD", ""):
        env = dict(os.environ, LD_PRELOAD=lib, MALLOC_CONF=JEMALLOC_CONF)
        os.execve(sys.executable, [sys.executable, "-m", sys.modules["__main__"].__spec__.name, *sys.argv[1:]], env)
