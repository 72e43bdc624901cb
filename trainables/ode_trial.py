"""Tune trial that trains one cell architecture (paper 3.2) and reports every epoch.

One function serves the search (low-fidelity data) and the final retraining of the top
architectures (full train split): the data comes through ``tune.with_parameters`` from
Ray's object store, never from disk. Divergence and OOM become a
reported failed candidate (worst fitness, reason recorded), never a crashed trial.
Over-budget networks never get here: the searcher caps FLOPs (:class:`CandidateFlops`).
"""
from __future__ import annotations

import torch
from ray import tune

from searchers.cell_space import CellArchitecture
from trainables.complexity import count_flops, count_params
from trainables.fit import FitConfig, NonFiniteLoss, fit, set_threads_from_ray
from trainables.nets.cell_net import CellNet

WORST_METRICS = {"val_acc": 0.0, "val_auc": 0.0, "best_val_acc": 0.0, "best_val_auc": 0.0}


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def build_candidate(config: dict, info) -> CellNet:
    arch = CellArchitecture.from_config(config["architecture"])
    return CellNet(arch, info.n_channels, info.n_outputs, info.spatial_dims)


class CandidateFlops:
    """FLOPs of a candidate counted on the meta device: exact, and ~20 ms without compute.
    The ODE searcher calls it to enforce ``--max-gflops`` before any training."""

    def __init__(self, info):
        self.info = info

    def __call__(self, config: dict) -> int:
        with torch.device("meta"):
            net = build_candidate(config, self.info)
        return count_flops(net, input_shape(self.info))


def input_shape(info) -> tuple:
    return (info.n_channels,) + (info.size,) * info.spatial_dims


def train_candidate(config: dict, data, fit_config: dict):
    """Train ``config['architecture']`` on ``data``; report val metrics each epoch and, at the
    end, the val-selected model's test ACC/AUC plus params and FLOPs."""
    set_threads_from_ray()
    info = data.info
    seed = int(fit_config.get("seed", 0)) + int(config.get("candidate", 0))
    torch.manual_seed(seed)
    net = build_candidate(config, info)
    base = {"params": count_params(net), "flops": count_flops(net, input_shape(info)), "status": "ok",
            "reason": "", "synthetic": bool(info.synthetic)}
    try:
        result = fit(net, data, FitConfig(**dict(fit_config, seed=seed)),
                     report=lambda row: tune.report(dict(base, **row)), evaluate_test=True)
    except Exception as exc:  # a failed candidate is a result, not a crash
        if not (isinstance(exc, NonFiniteLoss) or is_oom(exc)):
            raise
        tune.report(dict(base, **WORST_METRICS, status="failed", reason=f"{type(exc).__name__}: {exc}"[:300]))
        return
    best = result.best
    tune.report(dict(base, **result.test, epoch=result.epochs_run, best_epoch=result.best_epoch,
                     val_loss=best["val_loss"], val_acc=best["val_acc"], val_auc=best["val_auc"],
                     best_val_acc=best["val_acc"], best_val_auc=best["val_auc"], done_training=True))
