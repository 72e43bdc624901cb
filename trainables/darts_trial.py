"""Stage II of the IAC paper (Algorithms 1-2): search one Implantable Adaptive Cell genotype in
the skips of a frozen, pre-trained U-Net. One Tune trial is one search.

The U-Net's weights stay frozen (and its BatchNorm statistics fixed: it runs in eval mode while
the cells train); a continuous :class:`~trainables.nets.iac_cell.SearchCell` sits in every
skip, all sharing one alpha/beta (:class:`~trainables.nets.iac_cell.ArchParameters`,
initialised to ones). The first ``warmup`` epochs train only the cell weights; after that every
batch first updates alpha/beta on a ``val_search`` batch (Adam, lr 1e-3) and then the cell
weights on a ``train_search`` batch (SGD, lr 0.01, momentum 0, no weight decay), with cosine
power annealing of the weight learning rate (sharpDARTS) and the Dice loss. Every epoch reports
the val_search Dice and the derived genotype; the driver keeps the snapshot epochs.
``implant`` (``replace``, the paper's, or ``residual``: skip + cell with a zero-initialised output
conv, :data:`~trainables.nets.iac_cell.IMPLANTS`) is the same in Stage II and Stage III.

The loop is :func:`trainables.fit.fit` with a bilevel :class:`BilevelStep` (the architecture
step draws its batches through ``StepContext.next_batch("val_search")``), so checkpoint/resume
is fit's: alpha, beta and both optimizers travel in the step's state.
"""
from __future__ import annotations

import json
import math

import torch
from torch import nn

from trainables.fit import FitConfig, StepContext, TrainStep, fit, set_threads_from_ray
from trainables.nets.iac_cell import REPLACE, ArchParameters, DiscreteCell, Genotype, search_cells
from trainables.tasks import SegmentationTask

TRAIN_SEARCH, VAL_SEARCH = "train_search", "val_search"
IAC = "iac"  # the skip name of Stage III models
DEFAULTS = {"epochs": 200, "warmup": 15, "k": 4, "tan_beta": True, "batch_size": 128, "w_lr": 0.01,
            "arch_lr": 1e-3, "annealing_power": 10.0, "w_lr_min": 0.0, "seed": 0, "device": "auto",
            "implant": REPLACE}


def cosine_power_annealing(epoch: int, epochs: int, lr_max: float, lr_min: float = 0.0, power: float = 10.0) -> float:
    """sharpDARTS' cosine power annealing: ``lr_min + (lr_max - lr_min) * (p**c - 1) / (p - 1)``
    with ``c = (1 + cos(pi * (epoch - 1) / epochs)) / 2`` (epoch 1-based; plain cosine at p = 1)."""
    c = 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / max(1, epochs)))
    frac = c if power == 1 else (power ** c - 1.0) / (power - 1.0)
    return lr_min + (lr_max - lr_min) * frac


def implant(unet: nn.Module, cells: list[nn.Module]) -> nn.Module:
    """Freeze ``unet`` (a SkipUNet: weights fixed, BatchNorm held in eval mode) and put
    ``cells`` into its skips; only the cells train."""
    unet.freeze()
    unet.set_skips(cells)
    return unet


def cell_parameters(unet: nn.Module) -> list:
    return [p for p in unet.skips.parameters() if p.requires_grad]


class BilevelStep(TrainStep):
    """Algorithm 1, lines 6-9, on one train_search batch: after the warm-up, descend
    alpha/beta on the next val_search batch (Adam), then descend the cell weights on the
    train_search batch (SGD, the fit loop's optimizer)."""

    def __init__(self, arch: ArchParameters, warmup: int, epochs: int, arch_lr: float = 1e-3, w_lr: float = 0.01,
                 w_lr_min: float = 0.0, power: float = 10.0, val_split: str = VAL_SEARCH):
        self.arch, self.warmup, self.epochs = arch, int(warmup), int(epochs)
        self.arch_lr, self.w_lr, self.w_lr_min, self.power = arch_lr, w_lr, w_lr_min, power
        self.val_split = val_split
        self.arch_optimizer: torch.optim.Optimizer | None = None
        self._epoch = 0
        self.arch_steps = 0

    def setup(self, model: nn.Module, ctx: StepContext) -> None:
        self.arch.to(ctx.device)
        self.arch_optimizer = torch.optim.Adam(self.arch.parameters(), lr=self.arch_lr)

    def searching(self, epoch: int) -> bool:
        return epoch > self.warmup

    def __call__(self, model, x, y, ctx: StepContext) -> float:
        if ctx.epoch != self._epoch:  # cosine power annealing, once per epoch
            self._epoch = ctx.epoch
            for group in ctx.optimizer.param_groups:
                group["lr"] = cosine_power_annealing(ctx.epoch, self.epochs, self.w_lr, self.w_lr_min, self.power)
        if self.searching(ctx.epoch):
            xv, yv = ctx.next_batch(self.val_split)
            self.arch_step(model, xv, yv, ctx)
        return self.weight_step(model, x, y, ctx)

    def arch_step(self, model, x, y, ctx: StepContext) -> float:
        """Eq. 14 / Algorithm 1 lines 6-7: only alpha and beta move."""
        with ctx.autocast():
            loss = ctx.loss(model(x), y)
        self.arch_optimizer.zero_grad(set_to_none=True)
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.backward(loss)
        ctx.step(self.arch_optimizer)
        self.arch_steps += 1
        return float(loss.detach())

    def weight_step(self, model, x, y, ctx: StepContext) -> float:
        """Eq. 13 / Algorithm 1 lines 8-9: only the cell weights move."""
        with ctx.autocast():
            loss = ctx.loss(model(x), y)
        ctx.optimizer.zero_grad(set_to_none=True)
        self.arch_optimizer.zero_grad(set_to_none=True)
        ctx.backward(loss)
        ctx.step()
        return float(loss.detach())

    def state_dict(self) -> dict:
        return {"arch": self.arch.state_dict(), "arch_optimizer": self.arch_optimizer.state_dict(),
                "epoch": self._epoch, "arch_steps": self.arch_steps}

    def load_state_dict(self, state: dict) -> None:
        self.arch.load_state_dict(state["arch"])
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])
        self._epoch, self.arch_steps = state["epoch"], state["arch_steps"]

    def report(self) -> dict:
        """What every epoch reports besides Dice: the genotype and alpha/beta (JSON strings)."""
        with torch.no_grad():
            return {"genotype": json.dumps(self.arch.genotype().to_dict()),
                    "alphas": json.dumps(self.arch.op_weights().cpu().tolist()),
                    "betas": json.dumps(self.arch.edge_weights().cpu().tolist()),
                    "searching": self.searching(self._epoch), "arch_steps": self.arch_steps}


def sgd_cells(model: nn.Module, w_lr: float):
    """The cell weights' optimizer (paper IV-B.2: SGD, lr 0.01, no weight decay, momentum 0)."""
    return lambda params, cfg: torch.optim.SGD(cell_parameters(model), lr=w_lr, momentum=0.0, weight_decay=0.0)


def run_search(unet: nn.Module, data, config: dict, *, save_state=None, resume_state=None, report=None,
               step_cls=BilevelStep):
    """Stage II on ``unet`` (a SkipUNet; frozen here). Returns ``(fit_result, step, model)``."""
    c = {**DEFAULTS, **config}
    spatial_dims = data.info.spatial_dims
    torch.manual_seed(int(c["seed"]))
    arch = ArchParameters(tan_beta=bool(c["tan_beta"]))
    cells = search_cells(unet.skip_channels(), arch, int(c["k"]), spatial_dims, implant=str(c["implant"]))
    model = implant(unet, cells)
    step = step_cls(arch, warmup=int(c["warmup"]), epochs=int(c["epochs"]), arch_lr=float(c["arch_lr"]),
                    w_lr=float(c["w_lr"]), w_lr_min=float(c["w_lr_min"]), power=float(c["annealing_power"]))
    cfg = FitConfig(max_epochs=int(c["epochs"]), lr=float(c["w_lr"]), batch_size=int(c["batch_size"]),
                    patience=int(c["epochs"]), select_metric="val_dice", seed=int(c["seed"]), device=c["device"])
    wrapped = save_state
    if save_state is not None:
        wrapped = lambda state, row: save_state(state, {**row, **step.report()})  # noqa: E731
    result = fit(model, data.fit_view(TRAIN_SEARCH, VAL_SEARCH), cfg, report=report, task=SegmentationTask("dice"),
                 optimizer_factory=sgd_cells(model, float(c["w_lr"])), train_step=step, save_state=wrapped,
                 resume_state=resume_state)
    return result, step, model


def search_trial(config: dict, data=None, unets=None) -> None:
    """Tune trainable: one Stage II search on the frozen Stage I U-Net of ``config["backbone"]``
    (``unets``: backbone -> :class:`~trainables.unet_trial.UNetCheckpoint`, shared through the
    object store); reports Dice, genotype, alpha and beta every epoch with a checkpoint, and
    resumes from the trial's latest checkpoint."""
    from trainables.checkpointing import TuneCheckpointing, resume_state

    set_threads_from_ray(1)
    meta = {"stage": "search", "backbone": config["backbone"], "synthetic": bool(data.info.synthetic)}
    run_search(unets[config["backbone"]].model(), data, config,
               save_state=TuneCheckpointing(metrics=lambda row: {**meta, **row}), resume_state=resume_state())


def discrete_skip(level: int, channels, spatial_dims: int, genotype: dict, implant: str = REPLACE) -> DiscreteCell:
    """``SkipUNet.make_skips`` factory of Stage III: level ``level``'s discrete cell of ``genotype``,
    implanted as ``implant`` (``replace`` or ``residual``; it travels in ``skip_kwargs``, so the
    zoo's builder rebuilds the same form)."""
    enc, dec = channels[level]
    return DiscreteCell(Genotype.from_dict(genotype), enc, dec, spatial_dims, implant=implant)


def skips_trial(config: dict, data=None, unets=None) -> None:
    """Tune trainable of Stage III (Algorithm 3) and the baselines on the frozen U-Net of
    ``config["backbone"]``: ``skip: "iac"`` implants ``skip_kwargs["genotype"]`` as discrete
    cells, a baseline name (``attention``, ``nested``) its modules; trained by
    :func:`trainables.unet_trial.train_skips` with Stage I's hyperparameters."""
    from trainables.unet_trial import train_skips

    config = {**{k: v for k, v in config.items() if k != "run"}, **dict(config.get("run") or {})}
    factory = discrete_skip if config.get("skip") == IAC else None
    train_skips(config, data, unets[config["backbone"]], skip_factory=factory)


def build_skip_model(unet_build: dict, skip: str, skip_kwargs: dict | None = None) -> nn.Module:
    """The frozen U-Net of ``unet_build`` with ``skip`` modules (``iac`` or a baseline) in every
    skip, untrained: load a Stage III ``model.pt`` into it (the zoo's builder)."""
    from trainables.nets.skip_baselines import BASELINES
    from trainables.nets.unets import rebuild_unet

    model = rebuild_unet(unet_build).freeze()
    factory = discrete_skip if skip == IAC else BASELINES[skip]
    model.set_skips(model.make_skips(factory, **dict(skip_kwargs or {})))
    return model


def worst_genotype() -> Genotype:
    """The discrete cell that keeps the most activations: a separable 5x5 convolution (two
    stacked depthwise-separable blocks) on every edge. Stage III's genotypes are known only
    after Stage II; this bounds them all for the memory plan."""
    return Genotype(edges=tuple(("sep_conv_5x5", i) for _ in range(4) for i in (0, 1)))


def memory_estimates(data, backbone: str, unet_kwargs: dict, k: int, baselines=(), jemalloc: bool = False) -> dict:
    """Stage -> :class:`~trainables.memory.BatchEstimate` of one trial of each IAC stage on
    ``backbone``, simulated on the meta device: Stage I trains the whole U-Net; Stage II the
    continuous cells of every skip (14 mixed edges x 8 operations per level: most of the memory,
    and the bilevel step runs its two forward/backward passes one after the other); Stage III
    the heaviest discrete cell (:func:`worst_genotype`) or skip baseline on the frozen U-Net.
    ``jemalloc``: the trial workers preload it (the search's default is glibc, see its config).
    The cells are simulated in the ``replace`` form: ``residual`` adds one skip-shaped sum per
    level, next to the 14 mixed edges' tensors (negligible)."""
    from trainables.memory import batch_estimate, held_bytes
    from trainables.nets.skip_baselines import BASELINES
    from trainables.nets.unets import build_unet

    info = data.info
    held = held_bytes(data)
    shape = tuple(info.input_shape)

    def unet():
        with torch.device("meta"):
            return build_unet(backbone, info.spatial_dims, info.n_channels, info.n_outputs, **dict(unet_kwargs))

    def frozen_with(factory, **kwargs):
        model = unet().freeze()
        with torch.device("meta"):
            model.set_skips(model.make_skips(factory, **kwargs))
        return model

    def searching():
        model = unet()
        with torch.device("meta"):
            cells = search_cells(model.skip_channels(), ArchParameters(), int(k), info.spatial_dims)
        return implant(model, cells)

    stage3 = [frozen_with(discrete_skip, genotype=worst_genotype().to_dict())]
    stage3 += [frozen_with(BASELINES[name]) for name in baselines]
    third = [batch_estimate(m, shape, held, jemalloc=jemalloc) for m in stage3]
    return {"stage1": batch_estimate(unet(), shape, held, jemalloc=jemalloc),
            "stage2": batch_estimate(searching(), shape, held, jemalloc=jemalloc),
            "stage3": lambda batch: max(e(batch) for e in third)}
