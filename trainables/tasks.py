"""What a network is trained *for*: the loss, the metrics and their names, per task kind.

:func:`trainables.fit.fit` is task-agnostic: it asks a task object for the training loss and,
at evaluation, for an accumulator that turns batches of (logits, labels) into the split's
metrics. Two tasks exist:

* :class:`ClassificationTask` -- MedMNIST classification (binary, multi-class, ordinal,
  multi-label): BCE / cross-entropy, ACC and AUC by medmnist's own ``getACC`` / ``getAUC``.
* :class:`SegmentationTask` -- masks ``(N, 1, *spatial)`` of class indices: MONAI's
  ``DiceCELoss`` (or ``DiceLoss``), Dice by MONAI's ``DiceMetric``; one logit channel is a
  binary mask (sigmoid), several are classes (softmax, Dice over the foreground classes).

Metric names are the keys of :data:`medcore.records.METRICS` without the split prefix
(``acc``, ``auc``, ``dice``); the fit loop reports them as ``val_<name>`` / ``test_<name>``.
"""
from __future__ import annotations

import numpy as np
import torch

from trainables import metrics

SEGMENTATION = "segmentation"


class ClassificationTask:
    """A MedMNIST classification task, named by its task string (``info.task``)."""

    metric_names = ("acc", "auc")
    # Reported beside the metrics but never selected on: distinct predictions (1 = one class for every case).
    flag_names = ("pred_classes",)
    select_metric = "val_acc"

    def __init__(self, task: str):
        self.name = task
        self._loss = metrics.loss_fn(task)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._loss(logits.float(), y)

    def accumulator(self) -> "_ClassificationMetrics":
        return _ClassificationMetrics(self.name)

    def __repr__(self) -> str:
        return f"ClassificationTask({self.name!r})"


class _ClassificationMetrics:
    """ACC and AUC need every score of the split at once: keep the logits, compute at the end."""

    def __init__(self, task: str):
        self.task, self.logits, self.labels = task, [], []

    def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.logits.append(logits.detach().float())
        self.labels.append(y.detach())

    def compute(self) -> dict:
        y_true = torch.cat(self.labels).cpu().numpy()
        y_score = metrics.scores(torch.cat(self.logits), self.task)
        return {"acc": metrics.accuracy(y_true, y_score, self.task), "auc": metrics.auc(y_true, y_score, self.task),
                "pred_classes": metrics.predicted_classes(y_score, self.task)}


class SegmentationTask:
    """Dense prediction of a label mask; Dice is the metric (higher is better).

    ``loss="dicece"`` (default) is MONAI's Dice + cross-entropy, ``"dice"`` the soft Dice
    alone. Both use sigmoid for one logit channel and softmax over one-hot labels for more.
    Empty masks count as Dice 1 when the prediction is empty too (MONAI ``ignore_empty=False``),
    so the split's Dice is always defined.
    """

    metric_names = ("dice",)
    flag_names = ()
    select_metric = "val_dice"
    name = SEGMENTATION

    def __init__(self, loss: str = "dicece"):
        if loss not in ("dice", "dicece"):
            raise ValueError(f"segmentation loss must be 'dice' or 'dicece', got {loss!r}")
        self.loss_name = loss
        self._losses: dict = {}

    def _loss_for(self, channels: int):
        if channels not in self._losses:
            from monai.losses import DiceCELoss, DiceLoss

            kind = {"sigmoid": True} if channels == 1 else {"softmax": True, "to_onehot_y": True}
            self._losses[channels] = (DiceCELoss if self.loss_name == "dicece" else DiceLoss)(**kind)
        return self._losses[channels]

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        target = y.float() if logits.shape[1] == 1 else y.long()
        return self._loss_for(logits.shape[1])(logits, target)

    def accumulator(self) -> "_DiceMetrics":
        return _DiceMetrics()

    def __repr__(self) -> str:
        return f"SegmentationTask(loss={self.loss_name!r})"


class _DiceMetrics:
    """MONAI's ``DiceMetric`` accumulates one Dice per sample (and class); the mean is reported."""

    def __init__(self):
        self.metric = None

    def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        from monai.metrics import DiceMetric
        from monai.networks.utils import one_hot

        channels = logits.shape[1]
        if self.metric is None:
            self.metric = DiceMetric(include_background=channels == 1, ignore_empty=False)
        if channels == 1:
            pred, target = (logits > 0).float(), y.float()
        else:
            pred = one_hot(logits.argmax(1, keepdim=True), channels)
            target = one_hot(y.long(), channels)
        self.metric(y_pred=pred, y=target)

    def compute(self) -> dict:
        if self.metric is None:
            return {"dice": float("nan")}
        value = self.metric.aggregate()
        return {"dice": float(np.asarray(value.cpu()).mean())}


def make_task(task) -> ClassificationTask | SegmentationTask:
    """The task object for a task string (``"segmentation"`` or a MedMNIST classification task);
    a task object passes through unchanged."""
    if not isinstance(task, str):
        return task
    return SegmentationTask() if task == SEGMENTATION else ClassificationTask(task)
