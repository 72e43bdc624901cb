"""Losses and metrics that follow the MedMNIST task type.

ACC and AUC are computed by medmnist's own ``getACC`` / ``getAUC`` (the functions its
Evaluator uses), so numbers are comparable with the MedMNIST benchmarks.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

BINARY = "binary-class"
MULTI_LABEL = "multi-label, binary-class"


def loss_fn(task: str):
    """BCE-with-logits for binary and multi-label tasks, cross-entropy otherwise (paper 3.2)."""
    if task in (BINARY, MULTI_LABEL):
        return lambda logits, y: F.binary_cross_entropy_with_logits(logits, y.float())
    return lambda logits, y: F.cross_entropy(logits, y[:, 0])


def scores(logits: torch.Tensor, task: str) -> np.ndarray:
    """Probabilities in the layout medmnist's Evaluator expects."""
    if task in (BINARY, MULTI_LABEL):
        return torch.sigmoid(logits.float()).cpu().numpy()
    return torch.softmax(logits.float(), dim=1).cpu().numpy()


def accuracy(y_true: np.ndarray, y_score: np.ndarray, task: str) -> float:
    from medmnist.evaluator import getACC

    return float(getACC(y_true, y_score, task))


def auc(y_true: np.ndarray, y_score: np.ndarray, task: str) -> float:
    """MedMNIST AUC; NaN where it is undefined (a split with a single class)."""
    from medmnist.evaluator import getAUC

    try:
        value = float(getAUC(y_true, y_score, task))
    except ValueError:
        return math.nan
    return value


def predicted_classes(y_score: np.ndarray, task: str, threshold: float = 0.5) -> int:
    """How many distinct predictions a model makes on a split, by the decision rule medmnist's
    ``getACC`` uses (binary: score > 0.5; multi-label: each label's score > 0.5, a distinct label
    vector counts once; otherwise argmax). 1 means it calls every case the same: its ACC is that
    class's share and it has learned nothing a constant would not."""
    y_score = np.asarray(y_score)
    if len(y_score) == 0:
        return 0
    if task == BINARY:
        y_pre = (y_score.reshape(len(y_score), -1)[:, -1] > threshold)[:, None]
    elif task == MULTI_LABEL:
        y_pre = y_score > threshold
    else:
        y_pre = np.argmax(y_score.reshape(len(y_score), -1), axis=-1)[:, None]
    return int(len(np.unique(y_pre, axis=0)))


def dice(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean Dice over the batch of binary masks ``(N, *spatial)`` by MONAI's ``compute_dice`` (the
    function behind ``DiceMetric``, which :class:`trainables.tasks.SegmentationTask` uses), an empty
    mask predicted empty counting 1 (``ignore_empty=False``), as the segmentation searches count it."""
    from monai.metrics import compute_dice

    pred, target = pred.float().flatten(1)[:, None], target.float().flatten(1)[:, None]
    return float(compute_dice(pred, target, include_background=True, ignore_empty=False).mean())
