"""The OFA supernet (MedNNS A.1): extraction equals the supernet, strict fairness, importance
re-ordering, N-D BatchNorm recalibration, zoo rows and fine-tuning (fast tier, no Ray)."""
import collections

import numpy as np
import pytest
import torch

from medcore.errors import ConfigError
from orchestrator.data import load_medmnist, make_synthetic
from trainables.fit import FitConfig, fit
from trainables.nets.ofa_resnet import OFAResNet, OFASpace, SubnetConfig, build_subnet, load_supernet, save_supernet
from trainables.supernet_trial import (FairSampler, FairStep, evaluate_subnets, recalibrate_bn, run_candidates,
                                       sample_distinct)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_synthetic("breastmnist", root, n_samples=(48, 16, 16), seed=1)
    return load_medmnist("breastmnist", 28, root)


def _perturb_bn(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)


@pytest.mark.parametrize("spatial_dims,size", [(2, 28), (2, 64), (3, 28)])
def test_extracted_subnet_equals_supernet_forward(spatial_dims, size):
    torch.manual_seed(0)
    net = OFAResNet(spatial_dims, 2, 3, size)
    _perturb_bn(net)
    net.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, *(size,) * spatial_dims)
    space = net.space
    for config in [space.largest(), space.smallest(), space.sample(g), space.sample(g).canonical()]:
        sub = net.extract(config).eval()
        torch.testing.assert_close(sub(x), net(x, config), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sub.features(x), net.features(x, config), rtol=1e-5, atol=1e-5)
    # a smaller subnet really is smaller, and a config outside the space is refused
    assert sum(p.numel() for p in net.extract(space.smallest()).parameters()) < \
        sum(p.numel() for p in net.extract(space.largest()).parameters())
    bad = SubnetConfig(space.largest().depths, space.largest().expands, (0.5, 1.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match="width 0.5 of stage 0 is not one of"):
        net.extract(bad)


def test_strict_fairness_every_choice_once_per_group():
    space = OFASpace()
    sampler = FairSampler(space, seed=3)
    assert sampler.m == 3
    slots = space.slots()
    for _ in range(20):
        group = sampler.paths(6)  # two groups of m = 3 paths
        assert len(group) == 6
        for half in (group[:3], group[3:]):
            values = [list(c.depths) + [e for row in c.expands for e in row] + list(c.widths) for c in half]
            for j, (*_, choices) in enumerate(slots):
                assert sorted(v[j] for v in values) == sorted(choices)
    with pytest.raises(ConfigError, match="multiple of 3, got 4"):
        sampler.paths(4)
    sandwich = FairSampler(space, seed=0, sandwich=True).paths(4)
    assert sandwich[0] == space.largest() and sandwich[1] == space.smallest() and len(sandwich) == 4


def test_reorganize_keeps_function_and_sorts_by_importance():
    torch.manual_seed(0)
    net = OFAResNet(2, 1, 2, 28)
    _perturb_bn(net)
    net.eval()
    x = torch.randn(3, 1, 28, 28)
    before = net(x)
    net.reorganize()
    torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-5)
    w = net.stages[1][0].conv3.weight
    importance = w.abs().sum(dim=(0, 2, 3))
    assert torch.all(importance[:-1] >= importance[1:])


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_bn_recalibration_gives_the_subset_statistics(spatial_dims):
    torch.manual_seed(0)
    net = OFAResNet(spatial_dims, 1, 2, 28)
    config = net.space.smallest()
    net.set_active(config)
    images = np.random.default_rng(0).integers(0, 256, size=(12, 1) + (28,) * spatial_dims, dtype=np.uint8)
    untouched = net.stem_bn.running_mean.clone()
    before_tail = net.stages[0][0].bn3.running_mean[-1].item()
    recalibrate_bn(net, images, batch_size=64)
    x = torch.from_numpy(images).float() / 255
    stem_out = net.stem(x, 24)
    dims = [0, *range(2, stem_out.dim())]
    torch.testing.assert_close(net.stem_bn.running_mean, stem_out.mean(dims), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net.stem_bn.running_var, stem_out.var(dims, unbiased=True), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(untouched, net.stem_bn.running_mean)
    # a deeper BN: the statistics of its input in a train-mode pass over the whole subset
    captured = {}
    bn = net.stages[1][0].bn2
    h = bn.register_forward_pre_hook(lambda m, inp: captured.setdefault("x", inp[0].detach().clone()))
    net.train()
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    net(x)
    net.load_state_dict(saved)
    h.remove()
    c = captured["x"].shape[1]
    torch.testing.assert_close(bn.running_mean[:c], captured["x"].mean(dims), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var[:c], captured["x"].var(dims, unbiased=True), rtol=1e-4, atol=1e-5)
    # channels the subnet does not use keep their statistics
    assert net.stages[0][0].bn3.running_mean[-1].item() == before_tail


def test_supernet_training_zoo_rows_and_finetune(tiny, tmp_path):
    net = OFAResNet(2, 1, 1, 28)
    step = FairStep(net.space, paths=3, full_epochs=1, seed=0)
    with pytest.raises(ConfigError, match="multiple of 3"):
        FairStep(net.space, paths=2)
    counts = collections.Counter()
    original = step.sampler.paths

    def counting(n):
        group = original(n)
        counts.update(c.widths[0] for c in group)
        return group

    step.sampler.paths = counting
    r = fit(net, tiny, FitConfig(max_epochs=2, batch_size=16, patience=2), train_step=step)
    assert r.epochs_run == 2 and step.reorganized and np.isfinite(r.history[-1]["train_loss"])
    assert counts and len(set(counts.values())) == 1  # every width used equally often
    save_supernet(net, tmp_path)
    configs = sample_distinct(net.space, 4, seed=0)
    assert len({tuple(c.encoding()) for c in configs}) == 4
    rows = evaluate_subnets(load_supernet(tmp_path), tiny, configs, bn_images=tiny.images["train"][:32])
    assert len(rows) == 4
    for row in rows:
        assert len(row["encoding"]) == 20 and len(row["functional"]) == 256
        assert 0 <= row["val_acc"] <= 1 and 0 <= row["test_acc"] <= 1 and row["params"] > 0 and row["flops"] > 0
        # the zoo's build record rebuilds the subnet with inherited weights
        sub = build_subnet(row["config"], 2, 1, 1, supernet=str(tmp_path))
        assert sum(p.numel() for p in sub.parameters()) == row["params"]
    # the functional encoding differs between subnets (it sees the weights)
    assert rows[0]["functional"] != rows[1]["functional"]
    kwargs = {"spatial_dims": 2, "in_channels": 1, "n_outputs": 1, "size": 28}
    candidates = [{"builder": "trainables.nets.ofa_resnet:build_subnet",
                   "kwargs": {**kwargs, "config": rows[i]["config"], "supernet": str(tmp_path)}} for i in range(2)]
    out = run_candidates(candidates, tiny, {"epochs": 2, "report_epochs": [1, 2], "batch_size": 16})
    assert out["chosen"] in (0, 1) and len(out["first_epoch_val_acc"]) == 2 and len(out["test_acc_curve"]) == 2
    assert set(out["acc_at"]) == {"1", "2"} and out["acc_at"]["2"] == out["test_acc_curve"][1]


@pytest.mark.parametrize("cut", ["stages", "blocks"])
def test_a_config_that_does_not_fit_the_slots_is_one_config_error(cut):
    """Too few slot values (a 2-stage config against the 4-stage space) is refused in one line,
    not a RuntimeError from a generator that ran out."""
    space = OFASpace()
    largest = space.largest()
    if cut == "stages":
        config = SubnetConfig(largest.depths[:2], largest.expands[:2], largest.widths[:2])
    else:
        config = SubnetConfig(largest.depths, (largest.expands[0][:-1],) + largest.expands[1:], largest.widths)
    with pytest.raises(ConfigError, match="does not fit the supernet's slots"):
        space.check(config)
    assert space.check(largest) == largest
