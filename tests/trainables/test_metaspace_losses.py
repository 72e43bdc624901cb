"""The meta-space losses against their equations on hand-computed examples (MedNNS eqs. 3-4,
TANS-style contrastive), the Frechet distance on known Gaussians, and the named fallback
feature extractor when pytorch-fid / torchvision / the Inception weights are unavailable."""
from __future__ import annotations

import builtins
import math
import sys
import types

import numpy as np
import pytest
import torch

from trainables import dataset_encoding as de
from trainables.metaspace_model import (MetaSpaceOptions, contrastive_loss, fid_loss, fit_metaspace,
                                        performance_loss, rank_loss)


def _t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_performance_loss_is_mse():
    assert performance_loss(_t(0.5, 1.0), _t(0.0, 0.0)).item() == pytest.approx((0.25 + 1.0) / 2)


def test_rank_loss_matches_eq3():
    # pair 1: P_j > P_k, margin 0.5 - 0.1; pair 2: P_k > P_j, so oriented margin 0.4 - 0.2; pair 3: a tie (left out)
    loss = rank_loss(_t(0.5, 0.2, 0.3), _t(0.1, 0.4, 0.3), _t(0.9, 0.8, 0.5), _t(0.7, 0.9, 0.5), beta=2.0)
    expected = (math.log1p(math.exp(-2.0 * 0.4)) + math.log1p(math.exp(-2.0 * 0.2))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_rank_loss_prefers_the_right_order_and_handles_ties():
    right = rank_loss(_t(0.9), _t(0.1), _t(1.0), _t(0.0), beta=5.0)
    wrong = rank_loss(_t(0.1), _t(0.9), _t(1.0), _t(0.0), beta=5.0)
    assert right.item() < math.log(2) < wrong.item()
    sims = _t(0.3, 0.2).requires_grad_()
    tie = rank_loss(sims[:1], sims[1:], _t(0.5), _t(0.5), beta=5.0)
    assert tie.item() == 0.0
    tie.backward()  # still part of the graph


def test_fid_loss_matches_eq4():
    emb = _t(0.0, 0.0, 1.0, 0.0, 0.0, 2.0).reshape(3, 2)
    fid = _t(0, 1, 2, 1, 0, 3, 2, 3, 0).reshape(3, 3)
    # ordered pairs i != j: 2 x (e^-1 * 1 + e^-2 * 4 + e^-3 * 5) over 6 pairs
    expected = (math.exp(-1) * 1 + math.exp(-2) * 4 + math.exp(-3) * 5) / 3
    assert fid_loss(emb, fid, sigma=1.0).item() == pytest.approx(expected, rel=1e-12)
    assert fid_loss(emb, fid, sigma=2.0).item() == pytest.approx(
        (math.exp(-0.5) * 1 + math.exp(-1) * 4 + math.exp(-1.5) * 5) / 3, rel=1e-12)


def test_contrastive_loss_is_infonce():
    d = _t(1.0, 0.0, 0.0, 1.0).reshape(2, 2)
    m = _t(1.0, 0.0, 0.6, 0.8).reshape(2, 2)
    row0 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(1.2)))  # logits (1, 0.6) / 0.5
    row1 = -math.log(math.exp(1.6) / (math.exp(0.0) + math.exp(1.6)))  # logits (0, 0.8) / 0.5
    assert contrastive_loss(d, m, 0.5).item() == pytest.approx((row0 + row1) / 2, rel=1e-12)
    # rows of the same dataset are not each other's negatives
    assert contrastive_loss(d, m, 0.5, groups=torch.tensor([3, 3])).item() == pytest.approx(0.0, abs=1e-12)


def test_each_loss_switches_on_and_off():
    rng = np.random.default_rng(0)
    x, dx = rng.normal(size=(40, 5)), rng.normal(size=(2, 7))
    ds, perf = np.repeat([0, 1], 20), rng.uniform(size=40)
    fid = np.array([[0.0, 1.0], [1.0, 0.0]])
    for flags, keys in [(dict(use_perf=True, use_rank=False, use_fid=False), {"perf"}),
                        (dict(use_perf=False, use_rank=True, use_fid=False), {"rank"}),
                        (dict(use_perf=False, use_rank=False, use_fid=True), {"fid"}),
                        (dict(use_perf=False, use_rank=False, use_fid=False, use_contrastive=True), {"contrastive"}),
                        (dict(), {"perf", "rank", "fid"})]:
        fit = fit_metaspace(x, dx, ds, perf, fid, MetaSpaceOptions(epochs=1, batch_size=16, **flags))
        assert set(fit.history[0]) - {"epoch", "seconds", "cpu_seconds"} == keys
    assert fit.sigma == 1.0  # the median FID between training datasets


def test_frechet_distance_on_known_gaussians():
    assert de.frechet_distance([0.0], [[1.0]], [1.0], [[4.0]]) == pytest.approx(1 + 1 + 4 - 2 * 2)
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 1.0])
    # diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    assert de.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(5 + 1 + 1 + 4)
    a = np.random.default_rng(0).normal(size=(4, 4))
    cov = a @ a.T + np.eye(4)
    assert de.frechet_distance(mu1[:1].repeat(4), cov, mu1[:1].repeat(4), 9 * cov) == pytest.approx(
        (1 - 3) ** 2 * np.trace(cov))  # tr(S + 9S - 2 * 3S) = 4 tr(S)
    assert de.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def _block(monkeypatch, *names):
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name.split(".")[0] in names:
            raise ImportError(f"No module named '{name}' (blocked by the test)")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)


@pytest.mark.parametrize("blocked", [("pytorch_fid",), ("torchvision",)])
def test_fallback_extractor_is_used_and_named(monkeypatch, blocked):
    _block(monkeypatch, *blocked)
    extract, name = de.feature_extractor(2)
    assert name == de.FALLBACK_NAME and "unavailable" in extract.reason
    extract3, name3 = de.feature_extractor(3)
    assert name3 == de.FALLBACK_NAME + de.SLICES_SUFFIX
    images = np.random.default_rng(0).integers(0, 256, size=(12, 1, 28, 28), dtype=np.uint8)
    feats = de.dataset_features(images, 8, seed=1, extractor=extract)
    assert feats.shape == (8, 256)
    again = de.dataset_features(images, 8, seed=1, extractor=de.feature_extractor(2)[0])
    np.testing.assert_array_equal(feats, again)  # a fixed, seeded network: the same features every time
    assert not np.allclose(feats, de.dataset_features(images, 8, seed=2, extractor=extract))
    vols = np.random.default_rng(0).integers(0, 256, size=(3, 1, 20, 20, 20), dtype=np.uint8)
    assert de.dataset_features(vols, 5, seed=0, extractor=extract3).shape == (3, 256)
    rgb = torch.rand(2, 3, 64, 64)
    assert extract(rgb).shape == (2, 256)


def _fake_pytorch_fid(monkeypatch, calls):
    inception = types.ModuleType("pytorch_fid.inception")
    inception.FID_WEIGHTS_URL = "https://example.invalid/pt_inception-2015-12-05-6726825d.pth"

    class InceptionV3(torch.nn.Module):
        BLOCK_INDEX_BY_DIM = {2048: 3}

        def __init__(self, blocks, resize_input, normalize_input):
            super().__init__()
            calls.append(blocks)

        def forward(self, x):
            return [x.mean(dim=(2, 3), keepdim=True).repeat(1, 2048 // 3 + 1, 1, 1)[:, :2048]]

    inception.InceptionV3 = InceptionV3
    fid_score = types.ModuleType("pytorch_fid.fid_score")
    fid_score.calculate_frechet_distance = lambda *a, **k: (calls.append("fid"), 123.0)[1]
    package = types.ModuleType("pytorch_fid")
    for name, module in (("pytorch_fid", package), ("pytorch_fid.inception", inception),
                         ("pytorch_fid.fid_score", fid_score), ("torchvision", types.ModuleType("torchvision"))):
        monkeypatch.setitem(sys.modules, name, module)


def test_inception_used_only_with_cached_weights(monkeypatch, tmp_path):
    calls = []
    _fake_pytorch_fid(monkeypatch, calls)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    extract, name = de.feature_extractor(2)
    assert name == de.FALLBACK_NAME and "weights not in" in extract.reason
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"")
    extract, name = de.feature_extractor(2)
    assert name == de.INCEPTION_NAME and extract.reason == "" and calls == [[3]]
    assert extract(torch.rand(2, 1, 28, 28)).shape == (2, 2048)
    assert de.frechet_distance([0.0], [[1.0]], [0.0], [[1.0]]) == 123.0  # pytorch-fid's implementation
