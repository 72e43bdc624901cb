"""Zoo throughput: appending a batch of rows and reading / filtering a large zoo.

    .venv/bin/python -m benchmarks.zoo_throughput [--batches 100 --rows 1000 --datasets 5 --repeats 5]
Targets: one ``write_rows`` call of 1k rows < 1 s; ``read_zoo(dataset=X)`` plus a metric filter
on a 100k-row zoo (100 writer files of 1k rows over 5 datasets) < 1 s. Rows carry a 29-float
encoding and a cell-sized architecture JSON, like the ODE search's. Figures are medians.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np

from benchmarks.common import emit
from medcore.records import ModelRecord
from orchestrator import zoo

FLAGS = ("adrenalmnist3d", "organmnist3d", "nodulemnist3d", "fracturemnist3d", "vesselmnist3d")


def make_rows(n: int, batch: int, dataset: str, rng) -> list[dict]:
    genomes = rng.random((n, 29))
    records = [ModelRecord(search="ode", stage="search", family="cell3d",
                           architecture={"genome": g.round(4).tolist(), "cells": 3, "stem": 16},
                           encoding=g.tolist(), status="ok" if i % 10 else "failed",
                           metrics={"val_auc": float(rng.random()), "val_acc": float(rng.random()),
                                    "val_loss": float(rng.random()), "params": float(rng.integers(1e4, 1e6)),
                                    "flops": float(rng.integers(1e7, 1e9)), "epochs": 10.0, "best_epoch": 7},
                           trial_id=f"{batch}-{i}")
               for i, g in enumerate(genomes)]
    return zoo.rows_from_records(records, dataset=dataset, size=28, spatial_dims=3, task="binary-class",
                                 input_shape=(1, 28, 28, 28), run=f"run{batch}", synthetic=False)


def median_time(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--datasets", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    flags = FLAGS[: args.datasets]
    figures = {"rows_per_batch": args.rows, "batches": args.batches, "datasets": len(flags)}
    with tempfile.TemporaryDirectory() as root:
        t = time.perf_counter()
        batches = [make_rows(args.rows, b, flags[b % len(flags)], rng) for b in range(args.batches)]
        figures["rows_from_records_per_1k_s"] = (time.perf_counter() - t) / (args.batches * args.rows / 1000)

        one = f"{root}/append"
        figures["append_1k_s"], _ = median_time(lambda: zoo.write_rows(one, batches[0], "run0-ode-search"),
                                                args.repeats)

        big = f"{root}/zoo"
        t = time.perf_counter()
        for b, batch in enumerate(batches):
            zoo.write_rows(big, batch, f"run{b}-ode-search")
        figures["write_all_s"] = time.perf_counter() - t

        figures["read_all_s"], df = median_time(lambda: zoo.read_zoo(big), args.repeats)
        figures["rows_total"] = len(df)

        def read_and_filter():
            d = zoo.read_zoo(big, dataset=flags[0])
            return d, d[(d["status"] == "ok") & (d["val_auc"] > 0.9)]

        figures["read_dataset_and_filter_s"], (d, kept) = median_time(read_and_filter, args.repeats)
        figures["rows_dataset"], figures["rows_after_filter"] = len(d), len(kept)
        figures["best10_dataset_s"], _ = median_time(lambda: zoo.best(big, "val_auc", dataset=flags[0], n=10),
                                                     args.repeats)
        model_id = batches[-1][-1]["model_id"]
        figures["get_model_s"], _ = median_time(lambda: zoo.get_model(big, model_id), args.repeats)
    figures["targets"] = {"append_1k_s": 1.0, "read_dataset_and_filter_s": 1.0}
    emit("zoo_throughput", figures)


if __name__ == "__main__":
    main()
