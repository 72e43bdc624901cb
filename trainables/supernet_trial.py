"""MedNNS trainables (section 2 A.1-A.2, B): supernet training, zoo extraction, fine-tuning.

* :class:`FairSampler` / :class:`FairStep` -- FairNAS strict fairness: each step draws a group
  of m paths in which every choice of every elastic slot is used exactly once (m = the common
  number of choices, or their lcm with each choice used m/len times); the m losses are
  back-propagated into accumulated gradients and the optimizer steps once. The full network
  is trained alone first (``full_epochs``); the middle channels are then re-ordered by
  importance before the elastic phase. OFA's sandwich rule (largest + smallest + random) is
  the ablation.
* :func:`recalibrate_bn` -- BatchNorm statistics of a (sub)network set to the exact mean and
  (unbiased) variance of each BN input over a seeded subset, for any number of spatial dims
  (OFA's ``set_running_statistics`` is 4-D only).
* :func:`train_supernet` -- Tune trainable: one supernet per dataset, checkpoint every epoch,
  resumable, the final weights saved as ``supernet.pt`` + ``supernet.json``.
* :func:`extract_zoo` -- Tune trainable: N distinct seeded subnets, each BN-recalibrated and
  evaluated on val and test with inherited weights, with its architecture encoding and its
  functional encoding (penultimate activations for a fixed seeded Gaussian input, zero-padded
  to the supernet's widest last stage).
* :func:`finetune` -- Tune trainable of the query strategies (eq. 5): T1 trains the top model,
  Tk trains each of the top k one epoch and continues the best; baselines (same architecture
  from random init, a fixed ResNet-18) run through the same code.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from medcore.errors import ConfigError
from trainables.complexity import count_flops, count_params
from trainables.fit import (EVAL_BATCH, DeviceSplit, FitConfig, TrainStep, eval_batch_size, evaluate, fit, pick_device,
                            set_threads_from_ray)
from trainables.nets.ofa_resnet import OFAResNet, OFASpace, SubnetConfig, load_supernet, save_supernet, space_size

ZOO_FILE = "zoo.json"
SUPERNET_DEFAULTS = {"epochs": 4, "full_epochs": 1, "paths": 3, "sandwich": False, "lr": 1e-3,
                     "weight_decay": 0.0, "batch_size": 128, "seed": 0}


# ---- strict fairness -------------------------------------------------------------------

class FairSampler:
    """Groups of paths with FairNAS strict fairness, or OFA's sandwich rule (``sandwich=True``)."""

    def __init__(self, space: OFASpace, seed: int = 0, sandwich: bool = False):
        self.space, self.sandwich = space, sandwich
        self.generator = torch.Generator().manual_seed(int(seed))
        self.m = math.lcm(*(len(c) for *_, c in space.slots()))

    def group(self) -> list[SubnetConfig]:
        """m paths; slot j of path p takes the p-th entry of a fresh permutation of slot j's
        choices (each repeated m / len times)."""
        columns = []
        for *_, choices in self.space.slots():
            pool = list(choices) * (self.m // len(choices))
            perm = torch.randperm(len(pool), generator=self.generator).tolist()
            columns.append([pool[i] for i in perm])
        return [self.space.from_slots([col[p] for col in columns]) for p in range(self.m)]

    def paths(self, n: int) -> list[SubnetConfig]:
        """``n`` paths for one step: whole fair groups (n a multiple of m), or the sandwich."""
        if self.sandwich:
            return [self.space.largest(), self.space.smallest()] + [self.space.sample(self.generator)
                                                                     for _ in range(max(0, n - 2))]
        if n % self.m:
            raise ConfigError(f"strict fairness needs paths per step to be a multiple of {self.m}, got {n}",
                              "supernet_paths")
        return [c for _ in range(n // self.m) for c in self.group()]


class FairStep(TrainStep):
    """One supernet step: the full network during the first ``full_epochs``, then ``paths``
    subnets per batch with gradients accumulated (loss / paths each) and one optimizer step."""

    def __init__(self, space: OFASpace, paths: int = 3, full_epochs: int = 1, sandwich: bool = False, seed: int = 0):
        self.sampler = FairSampler(space, seed, sandwich)
        self.n_paths, self.full_epochs, self.reorganized = int(paths), int(full_epochs), False
        if not sandwich and self.n_paths % self.sampler.m:  # a bad path count fails before training
            raise ConfigError(f"strict fairness needs paths per step to be a multiple of {self.sampler.m}, "
                              f"got {self.n_paths}", "supernet_paths")

    def __call__(self, model: OFAResNet, x, y, ctx) -> float:
        largest = model.space.largest()
        if ctx.epoch <= self.full_epochs:
            model.set_active(largest)
            return super().__call__(model, x, y, ctx)
        if not self.reorganized:
            # permuting weights invalidates Adam's per-element moments: start them afresh
            model.reorganize()
            ctx.optimizer.state.clear()
            self.reorganized = True
        ctx.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for config in self.sampler.paths(self.n_paths):
            with ctx.autocast():
                loss = ctx.loss(model(x, config), y) / self.n_paths
            ctx.backward(loss)
            total += float(loss.detach())
        ctx.step()
        model.set_active(largest)  # validation between epochs sees the full network
        return total

    def state_dict(self) -> dict:
        return {"generator": self.sampler.generator.get_state(), "reorganized": self.reorganized}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.generator.set_state(state["generator"])
        self.reorganized = bool(state["reorganized"])


# ---- BatchNorm recalibration -----------------------------------------------------------

def _float_images(images, device) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(images)).to(device).float().div_(255.0)
    return images.to(device).float()


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images, batch_size: int = 256) -> nn.Module:
    """Set every used BatchNorm's running mean / unbiased variance to those of its input over
    ``images`` (uint8 (N, C, *spatial) or float tensors), N-D. BNs normalise with batch
    statistics during the pass, as in training; with ``batch_size >= N`` the result is exactly
    the subset's statistics. Only the channels a BN sees are written (dynamic BNs)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    sums: dict = {}

    def hook(module, inputs):
        x = inputs[0].double()
        dims = [0, *range(2, x.dim())]
        s = sums.setdefault(module, [0.0, 0.0, 0])
        s[0] = s[0] + x.sum(dims)
        s[1] = s[1] + (x * x).sum(dims)
        s[2] += x.numel() // x.shape[1]

    handles = [m.register_forward_pre_hook(hook) for m in bns]
    was_training = model.training
    device = next(model.parameters()).device
    x_all = images
    try:
        model.train()
        for start in range(0, len(x_all), batch_size):
            model(_float_images(x_all[start:start + batch_size], device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for module, (s1, s2, n) in sums.items():
        mean = s1 / n
        var = (s2 / n - mean * mean).clamp_min(0.0) * (n / max(n - 1, 1))
        c = mean.shape[0]
        module.running_mean[:c] = mean.to(module.running_mean.dtype)
        module.running_var[:c] = var.to(module.running_var.dtype)
    return model


def bn_subset(data, n: int, seed: int) -> np.ndarray:
    """A seeded subset of ``n`` train images (uint8), the BN recalibration set."""
    images = data.images["train"]
    idx = np.sort(np.random.default_rng(seed).choice(len(images), size=min(n, len(images)), replace=False))
    return images[idx]


# ---- supernet training -----------------------------------------------------------------

def _supernet_for(data, seed: int) -> OFAResNet:
    info = data.info
    torch.manual_seed(int(seed))
    return OFAResNet(info.spatial_dims, info.n_channels, info.n_outputs, info.size)


def train_supernet(config: Mapping, data) -> None:
    """Tune function trainable: train one supernet on ``data`` (A.1's two-stage scheme).

    Config (defaults :data:`SUPERNET_DEFAULTS`): ``epochs``, ``full_epochs`` (full network
    alone), ``paths`` per step, ``sandwich``, ``lr``, ``weight_decay``, ``batch_size``, ``seed``.
    Every epoch reports the full network's validation metrics with a checkpoint (resume after
    a restart); the last report carries the supernet folder (``supernet.pt``/``supernet.json``).
    """
    from ray import tune

    from trainables.checkpointing import TuneCheckpointing, resume_state

    set_threads_from_ray()
    c = {**SUPERNET_DEFAULTS, **dict(config)}
    epochs, info = int(c["epochs"]), data.info
    net = _supernet_for(data, c["seed"])
    step = FairStep(net.space, int(c["paths"]), int(c["full_epochs"]), bool(c["sandwich"]), int(c["seed"]))
    cfg = FitConfig(max_epochs=epochs, lr=float(c["lr"]), weight_decay=float(c["weight_decay"]),
                    batch_size=int(c["batch_size"]), patience=epochs, select_metric="val_acc", seed=int(c["seed"]))
    tag = {"dataset": info.flag, "synthetic": bool(info.synthetic)}
    started = time.time()
    result = fit(net, data, cfg, train_step=step, resume_state=resume_state(),
                 save_state=TuneCheckpointing(metrics=lambda row: {**row, **tag, "final": False}))
    net.set_active(net.space.largest())
    final = {**tag, "final": True, "epoch": result.epochs_run, "train_seconds": round(time.time() - started, 2),
             "params": count_params(net)}
    with tempfile.TemporaryDirectory() as d:
        save_supernet(net.cpu(), d, meta={"dataset": info.flag, "recipe": c, "synthetic": bool(info.synthetic)})
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(d))


def train_supernet_for(config: Mapping, datasets: Mapping) -> None:
    """:func:`train_supernet` on ``datasets[config["dataset"]]`` (one trial per dataset)."""
    train_supernet(config, datasets[config["dataset"]])


# ---- zoo extraction --------------------------------------------------------------------

def sample_distinct(space: OFASpace, n: int, seed: int) -> list[SubnetConfig]:
    """``n`` distinct canonical subnets drawn with a seeded generator (without replacement)."""
    total = space_size(space)
    if n > total:
        raise ConfigError(f"the supernet holds {total} distinct subnets, fewer than {n}", "zoo_size")
    g = torch.Generator().manual_seed(int(seed))
    seen, out = set(), []
    while len(out) < n:
        c = space.sample(g).canonical()
        key = tuple(c.encoding())
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def gaussian_probe(input_shape, seed: int = 0) -> torch.Tensor:
    """The fixed z ~ N(0, I) of A.2's functional encoding (one sample, seeded)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn((1, *input_shape), generator=g)


@torch.no_grad()
def functional_encoding(net: OFAResNet, probe: torch.Tensor) -> list[float]:
    """Penultimate activations of the active subnet for ``probe`` (eval mode), zero-padded to
    the supernet's widest last stage so every subnet's vector has the same length."""
    was = net.training
    net.eval()
    f = net.features(probe.to(next(net.parameters()).device))[0].float().cpu()
    net.train(was)
    out = torch.zeros(net.max_features)
    out[:f.shape[0]] = f
    return out.tolist()


def evaluate_subnets(net: OFAResNet, data, configs: list[SubnetConfig], *, bn_images: np.ndarray,
                     bn_batch: int = 256, eval_batch: int = 256, probe_seed: int = 0) -> list[dict]:
    """Inherited-weight metrics of each subnet after BN recalibration, with both encodings."""
    device = next(net.parameters()).device
    info = data.info
    val = DeviceSplit(data.images["val"], data.labels["val"], device)
    test = DeviceSplit(data.images["test"], data.labels["test"], device)
    probe = gaussian_probe(info.input_shape, probe_seed)
    rows = []
    for config in configs:
        net.set_active(config)
        recalibrate_bn(net, bn_images, bn_batch)
        v = evaluate(net, val, info.task, eval_batch)
        t = evaluate(net, test, info.task, eval_batch)
        sub = net.extract(config)
        rows.append({"config": config.to_dict(), "encoding": config.encoding(),
                     "functional": functional_encoding(net, probe), "val_loss": v["loss"], "val_acc": v["acc"],
                     "val_auc": v["auc"], "test_acc": t["acc"], "test_auc": t["auc"], "params": count_params(sub),
                     "flops": count_flops(sub, info.input_shape)})
    net.set_active(net.space.largest())
    return rows


def extract_zoo(config: Mapping, datasets: Mapping, supernets: Mapping) -> None:
    """Tune function trainable: the zoo rows of one dataset's supernet (A.1-A.2).

    Config: ``dataset``, ``n`` subnets, ``seed``, ``bn_images`` (recalibration subset size),
    ``bn_batch``, ``eval_batch``, ``probe_seed``. ``supernets[dataset]`` is the supernet's
    ``tune.Checkpoint`` (or folder). One report: counts and throughput, with a checkpoint
    holding ``zoo.json`` (one row per subnet).
    """
    from ray import tune

    set_threads_from_ray()
    flag = config["dataset"]
    data, ref = datasets[flag], supernets[flag]
    if isinstance(ref, tune.Checkpoint):
        with ref.as_directory() as d:
            net = load_supernet(d)
    else:
        net = load_supernet(ref)
    started = time.time()
    configs = sample_distinct(net.space, int(config["n"]), int(config.get("seed", 0)))
    images = bn_subset(data, int(config.get("bn_images", 256)), int(config.get("seed", 0)))
    rows = evaluate_subnets(net.to(pick_device()), data, configs, bn_images=images,
                            bn_batch=int(config.get("bn_batch", 256)), eval_batch=int(config.get("eval_batch", 256)),
                            probe_seed=int(config.get("probe_seed", 0)))
    seconds = time.time() - started
    with tempfile.TemporaryDirectory() as d:
        Path(d, ZOO_FILE).write_text(json.dumps(rows))
        tune.report({"dataset": flag, "n": len(rows), "seconds": round(seconds, 3),
                     "subnets_per_s": len(rows) / max(seconds, 1e-9), "synthetic": bool(data.info.synthetic)},
                    checkpoint=tune.Checkpoint.from_directory(d))


def read_zoo_rows(checkpoint) -> list[dict]:
    with checkpoint.as_directory() as d:
        return json.loads(Path(d, ZOO_FILE).read_text())


# ---- fine-tuning (query strategies and baselines) ---------------------------------------

def materialize(build: Mapping) -> nn.Module:
    """The network a zoo ``build`` record describes: ``{"builder": name, "kwargs"}`` (a legacy
    ``module:function`` builder too, :mod:`trainables.builders`)."""
    from trainables.builders import build as build_network

    return build_network(dict(build))


@torch.no_grad()
def adapt(model: nn.Module, in_channels: int, n_outputs: int, seed: int) -> nn.Module:
    """Fit a source model to the target: the stem's input channels (summed to 1, or the mean
    repeated to C) and a fresh classifier head when the output count differs."""
    stem = getattr(model, "stem", None)
    if isinstance(stem, (nn.Conv2d, nn.Conv3d)) and stem.in_channels != in_channels:
        w = stem.weight.sum(1, keepdim=True) if in_channels == 1 else \
            stem.weight.mean(1, keepdim=True).repeat(1, in_channels, *([1] * (stem.weight.dim() - 2)))
        new = type(stem)(in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False)
        new.weight.copy_(w)
        model.stem = new
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Linear) and head.out_features != n_outputs:
        torch.manual_seed(int(seed))
        model.classifier = nn.Linear(head.in_features, n_outputs)
    return model


FINETUNE_DEFAULTS = {"epochs": 10, "report_epochs": [10], "lr": 1e-3, "weight_decay": 0.0, "batch_size": 128,
                     "seed": 0, "recalibrate": True, "bn_images": 256}


def run_candidates(candidates: list, data, options: Mapping) -> dict:
    """Train each candidate build one epoch (when there are several), continue the best by
    val accuracy to ``epochs``; returns test accuracy per epoch and the chosen index."""
    o = {**FINETUNE_DEFAULTS, **dict(options)}
    info, epochs, seed = data.info, int(o["epochs"]), int(o["seed"])
    cfg = FitConfig(max_epochs=epochs, lr=float(o["lr"]), weight_decay=float(o["weight_decay"]),
                    batch_size=int(o["batch_size"]), patience=epochs, select_metric="val_acc", seed=seed)
    device = pick_device(cfg.device)
    test = DeviceSplit(data.images["test"], data.labels["test"], device)
    curves: dict = {}

    def build(i):
        torch.manual_seed(seed)
        model = adapt(materialize(candidates[i]), info.n_channels, info.n_outputs, seed)
        if o["recalibrate"] and candidates[i].get("kwargs", {}).get("supernet"):
            recalibrate_bn(model, bn_subset(data, int(o["bn_images"]), seed))
        return model

    def recorder(model, i):
        def report(row):  # at fit's evaluation batch, which a lowered training batch lowers too
            t = evaluate(model, test, info.task, eval_batch_size(cfg.batch_size))
            curves.setdefault(i, []).append(t["acc"])
        return report

    states, first_val = {}, []
    if len(candidates) > 1:
        for i in range(len(candidates)):
            model = build(i)
            keep = {}
            r = fit(model, data, dataclasses.replace(cfg, max_epochs=1), report=recorder(model, i),
                    save_state=lambda state, row, keep=keep: keep.update(state=state))
            states[i] = keep["state"]
            first_val.append(float(r.best["val_acc"]))
        chosen = int(np.argmax(first_val))
        model = build(chosen)
        fit(model, data, cfg, report=recorder(model, chosen), resume_state=states[chosen])
    else:
        chosen = 0
        model = build(0)
        fit(model, data, cfg, report=recorder(model, 0))
    curve = curves[chosen]
    return {"chosen": chosen, "first_epoch_val_acc": first_val, "test_acc_curve": curve,
            "acc_at": {str(e): curve[min(e, len(curve)) - 1] for e in o["report_epochs"]},
            "params": count_params(model)}


def finetune(config: Mapping, datasets: Mapping) -> None:
    """Tune function trainable: every strategy of one target, in one harness.

    ``config``: ``target``, ``runs`` (``[{"strategy", "candidates": [build records]}]``) plus
    :data:`FINETUNE_DEFAULTS` keys. One report: ``results`` = strategy -> :func:`run_candidates`'
    output, or ``{"error": one line}`` for a strategy that failed (the others still run).
    """
    from ray import tune

    set_threads_from_ray()
    config = dict(config.get("job", config))  # a grid over whole jobs: {"job": {...}}
    data = datasets[config["target"]]
    results = {}
    for run in config["runs"]:
        try:
            results[run["strategy"]] = run_candidates(list(run["candidates"]), data, config)
        except Exception as exc:  # a failure is a result: the other strategies still count
            results[run["strategy"]] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
    tune.report({"target": config["target"], "results": results, "synthetic": bool(data.info.synthetic)})


def supernet_checkpoint_ref(checkpoint) -> str:
    """The weights reference written to the zoo: the checkpoint folder (local) or its URI."""
    path = getattr(checkpoint, "path", checkpoint)
    fs = getattr(checkpoint, "filesystem", None)
    if fs is not None and getattr(fs, "type_name", "local") != "local":
        return f"{fs.type_name}://{path}"
    return os.fspath(path)


# ---- memory: what one trial of each stage keeps alive (planned by orchestrator.searches.mednns) ----
#
# Each stage runs one trial per dataset and every trial receives all datasets, so a stage is
# sized once for all of them: the networks are built for the widest dataset (most channels and
# outputs: a bound on each dataset's network, simulated once however many datasets there are)
# and the data term is the largest any one trial holds.

EXTRACT_BATCH = 256  # extract_zoo's BN-recalibration and evaluation batch (bn_batch, eval_batch)
SPLITS = ("train", "val", "test")
# What a worker that runs many distinct subnets keeps beyond their tensors: measured 70-100 MB
# over the simulated terms after 200-800 supernet paths at batch 16-32 (jemalloc, as trials
# run), most likely oneDNN's compiled primitive per convolution shape met (its cache is bounded).
SUBNET_SHAPES_BYTES = 256 * 2**20


def _float_copies(data, splits, fractions: Mapping | None = None) -> int:
    """Bytes of the float32 copies :class:`~trainables.fit.DeviceSplit` makes of ``splits`` of
    ``data``: uint8 image splits whose copy fits ``FLOAT_PRELOAD_BYTES`` (the rule
    :func:`~trainables.memory.held_bytes` follows); ``fractions`` scales a split's rows."""
    from trainables.fit import FLOAT_PRELOAD_BYTES

    total = 0
    for name in splits:
        images = data.images.get(name)
        if images is None or images.dtype.kind != "u":
            continue
        size = 4 * int(images.size * (fractions or {}).get(name, 1.0))
        total += size if size <= FLOAT_PRELOAD_BYTES else 0
    return total


def received_bytes(datasets: Mapping, flag: str, float_splits=SPLITS, train_rows: Mapping | None = None) -> int:
    """What a trial that receives all of ``datasets`` (one ``tune.with_parameters`` object)
    holds while it works on ``flag``: every dataset's arrays once (:func:`~trainables.memory.held_bytes`
    less the float copies it assumes of every split) plus the float32 copies made of
    ``flag``'s ``float_splits`` only. ``train_rows`` (dataset -> rows): the train splits of a
    fine-tuning subset, whose arrays are that share of the full split's."""
    from trainables.memory import held_bytes

    total, fractions = 0, {}
    for name, data in datasets.items():
        raw = held_bytes(data) - _float_copies(data, SPLITS)
        n = (train_rows or {}).get(name)
        if n is not None and n < len(data.labels["train"]):
            fraction = n / len(data.labels["train"])
            raw -= int((1 - fraction) * (data.images["train"].nbytes + data.labels["train"].nbytes))
            if name == flag:
                fractions["train"] = fraction
        total += raw
    return total + _float_copies(datasets[flag], float_splits, fractions)


def _widest(datasets: Mapping, flags) -> tuple:
    """(spatial_dims, channels, outputs, size) bounding every network of ``flags`` (one
    dimensionality and size per search), and the input shape with those channels."""
    infos = [datasets[f].info for f in flags]
    channels, outputs = max(i.n_channels for i in infos), max(i.n_outputs for i in infos)
    spatial = tuple(infos[0].input_shape[1:])
    return (infos[0].spatial_dims, channels, outputs, infos[0].size), (channels, *spatial)


def _eval_batch(datasets: Mapping, flags, batch: int = EVAL_BATCH) -> int:
    """The largest evaluation batch :func:`~trainables.fit.evaluate` forms on a val or test split."""
    n = max(max(len(datasets[f].labels["val"]), len(datasets[f].labels["test"])) for f in flags)
    return max(1, min(int(batch), n))


def _weight_bytes(model: nn.Module) -> int:
    return 4 * sum(t.numel() for t in list(model.parameters()) + list(model.buffers()))


def _meta_supernet(net_args: tuple) -> OFAResNet:
    with torch.device("meta"):
        return OFAResNet(*net_args)


def _sample_bytes(datasets: Mapping, flags) -> int:
    """Bytes of one uint8 train image of the widest dataset."""
    return max(datasets[f].images["train"][:1].nbytes for f in flags)


def simulate_recalibration_bytes(model: nn.Module, input_shape: tuple, n_images: int, batch_size: int) -> int:
    """Peak bytes of live tensors while :func:`recalibrate_bn` runs over ``n_images`` uint8
    images of ``input_shape`` at ``batch_size`` (its active subnet, BNs in training mode under
    no_grad, the float64 moments its hooks accumulate), simulated on the meta device as
    :func:`~trainables.memory.simulate_peak_bytes` simulates a step. The images themselves are
    not counted (the trial holds them: count them with its data)."""
    from trainables.memory import _LiveTensors, _meta_model, _RealKernels

    model = _meta_model(model)
    images = torch.empty((int(n_images), *input_shape), dtype=torch.uint8, device="meta")
    mode = _LiveTensors(list(model.parameters()) + list(model.buffers()) + [images])
    with _RealKernels(), mode:
        recalibrate_bn(model, images, int(batch_size))
    return int(mode.peak)


def supernet_memory(datasets: Mapping, flags, epochs: int, full_epochs: int):
    """:class:`~trainables.memory.BatchEstimate` (batch -> peak RSS) of a
    :func:`train_supernet_for` trial on any of ``flags``. A step trains its paths one after the
    other (sandwich or FairNAS: forward, backward, the graph freed before the next path), so
    one path's tensors are alive at a time and the largest subnet -- the full network, whose
    activations contain every path's -- bounds them; in the elastic phase
    (``epochs > full_epochs``) the gradients accumulated from the earlier paths stay alive
    through the later ones: one more parameter copy. fit holds train and val as float32,
    evaluates val, and the trial checkpoints every epoch (TuneCheckpointing); the paths' many
    shapes add :data:`SUBNET_SHAPES_BYTES`. Measured at 28 px under jemalloc (two epochs, the
    second elastic): batch 128 peaked at 1.17 GB, this says 1.46 GB; batch 16 after 768 paths
    0.94 GB, this says 1.02 GB."""
    from trainables.memory import batch_estimate

    net_args, shape = _widest(datasets, flags)
    held = max(received_bytes(datasets, f, ("train", "val")) for f in flags) + SUBNET_SHAPES_BYTES
    return batch_estimate(_meta_supernet(net_args), shape, held, eval_batch=_eval_batch(datasets, flags),
                          checkpoint=True, extra_parameter_copies=int(int(epochs) > int(full_epochs)))


def extraction_memory(datasets: Mapping, flags, bn_images: int, n_subnets: int, batch: int = EXTRACT_BATCH) -> int:
    """Peak RSS of an :func:`extract_zoo` trial on any of ``flags``: the supernet loaded (its
    saved state and the network: two weight copies) and one extracted subnet at a time (a
    third, at most); val and test as float32 and the ``bn_images`` recalibration subset (uint8);
    the rows kept for ``n_subnets`` subnets (a functional encoding of the widest stage each, as
    a list and as JSON); ``SAFETY x`` the larger of the BN recalibration of the largest subnet
    at ``batch`` (:func:`simulate_recalibration_bytes`) and its evaluation at ``batch``, and
    :data:`SUBNET_SHAPES_BYTES` for the many subnets' shapes (measured: 100 subnets at 28 px
    peaked at 1.11 GB, this says 1.19 GB)."""
    from trainables.memory import BASELINE_BYTES, SAFETY, simulate_peak_bytes

    net_args, shape = _widest(datasets, flags)
    net = _meta_supernet(net_args)
    n_bn = max(min(int(bn_images), len(datasets[f].labels["train"])) for f in flags)
    recalibration = simulate_recalibration_bytes(net, shape, n_bn, min(int(batch), n_bn))
    evaluation = simulate_peak_bytes(net, shape, _eval_batch(datasets, flags, batch), train=False)
    rows = int(n_subnets) * (net.max_features * (32 + 24) + 1024)  # floats as a list (object + pointer), as JSON
    held = max(received_bytes(datasets, f, ("val", "test")) for f in flags) + n_bn * _sample_bytes(datasets, flags)
    return int(BASELINE_BYTES + SUBNET_SHAPES_BYTES + 3 * _weight_bytes(net) + held + rows
               + SAFETY * max(recalibration, evaluation))


def finetune_memory(datasets: Mapping, flags, baseline: str, k: int, bn_images: int,
                    train_rows: Mapping | None = None):
    """batch -> peak RSS of a :func:`finetune` trial on any target of ``flags``, which trains
    every strategy one after the other on ``datasets`` (the fine-tuning subsets; ``train_rows``
    their train rows). The recommended models are known only after the meta-space, so they are
    bounded by the largest subnet (every zoo subnet and its scratch twin are within it; adapt()
    gives them the target's stem and head), and the fixed ResNet ``baseline`` is sized as it is.
    Tk keeps each of its ``k`` one-epoch states (weights, two Adam moments, the best weights)
    while the next trains; building a recommended model loads its whole supernet and
    recalibrates its BNs on ``bn_images`` at 256 (:func:`simulate_recalibration_bytes`).
    fit holds train and val as float32, run_candidates test; all are evaluated. The worker
    meets many subnet shapes before the ResNet trains: :data:`SUBNET_SHAPES_BYTES` (measured:
    the ResNet-18 baseline alone at 28 px, batch 64, peaked at 1.25 GB; this says 1.45 GB)."""
    from trainables.memory import BASELINE_BYTES, CHECKPOINT_COPIES, SAFETY, batch_estimate
    from trainables.nets.ofa_resnet import ResNetSubnet
    from trainables.nets.resnet import build_resnet

    (dims, channels, outputs, size), shape = _widest(datasets, flags)
    # the strategies' subnets (up to 1 + 5 + 10 + scratch) train in one worker before the ResNet
    held = max(received_bytes(datasets, f, SPLITS, train_rows) for f in flags) + SUBNET_SHAPES_BYTES
    with torch.device("meta"):
        largest = ResNetSubnet(OFASpace().largest(), dims, channels, outputs, size)
        resnet = build_resnet(baseline, dims, channels, outputs)
    retained = (int(k) - 1) * CHECKPOINT_COPIES * _weight_bytes(largest) if k > 1 else 0
    n_bn = max(min(int(bn_images), (train_rows or {}).get(f, len(datasets[f].labels["train"]))) for f in flags)
    build = (BASELINE_BYTES + held + retained + 2 * _weight_bytes(_meta_supernet((dims, channels, outputs, size)))
             + _weight_bytes(largest) + n_bn * _sample_bytes(datasets, flags)
             + SAFETY * simulate_recalibration_bytes(largest, shape, n_bn, min(EXTRACT_BATCH, n_bn)))
    evaluation = _eval_batch(datasets, flags)
    subnet = batch_estimate(largest, shape, held + retained, eval_batch=evaluation, checkpoint=k > 1)
    fixed = batch_estimate(resnet, shape, held, eval_batch=evaluation, checkpoint=False)
    return lambda batch: int(max(build, subnet(batch), fixed(batch)))
