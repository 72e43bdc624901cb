"""Initialisers keep the statistics they promise; every strategy option changes what it should."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from medcore.errors import ConfigError
from orchestrator.config import StrategySearchConfig
from trainables.fit import FitConfig, StepContext, fit
from trainables.initializers import INITIALIZERS, apply_init
from trainables.nets.tiny_cnn import TinyCNN
from trainables.strategy import (POLICIES, RegularisedStep, Strategy, l1_penalty, lr_factor, make_augment,
                                 parse_space)
from trainables.strategy_trial import build_model, network_build, train_strategy

FAN_IN, FAN_OUT = 256, 512  # a (512, 256) weight


def weight():
    torch.manual_seed(0)
    return torch.empty(FAN_OUT, FAN_IN)


@pytest.mark.parametrize("name,std", [
    ("kaiming_normal", math.sqrt(2 / FAN_IN)), ("xavier_normal", math.sqrt(2 / (FAN_IN + FAN_OUT))),
    ("lecun_normal", math.sqrt(1 / FAN_IN)), ("random_normal", 0.05)])
def test_normal_initialisers_have_their_std(name, std):
    w = INITIALIZERS[name](weight())
    assert abs(float(w.mean())) < 0.02 * std * 10 and float(w.std()) == pytest.approx(std, rel=0.03)


@pytest.mark.parametrize("name,bound", [
    ("kaiming_uniform", math.sqrt(6 / FAN_IN)), ("xavier_uniform", math.sqrt(6 / (FAN_IN + FAN_OUT))),
    ("lecun_uniform", math.sqrt(3 / FAN_IN)), ("random_uniform", 0.05)])
def test_uniform_initialisers_fill_their_bounds(name, bound):
    w = INITIALIZERS[name](weight())
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.99 * bound
    assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.03)  # U(-b, b) has std b/sqrt(3)


def test_truncated_normal_is_cut_at_two_sigma():
    w = INITIALIZERS["truncated_normal"](weight())
    assert float(w.abs().max()) <= 0.1 and float(w.abs().max()) > 0.095
    # N(0, s) truncated to +-2s has std 0.880 s
    assert float(w.std()) == pytest.approx(0.05 * 0.8796, rel=0.03)


def test_orthogonal_and_identity():
    w = INITIALIZERS["orthogonal"](weight())
    assert torch.allclose(w.T @ w, torch.eye(FAN_IN), atol=1e-4)  # orthonormal columns (512 x 256)
    sq = INITIALIZERS["identity"](torch.empty(16, 16))
    assert torch.equal(sq, torch.eye(16))
    conv = nn.Conv2d(8, 8, 3, padding=1)
    INITIALIZERS["identity"](conv.weight)
    x = torch.randn(2, 8, 5, 5)
    nn.init.zeros_(conv.bias)
    assert torch.allclose(conv(x), x, atol=1e-6)  # the dirac kernel is the identity map
    with pytest.raises(ValueError, match="as many outputs as inputs"):
        INITIALIZERS["identity"](torch.empty(4, 8))


def test_apply_init_fills_conv_and_linear_zeroes_biases_and_falls_back_where_identity_cannot():
    net = TinyCNN(1, 2, spatial_dims=2)
    counts = apply_init(net, "identity")
    assert counts == {"initialised": 0, "fallback": 4}  # no layer of TinyCNN has as many outputs as inputs
    counts = apply_init(net, "xavier_uniform")
    assert counts["initialised"] == 4 and float(net.head.bias.detach().abs().sum()) == 0
    bn = net.features[1]
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))
    with pytest.raises(ConfigError, match="unknown initialisation 'he'"):
        apply_init(net, "he")


def test_norm_replacement_and_dropout_before_the_classifier():
    for kind, cls in (("instance", nn.InstanceNorm3d), ("group", nn.GroupNorm), ("none", nn.Identity)):
        net = Strategy(norm=kind, dropout=0.3).apply_structure(TinyCNN(1, 2, spatial_dims=3), 3)
        assert not any(isinstance(m, nn.BatchNorm3d) for m in net.modules())
        assert isinstance(net.features[1], cls)
        assert isinstance(net.head, nn.Sequential) and isinstance(net.head[0], nn.Dropout) and net.head[0].p == 0.3
        assert net(torch.rand(2, 1, 8, 8, 8)).shape == (2, 2)
    kept = Strategy().apply_structure(TinyCNN(1, 2, spatial_dims=2), 2)
    assert isinstance(kept.features[1], nn.BatchNorm2d) and isinstance(kept.head, nn.Linear)
    # the zoo recipe rebuilds the changed structure, so saved weights load
    info = type("I", (), {"n_channels": 1, "n_outputs": 2, "spatial_dims": 2})()
    rebuilt = build_model(network_build("tiny_cnn", info), norm="group", dropout=0.2, spatial_dims=2)
    trained = Strategy(norm="group", dropout=0.2).apply_structure(TinyCNN(1, 2, spatial_dims=2), 2)
    rebuilt.load_state_dict(trained.state_dict())


def test_pretrained_loads_weights_before_dropout_and_refuses_weights_that_do_not_fit():
    source = TinyCNN(1, 2, spatial_dims=2)
    net = Strategy(init="pretrained", dropout=0.5).apply_structure(TinyCNN(1, 2, spatial_dims=2), 2,
                                                                   pretrained=source.state_dict())
    assert torch.equal(net.head[1].weight, source.head.weight)
    with pytest.raises(ConfigError, match="do not fit the network"):
        Strategy(init="pretrained").apply_structure(TinyCNN(1, 3, spatial_dims=2), 2, pretrained=source.state_dict())
    with pytest.raises(ConfigError, match="needs weights"):
        Strategy(init="pretrained").apply_structure(TinyCNN(1, 2, spatial_dims=2), 2)


def _ctx(model, opt):
    return StepContext(model=model, optimizer=opt, scaler=torch.amp.GradScaler("cpu", enabled=False),
                       task=__import__("trainables.tasks", fromlist=["make_task"]).make_task("binary-class"),
                       cfg=FitConfig(), device=torch.device("cpu"), amp=False, channels_last=False, epoch=1)


def test_l1_term_is_in_the_loss_and_l2_is_weight_decay():
    torch.manual_seed(0)
    net = TinyCNN(1, 1, spatial_dims=2)
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 2, (4, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    ctx = _ctx(net, opt)
    plain = float(RegularisedStep(0.0).loss(net, x, y, ctx))
    with_l1 = float(RegularisedStep(1e-2).loss(net, x, y, ctx))
    assert with_l1 == pytest.approx(plain + 1e-2 * float(l1_penalty(net)), rel=1e-5)
    hooks = Strategy(optimizer="adamw", l2=1e-3).fit_hooks(2, 5)
    built = hooks["optimizer_factory"](net.parameters(), FitConfig(lr=0.01))
    assert isinstance(built, torch.optim.AdamW) and built.param_groups[0]["weight_decay"] == 1e-3


def test_schedules():
    assert [lr_factor("none", e, 10) for e in (1, 10)] == [1.0, 1.0]
    assert lr_factor("cosine", 1, 10) == 1.0 and lr_factor("cosine", 6, 10) == pytest.approx(0.5)
    assert [lr_factor("step", e, 10) for e in (5, 6, 8)] == pytest.approx([1.0, 0.1, 0.01])


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("backend", ["batched", "loop"])
def test_augmentation_changes_inputs_not_labels(dims, backend):
    x, y = torch.rand(4, 1, *(12,) * dims), torch.tensor([[0], [1], [0], [1]])
    for policy in POLICIES:
        aug = make_augment(policy, dims, backend)
        if aug is None:
            assert policy == "none"
            continue
        xo, yo = aug(x, y, torch.Generator().manual_seed(0))
        assert xo.shape == x.shape and torch.equal(yo, y) and not torch.equal(xo, x), policy


def test_augmentation_only_in_training():
    """fit augments train batches only: evaluation sees the untouched inputs."""
    from orchestrator.data import load_sample

    data = load_sample().low_fidelity(0.03, 0).subset("test", 0.05, 0)
    calls = {"n": 0}
    seen_eval = []

    class Spy(TinyCNN):
        def forward(self, x):
            if not self.training:
                seen_eval.append(x.detach().clone())
            return super().forward(x)

    def augment(x, y, g):
        calls["n"] += 1
        return x + 1.0, y  # an unmistakable shift

    net = Spy(1, 1, spatial_dims=3)
    fit(net, data, FitConfig(max_epochs=1, batch_size=64), augment=augment)
    assert calls["n"] > 0 and seen_eval and all(float(x.max()) <= 1.0 for x in seen_eval)


def test_a_strategy_trains_end_to_end_without_ray():
    from orchestrator.data import load_sample

    data = load_sample().low_fidelity(0.03, 0).subset("test", 0.05, 0)
    rows = []
    s = Strategy(init="orthogonal", norm="group", dropout=0.2, l1=1e-5, l2=1e-4, optimizer="sgd", lr=0.01,
                 schedule="cosine", batch_size=16, augment="full")
    _, result = train_strategy(s, data, network_build("tiny_cnn", data.info), {"max_epochs": 2, "seed": 0},
                               objectives=["val_acc@1", "val_acc@final"], report=rows.append, evaluate_test=True,
                               test_every_epoch=True)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["val_acc@1"] == rows[0]["val_acc"]
    assert rows[1]["val_acc@final"] == rows[1]["val_acc"] and 0 <= result.test["test_auc"] <= 1
    assert all("test_auc" in r for r in rows)


@pytest.mark.parametrize("strategy,message", [
    ({"init": "he"}, "init: unknown init 'he'"),
    ({"norm": "layer"}, "norm: unknown norm 'layer'"),
    ({"dropout": 1.0}, "dropout: dropout must be in [0, 1), got 1.0"),
    ({"l1": -1e-3}, "l1: l1 must be a finite number >= 0"),
    ({"lr": 0}, "lr: lr must be > 0"),
    ({"optimizer": "lbfgs"}, "optimizer: unknown optimizer 'lbfgs'"),
    ({"augment": "mixup"}, "augment: unknown augment 'mixup'"),
    ({"momentum": 0.9}, "momentum: unknown strategy option 'momentum'"),
])
def test_bad_strategies_give_one_line_errors(strategy, message):
    with pytest.raises(ConfigError) as err:
        Strategy.from_dict(strategy)
    assert message in err.value.render() and "\n" not in err.value.render()


@pytest.mark.parametrize("kwargs,message", [
    ({"space": '{"norm": ["layer"]}'}, "space: unknown norm 'layer'"),
    ({"space": '{"momentum": [0.9]}'}, "space: unknown option 'momentum'"),
    ({"space": '{"lr": {"low": 0.1, "high": 0.01}}'}, "space: lr: need low < high"),
    ({"space": '{"init": ["pretrained"]}'}, "space: init 'pretrained' needs weights"),
    ({"space": "{not json"}, "space: not valid JSON"),
    ({"objectives": "val_acc@10"}, "objectives: give two different objectives"),
    ({"objectives": "val_acc@50,val_acc@final"}, "objectives: 'val_acc@50': the epoch must be 'final' or 1..20"),
    ({"objectives": "val_f1@10,val_acc@final"}, "objectives: 'val_f1@10' is not metric@epoch"),
    ({"model": "vgg16"}, "model: unknown model 'vgg16'"),
    ({"reduction_factor": 1}, "reduction_factor: must be >= 2"),
])
def test_bad_search_configs_give_one_line_errors(kwargs, message):
    with pytest.raises(ConfigError) as err:
        StrategySearchConfig(**kwargs).validate()
    assert message in err.value.render()


def test_space_overrides():
    space = parse_space('{"norm": ["batch", "group"], "lr": {"low": 0.001, "high": 0.01}}')
    assert space["norm"] == ("choice", ("batch", "group")) and space["lr"] == ("float", 0.001, 0.01, True, None)
    assert "pretrained" in parse_space(None, pretrained_available=True)["init"][1]
    assert np.isfinite(lr_factor("cosine", 3, 3))
