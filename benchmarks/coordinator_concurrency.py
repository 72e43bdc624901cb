"""Two searches under one ``medtune run`` (concurrent drivers on one Ray node) against the same two
searches one after the other (``medtune search`` twice, each with its own local Ray).

    .venv/bin/python -m benchmarks.coordinator_concurrency [--order sequential-first|concurrent-first]

A small ODE search and a small compression search on the shipped AdrenalMNIST3D sample, each
limited to one 1-CPU trial at a time, so on 2 cores one search alone leaves a core idle.
Figure: wall time of the concurrent run over the sequential total (target <= 0.65; 0.5 is two
equal searches perfectly overlapped). Both include their fixed costs (Ray start, driver
start-up, data loading; the coordinator also writes its report).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import emit, machine
from orchestrator.data import SAMPLE_FLAG, SAMPLE_ROOT

ONE_CPU = {"cpus_per_trial": 1, "max_concurrent": 1}
SEARCHES = [
    {"name": "ode", "type": "ode", "dataset": SAMPLE_FLAG, "data_root": str(SAMPLE_ROOT), "budget": 8,
     "pop_size": 4, "fraction": 0.25, "val_fraction": 1.0, "max_gflops": 0.1, "top_k": 1, "retrain_epochs": 2,
     "fit": {"max_epochs": 2, "metric": "val_auc"}, "resources": ONE_CPU},
    {"name": "compress", "type": "compress", "dataset": SAMPLE_FLAG, "data_root": str(SAMPLE_ROOT),
     "model": "resnet10", "fit": {"max_epochs": 2}, "budget": 6, "initial": 4, "ctaea_gens": 30,
     "inference_batch": 32, "inference_repeats": 1, "resources": ONE_CPU},
]


def medtune(args: list[str], env: dict) -> float:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"medtune {' '.join(args[:3])} failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - t


def sequential(folder: Path, spec, env: dict) -> dict:
    walls = {}
    for entry in spec.searches:
        cfg = entry.run_config(folder / "sequential" / entry.name, folder / "sequential" / "zoo").to_dict()
        walls[entry.name] = medtune(["search", entry.type, "--config-json", json.dumps(cfg)], env)
    return {"per_search_s": walls, "total_s": sum(walls.values())}


def concurrent(folder: Path, spec_path: Path, env: dict) -> dict:
    wall = medtune(["run", str(spec_path), "--out", str(folder / "concurrent")], env)
    manifest = json.loads((folder / "concurrent" / "run.json").read_text())["searches"]
    return {"total_s": wall, "per_search_s": {n: r["ended"] - r["started"] for n, r in manifest.items()}}


def main():
    import yaml

    from orchestrator.spec import load_spec

    p = argparse.ArgumentParser()
    p.add_argument("--order", choices=("sequential-first", "concurrent-first"), default="sequential-first")
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="coordinator_concurrency_"))
    spec_path = folder / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({"searches": SEARCHES}, sort_keys=False))
    spec = load_spec(spec_path)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if args.order == "sequential-first":
        seq = sequential(folder, spec, env)
        conc = concurrent(folder, spec_path, env)
    else:
        conc = concurrent(folder, spec_path, env)
        seq = sequential(folder, spec, env)
    emit("coordinator_concurrency", {"order": args.order, "sequential": seq, "concurrent": conc,
                                     "ratio": conc["total_s"] / seq["total_s"], "folder": str(folder),
                                     "machine": machine()})


if __name__ == "__main__":
    main()
