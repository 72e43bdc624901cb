"""Records every search speaks: dataset info, statuses, the metric vocabulary, model records.

One vocabulary across searches, so the zoo, the reports and the coordinator read every
search's results the same way.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

# Statuses of an evaluated (or skipped) candidate, the same for every search.
OK, FAILED, INFEASIBLE, DUPLICATE, NOT_EVALUATED = "ok", "failed", "infeasible", "duplicate", "not evaluated"
STATUSES = (OK, FAILED, INFEASIBLE, DUPLICATE, NOT_EVALUATED)

# The metric vocabulary: every search reports under these names where it measures them.
METRICS = ("val_loss", "val_acc", "val_auc", "test_acc", "test_auc", "val_dice", "test_dice", "dice",
           "params", "flops", "latency_ms", "size_mb", "epochs", "val_pred_classes", "test_pred_classes")


def one_class(row) -> bool:
    """True when a record (zoo row, summary entry, fit row) says its model predicts one class for
    every case: ``test_pred_classes`` == 1, else ``val_pred_classes`` == 1 where only val was
    measured. Such a model's ACC is the majority share; it is flagged wherever it is shown."""
    for key in ("test_pred_classes", "val_pred_classes"):
        value = row.get(key) if hasattr(row, "get") else None
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        return int(value) == 1
    return False

# Where a fit recipe starts the output layer's bias: PyTorch's default, or the train labels' prior.
HEAD_BIAS = ("default", "prior")
# The fit loop's arithmetic and tensor layout, checked by trainables.fit and offered by the configs.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")

# The reason recorded for a trial whose worker was killed for memory (Ray's memory monitor).
OUT_OF_MEMORY = "out of memory"


@dataclass(frozen=True)
class DatasetInfo:
    """What a trial needs to know about a dataset, and where it came from."""

    flag: str
    task: str  # MedMNIST task string, e.g. "binary-class", "multi-label, binary-class", "segmentation"
    n_channels: int
    n_classes: int  # labels in INFO (classes, or binary labels for multi-label)
    spatial_dims: int
    size: int
    synthetic: bool
    path: str

    @property
    def n_outputs(self) -> int:
        """Logits the network emits: 1 for binary (BCE), else one per class / label."""
        return 1 if self.task == "binary-class" else self.n_classes

    @property
    def multi_label(self) -> bool:
        return self.task == "multi-label, binary-class"

    @property
    def input_shape(self) -> tuple:
        return (self.n_channels,) + (self.size,) * self.spatial_dims


@dataclass
class ModelRecord:
    """One evaluated model as a search hands it to the zoo.

    ``architecture`` is the search's own JSON-able description; ``encoding`` a fixed-length
    numeric vector per ``family``; ``build`` says how to rebuild the network (builder name and
    keyword arguments); ``weights`` references trained weights (a checkpoint URI), if kept.
    """

    search: str
    stage: str
    family: str
    architecture: dict
    encoding: list
    status: str
    metrics: dict = field(default_factory=dict)
    reason: str = ""
    build: dict | None = None
    weights: str | None = None
    trial_id: str | None = None
    functional: list | None = None  # MedNNS A.2: penultimate activations for a fixed Gaussian input

    def model_id(self, dataset: str, size: int, run: str) -> str:
        """A stable id: the same model of the same run, stage and trial hashes the same on resume."""
        key = json.dumps([dataset, size, run, self.search, self.stage, self.family, self.architecture,
                          self.trial_id], sort_keys=True, default=str)
        return hashlib.sha1(key.encode()).hexdigest()[:16]
