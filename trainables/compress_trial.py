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
from typing import Callable, Mapping

import torch
from ray import tune
from torch import nn

from medcore.compression_genome import CompressionGenome
from medcore.errors import ConfigError, MedtuneError
from trainables import compression
from trainables.complexity import count_flops, count_params
from trainables.fit import (FLOAT_PRELOAD_BYTES, DeviceSplit, FitConfig, eval_batch_size, evaluate, fit,
                            pick_device, set_threads_from_ray)
from trainables.memory import BatchEstimate
from trainables.nets.resnet import build_resnet, default_stem

ACCURACY_TOLERANCE = 0.96  # eq. (1): tau = 0.96 x base accuracy, i.e. at most 4 % accuracy loss
# Test metrics the constraint of eq. (1) can be set on (the paper's is accuracy); same tolerance for each.
CONSTRAINT_METRICS = ("accuracy", "auc", "balanced_accuracy")
MODEL_FILE = "model.pt"
META_FILE = "base.json"

# MedMNIST's training recipe, as adopted by the paper (section 4.2).
BASE_DEFAULTS = {"model": "resnet50", "epochs": 100, "lr": 1e-3, "weight_decay": 1e-3,
                 "batch_size": 128, "seed": 0, "select_metric": "val_acc"}
CALIBRATION_SAMPLES = 256  # train images that calibrate int8 quantization (config: calibration_samples)
# What a candidate trial holds besides the worker, the data and the activations, in float32
# copies of the base network's parameters (measured peak RSS of compress_trial, jemalloc with
# decay off as trials run, ResNet-10/18/50 3D at 28 px; see candidate_estimate):
# * pruning: torch's l1_unstructured (topk) needs 8-10x the tensor it prunes; over a whole ResNet
#   12-15x the largest tensor (50-95 % pruned), pages the worker keeps;
PRUNE_COPIES = 16  # x the largest prunable tensor
# * a float candidate: the base as received (pruned in place) + model_size_mb's serialized
#   state_dict, whose buffer grows by doubling (measured 1.9-2.0x);
FLOAT_PATH_COPIES = 3
# * an int8 candidate: the base + quantize()'s deep copy, prepare_fx's Conv+BN-fused copy and
#   conversion (measured 2.6x) + the int8 model and its serialized state_dict (~0.5x).
INT8_PATH_COPIES = 4.5


@dataclass
class BaseCheckpoint:
    """A trained base network with the arguments that rebuild it and its recorded metrics."""

    model: nn.Module
    build: dict  # keyword arguments of ``build_resnet``
    meta: dict  # dataset description and base metrics written by ``train_base``


def base_build(model: str, info, stem: str | None = None) -> dict:
    """Keyword arguments of ``build_resnet`` for base network ``model`` on a dataset described by ``info``."""
    return {"name": str(model).lower(), "spatial_dims": info.spatial_dims, "in_channels": info.n_channels,
            "n_outputs": info.n_outputs, "stem": stem or default_stem(info.spatial_dims)}


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
    build = base_build(c["model"], info, c.get("stem"))
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
        t = evaluate(model, test, info.task, eval_batch_size(cfg.batch_size), channels_last=device.type == "cuda")
        tune.report({**row, "test_acc": t["acc"], "test_auc": t["auc"], "test_pred_classes": t.get("pred_classes"),
                     **tag})

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


def read_build(path) -> dict:
    """The ``build_resnet`` arguments a :func:`train_base` checkpoint folder records (its
    ``base.json``), without loading its weights: what the memory plan needs of ``--base-checkpoint``."""
    directory = Path(os.fspath(path)).expanduser()
    if not (directory / META_FILE).is_file():
        raise MedtuneError(f"base checkpoint {directory} has no {META_FILE}; "
                           f"expected a train_base checkpoint directory")
    return dict(json.loads((directory / META_FILE).read_text())["build"])


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
    return {"accuracy": 0.0, "auc": nan, "balanced_accuracy": nan, "test_pred_classes": nan, "f1_compute": float(base_flops), "f1_relative": 1.0,
            "f2_error": 1.0, "g_accuracy": 1.0, "feasible": False, "flops": nan, "flops_dense": nan,
            "nonzero_rate": nan, "size_mb": nan, "inference_ms": nan, "quantized": False,
            "quantized_layers": [], "float_layers": [], "pruned_layers": [], "confusion": [],
            "status": "failed", "reason": reason}


def evaluate_candidate(model: nn.Module, data, config: Mapping, base_accuracy: float,
                       base_flops: float, constraint_metric: str = "accuracy",
                       base_constraint: float | None = None) -> dict:
    """Eq. (1) for one candidate: objectives f1, f2, constraint g and the measurements.

    ``f1_compute`` = accounted FLOPs x non-zero rate (``f1_relative`` divides it by the base
    FLOPs), ``f2_error`` = 1 - accuracy, ``g_accuracy`` = 0.96 x the base's value of
    ``constraint_metric`` - the candidate's (feasible iff <= 0). The paper's metric is accuracy
    (``base_accuracy``); ``auc`` or ``balanced_accuracy`` (one of :data:`CONSTRAINT_METRICS`) need
    the base's value as ``base_constraint``: accuracy alone lets a model that calls every case the
    majority class pass. The key stays ``g_accuracy`` (the searchers' constraint key) whatever
    the metric; ``constraint_metric`` says which. The config is validated first (a malformed
    config is a searcher bug and raises ``ConfigError``); any error during compression or
    measurement returns :func:`failed_result` with the exception as ``reason``.
    """
    if constraint_metric not in CONSTRAINT_METRICS:
        raise ConfigError(f"constraint metric must be one of {', '.join(CONSTRAINT_METRICS)}, got {constraint_metric}",
                          "constraint_metric")
    if base_constraint is None:
        if constraint_metric != "accuracy":
            raise ConfigError(f"a constraint on {constraint_metric} needs the base model's {constraint_metric}",
                              "constraint_metric")
        base_constraint = base_accuracy
    cfg = CompressionGenome.from_config(config)
    opts = {"calibration_samples": int(config.get("calibration_samples", CALIBRATION_SAMPLES)),
            "calibration_seed": int(config.get("calibration_seed", 0)),
            "inference_batch": int(config.get("inference_batch", 128)),
            "inference_repeats": int(config.get("inference_repeats", 5))}
    threshold = ACCURACY_TOLERANCE * float(base_constraint)
    try:
        m = compression.evaluate_compression(model, data, cfg, **opts)
    except Exception as exc:  # OOM (RuntimeError/MemoryError), quantization or kernel failure
        gc.collect()
        out = failed_result(base_flops, f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
    else:
        g = threshold - m[constraint_metric]
        out = {**m, "f1_relative": m["f1_compute"] / float(base_flops), "f2_error": 1.0 - m["accuracy"],
               "g_accuracy": g, "feasible": bool(g <= 0), "status": "ok", "reason": ""}
        out.pop("pruning")
    out.update({"base_accuracy": float(base_accuracy), "constraint_metric": constraint_metric,
                "constraint_base": float(base_constraint), "constraint_threshold": threshold,
                "base_flops": float(base_flops), "synthetic": bool(data.info.synthetic)})
    if constraint_metric == "accuracy":
        out["accuracy_threshold"] = threshold
    return out


def compress_trial(config: Mapping, data, base: BaseCheckpoint, base_accuracy: float | None = None,
                   options: Mapping | None = None, constraint_metric: str = "accuracy",
                   base_constraint: float | None = None) -> None:
    """Tune function trainable: evaluate one compression config on the test split, one report.

    Use as ``tune.with_parameters(compress_trial, data=data, base=load_base(checkpoint))``: the
    base network travels through Ray's object store (any node, no shared disk). Config:
    ``x1``..``x7`` and ``subset_seed`` (the design variables, see ``trainables.compression``)
    plus optional ``calibration_samples`` (256), ``calibration_seed`` (0), ``inference_batch``
    (128), ``inference_repeats`` (5). ``base_accuracy`` defaults to the test accuracy recorded
    in the checkpoint; ``options`` holds run-wide defaults for the optional keys (the config wins).
    ``constraint_metric`` / ``base_constraint``: the metric the constraint is on and the base's value
    of it (:func:`evaluate_candidate`).
    """
    set_threads_from_ray()
    _check_compatible(base, data)
    if base_accuracy is None:
        base_accuracy = base.meta["metrics"]["test_acc"]
    base_flops = count_flops(base.model, tuple(data.images["test"].shape[1:]))
    config = {**(options or {}), **config}
    tune.report(evaluate_candidate(base.model, data, config, base_accuracy, base_flops, constraint_metric,
                                   base_constraint))


# ---- memory: what each trial of the search takes, before it starts --------------------------

def _meta_base(build: dict) -> nn.Module:
    with torch.device("meta"):
        return build_resnet(**build)


PROBE_BATCHES = (8, 32)  # simulated training steps that price the base's per-sample memory
# Parameter-sized memory a base training trial holds beyond fit's copies and the simulated step:
# measured up to 1.5x the weights at small batches (ResNet-10/18/50 3D, 28 px, jemalloc), where the
# activations leave no margin; not attributed (kernel-side weight buffers, the optimizer step).
BASE_EXTRA_COPIES = 2


def base_estimate(build: dict, data, jemalloc: bool = True) -> BatchEstimate:
    """Peak RSS of a :func:`train_base` trial as a function of its batch size (the base
    network ``build`` trained by fit() with Adam on ``data``), simulated on the meta device: the
    fixed terms of :func:`trainables.memory.batch_estimate` -- the weights, Adam's moments and
    fit's best-epoch copy (no per-epoch checkpoint: the state is saved once, at the end), the
    data as :func:`~trainables.memory.held_bytes` counts it plus a second float copy of the test
    split (fit's final test evaluation makes its own while the trial's per-epoch one is alive),
    :data:`BASE_EXTRA_COPIES` -- and the larger of one training step and one evaluation batch
    (val and test, at fit's ``eval_batch_size``). ``jemalloc``: the workers preload Ray's
    jemalloc (else glibc's malloc).

    The training step is priced from two simulated steps (:data:`PROBE_BATCHES`): their
    difference is the per-sample activation memory, the rest (the parameter gradients, as
    large as the weights whatever the batch) is added once. A single probe's peak divided by
    its batch, as ``batch_estimate`` prices it, counts the gradients once per sample: 4x the
    measured peak of a ResNet-18 3D at batch 128 (28 px)."""
    import dataclasses

    from trainables.fit import EVAL_BATCH
    from trainables.memory import SAFETY, batch_estimate, held_bytes, simulate_peak_bytes

    model = _meta_base(build)
    shape = tuple(data.images["train"].shape[1:])
    test = data.images["test"]
    second_test = 4 * test.size if test.dtype.kind == "u" and 4 * test.size <= FLOAT_PRELOAD_BYTES else 0
    n_eval = max(len(data.labels["val"]), len(data.labels["test"]))
    est = batch_estimate(model, shape, held_bytes(data) + second_test, eval_batch=min(EVAL_BATCH, n_eval),
                         checkpoint=False, probe_batch=PROBE_BATCHES[0], extra_parameter_copies=BASE_EXTRA_COPIES,
                         jemalloc=jemalloc)
    small, large = PROBE_BATCHES
    low, high = (simulate_peak_bytes(model, shape, b, train=True) for b in PROBE_BATCHES)
    per_sample = max(0.0, (high - low) / (large - small))
    once = max(0.0, low - small * per_sample)  # batch-independent: the parameter gradients
    return dataclasses.replace(est, fixed=int(est.fixed + SAFETY * once), train_per_sample=per_sample)


def _array_bytes(data) -> int:
    """Bytes of the image and label arrays of ``data``, each array once however many split
    names alias it or view into it (a candidate converts batches to float one at a time)."""
    seen = {}
    for group in (data.images, data.labels):
        for array in group.values():
            base = array
            while getattr(base, "base", None) is not None and hasattr(base.base, "nbytes"):
                base = base.base
            seen[id(base)] = int(base.nbytes)
    return sum(seen.values())


def candidate_estimate(build: dict, data, calibration_samples: int = CALIBRATION_SAMPLES,
                       jemalloc: bool = True) -> Callable[[int], int]:
    """Peak RSS (bytes) of one :func:`compress_trial` on base network ``build`` as a function
    of its timed ``inference_batch`` (B). A candidate trains nothing -- magnitude pruning of the
    trained weights, post-training int8 calibration, then forward passes only -- so it counts

        BASELINE_BYTES [+ GLIBC_EXTRA_BYTES without ``jemalloc``] + the data arrays as the trial
        holds them (uint8, each once) + its uint8 copies of the calibration subset and of the
        timed batch + PRUNE_COPIES x the largest prunable tensor + the larger of the two kinds
        of candidate:
        * float (x7 = 0): FLOAT_PATH_COPIES x the float32 parameters and buffers + SAFETY x the
          simulated eval forward (no_grad, meta device) at the test prediction batch
          (``PREDICT_BATCH``, at most the test split), plus at B when B is larger (a smaller
          timed batch fits in what the prediction passes freed);
        * int8 (x7 = 1): INT8_PATH_COPIES x the parameters + SAFETY x twice the float forward at
          the calibration batch (``CALIBRATION_BATCH``; the histogram observers' temporaries) +
          a quarter of the float forward at B (int8 activations take a byte).

    Every candidate of the search is priced alike (pruning and quantization are what the
    searcher varies), so one request covers them all. The copies are measured under jemalloc
    with decay off (freed pages stay with the worker); glibc returns large blocks, so there
    they overstate."""
    from trainables.compression import CALIBRATION_BATCH, PREDICT_BATCH, prunable_layers
    from trainables.memory import BASELINE_BYTES, GLIBC_EXTRA_BYTES, SAFETY, simulate_peak_bytes

    model = _meta_base(build)
    shape = tuple(data.images["test"].shape[1:])
    sample = math.prod(shape)  # uint8 bytes of one image
    n_calibration = min(int(calibration_samples), len(data.images["train"]))
    weights = 4 * (sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers()))
    layers = [m for _, m in prunable_layers(model, "linear") + prunable_layers(model, "conv")]
    largest = 4 * max((t.numel() for m in layers for t in (m.weight, m.bias) if t is not None), default=0)
    fixed = (BASELINE_BYTES + (0 if jemalloc else GLIBC_EXTRA_BYTES) + _array_bytes(data) + n_calibration * sample
             + PRUNE_COPIES * largest)
    predict_batch = min(PREDICT_BATCH, len(data.images["test"]))
    calibration_batch = min(CALIBRATION_BATCH, n_calibration)
    peaks = {}

    def peak(batch: int) -> int:
        if batch not in peaks:
            peaks[batch] = simulate_peak_bytes(model, shape, batch, train=False)
        return peaks[batch]

    def estimate(inference_batch: int) -> int:
        b = int(inference_batch)
        timed = peak(b) if b > predict_batch else 0
        floating = FLOAT_PATH_COPIES * weights + SAFETY * (peak(predict_batch) + timed)
        int8 = INT8_PATH_COPIES * weights + SAFETY * (2 * peak(calibration_batch) + peak(b) / 4)
        return int(fixed + b * sample + max(floating, int8))

    return estimate
