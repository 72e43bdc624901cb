"""The one fit/evaluate loop every trainable uses.

Data arrives as uint8 numpy arrays (shared once through Ray's object store), is moved to
the device once, and is batched from memory with a seeded permutation: no per-sample
Dataset/DataLoader for 28/64 px data. Early stopping watches the validation loss (paper
3.2: stop after 5 epochs without improvement); the model state of the best epoch by the
selection metric is kept in memory so test metrics are *val-selected*.
"""
from __future__ import annotations

import copy
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from trainables import metrics


class NonFiniteLoss(RuntimeError):
    """Training diverged (NaN/inf loss): the candidate is recorded as failed."""


@dataclass(frozen=True)
class FitConfig:
    """The training recipe; defaults are the paper's (Adam 1e-3, batch 128, <= 50 epochs)."""

    max_epochs: int = 50
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    patience: int = 5
    select_metric: str = "val_acc"  # which validation metric picks the best epoch
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # mixed precision, on CUDA only


@dataclass
class FitResult:
    best_epoch: int
    best: dict  # validation metrics of the selected epoch
    epochs_run: int
    history: list = field(default_factory=list)
    test: dict = field(default_factory=dict)
    state_dict: dict | None = None


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_threads_from_ray(default: int | None = None) -> int:
    """Set torch's intra-op threads to the CPUs Ray assigned this trial (else ``default``)."""
    n = default or os.cpu_count() or 1
    try:
        import ray

        if ray.is_initialized():
            n = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", n)))
    except Exception:  # outside a Ray worker: keep the default
        pass
    torch.set_num_threads(n)
    return n


# A split whose float32 copy fits this budget is converted once; larger ones stay uint8 and
# each batch is converted on the fly (4x less memory, one extra pass per batch).
FLOAT_PRELOAD_BYTES = int(os.environ.get("MEDTUNE_FLOAT_PRELOAD_MB", "1024")) * 2**20


class DeviceSplit:
    """One split held on the device, scaled to [0, 1] float32 once when it fits
    :data:`FLOAT_PRELOAD_BYTES`, else as uint8 converted per batch."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: torch.device):
        # Arrays from Ray's object store are read-only views; sharing them without a copy is
        # safe because batches are only read (nothing here writes to a batch in place).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
            self.y = torch.from_numpy(np.ascontiguousarray(labels)).to(device)
        self.preloaded = x.numel() * 4 <= FLOAT_PRELOAD_BYTES
        self.x = x.float().div_(255.0) if self.preloaded else x
        self.device = device

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, batch_size: int, generator: torch.Generator | None = None):
        n = len(self)
        order = torch.randperm(n, generator=generator).to(self.device) if generator is not None else None
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size] if order is not None else slice(start, start + batch_size)
            x = self.x[idx]
            yield (x if self.preloaded else x.float().div_(255.0)), self.y[idx]


def _memory_format(x: torch.Tensor):
    if x.dim() == 5:
        return torch.channels_last_3d
    return torch.channels_last


@torch.no_grad()
def evaluate(model: nn.Module, split: DeviceSplit, task: str, batch_size: int = 256,
             channels_last: bool = False) -> dict:
    """Loss, ACC and AUC (medmnist's definitions) of ``model`` on one split."""
    model.eval()
    loss_fn = metrics.loss_fn(task)
    logits_all, total = [], 0.0
    for x, y in split.batches(batch_size):
        if channels_last:
            x = x.contiguous(memory_format=_memory_format(x))
        logits = model(x).float()
        total += float(loss_fn(logits, y)) * len(y)
        logits_all.append(logits)
    logits = torch.cat(logits_all)
    y_true, y_score = split.y.cpu().numpy(), metrics.scores(logits, task)
    return {"loss": total / len(split), "acc": metrics.accuracy(y_true, y_score, task),
            "auc": metrics.auc(y_true, y_score, task)}


def fit(model: nn.Module, data, cfg: FitConfig, report: Callable[[dict], None] | None = None,
        evaluate_test: bool = False, keep_state: bool = False) -> FitResult:
    """Train ``model`` on ``data.images['train']``, validate every epoch, early-stop on val loss.

    ``report`` receives one dict per epoch (epoch, train_loss, val_loss, val_acc, val_auc and
    the running best values) so Tune schedulers can act. With ``evaluate_test`` the best
    epoch's weights (by ``cfg.select_metric``) are evaluated once on the test split.
    """
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    task = data.info.task
    use_cuda = device.type == "cuda"
    model = model.to(device)
    if use_cuda:
        model = model.to(memory_format=torch.channels_last_3d if data.info.spatial_dims == 3 else torch.channels_last)
    train = DeviceSplit(data.images["train"], data.labels["train"], device)
    val = DeviceSplit(data.images["val"], data.labels["val"], device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=use_cuda and cfg.amp)
    loss_fn = metrics.loss_fn(task)
    gen = torch.Generator().manual_seed(cfg.seed)
    select_key = cfg.select_metric
    best, best_state, best_epoch = None, None, 0
    best_val_loss, stale = math.inf, 0
    history = []
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        running, seen = 0.0, 0
        for x, y in train.batches(cfg.batch_size, gen):
            if use_cuda:
                x = x.contiguous(memory_format=_memory_format(x))
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_cuda and cfg.amp):
                loss = loss_fn(model(x).float(), y)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"non-finite training loss at epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            running += float(loss.detach()) * len(y)
            seen += len(y)
        v = evaluate(model, val, task, channels_last=use_cuda)
        if not math.isfinite(v["loss"]):
            raise NonFiniteLoss(f"non-finite validation loss at epoch {epoch}")
        row = {"epoch": epoch, "train_loss": running / seen, "val_loss": v["loss"],
               "val_acc": v["acc"], "val_auc": v["auc"]}
        score = row[select_key]
        score = -math.inf if score is None or math.isnan(score) else score
        if best is None or score > best[select_key] or (score == best[select_key] and row["val_loss"] < best["val_loss"]):
            best, best_epoch = dict(row, **{select_key: score}), epoch
            if evaluate_test or keep_state:
                best_state = copy.deepcopy(model.state_dict())
        row.update({"best_val_acc": best["val_acc"], "best_val_auc": best["val_auc"], "best_epoch": best_epoch})
        history.append(row)
        if report is not None:
            report(dict(row))
        if v["loss"] < best_val_loss:
            best_val_loss, stale = v["loss"], 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    result = FitResult(best_epoch=best_epoch, best=best, epochs_run=len(history), history=history)
    if best_state is not None:
        model.load_state_dict(best_state)
        result.state_dict = best_state if keep_state else None
    if evaluate_test:
        t = evaluate(model, DeviceSplit(data.images["test"], data.labels["test"], device), task,
                     channels_last=use_cuda)
        result.test = {"test_loss": t["loss"], "test_acc": t["acc"], "test_auc": t["auc"]}
    return result
