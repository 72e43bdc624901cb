"""MedNNS benchmark 4 (paper Table 1 shape) on real MedMNIST flags, at a CPU budget:
leave-one-dataset-out over the real 2D flags (breastmnist, pneumoniamnist, retinamnist) and,
separately, the real 3D flags (adrenalmnist3d, vesselmnist3d). For each held-out target the
meta-space trained without it recommends a subnet; T1 (and T5 where --top-k >= 5) fine-tune
it with inherited weights, against the same architecture from scratch and a fixed ResNet-18,
all reported at the same fine-tuning epoch.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.mednns_loo --group 2d --out /tmp/mednns_2d
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.mednns_loo --group 3d --out /tmp/mednns_3d
"""
from __future__ import annotations

import argparse

GROUPS = {"2d": "breastmnist,pneumoniamnist,retinamnist", "3d": "adrenalmnist3d,vesselmnist3d"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--group", choices=tuple(GROUPS), default="2d")
    p.add_argument("--root", default="/work/shared/data/medmnist")
    p.add_argument("--out", required=True)
    p.add_argument("--supernet-epochs", type=int, default=4)
    p.add_argument("--zoo-size", type=int, default=48)
    p.add_argument("--metaspace-epochs", type=int, default=20)
    p.add_argument("--finetune-epochs", type=int, default=10)
    p.add_argument("--finetune-fraction", type=float, default=1.0)
    p.add_argument("--train-fraction", type=float, default=0.25,
                   help="seeded stratified fraction of every train split (supernets, zoo BN, fine-tuning); val/test full")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--baseline", default="resnet18")
    p.add_argument("--cpus", type=int, default=2, help="Ray CPUs (trials run one CPU each)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)

    import ray

    from benchmarks.common import emit, machine
    from orchestrator.config import MedNNSSearchConfig, Resources
    from orchestrator.data import load_medmnist
    from orchestrator.driver import run_search

    ray.init(address="local", num_cpus=a.cpus, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1", configure_logging=False)
    cfg = MedNNSSearchConfig(datasets=GROUPS[a.group], data_root=a.root, out=a.out, supernet_epochs=a.supernet_epochs,
                             supernet_full_epochs=1, zoo_size=a.zoo_size, metaspace_epochs=a.metaspace_epochs,
                             top_k=a.top_k, finetune_epochs=a.finetune_epochs, finetune_fraction=a.finetune_fraction,
                             baseline=a.baseline, resources=Resources(max_concurrent=a.cpus))
    try:
        data = {f: load_medmnist(f, 28, a.root).subset("train", a.train_fraction, 0) for f in GROUPS[a.group].split(",")}
        s = run_search("mednns", cfg, data)
    finally:
        ray.shutdown()
    rows = [{k: e.get(k) for k in ("target", "epoch", "t1_acc", "t5_acc", "scratch_acc", "resnet_acc")}
            | {"source": e["recommended"]["source_dataset"]} for e in s["loo"]]
    emit("mednns_loo", {"group": a.group, "datasets": s["datasets"], "synthetic": s["synthetic"], "n_zoo": s["n_zoo"],
                        "extractor": s["extractor"], "table": rows, "t1_beats_both": s["t1_beats_both"],
                        "zoo_throughput": s["zoo_throughput"], "wall_time_s": s["wall_time_s"],
                        "finetune_fraction": a.finetune_fraction, "train_fraction": a.train_fraction,
                        "supernet_epochs": a.supernet_epochs, "zoo_size": a.zoo_size,
                        "finetune_epochs": a.finetune_epochs, "baseline": a.baseline,
                        "machine": {**machine(), "note": "2-core machine shared with other jobs"}}, a.json)


if __name__ == "__main__":
    main()
