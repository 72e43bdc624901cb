"""Two searches under one ``medtune run`` (concurrent drivers on one Ray node) against the same two
searches one after the other (``medtune search`` twice, each with its own local Ray).

    .venv/bin/python -m benchmarks.coordinator_concurrency

A small ODE search and a small compression search on the shipped AdrenalMNIST3D sample, each
limited to one 1-CPU trial at a time, so on 2 cores one search alone leaves a core idle; sized
to take about as long as each other alone (the ratio's floor is the longer one's share).
Figure: wall time of the concurrent run over the sequential total (target <= 0.65; 0.5 is two
equal searches perfectly overlapped). Both include their fixed costs (Ray start, driver
start-up, data loading; the coordinator also writes its report). The sequential pair runs
before and after the concurrent run (A-B-A) and the ratio uses their mean, so a machine whose
load drifts does not land on one side only; the load average is printed with each phase.
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
    {"name": "ode", "type": "ode", "dataset": SAMPLE_FLAG, "data_root": str(SAMPLE_ROOT), "budget": 12,
     "pop_size": 4, "fraction": 0.25, "val_fraction": 1.0, "max_gflops": 0.1, "top_k": 1, "retrain_epochs": 1,
     "fit": {"max_epochs": 1, "metric": "val_auc"}, "resources": ONE_CPU},
    {"name": "compress", "type": "compress", "dataset": SAMPLE_FLAG, "data_root": str(SAMPLE_ROOT),
     "model": "resnet10", "fit": {"max_epochs": 1}, "budget": 6, "initial": 4, "ctaea_gens": 20,
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
    load = os.getloadavg()[0]
    walls = {}
    for entry in spec.searches:
        cfg = entry.run_config(folder / entry.name, folder / "zoo").to_dict()
        walls[entry.name] = medtune(["search", entry.type, "--config-json", json.dumps(cfg)], env)
    return {"per_search_s": walls, "total_s": sum(walls.values()), "loadavg_1min_at_start": load}


def concurrent(folder: Path, spec_path: Path, env: dict) -> dict:
    load = os.getloadavg()[0]
    wall = medtune(["run", str(spec_path), "--out", str(folder)], env)
    manifest = json.loads((folder / "run.json").read_text())["searches"]
    spans = [(r["started"], r["ended"]) for r in manifest.values()]
    both = max(0.0, min(e for _, e in spans) - max(s for s, _ in spans))
    return {"total_s": wall, "per_search_s": {n: r["ended"] - r["started"] for n, r in manifest.items()},
            "both_running_s": both, "loadavg_1min_at_start": load}


def main():
    import yaml

    from orchestrator.spec import load_spec

    argparse.ArgumentParser(description=__doc__).parse_args()
    folder = Path(tempfile.mkdtemp(prefix="coordinator_concurrency_"))
    spec_path = folder / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({"searches": SEARCHES}, sort_keys=False))
    spec = load_spec(spec_path)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    before = sequential(folder / "sequential_before", spec, env)
    conc = concurrent(folder / "concurrent", spec_path, env)
    after = sequential(folder / "sequential_after", spec, env)
    mean = (before["total_s"] + after["total_s"]) / 2
    emit("coordinator_concurrency", {"sequential_before": before, "concurrent": conc, "sequential_after": after,
                                     "ratio": conc["total_s"] / mean, "folder": str(folder), "machine": machine()})


if __name__ == "__main__":
    main()
