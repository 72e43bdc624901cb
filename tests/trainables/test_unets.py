"""SkipUNet backbones, skip modules on a frozen U-Net, the two baselines, the Stage I and
skip-module trainables (fast tier without Ray; one Tuner run in the ray tier)."""
import numpy as np
import pytest
import torch
from torch import nn

from medcore.errors import ConfigError
from trainables.nets.skip_baselines import BASELINES, AttentionGateSkip, NestedDenseSkip
from trainables.nets.unets import BACKBONES, build_unet, rebuild_unet

TINY = {"unet": {"features": (4, 4, 8, 8, 16, 4)}, "resnet": {"decoder_channels": (16, 8, 8, 4, 4)},
        "efficientnet": {"decoder_channels": (16, 8, 8, 4, 4)}}


@pytest.fixture(scope="module")
def seg():
    from orchestrator.segmentation_data import load_segmentation

    return load_segmentation("synthetic", 32, 2, max_cases=4, seed=0)


def tiny(backbone, dims=2, seed=0):
    torch.manual_seed(seed)
    return build_unet(backbone, dims, 1, 1, **TINY[backbone])


class Keep(nn.Module):
    """A skip module that hands the encoder features back unchanged."""

    def forward(self, x_enc, x_dec_up, encoder_features=None):
        return x_enc


class Zero(nn.Module):
    def forward(self, x_enc, x_dec_up, encoder_features=None):
        return torch.zeros_like(x_enc)


@pytest.mark.parametrize("backbone,dims", [("unet", 2), ("unet", 3), ("resnet", 2), ("efficientnet", 2)])
def test_skip_unet_without_skips_equals_the_plain_network(backbone, dims):
    m = tiny(backbone, dims).eval()
    x = torch.randn((2, 1) + (32,) * dims)
    with torch.no_grad():
        plain = m.net(x)
        assert torch.equal(m(x), plain) and plain.shape == x.shape
        m.set_skips([Keep() for _ in m.skip_channels()])
        assert torch.equal(m(x), plain)
        m.set_skips([Zero() for _ in m.skip_channels()])
        assert not torch.allclose(m(x), plain)
        m.set_skips(None)
        assert torch.equal(m(x), plain)
    rebuilt = rebuild_unet(m.build)
    rebuilt.load_state_dict(m.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), plain)


def test_skip_channels_match_the_tensors_each_module_sees():
    for backbone in BACKBONES:
        m = tiny(backbone).eval()
        seen = []

        class Probe(nn.Module):
            def forward(self, x_enc, x_dec_up, encoder_features=None):
                seen.append((x_enc.shape[1], x_dec_up.shape[1], x_enc.shape[2:] == x_dec_up.shape[2:],
                             [f.shape[1] for f in encoder_features]))
                return x_enc

        m.set_skips([Probe() for _ in m.skip_channels()])
        with torch.no_grad():
            m(torch.randn(1, 1, 32, 32))
        channels = m.skip_channels()
        assert [(a, b) for a, b, _, _ in reversed(seen)] == channels  # decoder visits deepest first
        assert all(same for _, _, same, _ in seen) and seen[0][3] == [c for c, _ in channels]


def test_unknown_backbone_and_wrong_module_count():
    with pytest.raises(ConfigError, match="unknown backbone 'vgg'.*unet, resnet, efficientnet"):
        build_unet("vgg", 2, 1, 1)
    with pytest.raises(ConfigError, match="unknown resnet encoder 'resnet7'.*resnet10"):
        build_unet("resnet", 2, 1, 1, encoder="resnet7")
    m = tiny("unet")
    with pytest.raises(ConfigError, match="4 skip levels, got 2"):
        m.set_skips([Keep(), Keep()])


def test_freeze_fixes_unet_weights_and_batchnorm_but_not_the_skips():
    m = tiny("resnet")
    m.set_skips(m.make_skips(AttentionGateSkip))
    m.freeze().train()
    assert not any(p.requires_grad for p in m.net.parameters())
    assert all(p.requires_grad for p in m.skips.parameters())
    bns = [b for b in m.net.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)]
    assert bns and not any(b.training for b in bns) and all(s.training for s in m.skips)
    before = {k: v.clone() for k, v in m.net.state_dict().items()}
    m(torch.randn(4, 1, 32, 32)).mean().backward()  # a training-mode pass leaves BN statistics alone
    assert all(torch.equal(before[k], v) for k, v in m.net.state_dict().items())


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("cls", [AttentionGateSkip, NestedDenseSkip])
def test_baselines_keep_the_encoder_shape(cls, dims):
    m = tiny("unet", dims).freeze()
    x = torch.randn((2, 1) + (32,) * dims)  # 4 poolings: instance norm needs > 1 element at the bottom
    m.set_skips(m.make_skips(cls))
    assert m(x).shape == x.shape
    feats, _ = m._encode(x)
    for level, (c_enc, c_dec) in enumerate(m.skip_channels()):
        module = cls(level, m.skip_channels(), dims)
        up = torch.randn((2, c_dec) + feats[level].shape[2:])
        out = module(feats[level], up, encoder_features=feats)
        assert out.shape == feats[level].shape
        assert sum(p.numel() for p in module.parameters()) > 0


def test_nested_dense_uses_deeper_encoder_levels():
    channels = [(4, 4), (8, 8), (16, 16)]
    torch.manual_seed(0)
    shallow, deepest = NestedDenseSkip(0, channels, 2), NestedDenseSkip(2, channels, 2)
    assert shallow.depth == 2 and set(shallow.nodes) == {"0_1", "0_2", "1_1"} and deepest.depth == 0
    feats = [torch.randn(1, 4, 8, 8), torch.randn(1, 8, 4, 4), torch.randn(1, 16, 2, 2)]
    out = shallow(feats[0], torch.randn(1, 4, 8, 8), encoder_features=feats)
    moved = shallow(feats[0], torch.randn(1, 4, 8, 8), encoder_features=[feats[0], feats[1], feats[2] + 1])
    assert out.shape == feats[0].shape and not torch.allclose(out, moved)  # level 2 reaches level 0


def test_stage1_and_skip_training_keep_the_frozen_unet_bit_identical_and_resume(seg):
    from trainables.unet_trial import UNetCheckpoint, fit_skips, fit_unet, skip_unet

    recipe = {"epochs": 2, "lr": 1e-3, "batch_size": 8, "seed": 0}
    m = tiny("resnet")
    r = fit_unet(m, seg, recipe)
    assert [h["epoch"] for h in r.history] == [1, 2] and 0 <= r.best["val_dice"] <= 1
    unet = UNetCheckpoint(build=m.build, state={k: v.clone() for k, v in m.unet_state_dict().items()},
                          meta={"metrics": {"best_val_dice": r.best["val_dice"]}})
    c = {**recipe, "epochs": 3}
    straight = skip_unet(unet, BASELINES["attention"], seed=1)
    skips0 = {k: v.clone() for k, v in straight.skips.state_dict().items()}
    states = []
    res = fit_skips(straight, seg, c, save_state=lambda s, row: states.append(s))
    assert all(torch.equal(unet.state[k], v) for k, v in straight.unet_state_dict().items())
    assert any(not torch.equal(skips0[k], v) for k, v in straight.skips.state_dict().items())
    # a trial killed after epoch 1 continues to the same weights
    resumed = skip_unet(unet, BASELINES["attention"], seed=1)
    again = fit_skips(resumed, seg, c, resume=states[0])
    assert again.history == res.history
    assert all(torch.equal(v, res.state_dict[k]) for k, v in again.state_dict.items())
    with pytest.raises(ConfigError, match="frozen"):
        fit_skips(unet.model(), seg, c)


def test_tiny_stage1_and_baselines_under_tune(ray_local, seg, tmp_path):
    from ray import tune

    from trainables.unet_trial import SKIPS_FILE, load_unet, train_skips, train_unet

    from tests.tune_results import CollectResults

    collect = CollectResults()
    stage1 = tune.Tuner(
        tune.with_resources(tune.with_parameters(train_unet, data=seg), {"cpu": 1}),
        param_space={"backbone": "unet", "epochs": 2, "batch_size": 8, "unet_kwargs": TINY["unet"]},
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="stage1", verbose=0, callbacks=[collect]),
    ).fit()
    assert not stage1.errors
    final = stage1[0].metrics
    assert final["final"] is True and final["synthetic"] is True and final["test_split"] == "val_dt"
    assert final["test_dice"] == pytest.approx(final["best_val_dice"], abs=1e-6)
    unet = load_unet(stage1[0].checkpoint)
    assert unet.build["backbone"] == "unet" and unet.meta["dataset"]["synthetic"] is True
    epochs = [r for r in collect.rows if not r["final"]]
    assert [r["epoch"] for r in epochs] == [1, 2] and all("val_dice" in r for r in epochs)
    assert final["best_val_dice"] == max(r["val_dice"] for r in epochs)

    grid = tune.Tuner(
        tune.with_resources(tune.with_parameters(train_skips, data=seg, unet_state=unet), {"cpu": 1}),
        param_space={"skip": tune.grid_search(["attention", "nested"]), "epochs": 2},
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="skips", verbose=0),
    ).fit()
    assert not grid.errors and len(grid) == 2
    for result in grid:
        m = result.metrics
        assert m["final"] and m["synthetic"] and m["skip"] in BASELINES and m["skip_params"] > 0
        assert m["baseline_dice"] == pytest.approx(final["best_val_dice"])
        assert m["dice_gain"] == pytest.approx(m["val_dice"] - m["baseline_dice"])
        state = torch.load(f"{result.checkpoint.path}/{SKIPS_FILE}", weights_only=True)
        net = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
        assert net.keys() == unet.state.keys() and all(torch.equal(unet.state[k], v) for k, v in net.items())
        assert any(k.startswith("skips.") for k in state)
    assert np.isfinite(grid.get_best_result("val_dice", "max").metrics["val_dice"])
