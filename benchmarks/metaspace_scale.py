"""Meta-space scale (MedNNS A.3, B): training time per epoch, peak memory and query latency on a
SYNTHETIC planted zoo of the paper's size (720k (model, dataset) training pairs).

    OMP_NUM_THREADS=2 nice -n 10 .venv/bin/python -m benchmarks.metaspace_scale [--threads 2 --epochs 2]

Default: 13 synthetic datasets x 60,000 models, leave-one-dataset-out on one of them, so the
meta-space trains on 12 x 60k = 720k pairs and is then queried over those 720k models.
Row shape follows the OFA zoo: a 20-float architecture encoding, a 256-float functional
encoding (float64 lists, as read from the zoo), 256-float dataset embeddings.
Wall times depend on what else runs; ``epoch_cpu_s`` / ``query_cpu_ms`` (process CPU time, all
threads) and the load averages at start and end say how contended the run was.
Targets: <= 60 s per epoch and <= 4 GB peak RSS on 2 CPU threads; query <= 50 ms. Peak RSS is
reported for building the synthetic zoo and, after resetting VmHWM, for training + querying with
that zoo held in memory (the whole process, zoo DataFrame included).
Also printed: the Spearman correlation, on the held-out dataset's own 60k models, between
the query score and their (planted) performance. Every figure is on synthetic data.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import numpy as np


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    """The process's peak RSS: VmHWM (which :func:`reset_peak` resets), else getrusage's maximum."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=int, default=13)
    ap.add_argument("--models", type=int, default=60_000, help="models per dataset")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    load_start = os.getloadavg()[0]

    import torch
    from scipy.stats import spearmanr

    from benchmarks.common import emit, machine
    from orchestrator.metaspace import MetaSpaceOptions, train_metaspace
    from tests.orchestrator.synthetic_zoo import synthetic_zoo

    torch.set_num_threads(args.threads)
    base = rss_mb()
    t0 = time.perf_counter()
    zoo, enc = synthetic_zoo(n_datasets=args.datasets, models_per_dataset=args.models, seed=0, feature_dim=256,
                             encoding_len=20, functional_len=256, missing_functional=0.05, families=("ofa-resnet",))
    build_s = time.perf_counter() - t0
    after_zoo, zoo_peak = rss_mb(), peak_rss_mb()
    reset = reset_peak()  # from here the peak is training + query with the zoo in memory
    target = "synthetic0"
    options = MetaSpaceOptions(epochs=args.epochs, batch_size=args.batch_size, seed=0)
    t0 = time.perf_counter()
    ms = train_metaspace(zoo, enc, options, exclude=target)
    train_s = time.perf_counter() - t0
    epoch_s = [h["seconds"] for h in ms.history]
    peak = peak_rss_mb()

    rng = np.random.default_rng(1)
    names = list(enc.embeddings)
    queries = [enc.embeddings[names[i % len(names)]] + rng.normal(0, 0.01, 256) for i in range(args.queries)]
    ms.query(queries[0], args.top_k)  # warm-up
    lat, lat_ex, cpu = [], [], []
    for q in queries:
        t, c = time.perf_counter(), time.process_time()
        top = ms.query(q, args.top_k)
        lat.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
        t = time.perf_counter()
        ms.query(q, args.top_k, exclude_dataset=names[1])
        lat_ex.append((time.perf_counter() - t) * 1e3)
    assert len(top) == args.top_k
    held = zoo[zoo["dataset"] == target]
    rho = float(spearmanr(ms.score_models(held, enc.embeddings[target]), held["val_acc"]).statistic)

    emit("metaspace_scale", {
        "synthetic": True, "training_pairs": len(ms.models), "query_models": len(ms.models),
        "datasets": args.datasets, "held_out": target, "feature_dim_model": ms.layout.dim,
        "torch_threads": args.threads, "niceness": os.nice(0), "machine": machine(),
        "zoo_build_s": round(build_s, 2), "train_total_s": round(train_s, 2),
        "epoch_s": [round(s, 2) for s in epoch_s], "epoch_s_median": round(statistics.median(epoch_s), 2),
        "epoch_cpu_s": [round(h["cpu_seconds"], 2) for h in ms.history],
        "last_epoch_losses": {k: round(v, 4) for k, v in ms.history[-1].items() if k not in ("epoch", "seconds", "cpu_seconds")},
        "rss_before_mb": round(base), "rss_after_zoo_mb": round(after_zoo), "peak_rss_zoo_build_mb": round(zoo_peak),
        "peak_rss_train_mb": round(peak), "peak_reset": reset,
        "query_ms_median": round(statistics.median(lat), 2), "query_cpu_ms_median": round(statistics.median(cpu), 2), "query_ms_p95": round(float(np.percentile(lat, 95)), 2),
        "query_exclude_ms_median": round(statistics.median(lat_ex), 2),
        "held_out_spearman": round(rho, 3), "load_average_1min": [round(load_start, 1), round(os.getloadavg()[0], 1)], "extractor": ms.extractor,
    }, args.json)


if __name__ == "__main__":
    main()
