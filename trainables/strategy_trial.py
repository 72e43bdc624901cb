"""Ray Tune trial of the training-strategy search: one network trained under one strategy.

The network is any medtune network (``tiny_cnn``, ``resnet10``..``resnet50``, ``cell``: an
ODE cell network) or a zoo model's build recipe, with its weights when the strategy's
initialisation is ``pretrained`` (they travel through Ray's object store with the data, never
as a path on the driver's disk). :class:`trainables.strategy.Strategy` is applied to the model
and to the shared fit loop (:func:`trainables.fit.fit` hooks). Every epoch is reported with a
checkpoint of the loop's state, so ASHA can stop the trial at any rung and a trial whose
worker died resumes at its last epoch. Each row carries ``val_acc@K`` (the value at epoch K,
NaN before; MedNNS section 3 compares accuracy at epochs 10 and 100) and ``val_acc@final``
(this epoch's), and ``finished`` (True on the trial's last epoch: a trial that ends on a row
with ``finished=False`` was stopped by the scheduler and reaches Optuna as pruned).

:func:`memory_cost` prices a trial before it starts (its batch size and normalisation), for the
search's memory plan and each trial's Ray ``memory`` request.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from medcore.errors import ConfigError
from trainables.builders import UnknownBuilder, normalise, resolve
from trainables.checkpointing import resume_state, save_state_file
from trainables.complexity import count_params
from trainables.fit import (DeviceSplit, FitConfig, NonFiniteLoss, eval_batch_size, evaluate, fit, pick_device,
                            set_threads_from_ray)
from trainables.memory import TrialMemory
from trainables.strategy import Strategy, insert_dropout, replace_norm

MODELS = ("tiny_cnn", "cell", "resnet10", "resnet18", "resnet34", "resnet50")
BUILDER = "strategy_model"  # trainables.builders name
# The ODE cell network offered by name: two operations (conv3-IN-ReLU, Mish-conv3), one stack of
# one module, 8 maps; other cells come from the zoo (--from-zoo, the ODE search's models).
DEFAULT_CELL = {"nodes": [[1, "conv3_in_relu"], [2, "mish_conv3"]], "edges": [[0, 1], [0, 6], [1, 2], [2, 6]],
                "n_stacks": 1, "n_modules": 1, "n_f_init": 8}
WEIGHTS_FILE, BUILD_FILE = "model.pt", "build.json"


def network_build(model: str, info) -> dict:
    """The build recipe (``{"builder", "kwargs"}``, the zoo's format) of a named network."""
    name = str(model).lower()
    common = {"in_channels": info.n_channels, "n_outputs": info.n_outputs, "spatial_dims": info.spatial_dims}
    if name == "tiny_cnn":
        return {"builder": "tiny_cnn", "kwargs": common}
    if name == "cell":
        return {"builder": "cell_net", "kwargs": {"architecture": DEFAULT_CELL, **common}}
    if name in MODELS:
        from trainables.nets.resnet import default_stem

        return {"builder": "resnet",
                "kwargs": {"name": name, **common, "stem": default_stem(info.spatial_dims)}}
    raise ConfigError(f"unknown model '{model}'; known models: {', '.join(MODELS)}", "model")


def call_builder(build: dict) -> nn.Module:
    """The network of a build recipe (:func:`trainables.builders.build`); a recipe whose builder
    does not resolve is the ``from_zoo`` model's fault (named networks always resolve)."""
    try:
        builder = resolve(build.get("builder") if isinstance(build, dict) else None)
    except UnknownBuilder as exc:
        raise ConfigError(f"cannot build the network from {json.dumps(build, default=str)[:300]}: {exc}",
                          "from_zoo") from None
    return builder(**dict(build.get("kwargs") or {}))


def build_model(net: dict, norm: str = "keep", dropout: float = 0.0, spatial_dims: int = 3) -> nn.Module:
    """The zoo's rebuild recipe of a strategy-trained model: the base network with the
    strategy's structural changes (normalisation, dropout), so its saved weights load."""
    model = call_builder(net)
    replace_norm(model, norm, spatial_dims)
    if dropout > 0:
        insert_dropout(model, dropout)
    return model


def zoo_build(net: dict, strategy: Strategy, spatial_dims: int) -> dict:
    return {"builder": BUILDER, "kwargs": {"net": normalise(net), "norm": strategy.norm, "dropout": strategy.dropout,
                                           "spatial_dims": int(spatial_dims)}}


def objective_keys(objectives) -> list[tuple[str, str, int | None]]:
    """(key, metric, epoch or None for final) of objectives like ``val_acc@10``, ``val_auc@final``."""
    out = []
    for key in objectives:
        metric, _, at = key.partition("@")
        out.append((key, metric, None if at == "final" else int(at)))
    return out


def with_objectives(row: dict, history: list, objectives) -> dict:
    """``row`` plus every ``metric@K`` (value at epoch K, NaN before) and ``metric@final``."""
    row = dict(row)
    for key, metric, at in objective_keys(objectives):
        if at is None:
            row[key] = row[metric]
        else:
            hit = [h[metric] for h in history if h["epoch"] == at]
            row[key] = hit[0] if hit else math.nan
    return row


def build_for_trial(strategy: Strategy, net: dict, info, pretrained: dict | None, seed: int) -> nn.Module:
    torch.manual_seed(seed)  # the initial weights are part of the seeded recipe
    model = call_builder(net)
    return strategy.apply_structure(model, info.spatial_dims, pretrained)


def train_strategy(strategy: Strategy, data, net: dict, fit_options: dict, *, pretrained: dict | None = None,
                   objectives=(), save_state=None, report=None, resume=None, evaluate_test: bool = False,
                   test_every_epoch: bool = False, augment_backend: str = "batched"):
    """Train ``net`` under ``strategy``; returns (model, FitResult). Used by the Tune trials and
    by the benchmarks. ``fit_options``: ``max_epochs``, ``patience`` (0: none), ``select_metric``,
    ``seed``. With ``test_every_epoch`` each row also has the test split's ``test_acc``/``test_auc``
    at that epoch's weights (test@10 vs test@final in the benchmark; never used for selection)."""
    info = data.info
    seed = int(fit_options.get("seed", 0))
    max_epochs = int(fit_options["max_epochs"])
    model = build_for_trial(strategy, net, info, pretrained, seed)
    cfg = FitConfig(max_epochs=max_epochs, patience=int(fit_options.get("patience") or max_epochs),
                    select_metric=fit_options.get("select_metric", "val_acc"), seed=seed,
                    head_bias=fit_options.get("head_bias", "default"),
                    precision=fit_options.get("precision", "auto"), memory_format=fit_options.get("memory_format", "auto"),
                    **strategy.fit_overrides())
    hooks = strategy.fit_hooks(info.spatial_dims, max_epochs, augment_backend)
    test = DeviceSplit(data.images["test"], data.labels["test"], pick_device(cfg.device)) if test_every_epoch else None
    history: list = []

    def extend(row: dict) -> dict:
        history.append(dict(row))
        row = with_objectives(row, history, objectives)
        if test is not None:
            t = evaluate(model, test, info.task, eval_batch_size(cfg.batch_size))  # as fit() evaluates
            row.update(test_acc=t["acc"], test_auc=t["auc"])
        return row

    def on_report(row: dict) -> None:
        if report is not None:
            report(extend(row))

    def on_save(state: dict, row: dict) -> None:
        history[:] = [dict(h) for h in state["history"][:-1]]
        full = extend(row)
        full["finished"] = bool(state["stopped"] or state["epoch"] >= max_epochs)
        save_state(state, full)

    result = fit(model, data, cfg, report=on_report if report is not None else None, evaluate_test=evaluate_test,
                 keep_state=evaluate_test, save_state=on_save if save_state is not None else None,
                 resume_state=resume, **hooks)
    return model, result


class _TuneSave:
    """Each epoch's row and fit-state checkpoint in one ``tune.report``."""

    def __init__(self, base: dict):
        self.base = base

    def __call__(self, state: dict, row: dict) -> None:
        from ray import tune

        with tempfile.TemporaryDirectory() as d:
            save_state_file(state, d)
            tune.report({**self.base, **row}, checkpoint=tune.Checkpoint.from_directory(d))


def strategy_trial(config: dict, data, net: dict, fit_options: dict, objectives=(), pretrained: dict | None = None,
                   retrain: bool = False, augment_backend: str = "batched") -> None:
    """Tune function trainable: ``config`` is a strategy (plus optional ``seed`` and ``label``).

    Search trials report every epoch (with a checkpoint); a retrain trial (``retrain=True``)
    also evaluates the val-selected weights on test and saves them (``model.pt`` +
    ``build.json``) in its final checkpoint. Divergence (NaN loss) is a reported failure.
    """
    from ray import tune

    set_threads_from_ray()
    config = dict(config)
    seed = int(config.pop("seed", fit_options.get("seed", 0)))
    label = config.pop("label", "")
    strategy = Strategy.from_dict(config)
    info = data.info
    base = {"synthetic": bool(info.synthetic), "status": "ok", "reason": "", "label": label}
    try:
        model, result = train_strategy(strategy, data, net, dict(fit_options, seed=seed), pretrained=pretrained,
                                       objectives=objectives, save_state=_TuneSave(base), resume=resume_state(),
                                       evaluate_test=retrain, test_every_epoch=retrain,
                                       augment_backend=augment_backend)
    except NonFiniteLoss as exc:
        tune.report({**base, "status": "failed", "reason": str(exc)[:300], "finished": True,
                     "val_acc": 0.0, "val_auc": 0.0, "best_val_acc": 0.0, "best_val_auc": 0.0,
                     **{k: 0.0 for k in objectives}})
        return
    if not retrain:
        return
    best = result.best
    final = {**base, **result.test, "epoch": result.epochs_run, "best_epoch": result.best_epoch,
             "val_acc": best["val_acc"], "val_auc": best["val_auc"], "best_val_acc": best["val_acc"],
             "best_val_auc": best["val_auc"], "params": count_params(model), "finished": True, "final": True}
    with tempfile.TemporaryDirectory() as d:
        torch.save({k: v.detach().cpu() for k, v in result.state_dict.items()}, os.path.join(d, WEIGHTS_FILE))
        with open(os.path.join(d, BUILD_FILE), "w") as f:
            json.dump(zoo_build(net, strategy, info.spatial_dims), f)
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(d))


def retrain_trial(config: dict, strategies: dict, **kwargs) -> None:
    """Tune function trainable of the retrain stage: ``config['label']`` names one of
    ``strategies`` (``best``, ``default``); trained with test evaluation and saved weights."""
    label = config["label"]
    strategy_trial(dict(strategies[label], label=label, **({"seed": config["seed"]} if "seed" in config else {})),
                   retrain=True, **kwargs)


# ---- memory: each trial's peak RSS before it starts -------------------------------------------------
@dataclass(frozen=True)
class StrategyCost:
    """A strategy trial's peak RSS (bytes) by its normalisation and batch size.

    One :class:`~trainables.memory.BatchEstimate` per normalisation choice of the space: the
    norm decides the activations more than any other structural choice (``none`` keeps about
    half of a ResNet's), so each trial can request what its own strategy needs, and the batch
    checks use the heaviest. ``labels``: the retrain's ``(label, batch_size, norm)`` -- its trial
    config names only a label."""

    by_norm: tuple  # ((norm, BatchEstimate), ...)
    labels: tuple = ()

    def __call__(self, batch_size: int, norm: str | None = None) -> int:
        estimates = dict(self.by_norm)
        if norm in estimates:
            return estimates[norm](batch_size)
        return max(e(batch_size) for e in estimates.values())

    def for_labels(self, strategies: dict) -> "StrategyCost":
        """The retrain's pricing: ``strategies`` maps each label to the strategy it trains."""
        return replace(self, labels=tuple((label, int(s["batch_size"]), s.get("norm"))
                                          for label, s in strategies.items()))

    def request(self, config: dict) -> int:
        """Bytes a trial of ``config`` requests (a strategy, or a retrain's ``{"label": ...}``)."""
        for label, batch, norm in self.labels:
            if config.get("label") == label:
                return self(batch, norm)
        return self(int(config["batch_size"]), config.get("norm"))


def _largest(spec) -> float:
    """The largest value a space option (:func:`trainables.strategy.parse_space`) can take."""
    return float(max(spec[1])) if spec[0] == "choice" else float(spec[2])


# What a strategy trial holds beyond the shared model (its own imports, the batched augmentation's
# buffers): measured 52 MiB above it for the tiny CNN at batch 32 on BreastMNIST
# (benchmarks/memory_estimate.py --cases strategy), with margin.
STRATEGY_EXTRA_BYTES = 128 * 2**20


def memory_cost(data, net: dict, space: dict, pretrained: dict | None = None, retrain: bool = False) -> StrategyCost:
    """:class:`StrategyCost` of a trial of :func:`strategy_trial` on ``data``, simulated on the
    meta device (:func:`trainables.memory.batch_estimate`; nothing is computed or allocated).

    Modelled as the trial runs: the network built from ``net`` as trials build it, with each
    normalisation choice of ``space`` (:func:`~trainables.strategy.replace_norm`) and, when the
    space allows any, dropout before the classifier (its mask is the only activation it adds);
    Adam's two moments (the heaviest optimizer: SGD keeps one buffer, RMSprop two), fit's
    best-epoch copy and the per-epoch checkpoint's copies; one more parameter-sized buffer when
    L1 can be on (the penalty's per-weight terms and their gradients); evaluation at fit's batch
    (:func:`~trainables.fit.eval_batch_size`: up to 256, at most twice the training batch; the
    retrain's per-epoch test evaluation uses it too); the data the trial holds
    (:func:`~trainables.memory.held_bytes`) plus the ``pretrained`` weights every trial receives;
    a ``retrain`` trial evaluates the test split every epoch and once more at the end (a second
    float copy of it). Initialisation, learning rate, schedule and augmentation (a few
    input-sized tensors before the forward, far below the step's activations) do not change the
    peak. A norm the network cannot train with on this data (instance norm on a 1x1 map) is left
    out: its trials fail on their own."""
    from trainables.fit import FLOAT_PRELOAD_BYTES
    from trainables.memory import EVAL_BATCH, batch_estimate, held_bytes

    info = data.info
    shape = tuple(int(v) for v in info.input_shape)
    held = STRATEGY_EXTRA_BYTES + held_bytes(data) + sum(int(v.numel() * v.element_size())
                                                        for v in (pretrained or {}).values()
                                                        if isinstance(v, torch.Tensor))
    test = data.images.get("test")
    if retrain and test is not None and test.dtype.kind == "u" and 4 * test.size <= FLOAT_PRELOAD_BYTES:
        held += 4 * int(test.size)
    n_eval = max([len(data.labels[s]) for s in ("val", "test") if s in data.labels] or [EVAL_BATCH])
    dropout, l1 = _largest(space["dropout"]), _largest(space["l1"]) > 0
    by_norm, failures = [], []
    for norm in dict.fromkeys(space["norm"][1]):
        with torch.device("meta"):
            model = call_builder(net)
            replace_norm(model, norm, info.spatial_dims)
            if dropout > 0 and any(isinstance(m, nn.Linear) for m in model.modules()):
                insert_dropout(model, dropout)
        try:
            by_norm.append((norm, batch_estimate(model, shape, held, eval_batch=min(EVAL_BATCH, n_eval),
                                                 checkpoint=True, extra_parameter_copies=int(l1))))
        except (RuntimeError, ValueError) as exc:
            failures.append(f"norm '{norm}': {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    if not by_norm:
        raise ConfigError(f"the network cannot train on {tuple(shape)} inputs with any normalisation of the space "
                          f"({failures[0]})", "model")
    return StrategyCost(tuple(by_norm))


@dataclass(frozen=True)
class StrategyMemory(TrialMemory):
    """A stage's memory plan when each trial trains at its own strategy's batch size.

    ``batches``: every batch its trials may train at; ``dropped``: the space's choices that fit
    no node (left out of the space); ``cost``: what each trial requests
    (:meth:`StrategyCost.request`); ``bytes``: the largest request, at the heaviest
    normalisation. ``batch_size`` / ``requested_batch``: the search's largest batch that fits /
    the space's largest; the retrain's default recipe at the batch it gets / at --batch-size."""

    batches: tuple = ()
    dropped: tuple = ()
    cost: object = field(default=None, compare=False, repr=False)

    @property
    def lowered(self) -> bool:
        return bool(self.dropped) or super().lowered

    def to_dict(self) -> dict:
        gb = {str(b): round(self.cost(b) / 2**30, 2) for b in self.batches} if self.cost is not None else {}
        return {**super().to_dict(), "batches": list(self.batches), "dropped_batches": list(self.dropped),
                "gb_by_batch": gb, "per_trial": True}

    def describe(self) -> str:
        low = self.cost(self.batches[0]) if self.cost is not None and self.batches else self.bytes
        span = f"batch {self.batches[0]}-{self.batches[-1]}" if len(self.batches) > 1 else f"batch {self.batch_size}"
        text = f"{self.what}: {low / 2**30:.1f}-{self.bytes / 2**30:.1f} GB per trial at {span}, each its own request"
        if self.dropped:
            return text + f" (batch {', '.join(map(str, self.dropped))} dropped from the space to fit)"
        if super().lowered:
            return text + (f" (the default recipe's batch lowered from {self.requested_batch} to {self.batch_size} "
                           "to fit)")
        return text
