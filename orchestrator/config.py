"""Typed search configurations: one schema per search, shared by the CLI, YAML specs and Python.

A config is a dataclass tree: the search's own settings at the top, ``resources`` (where and
how trials run) and ``fit`` (the training recipe) nested. The generic machinery (fields with
their help, choices and bounds; flags and dicts onto the tree) is :mod:`orchestrator.schema`;
here are the concrete classes and their rules. :meth:`SearchConfig.validate` checks everything
once, the declared values first, raising a :class:`ConfigError` that names the field path,
rendered as the flag on the CLI and as ``searches[i].field`` in a spec.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from medcore.errors import ConfigError
from medcore.records import HEAD_BIAS, MEMORY_FORMATS, PRECISIONS
from orchestrator.schema import check_values, clip, opt, quote

# Seeds go to numpy's legacy RandomState and torch.manual_seed: numpy's range is the narrower.
SEED_RANGE = (0, 2**32 - 1)


def seed_arg(text: str) -> int:
    """An argparse ``type`` for a ``--seed`` that no config class holds (``medtune data synth``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {quote(text)}") from None
    if not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise argparse.ArgumentTypeError(f"must be in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], got {quote(value)}")
    return value


def local_gpu_count() -> int:
    """GPUs this machine offers a local run, without Ray: none when ``CUDA_VISIBLE_DEVICES`` hides
    them all, else what torch sees (imported only when a run asks for GPUs)."""
    import os

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return 0
    import torch

    return torch.cuda.device_count()


def local_memory_bytes() -> int:
    """This machine's total memory (what a local Ray node runs on)."""
    import psutil

    return int(psutil.virtual_memory().total)


@dataclass
class Resources:
    """Where trials run and what each one asks of the cluster."""

    address: str | None = opt(None, "Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    cpus_per_trial: float = opt(1.0, "CPUs per trial")
    gpus_per_trial: float = opt(0.0, "GPUs per trial (fractions share a GPU)")
    memory_per_trial_gb: float = opt(0.0, "memory per trial in GB (0: estimated from the network and batch)")
    max_concurrent: int = opt(0, "trials at a time (0: as many as the cluster fits)")
    autoscale: bool = opt(False, "the cluster autoscales: accept requests above its current resources")
    jemalloc: bool = opt(True, "do not preload Ray's jemalloc in trial workers (it makes CPU training ~2x faster)",
                         flag="--no-jemalloc")
    reuse_workers: bool = opt(True, "start a fresh worker process for every trial instead of reusing one (spreads "
                              "trials over the nodes, but each re-imports torch)", flag="--no-reuse-workers")

    def check(self):
        if self.cpus_per_trial <= 0:
            raise ConfigError(f"must be > 0, got {self.cpus_per_trial}", "resources.cpus_per_trial")
        if self.gpus_per_trial < 0:
            raise ConfigError(f"must be >= 0, got {self.gpus_per_trial}", "resources.gpus_per_trial")
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise ConfigError(f"above 1 must be a whole number, got {self.gpus_per_trial}",
                              "resources.gpus_per_trial")
        if self.memory_per_trial_gb < 0:
            raise ConfigError(f"must be >= 0, got {self.memory_per_trial_gb}", "resources.memory_per_trial_gb")
        if self.max_concurrent < 0:
            raise ConfigError(f"must be >= 0, got {self.max_concurrent}", "resources.max_concurrent")

    def check_machine(self, gpus: int | None = None, memory: int | None = None) -> None:
        """Refuse what a run on this machine (a local Ray node, no ``--address``) can never give a
        trial: GPUs it lacks, more memory than it has. Before anything starts; a cluster's own
        nodes are checked once Ray is up. ``gpus`` / ``memory`` (bytes) default to this machine's."""
        if self.autoscale:
            return
        if self.gpus_per_trial > 0:
            gpus = local_gpu_count() if gpus is None else gpus
            if gpus < min(self.gpus_per_trial, 1.0) or gpus < self.gpus_per_trial:
                have = "no GPU" if not gpus else f"{gpus} GPU{'s' if gpus != 1 else ''}"
                raise ConfigError(f"this machine has {have}, got {self.gpus_per_trial:g}; use 0, or run on a "
                                  f"cluster with GPUs (--address)", "resources.gpus_per_trial")
        if self.memory_per_trial_gb > 0:
            memory = local_memory_bytes() if memory is None else memory
            if self.memory_per_trial_gb * 2**30 > memory:
                raise ConfigError(f"more than this machine's memory ({memory / 2**30:.1f} GB in all), got "
                                  f"{self.memory_per_trial_gb:g}", "resources.memory_per_trial_gb")


@dataclass
class FitOptions:
    """The training recipe every trainable's fit loop takes (paper defaults: Adam 1e-3, batch 128)."""

    max_epochs: int = opt(50, "training epochs per candidate (at most)")
    patience: int = opt(5, "early stopping: epochs without val-loss improvement (0: never stop early)")
    batch_size: int = opt(128, "batch size")
    lr: float = opt(1e-3, "Adam learning rate")
    weight_decay: float = opt(0.0, "Adam L2 penalty")
    metric: str = opt("val_acc", "validation metric that ranks candidates and selects epochs",
                      choices=("val_acc", "val_auc"))
    head_bias: str = opt("default", "output-layer bias at the start: PyTorch's default, or 'prior' (the train "
                         "split's class log-odds, so an imbalanced split does not rank classes backwards "
                         "in the first epochs)", choices=HEAD_BIAS)
    precision: str = opt("auto", "arithmetic of training: auto (bf16 autocast on CPUs with native bf16, fp16 AMP on "
                         "CUDA, else fp32), fp32, bf16 or fp16 (CUDA)", choices=PRECISIONS)
    memory_format: str = opt("auto", "tensor layout: auto (channels-last unless the model has InstanceNorm, where "
                             "it is slower on CPUs; always on CUDA), channels_last or contiguous",
                             choices=MEMORY_FORMATS)

    def check(self, prefix: str = "fit."):
        for name in ("max_epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(self, name)}", prefix + name)
        if self.patience < 0:
            raise ConfigError(f"must be >= 0, got {self.patience}", prefix + "patience")
        if not self.lr > 0:
            raise ConfigError(f"must be > 0, got {self.lr}", prefix + "lr")
        if self.weight_decay < 0:
            raise ConfigError(f"must be >= 0, got {self.weight_decay}", prefix + "weight_decay")

    def fit_config(self, seed: int, epochs: int | None = None) -> dict:
        """The keyword arguments of ``trainables.fit.FitConfig``."""
        max_epochs = epochs or self.max_epochs
        return {"max_epochs": max_epochs, "lr": self.lr, "weight_decay": self.weight_decay,
                "batch_size": self.batch_size, "patience": self.patience or max_epochs,
                "select_metric": self.metric, "seed": seed, "head_bias": self.head_bias,
                "precision": self.precision, "memory_format": self.memory_format}


@dataclass
class SearchConfig:
    """What every search shares: the dataset, the run folder, resume, seed, resources."""

    dataset: str = opt("adrenalmnist3d", "MedMNIST flag, e.g. adrenalmnist3d, bloodmnist")
    data_root: str | None = opt(None, "folder with the MedMNIST npz files (default: $MEDTUNE_DATA or ~/.medmnist)",
                                path=True)
    size: int = opt(28, "image size: 28, 64, 128 or 224")
    out: str = opt("results/run", "folder for tables, plots, summary.json and the Tune state", path=True)
    storage: str | None = opt(None, "Tune storage path (default: <out>/tune)", path=True)
    zoo: str | None = opt(None, "model zoo folder the search adds to (default: <out>/zoo)", path=True)
    resume: bool = opt(False, "continue the run stored in --out")
    seed: int = opt(0, "random seed of the search and its trainings", bounds=SEED_RANGE)
    resources: Resources = opt(factory=Resources)

    def validate(self):
        """Check every field once; raises ConfigError naming the field path. Returns self.

        The one way in for the CLI, specs and the Python API, in this order: what the fields
        declare (:func:`check_values`: types, bounds, choices), the data, the resources, and the
        search's own :meth:`check`, which may rely on all of them."""
        check_values(self)
        self.check_data()
        self.resources.check()
        self.check()
        return self

    def check_data(self):
        """The image size and dataset: a MedMNIST size and flag (a search reading other data overrides it)."""
        if self.size not in (28, 64, 128, 224):
            raise ConfigError(f"must be 28, 64, 128 or 224, got {self.size}", "size")
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ConfigError("must name a dataset", "dataset")

    def check(self):
        """The search's own checks (subclasses)."""

    def medmnist_flags(self) -> list[str]:
        """The MedMNIST flags this search reads (a spec checks that their files exist)."""
        return [self.dataset]

    @property
    def out_dir(self) -> Path:
        return Path(self.out).expanduser().resolve()

    @property
    def storage_path(self) -> str:
        """Tune's storage: a local folder, or any URI Ray storage accepts (``s3://...``), kept as given."""
        return _location(self.storage) if self.storage else str(self.out_dir / "tune")

    @property
    def zoo_path(self) -> str:
        return _location(self.zoo) if self.zoo else str(self.out_dir / "zoo")

    def to_dict(self) -> dict:
        return asdict(self)


def is_uri(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def _location(location: str) -> str:
    return location if is_uri(location) else str(Path(location.removeprefix("file://")).expanduser().resolve())


# ``--data`` of the DARTS search naming MONAI's test images rather than a file.
SYNTHETIC = "synthetic"


def _synthetic(value) -> bool:
    """A ``data`` naming no file (a ``literal`` of :func:`opt`): 'synthetic', or blank (which
    :meth:`DartsSearchConfig.check_data` refuses in its own words)."""
    return value == SYNTHETIC or (isinstance(value, str) and not value.strip())


def _json_text(value) -> bool:
    """A ``space`` naming no file (a ``literal`` of :func:`opt`): what
    :func:`trainables.strategy.parse_space` reads as JSON text (blank: no overrides; starting
    with '{'), or no string at all (:func:`orchestrator.schema.from_dict` refuses it as one)."""
    return not isinstance(value, str) or not value.strip() or value.lstrip().startswith("{")


# ``--baseline`` of the ODE search: the tiny 3-block CNN, MONAI ResNets, or none.
ODE_BASELINES = ("none", "tiny_cnn", "resnet10", "resnet18", "resnet34", "resnet50")


@dataclass
class ODESearchConfig(SearchConfig):
    """ODE over the 3D cell space (paper 2.3, 3.2); defaults are the paper's."""

    out: str = opt("results/ode", "folder for tables, plots, summary.json and the Tune state", path=True)
    budget: int = opt(200, "candidates to train (paper: 200)")
    pop_size: int = opt(20, "NP, the population size (the paper does not state it; 20 is medtune's default)")
    F: float = opt(0.5, "DE scale factor")
    CR: float = opt(0.5, "DE crossover rate")
    jump_rate: float = opt(0.3, "JR, generation jumping probability")
    fraction: float = opt(0.25, "train/val fraction during search (paper: 0.25)")
    val_fraction: float = opt(1.0, "val fraction during search (default: the whole val split, so candidates are "
                              "ranked on every val case)")
    fidelity: str = opt("paper", "paper: every candidate trains up to --max-epochs (early stopping); multi: "
                        "DE with asynchronous successive halving (DEHB style): candidates start at --min-epochs and "
                        "those in the best 1/--eta at a rung train on in their trial", choices=("paper", "multi"))
    min_epochs: int = opt(3, "multi: the first rung's epochs")
    search_minutes: float = opt(0.0, "wall-clock budget of the search stage in minutes (0: none): when it runs out the "
                                "candidates still training stop and count at the epochs they reached; retrain and "
                                "baseline follow")
    eta: int = opt(3, "multi: 1/eta of the candidates at a rung go on; rungs are min_epochs * eta^k")
    top_k: int = opt(3, "architectures retrained on the full train split")
    retrain_epochs: int = opt(0, "0: same as --max-epochs")
    max_gflops: float = opt(0.0, "0: no cap; heavier candidates are infeasible, never trained")
    min_gflops: float = opt(0.0, "0: no floor; lighter candidates (e.g. stem-only cells) are infeasible, never trained")
    baseline: str = opt("none", "hand-made reference trained like the retrained picks (same data, recipe, epochs): "
                        + ", ".join(ODE_BASELINES))
    fit: FitOptions = opt(factory=FitOptions)

    def check(self):
        if self.baseline not in ODE_BASELINES:
            raise ConfigError(f"unknown baseline {quote(self.baseline)}; known baselines: {', '.join(ODE_BASELINES)}",
                              "baseline")
        if self.pop_size < 4:
            raise ConfigError(f"must be at least 4 for DE/rand/1, got {self.pop_size}", "pop_size")
        if self.budget < self.pop_size:
            raise ConfigError(f"must be at least `pop_size` ({self.pop_size}), got {self.budget}", "budget")
        for name in ("fraction", "val_fraction"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                raise ConfigError(f"must be in (0, 1], got {value}", name)
        if not 0 < self.F <= 2:
            raise ConfigError(f"must be in (0, 2], got {self.F}", "F")
        for name in ("CR", "jump_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"must be in [0, 1], got {getattr(self, name)}", name)
        if self.min_epochs < 1:
            raise ConfigError(f"must be >= 1, got {self.min_epochs}", "min_epochs")
        if self.eta < 2:
            raise ConfigError(f"must be >= 2, got {self.eta}", "eta")
        if self.fidelity == "multi" and self.min_epochs >= self.fit.max_epochs:
            raise ConfigError(f"must be below `fit.max_epochs` ({self.fit.max_epochs}) for a multi-fidelity search, "
                              f"got {self.min_epochs}", "min_epochs")
        for name in ("top_k", "retrain_epochs", "max_gflops", "min_gflops", "search_minutes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"must be >= 0, got {getattr(self, name)}", name)
        if self.max_gflops and self.min_gflops >= self.max_gflops:
            raise ConfigError(f"must be below `max_gflops` ({self.max_gflops:g}), got {self.min_gflops:g}", "min_gflops")
        self.fit.check()


def _base_recipe() -> FitOptions:
    """MedMNIST's recipe for the base network (compression paper 4.2): Adam 1e-3, L2 1e-3,
    batch 128, 100 epochs, no early stopping, the best val-accuracy epoch kept."""
    return FitOptions(max_epochs=100, patience=0, weight_decay=1e-3)


# fit field -> the only value compress accepts: train_base's FitConfig never sets these, so its base
# network trains at trainables.fit.FitConfig's defaults whatever the config says
COMPRESS_FIT_FIXED = {"head_bias": "default", "precision": "auto", "memory_format": "auto"}


@dataclass
class BaseTrainOptions(FitOptions):
    """The base network's recipe; its epochs flag is ``--train-epochs``."""

    max_epochs: int = opt(100, "epochs to train the base (MedMNIST: 100)", flag="--train-epochs")
    patience: int = opt(0, "early stopping on val loss (0: the recipe's fixed epoch count)")
    weight_decay: float = opt(1e-3, "Adam L2 penalty (MedMNIST: 1e-3)")
    # the base's trainable (trainables.compress_trial.train_base) reads none of these three: only
    # COMPRESS_FIT_FIXED is accepted (CompressSearchConfig.check)
    head_bias: str = opt("default", "not read by compress (its base network trains with PyTorch's default output "
                         "bias); only 'default' is accepted", choices=HEAD_BIAS)
    precision: str = opt("auto", "not read by compress (its base network trains at the fit loop's default, auto); "
                         "only 'auto' is accepted", choices=PRECISIONS)
    memory_format: str = opt("auto", "not read by compress (its base network trains at the fit loop's default, "
                             "auto); only 'auto' is accepted", choices=MEMORY_FORMATS)


# Pure CTAEA (``searcher: ctaea``) trains nothing but evaluates each point on the real function as
# one Tune trial: ``ctaea_pop x ctaea_gens`` at most this many (20x the paper's 100, section 4.3).
CTAEA_MAX_EVALUATIONS = 2000


@dataclass
class CompressSearchConfig(SearchConfig):
    """Surrogate-assisted CTAEA over pruning + quantization (paper section 3, 4.2-4.3)."""

    out: str = opt("results/compress", "folder for tables, plots, summary.json and the Tune state", path=True)
    model: str = opt("resnet50", "base network: resnet10, resnet18, resnet34 or resnet50 (paper: resnet50)")
    base_checkpoint: str | None = opt(None, "a trained base (train_base checkpoint folder); default: train one",
                                      path=True)
    searcher: str = opt("surrogate", "surrogate-assisted CTAEA (paper section 3) or pure CTAEA on the real function",
                        choices=("surrogate", "ctaea"))
    budget: int = opt(100, "surrogate only: evaluations of the real function (paper: 100); searcher ctaea "
                      "evaluates ctaea_pop x ctaea_gens points and refuses another value")
    initial: int = opt(50, "surrogate only: Latin hypercube initial sample (paper: 50); refused with searcher ctaea")
    infill: int = opt(2, "surrogate only: infill points per iteration (paper: 2); refused with searcher ctaea")
    ctaea_pop: int = opt(50, "CTAEA population: surrogate, on the surrogates (paper: 50); ctaea, on the real "
                         "function (paper: 20 or 10)")
    ctaea_gens: int = opt(1000, "CTAEA generations: surrogate, on the surrogates (paper: 1000); ctaea, on the real "
                          f"function (paper: 5 or 10; ctaea_pop x ctaea_gens at most {CTAEA_MAX_EVALUATIONS})")
    inference_batch: int = opt(128, "batch of the timed CPU inference")
    inference_repeats: int = opt(5, "timed runs (median is kept)")
    constraint_metric: str = opt("accuracy", "test metric of the constraint of eq. (1): a feasible candidate keeps "
                                 "0.96 x the base's accuracy, auc or balanced_accuracy",
                                 choices=("accuracy", "auc", "balanced_accuracy"))
    fit: BaseTrainOptions = opt(factory=BaseTrainOptions)

    def check(self):
        from medcore.networks import RESNET_NAMES

        if self.model.lower() not in RESNET_NAMES:
            raise ConfigError(f"unknown model {quote(self.model)}; known models: {', '.join(RESNET_NAMES)}", "model")
        if self.base_checkpoint is not None and not Path(self.base_checkpoint).expanduser().is_dir():
            raise ConfigError(f"{clip(self.base_checkpoint)} not found (expected a train_base checkpoint folder)",
                              "base_checkpoint")
        for name, low in (("infill", 1), ("initial", 2), ("ctaea_pop", 2), ("ctaea_gens", 1),
                          ("inference_batch", 1), ("inference_repeats", 1), ("budget", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"must be >= {low}, got {getattr(self, name)}", name)
        if self.searcher == "surrogate" and self.budget < self.initial:
            raise ConfigError(f"must be at least the initial sample `initial` ({self.initial}), got {self.budget}",
                              "budget")
        if self.searcher == "ctaea":
            self._check_ctaea()
        self.fit.check()
        unread = [name for name, value in COMPRESS_FIT_FIXED.items() if getattr(self.fit, name) != value]
        if unread:
            got = ", ".join(f"`fit.{name}`={getattr(self.fit, name)}" for name in unread)
            fixed = ", ".join(f"{name}={value}" for name, value in COMPRESS_FIT_FIXED.items())
            raise ConfigError(f"compress does not support {got}: its base network always trains with {fixed}; "
                              f"drop the setting", f"fit.{unread[0]}")

    def _check_ctaea(self):
        """Pure CTAEA reads neither ``budget``, ``initial`` nor ``infill`` (it evaluates
        ``ctaea_pop`` x ``ctaea_gens`` points of the real function): a value other than the default
        would be ignored, so it is refused, and so is an evaluation count past
        :data:`CTAEA_MAX_EVALUATIONS` (the defaults, sized for the surrogates, give 50,000)."""
        defaults = {f.name: f.default for f in fields(self) if f.name in ("budget", "initial", "infill")}
        ignored = [f"`{name}`={getattr(self, name)}" for name, default in defaults.items()
                   if getattr(self, name) != default]
        if ignored:
            raise ConfigError(f"ctaea does not read {', '.join(ignored)} (surrogate only; pure CTAEA evaluates "
                              f"`ctaea_pop` x `ctaea_gens` points): drop them or use searcher surrogate", "searcher")
        evaluations = self.ctaea_pop * self.ctaea_gens
        if evaluations > CTAEA_MAX_EVALUATIONS:
            raise ConfigError(f"searcher ctaea would evaluate `ctaea_pop` x `ctaea_gens` = {self.ctaea_pop} x "
                              f"{self.ctaea_gens} = {evaluations} real points, more than {CTAEA_MAX_EVALUATIONS}; "
                              f"the paper's pure CTAEA is 20 x 5 or 10 x 10", "ctaea_gens")


@dataclass
class StrategyFitOptions(FitOptions):
    """The default recipe (the baseline, and the search's first trial) and every trial's epochs;
    a trial's own lr, batch size and L2 come from its strategy."""

    max_epochs: int = opt(20, "epochs per trial (ASHA's max_t)")
    patience: int = opt(0, "early stopping on val loss (0: none; ASHA stops poor trials)")


@dataclass
class StrategySearchConfig(SearchConfig):
    """Training-strategy search (transfer-learning survey III; MedNNS 3): Optuna TPE + ASHA, or
    NSGA-II over two objectives, over initialisation, normalisation, dropout, L1/L2, optimizer,
    learning rate and schedule, batch size and augmentation."""

    out: str = opt("results/strategy", "folder for tables, plots, summary.json and the Tune state", path=True)
    model: str = opt("tiny_cnn", "network: tiny_cnn, cell (an ODE cell network), resnet10/18/34/50")
    from_zoo: str | None = opt(None, "zoo model id: train its network (init 'pretrained' loads its weights); "
                                     "overrides --model")
    checkpoint: str | None = opt(None, "weights for init 'pretrained': a folder holding model.pt, or a .pt state dict",
                                 path=True)
    metaspace: str | None = opt(None, "a MedNNS meta-space folder: train its top recommended model for this dataset "
                                      "(its weights for init 'pretrained', a new classifier); overrides --model",
                                path=True)
    budget: int = opt(20, "trials (strategies trained)")
    objectives: str = opt("", "empty: one objective (best --metric; TPE + ASHA); two, e.g. "
                              "val_acc@10,val_acc@final: NSGA-II, every trial to --max-epochs (FIFO)")
    scheduler: str = opt("asha", "one objective: ASHA over epochs, or FIFO (every trial to --max-epochs)",
                         choices=("asha", "fifo"))
    grace_period: int = opt(2, "ASHA: epochs before the first rung")
    reduction_factor: int = opt(3, "ASHA: keep the top 1/reduction_factor at each rung")
    space: str | None = opt(None, "search-space overrides, JSON text or a .json file: option -> list of "
                                  "choices (or [low, high] for lr and dropout), e.g. '{\"norm\": [\"batch\"]}'",
                            path=True, literal=_json_text)
    optuna_storage: bool = opt(False, "keep the Optuna study in <out>/optuna.db (SQLite) for optuna-dashboard")
    augment_backend: str = opt("batched", "augmentation: whole batches on the device, or MONAI per sample",
                               choices=("batched", "loop"))
    fit: StrategyFitOptions = opt(factory=StrategyFitOptions)

    def check(self):
        from trainables.strategy import parse_objectives, parse_space
        from trainables.strategy_trial import MODELS

        if self.from_zoo is None and self.metaspace is None and self.model.lower() not in MODELS:
            raise ConfigError(f"unknown model {quote(self.model)}; known models: {', '.join(MODELS)}", "model")
        if self.checkpoint is not None and not Path(self.checkpoint).expanduser().exists():
            raise ConfigError(f"{clip(self.checkpoint)} not found (a folder holding model.pt, or a .pt file)",
                              "checkpoint")
        for name, low in (("budget", 1), ("grace_period", 1), ("reduction_factor", 2)):
            if getattr(self, name) < low:
                raise ConfigError(f"must be >= {low}, got {getattr(self, name)}", name)
        self.fit.check()
        parse_objectives(self.objectives, self.fit.max_epochs)
        if self.metaspace is not None and not Path(self.metaspace).expanduser().is_dir():
            raise ConfigError(f"{clip(self.metaspace)} not found (a folder written by medtune metaspace train)",
                              "metaspace")
        if self.metaspace and self.from_zoo:
            raise ConfigError("give --from-zoo or --metaspace, not both", "metaspace")
        parse_space(self.space, pretrained_available=bool(self.from_zoo or self.checkpoint or self.metaspace))


@dataclass
class DartsSearchConfig(SearchConfig):
    """Implantable Adaptive Cells (IAC paper III, IV-B): Stage I U-Nets -> Stage II PC-DARTS cell
    search in their frozen skips -> Stage III discrete cells (and skip baselines) on the same
    frozen U-Nets. Defaults are the paper's; CPU runs shrink sizes and epochs."""

    out: str = opt("results/darts", "folder for tables, plots, summary.json and the Tune state", path=True)
    # glibc malloc in the trial workers: under jemalloc with decay off a Stage II worker's RSS grew
    # by 0.59 GB every bilevel step (freed pages never reused; 9.1 GB after 12 steps at batch 16,
    # 64 px) while glibc held 3.0 GB at the same step time (docs/darts.md, "Memory")
    resources: Resources = opt(factory=lambda: Resources(jemalloc=False))
    data: str = opt(SYNTHETIC, "a Decathlon folder (dataset.json, imagesTr/, labelsTr/), its .npz copy, "
                               "or 'synthetic' (MONAI test images)", path=True, literal=_synthetic)
    dataset: str = opt("segmentation", "unused by this search: the dataset is named by --data")
    size: int = opt(128, "pixels per axis after centre pad/crop, a multiple of 32 (paper: 128)")
    spatial_dims: int = opt(2, "2: axial slices, 3: whole volumes", choices=(2, 3))
    max_cases: int = opt(0, "0: every case; N: the first N cases by id (a CPU budget)")
    backbone: str = opt("unet", "U-Net backbone(s), comma separated: unet, resnet, efficientnet")
    unet_features: str = opt("", "features of the 'unet' backbone (6 ints, comma separated; default MONAI's)")
    stage1_epochs: int = opt(200, "Stage I epochs per backbone (paper: 200)")
    search_epochs: int = opt(200, "Stage II search epochs, warm-up included (paper: 200)")
    warmup: int = opt(15, "Stage II warm-up epochs training only the cell weights (paper: 15)")
    stage3_epochs: int = opt(200, "Stage III / baseline epochs (paper: 200)")
    snapshots: str = opt("25,50,100,150,200", "Stage II epochs whose genotypes go to Stage III "
                                              "(the last search epoch always does)")
    k: int = opt(4, "partial channels: 1/K of each edge's channels are mixed (eq. 3; 1: full DARTS)")
    tan_beta: bool = opt(True, "plain softmax edge normalisation (eq. 4) instead of the tan rescaling (eqs. 6-10)",
                         flag="--no-tan-beta")
    batch_size: int = opt(128, "batch size of every stage (paper: 128)")
    runs: int = opt(1, "Stage III / baseline runs per genotype and baseline (seeds seed, seed+1, ...)")
    baselines: str = opt("attention,nested", "skip baselines on the same frozen U-Nets, comma separated "
                                             "(attention, nested; '' for none)")
    implant: str = opt("replace", "how the Stage II/III cells enter the decoder: replace (the paper's: the cell's "
                                  "output replaces the skip tensor) or residual (skip + cell, its last 1x1 conv "
                                  "zero-initialised: it starts as the frozen U-Net)", choices=("replace", "residual"))

    def medmnist_flags(self) -> list[str]:
        return []  # --data names a Decathlon folder, its npz or "synthetic"; checked by check_data and check

    def check_data(self):
        if self.size < 32 or self.size % 32:
            raise ConfigError(f"must be a multiple of 32 (>= 32), got {self.size}", "size")
        if not str(self.data).strip():
            raise ConfigError("must name a Decathlon folder, an .npz file or 'synthetic'", "data")

    def backbones(self) -> list[str]:
        return [b.strip() for b in self.backbone.split(",") if b.strip()]

    def snapshot_epochs(self) -> list[int]:
        """The configured snapshot epochs within the search, plus its last epoch."""
        return sorted({e for e in _ints(self.snapshots, "snapshots") if e <= self.search_epochs}
                      | {self.search_epochs})

    def baseline_names(self) -> list[str]:
        return [b.strip() for b in self.baselines.split(",") if b.strip()]

    def features(self) -> list[int] | None:
        return _ints(self.unet_features, "unet_features") or None

    def check(self):
        from trainables.nets.skip_baselines import BASELINES
        from trainables.nets.unets import BACKBONES

        if not self.backbones():
            raise ConfigError("must name at least one backbone", "backbone")
        for b in self.backbones():
            if b not in BACKBONES:
                raise ConfigError(f"unknown backbone {quote(b)}; known backbones: {', '.join(BACKBONES)}", "backbone")
        for b in self.baseline_names():
            if b not in BASELINES:
                raise ConfigError(f"unknown baseline {quote(b)}; known baselines: {', '.join(BASELINES)}",
                                  "baselines")
        for name, low in (("stage1_epochs", 1), ("search_epochs", 1), ("stage3_epochs", 1), ("batch_size", 1),
                          ("k", 1), ("runs", 1), ("warmup", 0), ("max_cases", 0)):
            if getattr(self, name) < low:
                raise ConfigError(f"must be >= {low}, got {getattr(self, name)}", name)
        if self.seed + self.runs - 1 > SEED_RANGE[1]:
            raise ConfigError(f"runs use seeds seed .. seed + runs - 1, which must be at most {SEED_RANGE[1]}; "
                              f"got seed {self.seed}", "runs")
        if 0 < self.max_cases < 3:
            raise ConfigError(f"must be 0 (all) or at least 3 (one case per split), got {self.max_cases}",
                              "max_cases")
        if self.warmup >= self.search_epochs:
            raise ConfigError(f"must be below --search-epochs ({self.search_epochs}) or nothing is searched, "
                              f"got {self.warmup}", "warmup")
        if any(e < 1 for e in _ints(self.snapshots, "snapshots")):
            raise ConfigError("epochs must be >= 1", "snapshots")
        features = self.features()
        if features is not None and len(features) != 6:
            raise ConfigError(f"needs 6 comma-separated ints, got {len(features)}", "unet_features")
        data = str(self.data)
        if data != SYNTHETIC and not Path(data).expanduser().exists():
            raise ConfigError(f"{clip(data)} not found; give a Decathlon folder (with dataset.json), an .npz copy, "
                              "or 'synthetic'", "data")


def _ints(text: str, name: str) -> list[int]:
    try:
        return [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"expected comma-separated whole numbers, got {quote(text)}", name) from None


@dataclass
class MedNNSSearchConfig(SearchConfig):
    """MedNNS (supernet zoo + meta-space, paper 2 A.1-B, 3): one supernet per dataset, its zoo,
    a meta-space per leave-one-out target, and the recommended model fine-tuned on the target."""

    out: str = opt("results/mednns", "folder for tables, plots, summary.json and the Tune state", path=True)
    dataset: str = opt("", "set from --datasets (mednns reads --datasets)")
    datasets: str = opt("", "comma-separated MedMNIST flags, all 2D or all 3D; each is held out once (>= 2)")
    supernet_epochs: int = opt(4, "supernet training epochs per dataset")
    supernet_full_epochs: int = opt(1, "first epochs that train the full network alone (A.1 stage one)")
    supernet_paths: int = opt(3, "subnets per step (strict fairness: a multiple of 3)")
    sandwich: bool = opt(False, "OFA's sandwich rule instead of FairNAS strict fairness (ablation)")
    zoo_size: int = opt(1000, "subnets extracted per supernet (paper: 1000)")
    bn_images: int = opt(256, "train images of the seeded BatchNorm recalibration subset")
    encode_images: int = opt(256, "images per dataset for its embedding and FID")
    metaspace_epochs: int = opt(20, "meta-space training epochs")
    metaspace_lr: float = opt(1e-2, "meta-space Adam learning rate (paper: 1e-2)")
    losses: str = opt("perf,rank,fid", "meta-space losses: any of perf, rank, fid, contrastive")
    top_k: int = opt(10, "models recommended per target; T1, T5, T10 run where k <= top_k")
    finetune_epochs: int = opt(10, "fine-tuning epochs of the recommended model and the baselines")
    report_epochs: str = opt("", "epochs at which test accuracy is reported (default: --finetune-epochs)")
    finetune_fraction: float = opt(1.0, "fraction of the target's train split used for fine-tuning (CPU budget)")
    baseline: str = opt("resnet18", "fixed baseline network: resnet10, resnet18, resnet34 or resnet50")
    batch_size: int = opt(128, "batch size (supernets and fine-tuning)")
    lr: float = opt(1e-3, "Adam learning rate (supernets and fine-tuning)")

    MEDNNS_LOSSES = ("perf", "rank", "fid", "contrastive")

    def validate(self):
        flags = self.dataset_list()
        if flags:
            self.dataset = flags[0]
        return super().validate()

    def dataset_list(self) -> list[str]:
        return [f.strip().lower() for f in str(self.datasets or "").split(",") if f.strip()]

    def medmnist_flags(self) -> list[str]:
        return self.dataset_list()

    def loss_list(self) -> list[str]:
        return [x.strip().lower() for x in self.losses.split(",") if x.strip()]

    def report_list(self) -> list[int]:
        if not self.report_epochs.strip():
            return [self.finetune_epochs]
        try:
            return sorted({int(e) for e in self.report_epochs.split(",") if e.strip()})
        except ValueError:
            raise ConfigError(f"must be comma-separated epochs, got {quote(self.report_epochs)}",
                              "report_epochs") from None

    def check(self):
        from orchestrator.data import known_flags

        flags = self.dataset_list()
        if len(flags) < 2:
            raise ConfigError(f"leave-one-dataset-out needs at least two datasets, got {len(flags)}"
                              f"{' (' + ', '.join(flags) + ')' if flags else ''}", "datasets")
        if len(set(flags)) < len(flags):
            raise ConfigError(f"lists a dataset twice: {', '.join(flags)}", "datasets")
        known = set(known_flags())
        for f in flags:
            if f not in known:
                raise ConfigError(f"unknown MedMNIST flag {quote(f)}; known flags: {', '.join(sorted(known))}",
                                  "datasets")
        dims = {f: 3 if f.endswith("3d") else 2 for f in flags}
        if len(set(dims.values())) > 1:
            listing = ", ".join(f"{f} ({d}D)" for f, d in dims.items())
            raise ConfigError(f"2D and 3D flags mixed in one meta-space: {listing}; run one search per "
                              f"dimensionality", "datasets")
        for name in ("supernet_epochs", "supernet_paths", "zoo_size", "bn_images", "top_k", "finetune_epochs",
                     "batch_size", "metaspace_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(self, name)}", name)
        if self.encode_images < 2:
            raise ConfigError(f"must be >= 2 (FID needs a covariance), got {self.encode_images}", "encode_images")
        if not 0 <= self.supernet_full_epochs <= self.supernet_epochs:
            raise ConfigError(f"must be in [0, supernet_epochs ({self.supernet_epochs})], got "
                              f"{self.supernet_full_epochs}", "supernet_full_epochs")
        if not self.sandwich and self.supernet_paths % 3:
            raise ConfigError(f"strict fairness needs a multiple of 3 (every choice once per group), got "
                              f"{self.supernet_paths}", "supernet_paths")
        if self.sandwich and self.supernet_paths < 2:
            raise ConfigError(f"the sandwich rule needs >= 2 paths, got {self.supernet_paths}", "supernet_paths")
        for name in ("metaspace_lr", "lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"must be > 0, got {getattr(self, name)}", name)
        if not 0 < self.finetune_fraction <= 1:
            raise ConfigError(f"must be in (0, 1], got {self.finetune_fraction}", "finetune_fraction")
        losses = self.loss_list()
        bad = [x for x in losses if x not in self.MEDNNS_LOSSES]
        if bad or not losses:
            raise ConfigError(f"unknown loss(es) {', '.join(bad) or '(none given)'}; choose from "
                              f"{', '.join(self.MEDNNS_LOSSES)}", "losses")
        epochs = self.report_list()
        if epochs[0] < 1 or epochs[-1] > self.finetune_epochs:
            raise ConfigError(f"must lie in 1..finetune_epochs ({self.finetune_epochs}), got "
                              f"{quote(self.report_epochs)}", "report_epochs")
        from medcore.networks import RESNET_NAMES

        if self.baseline.lower() not in RESNET_NAMES:
            raise ConfigError(f"unknown model {quote(self.baseline)}; known models: {', '.join(RESNET_NAMES)}",
                              "baseline")
