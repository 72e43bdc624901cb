"""The one fit/evaluate loop every trainable uses.

Data arrives as uint8 numpy arrays (shared once through Ray's object store), is moved to
the device once, and is batched from memory with a seeded permutation: no per-sample
Dataset/DataLoader for 28/64 px data. Early stopping watches the validation loss (paper
3.2: stop after 5 epochs without improvement); the model state of the best epoch by the
selection metric is kept in memory so test metrics are *val-selected*.

Extension points, all keyword arguments of :func:`fit` with today's behaviour as default:
the task (loss + metrics, :mod:`trainables.tasks`), ``optimizer_factory``, ``init_fn``,
``augment`` (train batches only), ``train_step`` (a :class:`TrainStep`: one call per train
batch, owning zero_grad/backward/step, so bilevel (DARTS) and gradient-accumulating
(FairNAS) steps fit the same loop) and per-epoch ``save_state`` / ``resume_state``, which
let a killed trial continue where it stopped (:mod:`trainables.checkpointing` adapts them
to Tune).
"""
from __future__ import annotations

import copy
import math
import time
import os
import random
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from medcore.errors import ConfigError
from medcore.records import HEAD_BIAS, MEMORY_FORMATS, PRECISIONS
from trainables.initializers import prior_bias
from trainables.tasks import make_task


class NonFiniteLoss(RuntimeError):
    """Training diverged (NaN/inf loss): the candidate is recorded as failed."""


@dataclass(frozen=True)
class FitConfig:
    """The training recipe; defaults are the paper's (Adam 1e-3, batch 128, <= 50 epochs).

    ``select_metric`` picks the best epoch; ``None`` means the task's own (``val_acc`` for
    classification, ``val_dice`` for segmentation).
    """

    max_epochs: int = 50
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    patience: int = 5
    select_metric: str | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # mixed precision where ``precision`` is "auto": fp16 AMP on CUDA, bf16 autocast on bf16 CPUs
    head_bias: str = "default"  # "prior": output bias = the train split's class prior (initializers.prior_bias)
    precision: str = "auto"  # "auto" | "fp32" | "bf16" | "fp16" (CUDA): see resolve_precision
    memory_format: str = "auto"  # "auto" | "channels_last" | "contiguous": see resolve_channels_last
    time_limit_s: float = 0.0  # > 0: stop after the epoch that ends past this many seconds (equal-compute budgets)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated
    and slower than fp32."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # an older torch without the probes: assume not
        return False


def resolve_precision(cfg: FitConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of training and evaluation, or None for plain fp32.

    "auto": fp16 AMP on CUDA (with ``cfg.amp``, as before), bf16 autocast on a CPU with native
    bf16 (measured 1.3-3x faster per epoch with equal losses: benchmarks/train_speed.py), fp32
    elsewhere. Weights, optimizer state and the loss stay fp32 (autocast casts per op).
    """
    p = cfg.precision
    if p not in PRECISIONS:
        raise ConfigError(f"must be one of {', '.join(PRECISIONS)}, got {p!r}", "precision")
    if p == "auto":
        if not cfg.amp:
            return None
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else None
    if p == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 autocast is for CUDA; use bf16 on a CPU", "precision")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[p]


def has_instance_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.instancenorm._InstanceNorm) for m in model.modules())


def resolve_channels_last(cfg: FitConfig, model: nn.Module, device: torch.device) -> bool:
    """Whether the model and its batches run channels-last (NDHWC / NHWC).

    "auto": always on CUDA (as before); on a CPU, for every model without InstanceNorm --
    channels-last is 1.4-1.7x faster for the 8-32-channel 3D convolutions of cell nets and the
    tiny CNN, neutral for ResNets, but hits a slow path in InstanceNorm (its backward, and
    Mish after it, ~6x slower), where the default layout wins (benchmarks/train_speed.py).
    """
    m = cfg.memory_format
    if m not in MEMORY_FORMATS:
        raise ConfigError(f"must be one of {', '.join(MEMORY_FORMATS)}, got {m!r}", "memory_format")
    if m != "auto":
        return m == "channels_last"
    return device.type == "cuda" or not has_instance_norm(model)


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


def _canonical(x: torch.Tensor) -> torch.Tensor:
    """``x`` with row-major strides, also on its size-1 dimensions (no copy).

    NumPy keeps any stride on a size-1 axis of a "contiguous" array (a subset built by fancy
    indexing has one), and PyTorch then reads a one-channel volume as channels-last and runs
    other kernels: an in-process run on such a subset timed 1.5x faster than the same trial
    after Ray's serialisation. Layout is chosen explicitly (:func:`resolve_channels_last`).
    """
    strides, step = [], 1
    for size in reversed(x.shape):
        strides.append(step)
        step *= max(size, 1)
    return x.as_strided(x.shape, tuple(reversed(strides))) if x.is_contiguous() else x.contiguous()


class DeviceSplit:
    """One split held on the device, scaled to [0, 1] float32 once when it fits
    :data:`FLOAT_PRELOAD_BYTES`, else as uint8 converted per batch."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: torch.device):
        # Arrays from Ray's object store are read-only views; sharing them without a copy is
        # safe because batches are only read (shuffled batches are copies, see ``batches``).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            x = _canonical(torch.from_numpy(np.ascontiguousarray(images))).to(device)
            self.y = torch.from_numpy(np.ascontiguousarray(labels)).to(device)
        # uint8 images are scaled to [0, 1]; float images (segmentation volumes, normalised by
        # their loader) are used as they are.
        self.preloaded = x.numel() * 4 <= FLOAT_PRELOAD_BYTES or x.is_floating_point()
        self.x = (x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()) if self.preloaded else x
        self.device = device

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, batch_size: int, generator: torch.Generator | None = None):
        """Batches in order, or shuffled by ``generator`` (shuffled batches are fresh copies)."""
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


EVAL_BATCH = 256


def eval_batch_size(train_batch: int) -> int:
    """The batch fit() evaluates at: up to 256, and at most twice the training batch, so a batch
    lowered to fit a trial's memory lowers evaluation too (a no-grad forward of 2b samples keeps
    less alive than a training step of b)."""
    return max(1, min(EVAL_BATCH, 2 * int(train_batch)))


@torch.no_grad()
def evaluate(model: nn.Module, split: DeviceSplit, task, batch_size: int = EVAL_BATCH,
             channels_last: bool = False, amp_dtype: torch.dtype | None = None) -> dict:
    """Loss and the task's metrics of ``model`` on one split.

    ``task`` is a task string or object (:func:`trainables.tasks.make_task`): classification
    gives ``loss``, ``acc``, ``auc`` (medmnist's definitions) and ``pred_classes``, segmentation
    ``loss``, ``dice``. ``amp_dtype``: an autocast dtype (default None: fp32). fit() evaluates in
    fp32 even when it trains in bf16: bf16 logits (8 bits of mantissa) tie scores and blunt AUC.
    The loss is summed on the device and read once, so a GPU is not synchronised per batch.
    """
    model.eval()
    task = make_task(task)
    acc, total = task.accumulator(), None
    device = next(iter(model.parameters()), torch.empty(0)).device
    with torch.autocast(device.type, dtype=amp_dtype or torch.float16, enabled=amp_dtype is not None):
        for x, y in split.batches(batch_size):
            if channels_last:
                x = x.contiguous(memory_format=_memory_format(x))
            logits = model(x).float()
            batch_loss = task.loss(logits, y).detach() * len(y)
            total = batch_loss if total is None else total + batch_loss
            acc.update(logits, y)
    return {"loss": float(total) / len(split), **acc.compute()}


def default_optimizer(params, cfg: FitConfig) -> torch.optim.Optimizer:
    """Adam with the recipe's learning rate and L2 penalty (paper 3.2; MedMNIST's recipe)."""
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@dataclass
class StepContext:
    """What a :class:`TrainStep` may use besides the model and the batch.

    ``optimizer`` is the one ``optimizer_factory`` built over the model's parameters,
    ``scaler`` the AMP grad scaler (fp16 on CUDA only; a no-op for bf16 and fp32), ``amp_dtype``
    the autocast dtype (None: fp32), ``epoch`` the current epoch (1-based).
    :meth:`next_batch` draws batches of another split (e.g. ``"val"`` for DARTS' architecture
    step), cycling through it in an order seeded by (seed, epoch, split), so a resumed run
    sees the same batches without storing iterator positions.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    task: Any
    cfg: FitConfig
    device: torch.device
    amp: bool
    channels_last: bool
    data: Any = None
    amp_dtype: torch.dtype | None = None
    splits: dict = field(default_factory=dict)
    epoch: int = 0
    _iters: dict = field(default_factory=dict)

    def autocast(self):
        """Mixed precision where enabled (:func:`resolve_precision`), else a no-op context."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float16, enabled=self.amp)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.task.loss(logits, y)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()`` through the grad scaler (gradients accumulate across calls)."""
        self.scaler.scale(loss).backward()

    def step(self, *optimizers: torch.optim.Optimizer) -> None:
        """Step ``optimizers`` (default: :attr:`optimizer`) through the scaler, then update it."""
        for opt in optimizers or (self.optimizer,):
            self.scaler.step(opt)
        self.scaler.update()

    def split(self, name: str) -> DeviceSplit:
        if name not in self.splits:
            self.splits[name] = DeviceSplit(self.data.images[name], self.data.labels[name], self.device)
        return self.splits[name]

    def next_batch(self, name: str, batch_size: int | None = None):
        """The next ``(x, y)`` of split ``name`` (no augmentation), cycling within the epoch."""
        key = (name, batch_size)
        if key not in self._iters:
            self._iters[key] = self._cycle(name, batch_size or self.cfg.batch_size)
        return next(self._iters[key])

    def _cycle(self, name: str, batch_size: int):
        gen = torch.Generator().manual_seed(
            (self.cfg.seed * 1_000_003 + self.epoch * 7919 + zlib.crc32(name.encode())) % 2**63)
        split = self.split(name)
        while True:
            for x, y in split.batches(batch_size, gen):
                yield (x.contiguous(memory_format=_memory_format(x)) if self.channels_last else x), y

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._iters.clear()


class TrainStep:
    """One optimisation step on one train batch; returns the batch's mean loss (a float, or a 0-dim
    tensor, which the loop sums without a per-step host sync).

    The step owns zero_grad / backward / optimizer step, so a subclass can do several
    forward/backward passes before one step (FairNAS' strict fairness: m subnets, one
    update) or step several optimizers on several splits (DARTS' bilevel: an architecture
    step on ``ctx.next_batch("val")``, then a weight step). :meth:`setup` runs once before
    training (create extra optimizers there); :meth:`state_dict` / :meth:`load_state_dict`
    carry their state through per-epoch checkpoints. The default is forward + task loss
    under AMP, scaled backward, one step of ``ctx.optimizer``.
    """

    def setup(self, model: nn.Module, ctx: StepContext) -> None:
        pass

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> float:
        with ctx.autocast():
            loss = ctx.loss(model(x), y)
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.backward(loss)
        ctx.step()
        return loss.detach()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _snapshot(obj):
    """A detached CPU copy of every tensor in ``obj`` (nested dicts/lists/tuples), so a saved
    state never aliases live parameters or optimizer buffers."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_snapshot(v) for v in obj)
    return copy.deepcopy(obj)


def _rng_state(generators: dict) -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
             **{name: g.get_state() for name, g in generators.items()}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, generators: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    for key, g in generators.items():
        g.set_state(state[key])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _resolve_select(cfg: FitConfig, task) -> str:
    key = cfg.select_metric or task.select_metric
    allowed = {f"val_{m}" for m in task.metric_names} | {"val_loss"}
    if key not in allowed:
        raise ConfigError(f"select metric '{key}' is not reported for task {task!r}; "
                          f"choose one of {', '.join(sorted(allowed))}", field="select_metric")
    return key


def fit(model: nn.Module, data, cfg: FitConfig, report: Callable[[dict], None] | None = None,
        evaluate_test: bool = False, keep_state: bool = False, *,
        task=None,
        optimizer_factory: Callable[[Any, FitConfig], torch.optim.Optimizer] = default_optimizer,
        init_fn: Callable[[nn.Module], None] | None = None,
        augment: Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple] | None = None,
        train_step: TrainStep | None = None,
        save_state: Callable[[dict, dict], None] | None = None,
        resume_state: dict | None = None) -> FitResult:
    """Train ``model`` on ``data.images['train']``, validate every epoch, early-stop on val loss.

    ``report`` receives one dict per epoch (epoch, train_loss, val_loss, the task's val
    metrics -- ``val_acc``/``val_auc`` or ``val_dice`` -- and the running best values) so Tune
    schedulers can act. With ``evaluate_test`` the best epoch's weights (by
    ``cfg.select_metric``) are evaluated once on the test split.

    Hooks (keyword only): ``task`` (default: from ``data.info.task``), ``optimizer_factory(params,
    cfg)``, ``init_fn(model)`` (before training, not on resume), ``augment(x, y, generator) ->
    (x, y)`` on train batches on the device, ``train_step`` (:class:`TrainStep`),
    ``save_state(state, row)`` called after ``report`` every epoch with everything needed to
    continue (weights, optimizer, scaler, step state, best epoch, early-stopping counters,
    RNG states), and ``resume_state``: such a state to continue from.
    """
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    task = make_task(task if task is not None else data.info.task)
    select_key = _resolve_select(cfg, task)
    use_cuda = device.type == "cuda"
    if init_fn is not None and resume_state is None:
        init_fn(model)
    if cfg.head_bias == "prior" and resume_state is None:
        prior_bias(model, data.labels["train"], task.name)
    elif cfg.head_bias not in HEAD_BIAS:
        raise ConfigError(f"must be one of {', '.join(HEAD_BIAS)}, got {cfg.head_bias!r}", "head_bias")
    model = model.to(device)
    amp_dtype = resolve_precision(cfg, device)
    channels_last = resolve_channels_last(cfg, model, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d if data.info.spatial_dims == 3 else torch.channels_last)
    if use_cuda:
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest kernels once
    train = DeviceSplit(data.images["train"], data.labels["train"], device)
    val = DeviceSplit(data.images["val"], data.labels["val"], device)
    opt = optimizer_factory(model.parameters(), cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=use_cuda and amp_dtype == torch.float16)
    ctx = StepContext(model=model, optimizer=opt, scaler=scaler, task=task, cfg=cfg, device=device,
                      amp=amp_dtype is not None, channels_last=channels_last, data=data,
                      splits={"train": train, "val": val}, amp_dtype=amp_dtype)
    step = train_step if train_step is not None else TrainStep()
    step.setup(model, ctx)
    generators = {"batches": torch.Generator().manual_seed(cfg.seed)}
    if augment is not None:
        generators["augment"] = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    keep_best = evaluate_test or keep_state or save_state is not None
    best, best_state, best_epoch = None, None, 0
    best_val_loss, stale, stopped, start = math.inf, 0, False, 1
    history = []
    if resume_state is not None:
        s = resume_state
        model.load_state_dict(s["model"])
        opt.load_state_dict(s["optimizer"])
        scaler.load_state_dict(s["scaler"])
        step.load_state_dict(s["step"])
        best, best_epoch, best_state = copy.deepcopy(s["best"]), s["best_epoch"], s["best_state"]
        best_val_loss, stale, stopped = s["best_val_loss"], s["stale"], s["stopped"]
        history, start = copy.deepcopy(s["history"]), s["epoch"] + 1
        _set_rng_state(s["rng"], generators)
    started = time.perf_counter()
    for epoch in range(start, cfg.max_epochs + 1):
        if stopped:
            break
        model.train()
        ctx.start_epoch(epoch)
        running, seen = 0.0, 0
        for x, y in train.batches(cfg.batch_size, generators["batches"]):
            if augment is not None:
                x, y = augment(x, y, generators["augment"])
            if channels_last:
                x = x.contiguous(memory_format=_memory_format(x))
            loss = step(model, x, y, ctx)  # a float or a 0-dim tensor: summed on the device, read once per epoch
            running = running + (loss.detach() if isinstance(loss, torch.Tensor) else loss) * len(y)
            seen += len(y)
        running = float(running)
        if not math.isfinite(running):
            raise NonFiniteLoss(f"non-finite training loss at epoch {epoch}")
        v = evaluate(model, val, task, eval_batch_size(cfg.batch_size), channels_last)
        if not math.isfinite(v["loss"]):
            raise NonFiniteLoss(f"non-finite validation loss at epoch {epoch}")
        row = {"epoch": epoch, "train_loss": running / seen, "val_loss": v["loss"],
               **{f"val_{m}": v[m] for m in (*task.metric_names, *getattr(task, "flag_names", ()))}}
        score = row[select_key] if select_key != "val_loss" else -row["val_loss"]
        score = -math.inf if score is None or math.isnan(score) else score
        if best is None or score > best["score"] or (score == best["score"] and row["val_loss"] < best["val_loss"]):
            best, best_epoch = dict(row, score=score), epoch
            if select_key != "val_loss":
                best[select_key] = score
            if keep_best:
                best_state = copy.deepcopy(model.state_dict())
        row.update({f"best_val_{m}": best[f"val_{m}"] for m in task.metric_names})
        row["best_epoch"] = best_epoch
        history.append(row)
        if v["loss"] < best_val_loss:
            best_val_loss, stale = v["loss"], 0
        else:
            stale += 1
            stopped = stale >= cfg.patience
        if cfg.time_limit_s and time.perf_counter() - started >= cfg.time_limit_s:
            stopped = True  # a wall-clock budget: the val-selected epoch so far is the result
        if report is not None:
            report(dict(row))
        if save_state is not None:
            save_state(_snapshot({
                "epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict(), "step": step.state_dict(), "best": best,
                "best_epoch": best_epoch, "best_state": best_state, "best_val_loss": best_val_loss,
                "stale": stale, "stopped": stopped, "history": history,
                "rng": _rng_state(generators)}), dict(row))
    best = {k: v for k, v in best.items() if k != "score"}
    result = FitResult(best_epoch=best_epoch, best=best, epochs_run=len(history), history=history)
    if best_state is not None and (evaluate_test or keep_state):
        model.load_state_dict(best_state)
        result.state_dict = best_state if keep_state else None
    if evaluate_test:
        t = evaluate(model, DeviceSplit(data.images["test"], data.labels["test"], device), task,
                     eval_batch_size(cfg.batch_size), channels_last)
        result.test = {"test_loss": t["loss"],
                       **{f"test_{m}": t[m] for m in (*task.metric_names, *getattr(task, "flag_names", ()))}}
    return result

