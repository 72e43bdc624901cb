"""Pruning + int8 quantization of a trained network, and the measurements of eq. (1).

The "real function" of the surrogate-assisted CTAEA compression search
(surrogate-ctaea-compression, sections 2.2-2.3, 4.3). Plain functions, no Ray:

* :func:`apply_pruning` -- design variables x1..x6 (section 2.2): magnitude pruning
  (``torch.nn.utils.prune.l1_unstructured``, made permanent with ``prune.remove``) of the
  weights and/or biases of all or a seeded random subset of the linear / conv layers.
* :func:`quantize` -- x7: static int8 post-training quantization for CPU inference, FX graph
  mode (``prepare_fx`` / ``convert_fx``, oneDNN engine where built), calibrated on a seeded train
  subset. BN is folded into the convs and residual adds run as ``quantized::add_relu``,
  Conv3d included; what the FX patterns cannot quantize stays float and is listed.
* :func:`evaluate_compression` -- applies a config and measures test ACC/AUC (MedMNIST
  definitions), the confusion matrix (Fig. 3), the non-zero weight rate, FLOPs,
  ``f1 = FLOPs x non-zero rate`` (section 2.3), model size and CPU inference time (Fig. 2).

Configs are read and validated by :class:`medcore.compression_genome.CompressionGenome`, the
record the searchers encode and de-duplicate, so both sides accept the same configs.

Accounting choices the paper leaves open (each also stated where it is implemented):

* Random subset (x = 2): every layer of that kind is kept independently with probability
  1/2, and at least one is kept, drawn from ``subset_seed`` alone, so one search sees one
  subset. A ResNet has a single linear layer, so its linear subset is always that layer.
* Pruning intensity is applied per tensor: "both" (type 2) prunes ``x%`` of the weights
  and, separately, ``x%`` of the biases of the layer. Layers without a bias (every ResNet
  conv, as in torchvision) have nothing to prune for type 1 and are recorded as skipped.
* Non-zero weight rate: exact non-zeros over all parameters of the pruned float model
  (weights and biases of every layer, BN included -- "weight and bias tensors in the
  network"), measured before quantization so int8 rounding does not count as pruning.
* FLOPs: counted by ``torch.utils.flop_counter`` on the float model (quantized kernels are
  invisible to it). Section 2.3 says FLOPs are "reduced with the application of
  quantization" without a formula; Fig. 2 shows quantized solutions at many different f1
  values, so int8 layers are not counted as zero. Each quantized layer's FLOPs are weighted
  by the bit-width ratio 8/32 (:data:`QUANTIZED_FLOP_WEIGHT`); float layers count fully.
* Model size: bytes of the serialized ``state_dict`` (dense storage: pruning alone does not
  shrink it; the paper names sparse encodings only as a possibility), in MB = 1e6 bytes.
"""
from __future__ import annotations

import copy
import functools
import io
import statistics
import time
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune
from torch.utils.flop_counter import FlopCounterMode

from medcore.compression_genome import CompressionGenome
from trainables import metrics

LINEAR_TYPES = (nn.Linear,)
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
PRUNE_TENSORS = {0: ("weight",), 1: ("bias",), 2: ("weight", "bias")}
SUBSET_KEEP_PROBABILITY = 0.5
QUANTIZED_FLOP_WEIGHT = 8 / 32  # int8 multiply-accumulates weighted by bit width vs float32
_QUANTIZED_MODULE_PREFIXES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")
# Batches of the untimed forward passes: test-split prediction and int8 calibration (the memory
# estimate of a candidate, trainables.compress_trial.candidate_estimate, sizes its passes by them).
PREDICT_BATCH = 128
CALIBRATION_BATCH = 64

# The name trainables.compress_trial still uses; drop once it imports CompressionGenome from medcore.


def prunable_layers(model: nn.Module, kind: str) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every linear (``kind="linear"``) or conv layer, in module order."""
    types = {"linear": LINEAR_TYPES, "conv": CONV_TYPES}[kind]
    return [(name, m) for name, m in model.named_modules() if isinstance(m, types)]


def select_layers(names: list[str], scope: int, subset_seed: int, stream: int) -> list[str]:
    """The layers a scope prunes: none, all, or a seeded random subset (x1/x2 = 2).

    The subset keeps each layer with probability 1/2 and at least one. ``stream`` separates
    the linear and conv draws so that one does not shift the other.
    """
    if scope == 0 or not names:
        return []
    if scope == 1:
        return list(names)
    rng = np.random.default_rng([int(subset_seed), int(stream)])
    keep = rng.random(len(names)) < SUBSET_KEEP_PROBABILITY
    if not keep.any():
        keep[rng.integers(len(names))] = True
    return [n for n, k in zip(names, keep) if k]


def apply_pruning(model: nn.Module, cfg: CompressionGenome) -> list[dict]:
    """Prune ``model`` in place by x1..x6 (section 2.2); one report row per selected layer.

    Each row: ``layer``, ``kind``, ``amount`` (fraction), ``pruned`` (tensor -> measured zero
    fraction after pruning) and ``skipped`` (tensors asked for but absent, e.g. a conv bias).
    """
    rows = []
    groups = (("linear", cfg.x1, cfg.x3, cfg.x5, 0), ("conv", cfg.x2, cfg.x4, cfg.x6, 1))
    for kind, scope, intensity, ptype, stream in groups:
        layers = dict(prunable_layers(model, kind))
        for name in select_layers(list(layers), scope, cfg.subset_seed, stream):
            module, amount = layers[name], intensity / 100.0
            row = {"layer": name, "kind": kind, "amount": amount, "pruned": {}, "skipped": []}
            for tensor in PRUNE_TENSORS[ptype]:
                if getattr(module, tensor, None) is None:
                    row["skipped"].append(tensor)
                    continue
                prune.l1_unstructured(module, tensor, amount=amount)
                prune.remove(module, tensor)  # bake the mask in: a plain zeroed Parameter
                row["pruned"][tensor] = float((getattr(module, tensor) == 0).float().mean())
            rows.append(row)
    return rows


def nonzero_weight_rate(model: nn.Module) -> float:
    """Fraction of non-zero entries over all parameters (weights and biases of every layer)."""
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()))
    return nonzero / total if total else 1.0


@torch.no_grad()
def layer_flops(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, dict[str, int]]:
    """Total FLOPs of one sample and FLOPs per conv/linear layer, from FlopCounterMode.

    Counted as ``trainables.complexity.count_flops`` does (2 per multiply-accumulate); the
    per-layer split comes from the counter's module hierarchy (``<RootClass>.<name>``).
    """
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    x = torch.zeros((1, *input_shape), device=param.device if param is not None else "cpu")
    with FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    per_layer = {}
    for name, _ in prunable_layers(model, "linear") + prunable_layers(model, "conv"):
        per_layer[name] = int(sum(counts.get(f"{root}.{name}", {}).values()))
    return int(counter.get_total_flops()), per_layer


def accounted_flops(total: int, per_layer: Mapping[str, int], quantized_layers: list[str]) -> float:
    """FLOPs with every quantized layer weighted by :data:`QUANTIZED_FLOP_WEIGHT` (8/32)."""
    saved = sum(per_layer.get(name, 0) for name in quantized_layers) * (1.0 - QUANTIZED_FLOP_WEIGHT)
    return float(total - saved)


# Measured (benchmarks/int8_speed.py, torch 2.13, 2-core AVX2 CPU): oneDNN runs int8 ResNet
# inference at 0.3-0.4x of float in 2D and 0.57-0.69x in 3D (0.37-0.46x for the trained
# AdrenalMNIST3D ResNet-18), while the default "x86" engine sends conv3d to fbgemm, which is
# 1.6-2.2x *slower* than float. Hence oneDNN first.
ENGINE_PREFERENCE = ("onednn", "x86", "fbgemm", "qnnpack")


def quantized_backend(engines: list[str] | None = None) -> str:
    """The int8 CPU engine: oneDNN where built, else x86, fbgemm, qnnpack (ARM).
    ``engines``: the candidates (default: what this torch build supports)."""
    engines = torch.backends.quantized.supported_engines if engines is None else engines
    for name in ENGINE_PREFERENCE:
        if name in engines:
            return name
    raise RuntimeError(f"this torch build has no int8 CPU engine (engines: {engines})")


@functools.lru_cache(maxsize=1)
def cpu_has_vnni() -> bool:
    """Whether this CPU has VNNI int8 dot-product instructions (Linux /proc/cpuinfo; else False).
    Read once per process: every quantized candidate asks."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return not flags.isdisjoint({"avx512_vnni", "avx_vnni", "amx_int8"})


def qconfig_backend(engine: str) -> str:
    """Whose default qconfig to calibrate with. oneDNN's own uses full 8-bit activations, which
    can saturate the int16 pair sums of u8 x s8 products on CPUs without VNNI (torch warns of
    it); there the x86 qconfig's 7-bit activations (reduce_range) keep sums in range."""
    if engine == "onednn" and not cpu_has_vnni():
        return "x86"
    return engine


def _to_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)


def _is_quantized(module: nn.Module) -> bool:
    return type(module).__module__.startswith(_QUANTIZED_MODULE_PREFIXES)


def quantize(model: nn.Module, calibration: np.ndarray, batch_size: int = CALIBRATION_BATCH,
             engine: str | None = None) -> tuple[nn.Module, list[str], list[str]]:
    """Static int8 post-training quantization (x7 = 1) of a copy of ``model`` on CPU.

    FX graph mode with the backend's default qconfig mapping (per-channel weights, histogram
    activation observers): Conv+BN(+ReLU) fused, residual adds quantized. ``calibration`` is
    uint8 (N, C, *spatial). Returns ``(int8 model, quantized layer names, float layer
    names)`` over the conv/linear layers of ``model``; a layer FX has no int8 pattern for
    keeps running in float between dequantize/quantize nodes. ``engine`` overrides
    :func:`quantized_backend` (the benchmark compares engines); it stays set for inference.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    backend = engine or quantized_backend()
    torch.backends.quantized.engine = backend
    float_model = copy.deepcopy(model).cpu().eval()
    example = _to_float(calibration[:1])
    with warnings.catch_warnings():
        # torch.ao.quantization warns that it will move to torchao; the API is what this
        # torch ships, so the notice is silenced here rather than repeated per trial.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao\..*")
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*")
        prepared = prepare_fx(float_model, get_default_qconfig_mapping(qconfig_backend(backend)), (example,))
        with torch.no_grad():
            for start in range(0, len(calibration), batch_size):
                prepared(_to_float(calibration[start:start + batch_size]))
        qmodel = convert_fx(prepared)
    quantized, floating = [], []
    for name, _ in prunable_layers(model, "linear") + prunable_layers(model, "conv"):
        try:
            converted = qmodel.get_submodule(name)
        except AttributeError:  # folded away by the conversion: its work runs elsewhere in float
            floating.append(name)
            continue
        (quantized if _is_quantized(converted) else floating).append(name)
    return qmodel, quantized, floating


def calibration_images(data, n: int, seed: int) -> np.ndarray:
    """A seeded random ``n``-sample subset of the train images (uint8) for calibration."""
    images = data.images["train"]
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(images), size=min(int(n), len(images)), replace=False))
    return images[idx]


def model_size_mb(model: nn.Module) -> float:
    """Serialized ``state_dict`` size in MB (1e6 bytes), int8 packed params included."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes / 1e6


@torch.inference_mode()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = PREDICT_BATCH) -> torch.Tensor:
    """Float logits of ``model`` (on CPU) for uint8 images, batched."""
    model.eval()
    out = [model(_to_float(images[s:s + batch_size])).float() for s in range(0, len(images), batch_size)]
    return torch.cat(out)


@torch.inference_mode()
def inference_ms(model: nn.Module, images: np.ndarray, batch_size: int = 128, repeats: int = 5,
                 warmup: int = 2) -> float:
    """Median wall time (ms) of one forward pass on a CPU batch of ``batch_size`` test images.

    Images are cycled when the split is smaller than a batch; ``warmup`` passes first let
    the int8 kernels pack weights and the allocator settle (Fig. 2, right column).
    """
    model.eval()
    x = _to_float(np.take(images, np.arange(batch_size) % len(images), axis=0))
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


def confusion(y_true: np.ndarray, y_score: np.ndarray, task: str) -> list:
    """Confusion matrix of the test split (Fig. 3) as nested lists, rows = true class.

    Multi-class/ordinal: argmax, ``n_classes x n_classes``; binary: threshold 0.5, 2 x 2;
    multi-label: one 2 x 2 matrix per label (``L x 2 x 2``).
    """
    from sklearn.metrics import confusion_matrix, multilabel_confusion_matrix

    if task == metrics.MULTI_LABEL:
        return multilabel_confusion_matrix(y_true, (y_score > 0.5).astype(int)).tolist()
    if task == metrics.BINARY:
        return confusion_matrix(y_true[:, 0], (y_score[:, 0] > 0.5).astype(int), labels=[0, 1]).tolist()
    n = y_score.shape[1]
    return confusion_matrix(y_true[:, 0], y_score.argmax(1), labels=list(range(n))).tolist()


def balanced_accuracy(y_true: np.ndarray, y_score: np.ndarray, task: str) -> float:
    """Balanced accuracy (mean per-class recall, ``sklearn.metrics.balanced_accuracy_score``) by
    the decision rule medmnist's ``getACC`` uses: binary score > 0.5, argmax otherwise; multi-label:
    the mean over labels of each label's balanced accuracy. A model that calls every case one class
    scores 1 / n_classes here however skewed the split is, where its accuracy is the majority share."""
    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():  # a class absent from y_true: sklearn warns, the mean skips it
        warnings.simplefilter("ignore", UserWarning)
        if task == metrics.MULTI_LABEL:
            pred = (y_score > 0.5).astype(int)
            return float(np.mean([balanced_accuracy_score(y_true[:, i], pred[:, i]) for i in range(y_true.shape[1])]))
        if task == metrics.BINARY:
            return float(balanced_accuracy_score(y_true[:, 0], (y_score[:, -1] > 0.5).astype(int)))
        return float(balanced_accuracy_score(y_true[:, 0], y_score.argmax(1)))


def evaluate_compression(model: nn.Module, data, config: Mapping | CompressionGenome, *,
                         calibration_samples: int = 256, calibration_seed: int = 0,
                         inference_batch: int = 128, inference_repeats: int = 5) -> dict:
    """Compress ``model`` (modified in place by pruning) by ``config`` and measure it on CPU.

    Returns accuracy, auc, balanced_accuracy, test_pred_classes (distinct predictions on the test
    split, :func:`trainables.metrics.predicted_classes`: 1 = one class for every case), confusion,
    nonzero_rate, flops (quantization-accounted),
    flops_dense, f1_compute (= flops x nonzero_rate, section 2.3), size_mb, inference_ms,
    quantized, quantized_layers, float_layers, pruned_layers and the pruning report.
    Exceptions propagate; the trial turns them into failed results.
    """
    cfg = config if isinstance(config, CompressionGenome) else CompressionGenome.from_config(config)
    model = model.cpu().eval()
    task = data.info.task
    input_shape = tuple(data.images["test"].shape[1:])
    pruning = apply_pruning(model, cfg)
    nonzero = nonzero_weight_rate(model)
    dense_flops, per_layer = layer_flops(model, input_shape)
    all_layers = [n for n, _ in prunable_layers(model, "linear") + prunable_layers(model, "conv")]
    quantized_layers, float_layers = [], all_layers
    final = model
    if cfg.x7:
        calib = calibration_images(data, calibration_samples, calibration_seed)
        final, quantized_layers, float_layers = quantize(model, calib)
    flops = accounted_flops(dense_flops, per_layer, quantized_layers)
    logits = predict(final, data.images["test"])
    y_true, y_score = data.labels["test"], metrics.scores(logits, task)
    return {
        "accuracy": metrics.accuracy(y_true, y_score, task),
        "auc": metrics.auc(y_true, y_score, task),
        "balanced_accuracy": balanced_accuracy(y_true, y_score, task),
        "test_pred_classes": metrics.predicted_classes(y_score, task),
        "confusion": confusion(y_true, y_score, task),
        "nonzero_rate": nonzero,
        "flops": flops,
        "flops_dense": dense_flops,
        "f1_compute": flops * nonzero,
        "size_mb": model_size_mb(final),
        "inference_ms": inference_ms(final, data.images["test"], inference_batch, inference_repeats),
        "quantized": bool(quantized_layers),
        "quantized_layers": quantized_layers,
        "float_layers": float_layers,
        "pruned_layers": [row["layer"] for row in pruning if row["pruned"]],
        "pruning": pruning,
    }
