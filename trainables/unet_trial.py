"""Tune trainables of the U-Net skip search: Stage I U-Nets and skip modules on a frozen U-Net.

* :func:`train_unet` -- Stage I (IAC paper IV-B.1): a U-Net of one backbone trained on
  ``train_dt``, validated on ``val_dt`` every epoch (Adam, constant lr 1e-3, MONAI ``DiceLoss``),
  the best epoch by val Dice kept; the final report carries a checkpoint with the weights
  (``unet.pt``) and how to rebuild them (``unet.json``).
* :func:`train_skips` -- Stage III (Algorithm 3) and the baselines: the Stage I U-Net loaded
  and frozen, one skip module per level from ``skip_factory`` (an IAC cell, an attention gate,
  a nested dense skip), only those trained with Stage I's hyperparameters, best by val Dice.

Both go through :func:`trainables.fit.fit` and checkpoint every epoch
(:mod:`trainables.checkpointing`), so a killed trial resumes where it stopped. Decathlon test
labels are not public: the "test" figures (``test_dice``) are the selected weights evaluated on
``val_dt``, and every final report says so (``test_split: "val_dt"``).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from medcore.errors import ConfigError, MedtuneError
from trainables.checkpointing import TuneCheckpointing, resume_state
from trainables.fit import (DeviceSplit, FitConfig, FitResult, eval_batch_size, evaluate, fit, pick_device,
                            set_threads_from_ray)
from trainables.nets.skip_baselines import BASELINES
from trainables.nets.unets import SkipUNet, build_unet, rebuild_unet
from trainables.tasks import SegmentationTask

UNET_FILE, UNET_META = "unet.pt", "unet.json"
SKIPS_FILE, SKIPS_META = "model.pt", "skips.json"
TEST_SPLIT = "val_dt"  # Decathlon test labels are not public

# Stage I's recipe (paper IV-B.1: Adam, constant lr 1e-3, batch 128, 200 epochs, best by val Dice).
STAGE1_DEFAULTS = {"backbone": "unet", "epochs": 200, "lr": 1e-3, "batch_size": 128, "seed": 0}


def dice_task() -> SegmentationTask:
    """The paper's objective in every stage: the soft Dice loss (MONAI ``DiceLoss``)."""
    return SegmentationTask(loss="dice")


def fit_config(c: Mapping) -> FitConfig:
    """Stage I / III training recipe: constant lr, no weight decay, a fixed number of epochs
    (``patience`` defaults to ``epochs``: no early stopping), the best epoch by val Dice."""
    epochs = int(c["epochs"])
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}", field="epochs")
    return FitConfig(max_epochs=epochs, lr=float(c["lr"]), batch_size=int(c["batch_size"]),
                     patience=int(c.get("patience") or epochs), select_metric="val_dice", seed=int(c["seed"]))


def _stage_data(data):
    """Stages I and III train on train_dt and validate on val_dt (Fig. 5)."""
    return data.fit_view("train_dt", "val_dt") if hasattr(data, "fit_view") else data


def _dataset_meta(data) -> dict:
    i = data.info
    return {"flag": i.flag, "size": i.size, "spatial_dims": i.spatial_dims, "synthetic": bool(i.synthetic),
            "path": i.path}


def _test_dice(model: nn.Module, data, batch_size: int) -> float:
    """The selected weights on ``val_dt`` (the held-out split; see module docstring), at fit's
    evaluation batch for training batch ``batch_size``."""
    device = pick_device("auto")
    split = DeviceSplit(data.images[TEST_SPLIT], data.labels[TEST_SPLIT], device)
    return float(evaluate(model.to(device), split, dice_task(), eval_batch_size(batch_size),
                          channels_last=False)["dice"])


def _report_checkpoint(final: dict, files: dict) -> None:
    """One ``tune.report`` with a checkpoint folder of ``files`` (name -> state dict or JSON-able)."""
    from ray import tune

    with tempfile.TemporaryDirectory() as d:
        for name, obj in files.items():
            if name.endswith(".json"):
                Path(d, name).write_text(json.dumps(obj, indent=1, default=_json_default))
            else:
                torch.save(obj, os.path.join(d, name))
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(d))


def _json_default(obj):
    """Numbers as floats, anything else (a genotype record, a path) as its text."""
    try:
        return float(obj)
    except (TypeError, ValueError):
        return str(obj)


def _cpu_state(state: dict) -> dict:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


# ---------------------------------------------------------------- Stage I
def fit_unet(model: SkipUNet, data, c: Mapping, save_state=None, resume=None) -> FitResult:
    """Stage I training of ``model`` (no Ray): fit's loop with the Dice loss, best by val Dice."""
    return fit(model, _stage_data(data), fit_config(c), task=dice_task(), keep_state=True,
               save_state=save_state, resume_state=resume)


def train_unet(config: Mapping, data) -> None:
    """Tune function trainable: Stage I for one backbone (paper IV-B.1).

    Config (defaults :data:`STAGE1_DEFAULTS`): ``backbone`` (``trainables.nets.unets.BACKBONES``),
    ``epochs``, ``lr``, ``batch_size``, ``seed``, ``patience`` (default: no early stop),
    ``unet_kwargs`` (e.g. ``features`` for ``unet``, ``encoder`` / ``decoder_channels`` for the
    encoder backbones). Every epoch reports fit's row (``val_dice``, ``best_val_dice``, ...) with
    a resumable checkpoint; the final report (``final: True``) carries ``unet.pt`` / ``unet.json``.
    """
    set_threads_from_ray()
    c = {**STAGE1_DEFAULTS, **dict(config)}
    info = data.info
    torch.manual_seed(int(c["seed"]))  # the initial weights are part of the seeded recipe
    model = build_unet(str(c["backbone"]), info.spatial_dims, info.n_channels, info.n_outputs,
                       **dict(c.get("unet_kwargs") or {}))
    tag = {"stage": "unet", "backbone": model.backbone, "synthetic": bool(info.synthetic), "final": False}
    result = fit_unet(model, data, c, save_state=TuneCheckpointing(metrics=lambda row: {**row, **tag}),
                      resume=resume_state())
    final = {**tag, "final": True, "epoch": result.epochs_run, "best_epoch": result.best_epoch,
             "val_dice": result.best["val_dice"], "best_val_dice": result.best["val_dice"],
             "test_dice": _test_dice(model, data, int(c["batch_size"])), "test_split": TEST_SPLIT,
             "params": sum(p.numel() for p in model.parameters())}
    meta = {"build": model.build, "dataset": _dataset_meta(data), "metrics": final,
            "recipe": {k: c[k] for k in STAGE1_DEFAULTS}}
    _report_checkpoint(final, {UNET_FILE: _cpu_state(model.unet_state_dict()), UNET_META: meta})


@dataclass
class UNetCheckpoint:
    """A Stage I U-Net: how to build it, its weights, and what :func:`train_unet` recorded."""

    build: dict
    state: dict
    meta: dict

    def model(self) -> SkipUNet:
        """A fresh :class:`SkipUNet` with the Stage I weights (not frozen, no skip modules)."""
        m = rebuild_unet(self.build)
        m.net.load_state_dict(self.state)
        return m

    @property
    def val_dice(self) -> float:
        return float(self.meta.get("metrics", {}).get("best_val_dice", float("nan")))


def load_unet(path) -> UNetCheckpoint:
    """Read a :func:`train_unet` checkpoint (a directory or a ``tune.Checkpoint``)."""
    if hasattr(path, "as_directory"):
        with path.as_directory() as d:  # tune.Checkpoint; downloads when the storage is remote
            return load_unet(d)
    d = Path(os.fspath(path)).expanduser()
    for name in (UNET_FILE, UNET_META):
        if not (d / name).is_file():
            raise MedtuneError(f"U-Net checkpoint {d} has no {name}; expected a train_unet checkpoint folder")
    meta = json.loads((d / UNET_META).read_text())
    state = torch.load(d / UNET_FILE, map_location="cpu", weights_only=True)
    return UNetCheckpoint(build=meta["build"], state=state, meta=meta)


# ---------------------------------------------------------------- skip modules on a frozen U-Net
def resolve_skip_factory(config: Mapping, skip_factory: Callable | None) -> tuple[Callable, str]:
    """``skip_factory`` if given, else the baseline named by ``config["skip"]`` (``BASELINES``)."""
    if skip_factory is not None:
        return skip_factory, str(config.get("skip") or getattr(skip_factory, "__name__", "custom"))
    name = config.get("skip")
    if name not in BASELINES:
        raise ConfigError(f"unknown skip module '{name}'; known: {', '.join(BASELINES)} "
                          "(or pass skip_factory)", field="skip")
    return BASELINES[name], str(name)


def skip_unet(unet: UNetCheckpoint, factory: Callable, seed: int = 0, **kwargs) -> SkipUNet:
    """The frozen Stage I U-Net with ``factory(level, channels, spatial_dims, **kwargs)`` in every skip."""
    model = unet.model().freeze()
    torch.manual_seed(seed)  # the skip modules' random initialisation (Algorithm 3) is seeded
    model.set_skips(model.make_skips(factory, **kwargs))
    return model


def trainable_only(params, cfg: FitConfig) -> torch.optim.Optimizer:
    """Stage I's Adam over the parameters that train (the skip modules; the U-Net is frozen)."""
    return torch.optim.Adam([p for p in params if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)


def fit_skips(model: SkipUNet, data, c: Mapping, save_state=None, resume=None) -> FitResult:
    """Train only ``model``'s skip modules (no Ray): fit's loop, Dice loss, best by val Dice."""
    if not model.frozen:
        raise ConfigError("fit_skips needs a frozen U-Net (SkipUNet.freeze())", field="unet")
    return fit(model, _stage_data(data), fit_config(c), task=dice_task(), keep_state=True,
               optimizer_factory=trainable_only, save_state=save_state, resume_state=resume)


def train_skips(config: Mapping, data, unet_state, skip_factory: Callable | None = None) -> None:
    """Tune function trainable: Stage III (Algorithm 3) or a baseline on a frozen Stage I U-Net.

    ``unet_state``: a :class:`UNetCheckpoint` (travels through Ray's object store), a
    ``tune.Checkpoint`` or a checkpoint folder of :func:`train_unet`. ``skip_factory(level,
    channels, spatial_dims, **config["skip_kwargs"])`` makes each level's module (``channels``:
    the U-Net's ``skip_channels()``); without it ``config["skip"]`` names a baseline
    (``attention``, ``nested``). Hyperparameters are Stage I's (lr, batch size from the U-Net's
    recipe unless the config sets them); ``epochs`` and ``seed`` come from the config.
    The final report adds ``baseline_dice`` (the frozen U-Net's Stage I val Dice) and
    ``dice_gain``, and a checkpoint with the whole model (``model.pt``) and ``skips.json``.
    """
    set_threads_from_ray()
    unet = unet_state if isinstance(unet_state, UNetCheckpoint) else load_unet(unet_state)
    recipe = dict(unet.meta.get("recipe", {}))
    c = {**STAGE1_DEFAULTS, **{k: recipe[k] for k in ("lr", "batch_size") if k in recipe}, **dict(config)}
    factory, name = resolve_skip_factory(c, skip_factory)
    kwargs = dict(c.get("skip_kwargs") or {})
    model = skip_unet(unet, factory, int(c["seed"]), **kwargs)
    info = data.info
    tag = {"stage": "skips", "skip": name, "backbone": model.backbone, "synthetic": bool(info.synthetic),
           "final": False}
    result = fit_skips(model, data, c, save_state=TuneCheckpointing(metrics=lambda row: {**row, **tag}),
                       resume=resume_state())
    base = unet.val_dice
    best = result.best["val_dice"]
    final = {**tag, "final": True, "epoch": result.epochs_run, "best_epoch": result.best_epoch,
             "val_dice": best, "best_val_dice": best, "test_dice": _test_dice(model, data, int(c["batch_size"])),
             "test_split": TEST_SPLIT, "baseline_dice": base, "dice_gain": best - base,
             "skip_params": sum(p.numel() for p in model.skips.parameters())}
    meta = {"unet_build": unet.build, "skip": name, "skip_kwargs": kwargs, "dataset": _dataset_meta(data),
            "metrics": final}
    _report_checkpoint(final, {SKIPS_FILE: _cpu_state(model.state_dict()), SKIPS_META: meta})
