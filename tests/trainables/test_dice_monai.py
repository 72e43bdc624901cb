"""``trainables.metrics.dice`` through MONAI's ``compute_dice`` gives what the former hand-written
formula gave (kept here as the reference), empty masks included."""
from __future__ import annotations

import pytest
import torch

from trainables import metrics


def reference_dice(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> float:
    pred, target = pred.float().flatten(1), target.float().flatten(1)
    inter = (pred * target).sum(1)
    return float(((2 * inter + eps) / (pred.sum(1) + target.sum(1) + eps)).mean())


def fixed_masks():
    g = torch.Generator().manual_seed(7)
    yield torch.tensor([[1, 1, 0, 0]]), torch.tensor([[1, 0, 0, 0]])
    yield torch.zeros(2, 5), torch.zeros(2, 5)  # empty predicted empty: 1
    yield torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0]]), torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0]])  # 0 and 1
    yield (torch.rand(4, 1, 6, 6, 6, generator=g) > 0.5), (torch.rand(4, 1, 6, 6, 6, generator=g) > 0.6)  # 3D
    yield (torch.rand(3, 16, 16, generator=g) > 0.3), (torch.rand(3, 16, 16, generator=g) > 0.3)


@pytest.mark.parametrize("pred, target", list(fixed_masks()))
def test_dice_by_monai_equals_the_former_formula(pred, target):
    assert metrics.dice(pred, target) == pytest.approx(reference_dice(pred, target), abs=1e-5)


def test_dice_values():
    a = torch.tensor([[1, 1, 0, 0]])
    assert metrics.dice(a, a) == 1.0
    assert metrics.dice(a, torch.tensor([[1, 0, 0, 0]])) == pytest.approx(2 / 3)
    assert metrics.dice(torch.tensor([[1, 1, 0, 0]]), torch.zeros(1, 4)) == 0.0
