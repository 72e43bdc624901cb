"""``head_bias='prior'``: the output layer starts at the training labels' prior (initializers.prior_bias)."""
import numpy as np
import pytest
import torch
from torch import nn

from medcore.errors import ConfigError
from medcore.records import DatasetInfo
from orchestrator.data import MedMNISTData
from trainables.fit import FitConfig, fit
from trainables.initializers import prior_bias


class MeanIntensity(nn.Module):
    """Pooled intensity -> one linear layer: the simplest net whose features are all non-negative."""

    def __init__(self, n_outputs=1):
        super().__init__()
        self.head = nn.Linear(1, n_outputs)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        return self.head(x.flatten(1).mean(1, keepdim=True))


def test_binary_and_multi_label_bias_is_the_log_odds_of_each_label():
    net = MeanIntensity(1)
    prior_bias(net, np.array([[1]] * 10 + [[0]] * 90), "binary-class")
    assert torch.sigmoid(net.head.bias).item() == pytest.approx(0.1)
    net = MeanIntensity(3)
    prior_bias(net, np.array([[1, 0, 1], [0, 0, 1], [0, 0, 1], [0, 1, 0]]), "multi-label, binary-class")
    assert torch.sigmoid(net.head.bias).tolist() == pytest.approx([0.25, 0.25, 0.75])


def test_multi_class_softmax_of_the_bias_is_the_class_frequency():
    net = MeanIntensity(4)
    prior_bias(net, np.array([[0]] * 500 + [[1]] * 300 + [[3]] * 200), "multi-class")
    p = torch.softmax(net.head.bias, 0)
    assert p[[0, 1, 3]].tolist() == pytest.approx([0.5, 0.3, 0.2], abs=0.002)
    assert 0 < p[2].item() < 0.002  # an absent class keeps a finite, small bias


def test_bad_uses_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="outputs"):
        prior_bias(MeanIntensity(2), np.array([[0], [1]]), "binary-class")
    with pytest.raises(ConfigError, match="linear layer"):
        prior_bias(nn.Conv2d(1, 1, 1), np.array([[0], [1]]), "binary-class")
    with pytest.raises(ConfigError, match="segmentation"):
        prior_bias(MeanIntensity(1), np.zeros((2, 1, 4, 4)), "segmentation")
    with pytest.raises(ConfigError, match="head_bias"):
        fit(MeanIntensity(1), _imbalanced(), FitConfig(max_epochs=1, head_bias="zeros", device="cpu"))


def _imbalanced(n=200, positives=20, seed=0):
    """Binary 2D data, 10% positive, positives brighter: mean intensity separates the classes."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, 1), np.int64)
    y[:positives] = 1
    x = rng.integers(0, 120, (n, 1, 8, 8)) + 60 * y[:, :, None, None]
    x = x.astype(np.uint8)
    info = DatasetInfo("toy", "binary-class", 1, 2, 2, 8, True, "")
    return MedMNISTData(info, {s: x for s in ("train", "val", "test")}, {s: y for s in ("train", "val", "test")})


@pytest.mark.parametrize("head_bias, ranks_correctly", [("default", False), ("prior", True)])
def test_one_adam_step_on_imbalanced_data_ranks_classes_backwards_unless_the_bias_starts_at_the_prior(
        head_bias, ranks_correctly):
    """The failure the option fixes: from p=0.5 every sample pushes the (non-negative) feature's
    weight down, so the score falls with intensity and AUC ends below 0.5; from p=prior only the
    class difference moves the weight."""
    res = fit(MeanIntensity(1), _imbalanced(), FitConfig(max_epochs=1, batch_size=200, patience=1,
                                                         select_metric="val_auc", device="cpu",
                                                         head_bias=head_bias), evaluate_test=True)
    assert (res.test["test_auc"] > 0.9) == ranks_correctly
    assert (res.test["test_auc"] < 0.1) == (not ranks_correctly)
