"""A training strategy (survey section III: initialisation, batch normalisation, dropout, L1/L2,
augmentation; plus optimizer, learning rate, schedule and batch size) applied to a network and
to the shared fit loop.

:class:`Strategy` is a flat record (what Optuna samples, what the zoo stores). It is applied
in two places:

* to the **model** (:meth:`Strategy.apply_structure`): normalisation layers replaced
  (batch / instance / group / none, 2D or 3D), dropout inserted before the classifier (the
  last linear layer);
* to the **loop** (:meth:`Strategy.fit_hooks`): the initialisation as ``init_fn``, the
  optimizer (L2 as its weight decay, eq. 7) as ``optimizer_factory``, the L1 term (eq. 6)
  and the learning-rate schedule in a :class:`RegularisedStep`, and the augmentation policy
  (MONAI transforms, train batches only; :func:`trainables.fit.fit` never augments
  evaluation) as ``augment``.

``Strategy()`` is the default recipe every other search trains with: PyTorch's initialisation,
the network's own normalisation, no dropout, no L1/L2, Adam 1e-3, constant learning rate,
batch 128, no augmentation.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from medcore.errors import ConfigError
from trainables.fit import StepContext, TrainStep
from trainables.initializers import SCHEMES, apply_init

NORMS = ("keep", "batch", "instance", "group", "none")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("none", "cosine", "step")
# Named augmentation policies: each a tuple of the operations of :mod:`trainables.augment`-style
# ops below. One categorical choice keeps the space small enough for TPE at small budgets.
POLICIES = {
    "none": (),
    "flip": ("flip",),
    "rotate": ("rotate",),
    "affine": ("affine",),
    "intensity": ("intensity",),
    "noise": ("noise",),
    "flip_intensity": ("flip", "intensity"),
    "full": ("flip", "affine", "intensity", "noise"),
}
AUGMENT_BACKENDS = ("batched", "loop")
GROUPS = 8  # GroupNorm groups (fewer when the channels are not divisible)
STEP_MILESTONES = (0.5, 0.75)  # step schedule: x0.1 at half and three quarters of the epochs (MedMNIST)


@dataclass(frozen=True)
class Strategy:
    """One training strategy; :meth:`check` validates names and ranges (one-line ConfigError)."""

    init: str = "default"
    norm: str = "keep"
    dropout: float = 0.0
    l1: float = 0.0
    l2: float = 0.0
    optimizer: str = "adam"
    lr: float = 1e-3
    schedule: str = "none"
    batch_size: int = 128
    augment: str = "none"

    @classmethod
    def from_dict(cls, d: dict) -> "Strategy":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown strategy option '{unknown[0]}'; known: {', '.join(sorted(names))}",
                              unknown[0])
        s = cls(**{k: d[k] for k in names if k in d})
        return s.check()

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> "Strategy":
        for name, known in (("init", SCHEMES), ("norm", NORMS), ("optimizer", OPTIMIZERS),
                            ("schedule", SCHEDULES), ("augment", tuple(POLICIES))):
            value = getattr(self, name)
            if value not in known:
                raise ConfigError(f"unknown {name} '{value}'; known: {', '.join(known)}", name)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}", "dropout")
        for name in ("l1", "l2"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ConfigError(f"{name} must be a finite number >= 0, got {getattr(self, name)}", name)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be > 0, got {self.lr}", "lr")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a whole number >= 1, got {self.batch_size}", "batch_size")
        return self

    # ---- the model -----------------------------------------------------------------------
    def apply_structure(self, model: nn.Module, spatial_dims: int, pretrained: dict | None = None) -> nn.Module:
        """Normalisation replaced, pretrained weights loaded (``init='pretrained'``), then dropout
        before the classifier (in place; returned). Loading comes before the dropout so the
        state dict's names are the network's own."""
        replace_norm(model, self.norm, spatial_dims)
        if self.init == "pretrained":
            if pretrained is None:
                raise ConfigError("init 'pretrained' needs weights: a zoo model (--from-zoo) or a checkpoint", "init")
            load_pretrained(model, pretrained)
        if self.dropout > 0:
            insert_dropout(model, self.dropout)
        return model

    # ---- the loop ------------------------------------------------------------------------
    def fit_hooks(self, spatial_dims: int, max_epochs: int, augment_backend: str = "batched") -> dict:
        """Keyword arguments of :func:`trainables.fit.fit` that carry this strategy."""
        init = None if self.init in ("default", "pretrained") else InitFn(self.init)
        return {"optimizer_factory": OptimizerFactory(self.optimizer, self.l2),
                "init_fn": init,
                "train_step": RegularisedStep(self.l1, self.schedule, max_epochs),
                "augment": make_augment(self.augment, spatial_dims, augment_backend)}

    def fit_overrides(self) -> dict:
        """Fields of :class:`trainables.fit.FitConfig` the strategy sets."""
        return {"lr": float(self.lr), "batch_size": int(self.batch_size), "weight_decay": float(self.l2)}


# ---- normalisation ---------------------------------------------------------------------------
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d,
              nn.InstanceNorm3d, nn.GroupNorm)


def _channels(norm: nn.Module) -> int:
    return norm.num_channels if isinstance(norm, nn.GroupNorm) else norm.num_features


def make_norm(kind: str, channels: int, spatial_dims: int) -> nn.Module:
    """A ``kind`` normalisation layer over ``channels`` maps, 2D or 3D through MONAI's factories.

    MONAI is imported here, not at the top: config validation imports this module (``parse_space``)
    and should not pay MONAI's import (seconds)."""
    from monai.networks.layers.factories import Norm

    if kind == "batch":
        return Norm[Norm.BATCH, spatial_dims](channels)
    if kind == "instance":
        return Norm[Norm.INSTANCE, spatial_dims](channels, affine=True)
    if kind == "group":
        groups = math.gcd(GROUPS, channels)
        return nn.GroupNorm(groups, channels)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"unknown norm '{kind}'; known: {', '.join(NORMS)}", "norm")


def replace_norm(model: nn.Module, kind: str, spatial_dims: int) -> int:
    """Replace every spatial normalisation layer by ``kind``; returns how many were replaced.
    ``keep`` leaves the network's own. 1D norms (after a linear layer) are left alone."""
    if kind == "keep":
        return 0
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, NORM_TYPES) and not isinstance(child, (nn.BatchNorm1d, nn.InstanceNorm1d)):
                setattr(parent, name, make_norm(kind, _channels(child), spatial_dims))
                n += 1
    return n


def has_norm(model: nn.Module) -> bool:
    return any(isinstance(m, NORM_TYPES) for m in model.modules())


# ---- dropout -----------------------------------------------------------------------------
def insert_dropout(model: nn.Module, p: float) -> str:
    """Put ``Dropout(p)`` in front of the classifier, the network's last linear layer; returns
    the classifier's name. A network without a linear layer cannot take it (ConfigError)."""
    linear = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ConfigError("the network has no linear classifier to put dropout before", "dropout")
    name, head = linear[-1]
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], nn.Sequential(nn.Dropout(p), head))
    return name


# ---- initialisation and pretrained weights ------------------------------------------------------
class InitFn:
    """``fit(init_fn=...)``: a picklable call of :func:`apply_init`."""

    def __init__(self, scheme: str):
        self.scheme = scheme

    def __call__(self, model: nn.Module) -> None:
        apply_init(model, self.scheme)


def load_pretrained(model: nn.Module, state: dict) -> dict:
    """Load a state dict into ``model`` (strategy ``init='pretrained'``), before dropout is inserted.

    Every convolution and linear weight must fit (same names and shapes), except the classifier
    (the last linear layer) when ``state`` holds none: weights from another dataset (a meta-space
    recommendation, MedNNS 3) come without its head, which then keeps its fresh initialisation.
    Normalisation parameters that a replaced normalisation no longer has are skipped and reported.
    """
    own = model.state_dict()
    loaded, skipped = {}, []
    for key, value in state.items():
        if key in own and own[key].shape == value.shape:
            loaded[key] = value
        else:
            skipped.append(key)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear)]
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    weighted = {f"{n}.weight" for n in names}
    if linear and f"{linear[-1]}.weight" not in state:
        weighted.discard(f"{linear[-1]}.weight")
    missing = sorted(k for k in weighted if k not in loaded)
    if missing:
        raise ConfigError(f"pretrained weights do not fit the network: no matching {missing[0]} "
                          f"({len(missing)} weight(s) missing)", "init")
    model.load_state_dict(loaded, strict=False)
    return {"loaded": len(loaded), "skipped": skipped}


# ---- optimizer, L1, schedule -----------------------------------------------------------------------
class OptimizerFactory:
    """``fit(optimizer_factory=...)``: the named optimizer with L2 as weight decay (eq. 7;
    decoupled for AdamW). SGD and RMSprop use momentum 0.9 (SGD with Nesterov)."""

    def __init__(self, name: str, l2: float):
        self.name, self.l2 = name, float(l2)

    def __call__(self, params, cfg) -> torch.optim.Optimizer:
        lr = cfg.lr
        if self.name == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=self.l2)
        if self.name == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=self.l2)
        if self.name == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=self.l2)
        if self.name == "rmsprop":
            return torch.optim.RMSprop(params, lr=lr, momentum=0.9, weight_decay=self.l2)
        raise ConfigError(f"unknown optimizer '{self.name}'; known: {', '.join(OPTIMIZERS)}", "optimizer")


def lr_factor(schedule: str, epoch: int, max_epochs: int) -> float:
    """Multiplier of the base learning rate in (1-based) ``epoch``: constant, cosine annealing
    to 0 over ``max_epochs``, or step decay x0.1 at 50 % and 75 % of the epochs."""
    if schedule == "none":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / max(1, max_epochs)))
    if schedule == "step":
        return 0.1 ** sum(epoch > m * max_epochs for m in STEP_MILESTONES)
    raise ConfigError(f"unknown schedule '{schedule}'; known: {', '.join(SCHEDULES)}", "schedule")


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """sum |w| over the conv/linear weights (eq. 6's second term; no biases, no norm scales)."""
    terms = [m.weight.abs().sum() for m in model.modules()
             if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear)]
    return torch.stack(terms).sum() if terms else torch.zeros(())


class RegularisedStep(TrainStep):
    """The default train step plus ``l1 * sum|w|`` in the loss and the epoch's learning rate.

    The learning rate is a function of the epoch (set on every parameter group at each step),
    so a resumed trial needs no scheduler state.
    """

    def __init__(self, l1: float = 0.0, schedule: str = "none", max_epochs: int = 1):
        self.l1, self.schedule, self.max_epochs = float(l1), schedule, int(max_epochs)
        self.base_lrs: list | None = None

    def setup(self, model: nn.Module, ctx: StepContext) -> None:
        self.base_lrs = [g["lr"] for g in ctx.optimizer.param_groups]

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        with ctx.autocast():
            loss = ctx.loss(model(x), y)
        if self.l1:
            loss = loss + self.l1 * l1_penalty(model)
        return loss

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> float:
        factor = lr_factor(self.schedule, max(ctx.epoch, 1), self.max_epochs)
        for group, base in zip(ctx.optimizer.param_groups, self.base_lrs or []):
            group["lr"] = base * factor
        loss = self.loss(model, x, y, ctx)
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.backward(loss)
        ctx.step()
        return float(loss.detach())


# ---- augmentation ---------------------------------------------------------------------------------
# Ranges of every operation (both backends): flips p=0.5 per spatial axis; rotation up to
# 15 degrees per plane; affine = that rotation + isotropic scale 0.9-1.1 + translation up to
# 10 % of the size; intensity: scale x(1 +- 0.1) and shift +- 0.1; Gaussian noise std 0.05, p=0.5.
FLIP_P, ROT_DEG, SCALE, SHIFT_FRAC, INT_SCALE, INT_SHIFT, NOISE_STD, NOISE_P = (
    0.5, 15.0, 0.1, 0.1, 0.1, 0.1, 0.05, 0.5)


def make_augment(policy: str, spatial_dims: int, backend: str = "batched"):
    """``fit(augment=...)`` for a named policy, or None for ``none``."""
    if policy not in POLICIES:
        raise ConfigError(f"unknown augment '{policy}'; known: {', '.join(POLICIES)}", "augment")
    if backend not in AUGMENT_BACKENDS:
        raise ConfigError(f"unknown augmentation backend '{backend}'; known: {', '.join(AUGMENT_BACKENDS)}",
                          "augment_backend")
    ops = POLICIES[policy]
    if not ops:
        return None
    return (BatchedAugment if backend == "batched" else LoopAugment)(ops, spatial_dims)


def _rotation(angles: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """(N, d, d) rotation matrices: one angle in 2D, three (x, y, z) composed in 3D."""
    n = angles.shape[0]
    c, s = torch.cos(angles), torch.sin(angles)
    if spatial_dims == 2:
        return torch.stack([torch.stack([c[:, 0], -s[:, 0]], -1), torch.stack([s[:, 0], c[:, 0]], -1)], 1)
    eye = torch.eye(3, device=angles.device).expand(n, 3, 3)
    out = eye
    for axis in range(3):
        i, j = [a for a in range(3) if a != axis]
        r = eye.clone()
        r[:, i, i], r[:, i, j], r[:, j, i], r[:, j, j] = c[:, axis], -s[:, axis], s[:, axis], c[:, axis]
        out = out @ r
    return out


class BatchedAugment:
    """The policy on a whole batch at once, on the batch's device: flips by ``torch.where``,
    rotation/scale/translation as one batched affine resampling (MONAI's ``AffineTransform``,
    the spatial-transformer layer), intensity and noise by per-sample factors. Randomness
    comes from fit's seeded device generator, so a resumed trial draws the same."""

    def __init__(self, ops, spatial_dims: int):
        self.ops, self.dims = tuple(ops), int(spatial_dims)
        self._affine = None

    def _u(self, shape, g, device, low=-1.0, high=1.0):
        return torch.rand(shape, generator=g, device=device) * (high - low) + low

    def __call__(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator):
        n, d, dev = x.shape[0], self.dims, x.device
        x = x.clone()
        bshape = (n,) + (1,) * (x.dim() - 1)
        if "flip" in self.ops:
            for axis in range(2, 2 + d):
                flip = (torch.rand(n, generator=g, device=dev) < FLIP_P).view(bshape)
                x = torch.where(flip, x.flip(axis), x)
        if "rotate" in self.ops or "affine" in self.ops:
            angles = self._u((n, 1 if d == 2 else 3), g, dev) * math.radians(ROT_DEG)
            m = _rotation(angles, d)
            t = torch.zeros(n, d, device=dev)
            if "affine" in self.ops:
                m = m * (1.0 + SCALE * self._u((n, 1, 1), g, dev))
                t = SHIFT_FRAC * 2 * self._u((n, d), g, dev)  # normalised coordinates span 2
            theta = torch.cat([m, t.unsqueeze(-1)], -1)
            if self._affine is None:
                from monai.networks.layers import AffineTransform

                self._affine = AffineTransform(normalized=True, mode="bilinear", padding_mode="zeros",
                                               align_corners=False)
            x = self._affine(x, theta)
        if "intensity" in self.ops:
            x = x * (1.0 + INT_SCALE * self._u(bshape, g, dev)) + INT_SHIFT * self._u(bshape, g, dev)
        if "noise" in self.ops:
            on = (torch.rand(n, generator=g, device=dev) < NOISE_P).view(bshape)
            x = x + on * NOISE_STD * torch.randn(x.shape, generator=g, device=dev)
        return x, y


class LoopAugment:
    """The same policy with MONAI's per-sample array transforms (``RandFlip``, ``RandRotate``,
    ``RandAffine``, ``RandScaleIntensity``, ``RandShiftIntensity``, ``RandGaussianNoise``),
    looped over the batch on its device; seeded per batch from fit's generator."""

    def __init__(self, ops, spatial_dims: int):
        self.ops, self.dims = tuple(ops), int(spatial_dims)
        self.chain, self.size = None, None

    def _build(self, size: tuple):
        from monai import transforms as T

        d, rad = self.dims, math.radians(ROT_DEG)
        chain = []
        if "flip" in self.ops:
            chain += [T.RandFlip(prob=FLIP_P, spatial_axis=a) for a in range(d)]
        if "rotate" in self.ops and "affine" not in self.ops:
            chain.append(T.RandRotate(range_x=rad, range_y=rad if d == 3 else 0.0, range_z=rad if d == 3 else 0.0,
                                      prob=1.0, padding_mode="zeros"))
        if "affine" in self.ops:  # translation in voxels: a fraction of each axis
            chain.append(T.RandAffine(prob=1.0, rotate_range=(rad,) * (1 if d == 2 else 3),
                                      scale_range=(SCALE,) * d, translate_range=[SHIFT_FRAC * s for s in size],
                                      padding_mode="zeros"))
        if "intensity" in self.ops:
            chain += [T.RandScaleIntensity(factors=INT_SCALE, prob=1.0),
                      T.RandShiftIntensity(offsets=INT_SHIFT, prob=1.0)]
        if "noise" in self.ops:
            chain.append(T.RandGaussianNoise(prob=NOISE_P, mean=0.0, std=NOISE_STD))
        self.chain, self.size = T.Compose(chain), size

    def __call__(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator):
        if self.chain is None or self.size != tuple(x.shape[2:]):
            self._build(tuple(x.shape[2:]))
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g, device=g.device).item())
        self.chain.set_random_state(seed=seed)
        out = torch.stack([torch.as_tensor(self.chain(sample)).to(x.device, x.dtype) for sample in x])
        return out, y


# ---- the search space and objectives (validated here so the config's check() can use them) -----------
# option -> ("choice", values) or ("float", low, high, log, step). ``pretrained`` joins ``init``'s
# choices when weights are given (a zoo model or a checkpoint).
DEFAULT_SPACE = {
    "init": ("choice", tuple(s for s in SCHEMES if s != "pretrained")),
    "norm": ("choice", NORMS),
    "dropout": ("float", 0.0, 0.5, False, 0.1),
    "l1": ("choice", (0.0, 1e-6, 1e-5, 1e-4)),
    "l2": ("choice", (0.0, 1e-5, 1e-4, 1e-3)),
    "optimizer": ("choice", OPTIMIZERS),
    "lr": ("float", 1e-4, 3e-2, True, None),
    "schedule": ("choice", SCHEDULES),
    "batch_size": ("choice", (32, 64, 128)),
    "augment": ("choice", tuple(POLICIES)),
}
FLOAT_OPTIONS = ("dropout", "lr", "l1", "l2")


def parse_space(overrides=None, pretrained_available: bool = False) -> dict:
    """The search space: :data:`DEFAULT_SPACE` with ``overrides`` (a dict, JSON text or a .json
    file path): option -> a list of choices, or ``{"low": a, "high": b, "log": bool}`` for a
    float option. Every value is checked as a strategy would be (one-line ConfigError, field
    ``space``)."""
    import json
    from pathlib import Path

    space = dict(DEFAULT_SPACE)
    if pretrained_available:
        space["init"] = ("choice", space["init"][1] + ("pretrained",))
    if overrides in (None, "", {}):
        return space
    if isinstance(overrides, str):
        text = overrides
        if not text.lstrip().startswith("{"):
            path = Path(text).expanduser()
            if not path.is_file():
                raise ConfigError(f"{text} is neither JSON text nor a .json file", "space")
            text = path.read_text()
        try:
            overrides = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not valid JSON: {exc}", "space") from None
    if not isinstance(overrides, dict):
        raise ConfigError("must map options to choices, e.g. {\"norm\": [\"batch\", \"group\"]}", "space")
    for name, value in overrides.items():
        if name not in DEFAULT_SPACE:
            raise ConfigError(f"unknown option '{name}'; known: {', '.join(DEFAULT_SPACE)}", "space")
        if isinstance(value, dict):
            if name not in FLOAT_OPTIONS or set(value) - {"low", "high", "log"} or not {"low", "high"} <= set(value):
                raise ConfigError(f"{name}: a range is {{\"low\", \"high\"[, \"log\"]}} and only for "
                                  f"{', '.join(FLOAT_OPTIONS)}", "space")
            low, high, log = value["low"], value["high"], bool(value.get("log", name == "lr"))
            for v in (low, high):
                _check_value(name, v)
            if not low < high or (log and low <= 0):
                raise ConfigError(f"{name}: need low < high (and low > 0 on a log scale), got {low}, {high}", "space")
            space[name] = ("float", float(low), float(high), log, None)
            continue
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ConfigError(f"{name}: give at least one choice", "space")
        for v in values:
            _check_value(name, v)
        if name == "init" and "pretrained" in values and not pretrained_available:
            raise ConfigError("init 'pretrained' needs weights: --from-zoo ID or --checkpoint", "space")
        space[name] = ("choice", tuple(values))
    return space


def _check_value(name: str, value) -> None:
    try:
        Strategy(**{name: value}).check()
    except TypeError:
        raise ConfigError(f"{name}: bad value {value!r}", "space") from None
    except ConfigError as exc:
        raise ConfigError(f"{exc.message}", "space") from None


def parse_objectives(text: str, max_epochs: int) -> list[str]:
    """``""`` (one objective) or two objectives ``metric@K`` / ``metric@final`` with metric
    val_acc or val_auc and 1 <= K <= max_epochs (MedNNS 3: accuracy at epochs 10 and 100)."""
    if not text:
        return []
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if len(keys) != 2 or len(set(keys)) != 2:
        raise ConfigError(f"give two different objectives (NSGA-II), e.g. val_acc@10,val_acc@final, or none; "
                          f"got '{text}'", "objectives")
    for key in keys:
        metric, at, epoch = key.partition("@")[0], key.partition("@")[1], key.partition("@")[2]
        if metric not in ("val_acc", "val_auc") or not at:
            raise ConfigError(f"'{key}' is not metric@epoch with metric val_acc or val_auc", "objectives")
        if epoch != "final" and not (epoch.isdigit() and 1 <= int(epoch) <= max_epochs):
            raise ConfigError(f"'{key}': the epoch must be 'final' or 1..{max_epochs} (--max-epochs)", "objectives")
    return keys
