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
"""
from __future__ import annotations

import importlib
import json
import math
import os
import tempfile

import torch
from torch import nn

from medcore.errors import ConfigError
from trainables.checkpointing import resume_state, save_state_file
from trainables.complexity import count_params
from trainables.fit import DeviceSplit, FitConfig, NonFiniteLoss, evaluate, fit, pick_device, set_threads_from_ray
from trainables.strategy import Strategy, insert_dropout, replace_norm

MODELS = ("tiny_cnn", "cell", "resnet10", "resnet18", "resnet34", "resnet50")
BUILDER = "trainables.strategy_trial:build_model"
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
        return {"builder": "trainables.nets.tiny_cnn:TinyCNN", "kwargs": common}
    if name == "cell":
        return {"builder": "trainables.ode_trial:build_network", "kwargs": {"architecture": DEFAULT_CELL, **common}}
    if name in MODELS:
        from trainables.nets.resnet import default_stem

        return {"builder": "trainables.nets.resnet:build_resnet",
                "kwargs": {"name": name, **common, "stem": default_stem(info.spatial_dims)}}
    raise ConfigError(f"unknown model '{model}'; known models: {', '.join(MODELS)}", "model")


def call_builder(build: dict) -> nn.Module:
    try:
        module, function = build["builder"].split(":")
        builder = getattr(importlib.import_module(module), function)
    except (KeyError, ValueError, AttributeError, ImportError) as exc:
        raise ConfigError(f"cannot build the network from {json.dumps(build)}: {exc}", "from_zoo") from None
    return builder(**build.get("kwargs", {}))


def build_model(net: dict, norm: str = "keep", dropout: float = 0.0, spatial_dims: int = 3) -> nn.Module:
    """The zoo's rebuild recipe of a strategy-trained model: the base network with the
    strategy's structural changes (normalisation, dropout), so its saved weights load."""
    model = call_builder(net)
    replace_norm(model, norm, spatial_dims)
    if dropout > 0:
        insert_dropout(model, dropout)
    return model


def zoo_build(net: dict, strategy: Strategy, spatial_dims: int) -> dict:
    return {"builder": BUILDER, "kwargs": {"net": net, "norm": strategy.norm, "dropout": strategy.dropout,
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
                    **strategy.fit_overrides())
    hooks = strategy.fit_hooks(info.spatial_dims, max_epochs, augment_backend)
    test = DeviceSplit(data.images["test"], data.labels["test"], pick_device(cfg.device)) if test_every_epoch else None
    history: list = []

    def extend(row: dict) -> dict:
        history.append(dict(row))
        row = with_objectives(row, history, objectives)
        if test is not None:
            t = evaluate(model, test, info.task)
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
