"""How much memory training a network takes in a fresh trial worker, before training it.

A 3D candidate at 28^3 and batch 128 can need ~10 GB on CPU, and a worker that grows past
Ray's memory monitor is killed. :func:`estimate_training_bytes` predicts the worker's peak
RSS so a search can reserve memory per trial (``tune.with_resources(memory=...)``) or skip
a candidate that cannot fit:

    baseline (Python + torch + Ray worker) + parameters x (weights, 2 Adam moments, the
    best-epoch copy [, a per-epoch checkpoint's copies]) + dataset (uint8 + its float32 copy) + SAFETY x max(train, eval) peak

The train and eval peaks are *simulated*: one forward + backward pass (eval: forward under
``no_grad``) runs on the ``meta`` device under a dispatch mode that tracks every tensor the
ops allocate and when autograd frees it. The result is the high-water mark of live tensor
bytes -- saved activations, gradients of activations and parameters, temporaries -- without
computing anything (tens of milliseconds for a cell network). ``SAFETY`` covers what tensors do not show (oneDNN
reorder buffers, allocator fragmentation); it and ``BASELINE_BYTES`` are measured with
jemalloc (decay off), as trials run, by ``benchmarks/memory_estimate.py``.
"""
from __future__ import annotations

import copy
import math
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from trainables.fit import EVAL_BATCH, FLOAT_PRELOAD_BYTES, eval_batch_size

# Peak RSS of a trial worker before it trains: interpreter, torch, MONAI, Ray's worker.
BASELINE_BYTES = 700 * 2**20
# Measured peak RSS / simulated peak tensors, with margin (benchmarks/memory_estimate.py).
SAFETY = 1.5
# What a worker on glibc malloc holds beyond that (per-thread arenas, heap fragmentation): up to
# 173 MiB measured at small batches (IAC stages, benchmarks/memory_estimate.py), with margin.
GLIBC_EXTRA_BYTES = 256 * 2**20
# Parameter-sized buffers besides the gradients (which the simulation counts): the weights,
# Adam's two moments and fit()'s copy of the best epoch's weights; with per-epoch checkpoints
# (fit's save_state) the snapshot copies the weights, the moments and the best weights again.
PARAMETER_COPIES = 4
CHECKPOINT_COPIES = 4


class _LiveTensors(TorchDispatchMode):
    """Tracks the bytes of tensor storages created by dispatched ops, and their peak.

    A storage counts once however many views share it and leaves the count when the last
    tensor object referring to it is freed (a weakref callback; autograd keeps the tensors
    it saves alive, so they count until backward releases them). Storages that exist before
    the mode (parameters, buffers) are ``external`` and never counted.
    """

    def __init__(self, external=()):
        super().__init__()
        self.external = {_key(t) for t in external}
        self.sizes, self.refs, self.watch = {}, {}, {}
        self.current = self.peak = 0

    def _track(self, t) -> None:
        if not isinstance(t, torch.Tensor) or t.device.type != "meta":
            return
        key = _key(t)
        if key in self.external:
            return
        if key in self.refs:
            self.refs[key] += 1
        else:
            size = t.untyped_storage().nbytes()
            self.sizes[key], self.refs[key] = size, 1
            self.current += size
            self.peak = max(self.peak, self.current)
        ref = weakref.ref(t, lambda r, key=key: self._release(key, r))
        self.watch[id(ref)] = ref

    def _release(self, key, ref) -> None:
        self.watch.pop(id(ref), None)
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.current -= self.sizes.pop(key)
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            self._track(t)
        return out


class _FusedMish(torch.autograd.Function):
    """Mish whose backward allocates what the CPU and CUDA kernels do: one gradient tensor.

    On the meta device ``aten::mish_backward`` has no kernel and runs its decomposition,
    whose five input-sized temporaries the real kernels never allocate, so Mish-heavy cells
    would be overstated; torch refuses a Meta kernel for an op it can decompose."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.ops.aten.mish(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.empty_like(x)


class _RealKernels(TorchFunctionMode):
    """Routes ops whose meta decomposition allocates more than the real kernel to a stand-in."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.mish and not kwargs.get("inplace", False) and len(args) == 1:
            return _FusedMish.apply(args[0])
        return func(*args, **kwargs)


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def _meta_model(model_or_builder) -> nn.Module:
    """The network on the meta device: a builder is called under ``torch.device("meta")`` (no
    weights are ever initialised); a module already on meta is used as is; any other module is
    deep-copied with every parameter and buffer replaced by an empty meta twin, so neither its
    weights are copied nor the original touched."""
    if not isinstance(model_or_builder, nn.Module):
        with torch.device("meta"):
            return model_or_builder()
    tensors = list(model_or_builder.parameters()) + list(model_or_builder.buffers())
    if all(t.device.type == "meta" for t in tensors):
        return model_or_builder
    memo = {id(t): torch.empty_like(t, device="meta") for t in model_or_builder.buffers()}
    memo.update({id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
                 for p in model_or_builder.parameters()})
    return copy.deepcopy(model_or_builder, memo)  # the structure; every tensor replaced by its meta twin


def simulate_peak_bytes(model_or_builder, input_shape: tuple, batch_size: int, train: bool = True) -> int:
    """Peak bytes of live tensors during one training step's forward + backward (``train``),
    or one evaluation forward under ``no_grad``, at ``batch_size`` samples of ``input_shape``
    (``(C, *spatial)``), in float32. Parameters and buffers themselves are not counted."""
    model = _meta_model(model_or_builder)
    was_training = model.training
    model.train(train)
    external = list(model.parameters()) + list(model.buffers())
    mode = _LiveTensors(external)
    try:
        with _RealKernels(), mode, torch.set_grad_enabled(train):
            x = torch.empty((batch_size, *input_shape), device="meta")
            out = model(x)
            if train:
                # The loss's own buffers are output-sized; squaring keeps one of them.
                out.float().square().mean().backward()
            del x, out
    finally:
        model.train(was_training)
        for p in model.parameters():
            p.grad = None
    return int(mode.peak)


def parameter_bytes(model_or_builder, dtype_bytes: int = 4) -> int:
    model = _meta_model(model_or_builder)
    return int(sum(p.numel() for p in model.parameters())) * dtype_bytes


def dataset_bytes(n_samples: int, input_shape: tuple) -> int:
    """A split as fit() holds it: the uint8 images plus their float32 copy when that fits
    ``FLOAT_PRELOAD_BYTES`` (else batches are converted one at a time)."""
    n = int(n_samples) * math.prod(input_shape)
    return n + (4 * n if 4 * n <= FLOAT_PRELOAD_BYTES else 0)


@dataclass(frozen=True)
class MemoryEstimate:
    """The terms of :func:`estimate_training_bytes`, in bytes."""

    baseline: int
    parameters: int  # parameter bytes x (PARAMETER_COPIES [+ CHECKPOINT_COPIES])
    data: int
    train_peak: int  # simulated tensors of one training step
    eval_peak: int  # simulated tensors of one evaluation batch
    safety: float

    @property
    def total(self) -> int:
        return int(self.baseline + self.parameters + self.data + self.safety * max(self.train_peak, self.eval_peak))


def estimate_memory(model_or_builder: nn.Module | Callable[[], nn.Module], input_shape: tuple, batch_size: int,
                    n_train: int = 0, n_eval: int = 0, dtype_bytes: int = 4,
                    eval_batch_size: int = EVAL_BATCH, checkpoint: bool = False) -> MemoryEstimate:
    """The terms of the estimate; see :func:`estimate_training_bytes`."""
    model = _meta_model(model_or_builder)
    scale = dtype_bytes / 4
    train = simulate_peak_bytes(model, input_shape, batch_size, train=True)
    evaluation = simulate_peak_bytes(model, input_shape, min(eval_batch_size, n_eval), train=False) if n_eval else 0
    copies = PARAMETER_COPIES + (CHECKPOINT_COPIES if checkpoint else 0)
    return MemoryEstimate(baseline=BASELINE_BYTES, parameters=copies * parameter_bytes(model, dtype_bytes),
                          data=dataset_bytes(n_train, input_shape) + dataset_bytes(n_eval, input_shape),
                          train_peak=int(scale * train), eval_peak=int(scale * evaluation), safety=SAFETY)


def estimate_training_bytes(model_or_builder: nn.Module | Callable[[], nn.Module], input_shape: tuple,
                            batch_size: int, n_train: int = 0, n_eval: int = 0, dtype_bytes: int = 4,
                            eval_batch_size: int = EVAL_BATCH, checkpoint: bool = False) -> int:
    """Peak RSS (bytes) of training ``model_or_builder`` with :func:`trainables.fit.fit` in a
    fresh worker: Adam, batch ``batch_size`` of ``input_shape`` ``(C, *spatial)``, ``n_train``
    training and ``n_eval`` validation + test samples held in memory (evaluation is simulated
    at ``min(eval_batch_size, n_eval)``, as if both splits were one). ``dtype_bytes`` is the
    size of a weight / activation element (4: float32); ``checkpoint``: fit() saves a state
    every epoch (``save_state``). Conservative by design: meant to be
    >= the measured peak and within about 2x of it (benchmarks/memory_estimate.py)."""
    return estimate_memory(model_or_builder, input_shape, batch_size, n_train, n_eval, dtype_bytes,
                           eval_batch_size, checkpoint).total


# ---- per-trial plans: every trainable's request, and its batch lowered to fit ----------------

MIN_BATCH = 2  # BatchNorm needs two samples per batch in training


def held_bytes(data) -> int:
    """Bytes of the arrays a trial holds of ``data`` (``images`` / ``labels`` dicts of numpy
    arrays): each array once however many split names alias it or view into it, plus the
    float32 copy :class:`~trainables.fit.DeviceSplit` makes of a uint8 image split that fits
    ``FLOAT_PRELOAD_BYTES`` (float images, as segmentation volumes, are used as they are)."""
    seen: dict = {}
    for group in (getattr(data, "images", {}), getattr(data, "labels", {})):
        for array in group.values():
            base = array
            while getattr(base, "base", None) is not None and hasattr(base.base, "nbytes"):
                base = base.base
            seen[id(base)] = int(base.nbytes)
    floats = sum(4 * a.size for name, a in getattr(data, "images", {}).items()
                 if name in ("train", "val", "test") and a.dtype.kind == "u" and 4 * a.size <= FLOAT_PRELOAD_BYTES)
    return sum(seen.values()) + int(floats)


@dataclass(frozen=True)
class BatchEstimate:
    """A trainable's peak RSS as a function of its batch size ``b``: the fixed terms of
    :class:`MemoryEstimate` plus ``SAFETY x max(training peak per sample x b, eval peak per
    sample x min(eval_batch, eval_batch_size(b)))`` (fit evaluates at up to twice the training
    batch). Activation memory is linear in the batch (saved activations and their gradients are
    all batch-sized), so one simulated step at a small batch prices every batch."""

    fixed: int  # baseline + parameter copies + held data
    train_per_sample: float
    eval_per_sample: float
    eval_batch: int  # the largest evaluation batch (0: no evaluation)
    train_fixed: float = 0.0  # the step's batch-independent tensors (parameter gradients)

    def __call__(self, batch_size: int) -> int:
        evaluation = self.eval_per_sample * min(self.eval_batch, eval_batch_size(batch_size))
        return int(self.fixed + SAFETY * max(self.train_fixed + self.train_per_sample * batch_size, evaluation))


def batch_estimate(model_or_builder, input_shape: tuple, data_bytes: int, eval_batch: int = EVAL_BATCH,
                   checkpoint: bool = True, probe_batch: int = 4, extra_parameter_copies: int = 0,
                   jemalloc: bool = True) -> BatchEstimate:
    """:class:`BatchEstimate` of training ``model_or_builder`` on ``input_shape`` samples with
    ``data_bytes`` of data held (:func:`held_bytes`), evaluating at ``eval_batch`` (0: no eval).
    ``extra_parameter_copies``: parameter-sized buffers the trainable keeps besides fit's (e.g. a
    frozen teacher). Only trainable parameters get optimizer moments; frozen ones count once.
    ``jemalloc``: the worker preloads Ray's jemalloc (else glibc's malloc: ``GLIBC_EXTRA_BYTES``)."""
    model = _meta_model(model_or_builder)
    # two probes split the step's peak into a per-sample slope and what does not grow with the
    # batch (parameter gradients: counted once, not once per sample)
    small = simulate_peak_bytes(model, input_shape, probe_batch, train=True)
    large = simulate_peak_bytes(model, input_shape, 2 * probe_batch, train=True)
    per_sample = max(0.0, (large - small) / probe_batch)
    train_fixed = max(0.0, small - per_sample * probe_batch)
    eval_per_sample = simulate_peak_bytes(model, input_shape, probe_batch, train=False) / probe_batch
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) * 4
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad) * 4
    copies = PARAMETER_COPIES + (CHECKPOINT_COPIES if checkpoint else 0) + extra_parameter_copies
    # frozen weights: themselves, fit's best-epoch copy of the state dict [, the checkpoint's]
    frozen_copies = 2 + (1 if checkpoint else 0) + extra_parameter_copies
    allocator = 0 if jemalloc else GLIBC_EXTRA_BYTES
    return BatchEstimate(fixed=int(BASELINE_BYTES + allocator + copies * trainable + frozen_copies * frozen
                                   + data_bytes),
                         train_per_sample=per_sample, eval_per_sample=eval_per_sample if eval_batch else 0.0,
                         eval_batch=int(eval_batch), train_fixed=train_fixed)


@dataclass(frozen=True)
class TrialMemory:
    """What one stage's trials get: the batch they train at (``requested_batch`` lowered until
    the estimate fits) and the bytes they request as Ray's ``memory`` resource."""

    what: str
    batch_size: int
    requested_batch: int
    bytes: int

    @property
    def lowered(self) -> bool:
        return self.batch_size < self.requested_batch

    def to_dict(self) -> dict:
        return {"what": self.what, "batch_size": self.batch_size, "requested_batch": self.requested_batch,
                "gb": round(self.bytes / 2**30, 2)}

    def describe(self) -> str:
        text = f"{self.what}: {self.bytes / 2**30:.1f} GB per trial at batch {self.batch_size}"
        return text + (f" (lowered from {self.requested_batch} to fit)" if self.lowered else "")


def plan_batch(what: str, estimate: Callable[[int], int], batch_size: int, limit: float | None, settings: str,
               lowerable: bool = True, min_batch: int = MIN_BATCH) -> TrialMemory:
    """The largest batch among ``batch_size, batch_size // 2, ...`` (down to ``min_batch``; only
    ``batch_size`` unless ``lowerable``) whose estimate fits ``limit`` bytes (None: no limit).
    Refused in one line naming ``settings`` (what the user can lower) when none fits."""
    from medcore.errors import ResourceError

    need = estimate(batch_size)
    if limit is None or need <= limit:
        return TrialMemory(what, batch_size, batch_size, need)
    batch = batch_size
    while lowerable and batch > min_batch:
        batch = max(min_batch, batch // 2)
        if estimate(batch) <= limit:
            return TrialMemory(what, batch, batch_size, estimate(batch))
    least = f"; {estimate(batch) / 2**30:.1f} GB even at batch {batch}" if batch != batch_size else ""
    raise ResourceError(f"{what} needs {need / 2**30:.1f} GB at batch {batch_size}{least}, but the largest node "
                        f"offers {limit / 2**30:.1f} GB to Ray; lower {settings}")
