"""Ray Tune trials of the compression search: train the base network, evaluate one candidate.

* :func:`train_base` -- section 4.2/4.3 steps 1-2: an untrained ResNet trained with the
  MedMNIST recipe (Adam 1e-3, L2 1e-3, batch 128, 100 epochs, cross-entropy / BCE);
  val/test ACC+AUC reported every epoch; the val-selected weights saved as a Tune
  checkpoint (``model.pt`` + ``base.json`` with the build args) in the run's storage.
* :func:`compress_trial` -- the "real function" of section 3 step 9: load the base, apply
  the seven design variables, measure on the test split (section 4.3 step 4) and report
  the objectives of eq. (1) in one ``tune.report``. A failing candidate (OOM, quantization
  error, ...) is reported with worst values, never raised.

Both run on the trial's CPUs (``set_threads_from_ray``); int8 inference has no GPU kernels
(paper 4.3), so the compression side is CPU-only and runs in the trial process.
"""
from __future__ import annotations

import gc
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from ray import tune
from torch import nn

from medcore.compression_genome import CompressionGenome
from medcore.errors import MedtuneError
from trainables import compression
from trainables.complexity import count_flops, count_params
from trainables.fit import DeviceSplit, FitConfig, evaluate, fit, pick_device, set_threads_from_ray
from trainables.nets.resnet import build_resnet, default_stem

ACCURACY_TOLERANCE = 0.96  # eq. (1): tau = 0.96 x base accuracy, i.e. at most 4 % accuracy loss
MODEL_FILE = "model.pt"
META_FILE = "base.json"

# MedMNIST's training recipe, as adopted by the paper (section 4.2).
BASE_DEFAULTS = {"model": "resnet50", "epochs": 100, "lr": 1e-3, "weight_decay": 1e-3,
                 "batch_size": 128, "seed": 0, "select_metric": "val_acc"}


@dataclass
class BaseCheckpoint:
    """A trained base network with the arguments that rebuild it and its recorded metrics."""

    model: nn.Module
    build: dict  # keyword arguments of ``build_resnet``
    meta: dict  # dataset description and base metrics written by ``train_base``


def _dataset_meta(data) -> dict:
    info = data.info
    return {"flag": info.flag, "task": info.task, "size": info.size, "synthetic": info.synthetic}


def train_base(config: Mapping, data) -> None:
    """Tune function trainable: train the base network and checkpoint it (paper 4.3 steps 1-2).

    Config keys (defaults in :data:`BASE_DEFAULTS`): ``model``, ``epochs``, ``lr``,
    ``weight_decay`` (Adam's L2 penalty), ``batch_size``, ``seed``, ``stem`` (see
    ``trainables.nets.resnet``), ``patience`` (default: ``epochs``, i.e. the recipe's fixed
    epoch count) and ``select_metric`` (``val_acc``: eq. (1) bounds the compressed model's
    accuracy by the base's, so the base is the best-validation-accuracy epoch; MedMNIST's
    own scripts keep the best val AUC, which on AdrenalMNIST3D picked an epoch with 0.23
    val accuracy).

    Every epoch reports train/val loss, val_acc/val_auc and the current test_acc/test_auc
    (``final=False``). The last report (``final=True``) carries the test metrics of the
    val-selected weights -- its ``test_acc`` is the base accuracy of eq. (1) -- and the
    checkpoint.
    """
    set_threads_from_ray()
    c = {**BASE_DEFAULTS, **dict(config)}
    info = data.info
    build = {"name": str(c["model"]).lower(), "spatial_dims": info.spatial_dims,
             "in_channels": info.n_channels, "n_outputs": info.n_outputs,
             "stem": c.get("stem") or default_stem(info.spatial_dims)}
    torch.manual_seed(int(c["seed"]))  # the initial weights are part of the seeded recipe
    model = build_resnet(**build)
    epochs = int(c["epochs"])
    cfg = FitConfig(max_epochs=epochs, lr=float(c["lr"]), weight_decay=float(c["weight_decay"]),
                    batch_size=int(c["batch_size"]), patience=int(c.get("patience", epochs)),
                    select_metric=str(c["select_metric"]), seed=int(c["seed"]))
    device = pick_device(cfg.device)
    test = DeviceSplit(data.images["test"], data.labels["test"], device)
    tag = {"synthetic": bool(info.synthetic), "final": False}

    def report(row: dict) -> None:
        # fit() calls this after validating, with the model at this epoch's weights.
        t = evaluate(model, test, info.task, channels_last=device.type == "cuda")
        tune.report({**row, "test_acc": t["acc"], "test_auc": t["auc"], **tag})

    result = fit(model, data, cfg, report=report, evaluate_test=True, keep_state=True)
    state = {k: v.detach().cpu() for k, v in result.state_dict.items()}
    model.cpu()
    input_shape = tuple(data.images["train"].shape[1:])
    final = {"epoch": result.epochs_run, "best_epoch": result.best_epoch,
             "best_val_acc": result.best["val_acc"], "best_val_auc": result.best["val_auc"],
             **result.test, "params": count_params(model), "flops": count_flops(model, input_shape),
             "synthetic": bool(info.synthetic), "final": True}
    meta = {"build": build, "dataset": _dataset_meta(data), "metrics": final,
            "recipe": {k: c[k] for k in BASE_DEFAULTS}}
    with tempfile.TemporaryDirectory() as d:
        torch.save(state, os.path.join(d, MODEL_FILE))
        Path(d, META_FILE).write_text(json.dumps(meta, indent=1, default=float))
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(d))


def _read_base(directory: Path) -> BaseCheckpoint:
    for name in (MODEL_FILE, META_FILE):
        if not (directory / name).is_file():
            raise MedtuneError(f"base checkpoint {directory} has no {name}; expected a train_base checkpoint directory")
    meta = json.loads((directory / META_FILE).read_text())
    model = build_resnet(**meta["build"])
    model.load_state_dict(torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True))
    return BaseCheckpoint(model=model.eval(), build=meta["build"], meta=meta)


def load_base(path) -> BaseCheckpoint:
    """Rebuild the base network from a :func:`train_base` checkpoint (directory or ``tune.Checkpoint``)."""
    if isinstance(path, tune.Checkpoint):
        with path.as_directory() as d:  # downloads when the storage is remote
            return _read_base(Path(d))
    directory = Path(os.fspath(path)).expanduser()
    if not directory.is_dir():
        raise MedtuneError(f"base checkpoint {directory} not found; train the base network first (train_base)")
    return _read_base(directory)


def _check_compatible(base: BaseCheckpoint, data) -> None:
    b, info = base.build, data.info
    if (b["spatial_dims"], b["in_channels"], b["n_outputs"]) != (info.spatial_dims, info.n_channels, info.n_outputs):
        raise MedtuneError(
            f"base checkpoint was built for {b['spatial_dims']}D, {b['in_channels']} channel(s), "
            f"{b['n_outputs']} output(s) but dataset {info.flag} has {info.spatial_dims}D, "
            f"{info.n_channels} channel(s), {info.n_outputs} output(s)")


def failed_result(base_flops: float, reason: str) -> dict:
    """Worst values for a candidate that could not be evaluated (DESIGN: a failure is a result)."""
    nan = math.nan
    return {"accuracy": 0.0, "auc": nan, "f1_compute": float(base_flops), "f1_relative": 1.0,
            "f2_error": 1.0, "g_accuracy": 1.0, "feasible": False, "flops": nan, "flops_dense": nan,
            "nonzero_rate": nan, "size_mb": nan, "inference_ms": nan, "quantized": False,
            "quantized_layers": [], "float_layers": [], "pruned_layers": [], "confusion": [],
            "status": "failed", "reason": reason}


def evaluate_candidate(model: nn.Module, data, config: Mapping, base_accuracy: float,
                       base_flops: float) -> dict:
    """Eq. (1) for one candidate: objectives f1, f2, constraint g and the measurements.

    ``f1_compute`` = accounted FLOPs x non-zero rate (``f1_relative`` divides it by the base
    FLOPs), ``f2_error`` = 1 - accuracy, ``g_accuracy`` = 0.96 x base accuracy - accuracy
    (feasible iff <= 0). The config is validated first (a malformed config is a searcher
    bug and raises ``ConfigError``); any error during compression or measurement returns
    :func:`failed_result` with the exception as ``reason``.
    """
    cfg = CompressionGenome.from_config(config)
    opts = {"calibration_samples": int(config.get("calibration_samples", 256)),
            "calibration_seed": int(config.get("calibration_seed", 0)),
            "inference_batch": int(config.get("inference_batch", 128)),
            "inference_repeats": int(config.get("inference_repeats", 5))}
    threshold = ACCURACY_TOLERANCE * float(base_accuracy)
    try:
        m = compression.evaluate_compression(model, data, cfg, **opts)
    except Exception as exc:  # OOM (RuntimeError/MemoryError), quantization or kernel failure
        gc.collect()
        out = failed_result(base_flops, f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
    else:
        g = threshold - m["accuracy"]
        out = {**m, "f1_relative": m["f1_compute"] / float(base_flops), "f2_error": 1.0 - m["accuracy"],
               "g_accuracy": g, "feasible": bool(g <= 0), "status": "ok", "reason": ""}
        out.pop("pruning")
    out.update({"base_accuracy": float(base_accuracy), "accuracy_threshold": threshold,
                "base_flops": float(base_flops), "synthetic": bool(data.info.synthetic)})
    return out


def compress_trial(config: Mapping, data, base: BaseCheckpoint, base_accuracy: float | None = None,
                   options: Mapping | None = None) -> None:
    """Tune function trainable: evaluate one compression config on the test split, one report.

    Use as ``tune.with_parameters(compress_trial, data=data, base=load_base(checkpoint))``: the
    base network travels through Ray's object store (any node, no shared disk). Config:
    ``x1``..``x7`` and ``subset_seed`` (the design variables, see ``trainables.compression``)
    plus optional ``calibration_samples`` (256), ``calibration_seed`` (0), ``inference_batch``
    (128), ``inference_repeats`` (5). ``base_accuracy`` defaults to the test accuracy recorded
    in the checkpoint; ``options`` holds run-wide defaults for the optional keys (the config wins).
    """
    set_threads_from_ray()
    _check_compatible(base, data)
    if base_accuracy is None:
        base_accuracy = base.meta["metrics"]["test_acc"]
    base_flops = count_flops(base.model, tuple(data.images["test"].shape[1:]))
    config = {**(options or {}), **config}
    tune.report(evaluate_candidate(base.model, data, config, base_accuracy, base_flops))
