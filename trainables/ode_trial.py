"""Tune trial that trains one cell architecture (paper 3.2) and reports every epoch.

One function serves the search (low-fidelity data) and the final retraining of the top
architectures (full train split): the data comes through ``tune.with_parameters`` from
Ray's object store, never from disk. Divergence and OOM become a reported failed candidate
(worst fitness, reason recorded), never a crashed trial. Over-budget networks never get
here: the searcher asks :class:`CandidateCost` first (FLOPs cap, memory that fits a node).
Every epoch is checkpointed, so a trial whose worker died (node lost, process killed) resumes
at its last epoch when Tune retries it; with ``keep_weights`` (the retrain) the val-selected
weights are saved as the final checkpoint.
"""
from __future__ import annotations

import json
import os
import tempfile

import torch
from ray import tune

from medcore.cell_genotype import CellArchitecture
from trainables.checkpointing import TuneCheckpointing, learning_curve, resume_state
from trainables.complexity import count_flops, count_params
from trainables.fit import FitConfig, NonFiniteLoss, fit, set_threads_from_ray
from trainables.memory import estimate_training_bytes
from trainables.nets.cell_net import CellNet

WORST_METRICS = {"val_acc": 0.0, "val_auc": 0.0, "best_val_acc": 0.0, "best_val_auc": 0.0}
BUILDER, BASELINE_BUILDER = "cell_net", "baseline"  # names in trainables.builders.BUILDERS


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def build_network(architecture: dict, in_channels: int, n_outputs: int, spatial_dims: int) -> CellNet:
    """The zoo's rebuild recipe for a cell network."""
    return CellNet(CellArchitecture.from_config(architecture), in_channels, n_outputs, spatial_dims)


def build_baseline(name: str, in_channels: int, n_outputs: int, spatial_dims: int):
    """The zoo's rebuild recipe for a hand-made reference network (``--baseline``): the tiny
    CNN, or a MONAI ResNet (3D: torchvision's stem, see :mod:`trainables.nets.resnet`)."""
    if name == "tiny_cnn":
        from trainables.nets.tiny_cnn import TinyCNN

        return TinyCNN(in_channels, n_outputs, spatial_dims)
    from trainables.nets.resnet import build_resnet

    return build_resnet(name, spatial_dims, in_channels, n_outputs)


def build_kwargs(config: dict, info) -> dict:
    if "baseline" in config:
        return {"name": config["baseline"], "in_channels": info.n_channels, "n_outputs": info.n_outputs,
                "spatial_dims": info.spatial_dims}
    return {"architecture": config["architecture"], "in_channels": info.n_channels, "n_outputs": info.n_outputs,
            "spatial_dims": info.spatial_dims}


def builder_of(config: dict) -> str:
    """The builder of a trial config: a baseline (``{"baseline": name}``) or a cell network."""
    return BASELINE_BUILDER if "baseline" in config else BUILDER


def build_from_config(config: dict, info):
    kwargs = build_kwargs(config, info)
    return build_baseline(**kwargs) if "baseline" in config else build_network(**kwargs)


class CandidateCost:
    """FLOPs and training memory of a candidate, computed on the meta device (no compute).

    The ODE searcher calls it before any training to enforce ``--max-gflops`` and to refuse
    networks whose training cannot fit the largest node; the driver requests the memory
    estimate as the trial's Ray ``memory`` resource so trials are never over-packed.
    """

    def __init__(self, info, batch_size: int, n_train: int, n_eval: int = 0):
        self.info, self.batch_size, self.n_train, self.n_eval = info, batch_size, n_train, n_eval
        self._memo: dict = {}  # (what, architecture) -> value: the searcher and Ray both ask

    def _net(self, config: dict):
        with torch.device("meta"):
            return build_from_config(config, self.info)

    def _cached(self, what: str, config: dict, compute) -> int:
        key = (what, json.dumps(config.get("architecture", config.get("baseline")), sort_keys=True))
        if key not in self._memo:
            self._memo[key] = compute(self._net(config))
        return self._memo[key]

    def flops(self, config: dict) -> int:
        return self._cached("flops", config, lambda net: count_flops(net, self.info.input_shape))

    def memory(self, config: dict) -> int:
        return self._cached("memory", config, lambda net: estimate_training_bytes(
            net, self.info.input_shape, self.batch_size, n_train=self.n_train, n_eval=self.n_eval, checkpoint=True))


def train_candidate(config: dict, data, fit_config: dict, keep_weights: bool = False):
    """Train ``config['architecture']`` (or the hand-made ``config['baseline']``) on ``data``; report val metrics each epoch and, at the
    end, the val-selected model's test ACC/AUC plus params and FLOPs (and, with
    ``keep_weights``, its weights as a checkpoint)."""
    set_threads_from_ray()
    info = data.info
    # one seed for every candidate of a search: the same data order and initialisation stream,
    # so two candidates' scores differ by their architectures (paired), not by their draws
    seed = int(fit_config.get("seed", 0))
    torch.manual_seed(seed)
    net = build_from_config(config, info)
    base = {"params": count_params(net), "flops": count_flops(net, info.input_shape), "status": "ok",
            "reason": "", "synthetic": bool(info.synthetic)}
    try:
        # every epoch's report carries a checkpoint: a trial whose worker dies resumes where it stopped
        cfg = FitConfig(**dict(fit_config, seed=seed))
        result = fit(net, data, cfg, evaluate_test=True, keep_state=keep_weights,
                     save_state=TuneCheckpointing(metrics=lambda row: dict(base, **row), curve=cfg.select_metric or "val_acc"),
                     resume_state=resume_state())
    except Exception as exc:  # a failed candidate is a result, not a crash
        if not (isinstance(exc, NonFiniteLoss) or is_oom(exc)):
            raise
        reason = "out of memory" if is_oom(exc) else f"{type(exc).__name__}: {exc}"[:300]
        tune.report(dict(base, **WORST_METRICS, status="failed", reason=reason))
        return
    best = result.best
    final = dict(base, **result.test, epoch=result.epochs_run, best_epoch=result.best_epoch,
                 val_loss=best["val_loss"], val_acc=best["val_acc"], val_auc=best["val_auc"],
                 best_val_acc=best["val_acc"], best_val_auc=best["val_auc"], done_training=True,
                 curve=learning_curve(result.history, cfg.select_metric or "val_acc"))
    if not keep_weights:
        tune.report(final)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save({k: v.detach().cpu() for k, v in result.state_dict.items()}, os.path.join(d, "model.pt"))
        with open(os.path.join(d, "build.json"), "w") as f:
            json.dump({"builder": builder_of(config), "kwargs": build_kwargs(config, info)}, f)
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(d))
