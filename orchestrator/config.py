"""Typed search configurations. The CLI, YAML specs and the Python API build these objects;
``validate()`` turns every bad value into one ConfigError line before any work starts."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from orchestrator.errors import ConfigError


@dataclass
class RunOptions:
    """Where and how a search runs: shared by every search."""

    dataset: str = "adrenalmnist3d"
    data_root: str | None = None  # None: MEDTUNE_DATA, else medmnist's default
    size: int = 28
    out: str = "results/run"
    storage: str | None = None  # Tune storage path; default <out>/tune
    address: str | None = None  # Ray cluster address; default: RAY_ADDRESS, else local
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 0  # 0: as many as the cluster fits
    resume: bool = False
    seed: int = 0
    jemalloc: bool = True  # LD_PRELOAD Ray's jemalloc into trial workers (benchmarks/jemalloc.py)

    def validate_run(self):
        if self.size not in (28, 64, 128, 224):
            raise ConfigError(f"--size must be 28, 64, 128 or 224, got {self.size}")
        if self.cpus_per_trial <= 0:
            raise ConfigError(f"--cpus-per-trial must be > 0, got {self.cpus_per_trial}")
        if self.gpus_per_trial < 0:
            raise ConfigError(f"--gpus-per-trial must be >= 0, got {self.gpus_per_trial}")
        if self.max_concurrent < 0:
            raise ConfigError(f"--max-concurrent must be >= 0, got {self.max_concurrent}")

    @property
    def out_dir(self) -> Path:
        return Path(self.out).expanduser().resolve()

    @property
    def storage_path(self) -> str:
        return str(Path(self.storage).expanduser().resolve()) if self.storage else str(self.out_dir / "tune")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown option(s) for {cls.__name__}: {', '.join(unknown)}")
        return cls(**d)


@dataclass
class ODESearchConfig(RunOptions):
    """ODE over the 3D cell space (paper 2.3, 3.2); defaults are the paper's."""

    out: str = "results/ode"
    budget: int = 200
    pop_size: int = 20
    F: float = 0.5
    CR: float = 0.5
    jump_rate: float = 0.3
    fraction: float = 0.25
    val_fraction: float | None = None  # None: same as fraction (paper); 1.0 keeps small val splits rankable
    max_epochs: int = 50
    patience: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    metric: str = "val_acc"  # fitness = best value of this validation metric
    top_k: int = 3
    retrain_epochs: int = 0  # 0: same as --max-epochs
    max_gflops: float = 0.0  # 0: no cap; >0: heavier candidates are infeasible, never trained

    def validate(self) -> "ODESearchConfig":
        self.validate_run()
        if self.pop_size < 4:
            raise ConfigError(f"--pop-size must be at least 4 for DE/rand/1, got {self.pop_size}")
        if self.budget < self.pop_size:
            raise ConfigError(f"--budget ({self.budget}) must be at least --pop-size ({self.pop_size})")
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"--fraction must be in (0, 1], got {self.fraction}")
        if self.val_fraction is not None and not 0.0 < self.val_fraction <= 1.0:
            raise ConfigError(f"--val-fraction must be in (0, 1], got {self.val_fraction}")
        if self.max_epochs < 1 or self.patience < 1 or self.batch_size < 1:
            raise ConfigError("--max-epochs, --patience and --batch-size must be >= 1")
        if self.metric not in ("val_acc", "val_auc"):
            raise ConfigError(f"--metric must be val_acc or val_auc, got {self.metric}")
        if not (0 < self.F <= 2 and 0 <= self.CR <= 1 and 0 <= self.jump_rate <= 1):
            raise ConfigError("need 0 < F <= 2, 0 <= CR <= 1 and 0 <= jump rate <= 1")
        if self.top_k < 0 or self.retrain_epochs < 0 or self.max_gflops < 0:
            raise ConfigError("--top-k, --retrain-epochs and --max-gflops must be >= 0")
        return self

    def fit_config(self, epochs: int | None = None) -> dict:
        return {"max_epochs": epochs or self.max_epochs, "lr": self.lr, "batch_size": self.batch_size,
                "patience": self.patience, "select_metric": self.metric, "seed": self.seed}


@dataclass
class CompressSearchConfig(RunOptions):
    """Surrogate-assisted CTAEA over pruning + quantization (paper section 3, 4.2-4.3)."""

    out: str = "results/compress"
    model: str = "resnet50"
    base_checkpoint: str | None = None  # a train_base checkpoint dir; None: train one
    train_epochs: int = 100  # MedMNIST recipe for the base network
    searcher: str = "surrogate"  # "surrogate" (paper section 3) or "ctaea" (pure CTAEA baseline)
    budget: int = 100
    initial: int = 50
    infill: int = 2
    ctaea_pop: int = 50  # surrogate: CTAEA population on the surrogates; ctaea: population on the real function
    ctaea_gens: int = 1000  # surrogate: generations on the surrogates; ctaea: generations (budget = pop x gens)
    inference_batch: int = 128  # measured inference time: batch size (paper: 128) ...
    inference_repeats: int = 5  # ... and the median over this many timed runs

    def validate(self) -> "CompressSearchConfig":
        from trainables.nets.resnet import RESNETS

        self.validate_run()
        if self.model.lower() not in RESNETS:
            raise ConfigError(f"unknown model '{self.model}'; known models: {', '.join(sorted(RESNETS))}")
        if self.base_checkpoint is not None and not Path(self.base_checkpoint).expanduser().is_dir():
            raise ConfigError(f"base checkpoint {self.base_checkpoint} not found (expected a train_base checkpoint folder)")
        if self.searcher not in ("surrogate", "ctaea"):
            raise ConfigError(f"--searcher must be surrogate or ctaea, got {self.searcher}")
        if self.train_epochs < 1 or self.infill < 1 or self.initial < 2 or self.ctaea_pop < 2 or self.ctaea_gens < 1:
            raise ConfigError("need --train-epochs >= 1, --infill >= 1, --initial >= 2, --ctaea-pop >= 2, --ctaea-gens >= 1")
        if self.inference_batch < 1 or self.inference_repeats < 1:
            raise ConfigError("need --inference-batch >= 1 and --inference-repeats >= 1")
        if self.searcher == "surrogate" and self.budget < self.initial:
            raise ConfigError(f"--budget ({self.budget}) is smaller than the initial sample --initial ({self.initial})")
        return self
