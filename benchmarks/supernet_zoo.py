"""MedNNS benchmarks 2 and 3 on a real MedMNIST flag (CPU budget):

* zoo extraction throughput: subnets evaluated per second with inherited weights, BatchNorm
  recalibration included (val + test splits, architecture + functional encodings);
* rank fidelity (paper section 3: Spearman 0.90): K subnets sampled from the trained
  supernet, their inherited-weight accuracy against the same architectures trained from
  scratch with the same recipe (scipy.stats.spearmanr).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.supernet_zoo --flag breastmnist \
        --root /work/shared/data/medmnist --supernet-epochs 10 --zoo 32 --k 8 --scratch-epochs 10
"""
from __future__ import annotations

import argparse
import time

import torch


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flag", default="breastmnist")
    p.add_argument("--root", default="/work/shared/data/medmnist")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--supernet-epochs", type=int, default=10)
    p.add_argument("--full-epochs", type=int, default=3)
    p.add_argument("--zoo", type=int, default=32, help="subnets timed for the throughput figure")
    p.add_argument("--k", type=int, default=8, help="subnets trained from scratch for rank fidelity")
    p.add_argument("--scratch-epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sandwich", action="store_true", help="OFA's sandwich rule instead of strict fairness")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    from scipy.stats import spearmanr

    from benchmarks.common import emit, machine
    from orchestrator.data import load_medmnist
    from trainables.fit import FitConfig, fit
    from trainables.nets.ofa_resnet import OFAResNet, ResNetSubnet
    from trainables.supernet_trial import FairStep, bn_subset, evaluate_subnets, sample_distinct

    data = load_medmnist(a.flag, a.size, a.root)
    info = data.info
    torch.manual_seed(a.seed)
    net = OFAResNet(info.spatial_dims, info.n_channels, info.n_outputs, info.size)
    step = FairStep(net.space, paths=3, full_epochs=a.full_epochs, sandwich=a.sandwich, seed=a.seed)
    t0 = time.perf_counter()
    fit(net, data, FitConfig(max_epochs=a.supernet_epochs, batch_size=a.batch_size, patience=a.supernet_epochs,
                             seed=a.seed), train_step=step)
    supernet_s = time.perf_counter() - t0
    configs = sample_distinct(net.space, max(a.zoo, a.k), a.seed)
    images = bn_subset(data, 256, a.seed)
    t0 = time.perf_counter()
    rows = evaluate_subnets(net, data, configs[:a.zoo], bn_images=images)
    zoo_s = time.perf_counter() - t0
    inherited = rows[:a.k] if a.k <= a.zoo else evaluate_subnets(net, data, configs[:a.k], bn_images=images)
    scratch, t0 = [], time.perf_counter()
    for c in configs[:a.k]:
        torch.manual_seed(a.seed)
        sub = ResNetSubnet(c, info.spatial_dims, info.n_channels, info.n_outputs, info.size)
        r = fit(sub, data, FitConfig(max_epochs=a.scratch_epochs, batch_size=a.batch_size,
                                     patience=a.scratch_epochs, seed=a.seed), evaluate_test=True)
        scratch.append({"val_acc": r.best["val_acc"], "val_auc": r.best["val_auc"], **r.test})
    scratch_s = time.perf_counter() - t0
    figures = {"flag": info.flag, "synthetic": bool(info.synthetic), "strategy": "sandwich" if a.sandwich else "fairnas",
               "supernet_epochs": a.supernet_epochs, "full_epochs": a.full_epochs, "supernet_train_s": round(supernet_s, 1),
               "zoo_subnets": a.zoo, "zoo_s": round(zoo_s, 2), "subnets_per_s": a.zoo / zoo_s,
               "k": a.k, "scratch_epochs": a.scratch_epochs, "scratch_train_s": round(scratch_s, 1)}
    for m in ("test_acc", "test_auc", "val_acc", "val_auc"):
        rho = spearmanr([r[m] for r in inherited], [r[m] for r in scratch]).statistic
        figures[f"spearman_{m}"] = None if rho != rho else float(rho)
    figures["pairs"] = [{"inherited_test_acc": i["test_acc"], "scratch_test_acc": s["test_acc"],
                         "inherited_test_auc": i["test_auc"], "scratch_test_auc": s["test_auc"], "flops": i["flops"]}
                        for i, s in zip(inherited, scratch)]
    figures["machine"] = {**machine(), "threads": a.threads, "note": "2-core machine shared with other jobs"}
    emit("supernet_zoo", figures, a.json)


if __name__ == "__main__":
    main()
