"""Metrics follow medmnist's Evaluator; the fit loop learns, early-stops and fails cleanly."""
import math

import numpy as np
import pytest
import torch
from medmnist.evaluator import getACC, getAUC

from orchestrator.data import load_medmnist, make_synthetic
from trainables import metrics
from trainables.fit import FitConfig, NonFiniteLoss, fit
from trainables.nets.cell_net import CellNet
from searchers.cell_space import CellArchitecture


@pytest.mark.parametrize("task,n_out", [("binary-class", 1), ("multi-class", 4), ("ordinal-regression", 5),
                                        ("multi-label, binary-class", 3)])
def test_acc_auc_equal_medmnist_evaluator(task, n_out):
    rng = np.random.default_rng(0)
    logits = torch.randn(50, n_out)
    if task == "multi-label, binary-class":
        y = rng.integers(0, 2, (50, n_out))
    else:
        y = rng.integers(0, max(n_out, 2), (50, 1))
    s = metrics.scores(logits, task)
    assert metrics.accuracy(y, s, task) == pytest.approx(getACC(y, s, task))
    assert metrics.auc(y, s, task) == pytest.approx(getAUC(y, s, task))


def test_loss_follows_task():
    logits = torch.tensor([[2.0, -1.0]])
    assert metrics.loss_fn("multi-class")(logits, torch.tensor([[0]])) == pytest.approx(
        torch.nn.functional.cross_entropy(logits, torch.tensor([0])).item())
    assert metrics.loss_fn("binary-class")(torch.tensor([[0.0]]), torch.tensor([[1]])) == pytest.approx(math.log(2))


def test_auc_undefined_on_a_single_class_is_nan():
    assert math.isnan(metrics.auc(np.zeros((4, 1)), np.full((4, 1), 0.3), "binary-class"))


def test_dice():
    a = torch.tensor([[1, 1, 0, 0]])
    assert metrics.dice(a, a) == pytest.approx(1.0)
    assert metrics.dice(a, torch.tensor([[1, 0, 0, 0]])) == pytest.approx(2 / 3, abs=1e-4)


@pytest.fixture(scope="module")
def synthetic_2d(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_synthetic("pneumoniamnist", root, n_samples=(128, 48, 48), seed=0)
    return load_medmnist("pneumoniamnist", 28, root, download=False)


def small_arch():
    return CellArchitecture(nodes=((1, "conv3_in_relu"),), edges=((0, 1), (0, 6), (1, 6)),
                            n_stacks=1, n_modules=1, n_f_init=8)


def test_fit_learns_synthetic_classes_and_reports_every_epoch(synthetic_2d):
    torch.manual_seed(0)
    net = CellNet(small_arch(), 1, synthetic_2d.info.n_outputs, spatial_dims=2)
    rows = []
    res = fit(net, synthetic_2d, FitConfig(max_epochs=6, batch_size=32, lr=1e-2, patience=6), report=rows.append,
              evaluate_test=True)
    assert [r["epoch"] for r in rows] == list(range(1, res.epochs_run + 1)) and res.epochs_run == 6
    assert res.best["val_auc"] > 0.9 and res.best["val_acc"] > 0.8
    assert res.test["test_acc"] > 0.8
    assert rows[-1]["best_val_acc"] == max(r["val_acc"] for r in rows)


def test_early_stopping_after_patience_epochs_without_val_loss_improvement(synthetic_2d):
    net = CellNet(small_arch(), 1, synthetic_2d.info.n_outputs, spatial_dims=2)
    res = fit(net, synthetic_2d, FitConfig(max_epochs=30, batch_size=32, lr=0.0, patience=2))
    assert res.epochs_run == 3  # lr 0: epoch 1 sets the best loss, 2 stale epochs stop it


def test_divergence_raises_non_finite_loss(synthetic_2d):
    net = CellNet(small_arch(), 1, synthetic_2d.info.n_outputs, spatial_dims=2)
    with torch.no_grad():
        net.head.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLoss):
        fit(net, synthetic_2d, FitConfig(max_epochs=2, batch_size=32))


def test_float_preload_and_uint8_batches_are_identical(monkeypatch):
    from trainables import fit as fit_mod

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 1, 4, 4, 4), dtype=np.uint8)
    labels = rng.integers(0, 2, (10, 1))
    pre = fit_mod.DeviceSplit(images, labels, torch.device("cpu"))
    monkeypatch.setattr(fit_mod, "FLOAT_PRELOAD_BYTES", 0)  # too big to preload: uint8 path
    raw = fit_mod.DeviceSplit(images, labels, torch.device("cpu"))
    assert pre.preloaded and not raw.preloaded and raw.x.dtype == torch.uint8
    for (xa, ya), (xb, yb) in zip(pre.batches(4, torch.Generator().manual_seed(1)),
                                  raw.batches(4, torch.Generator().manual_seed(1))):
        assert xa.dtype == xb.dtype == torch.float32 and torch.equal(xa, xb) and torch.equal(ya, yb)
    assert float(pre.x.max()) <= 1.0


def test_evaluate_takes_a_task_string_or_object_and_selection_defaults_to_the_tasks_metric(synthetic_2d):
    from trainables.fit import DeviceSplit, evaluate
    from trainables.tasks import ClassificationTask, SegmentationTask

    assert FitConfig().select_metric is None  # resolved per task: val_acc here, val_dice for masks
    assert (ClassificationTask("binary-class").select_metric, SegmentationTask().select_metric) == ("val_acc",
                                                                                                    "val_dice")
    torch.manual_seed(0)
    net = CellNet(small_arch(), 1, synthetic_2d.info.n_outputs, spatial_dims=2)
    split = DeviceSplit(synthetic_2d.images["val"], synthetic_2d.labels["val"], torch.device("cpu"))
    by_name = evaluate(net, split, synthetic_2d.info.task)
    by_object = evaluate(net, split, ClassificationTask(synthetic_2d.info.task))
    assert by_name == by_object and set(by_name) == {"loss", "acc", "auc", "pred_classes"}


def test_a_model_that_calls_every_case_one_class_is_counted_as_such():
    """pred_classes follows getACC's decision rule; one_class reads it from test, else val."""
    import numpy as np

    from medcore.records import one_class
    from trainables.metrics import predicted_classes

    assert predicted_classes(np.array([[0.1], [0.4], [0.49]]), "binary-class") == 1
    assert predicted_classes(np.array([[0.1], [0.6]]), "binary-class") == 2
    assert predicted_classes(np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]]), "multi-class") == 1
    assert predicted_classes(np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]]), "ordinal-regression") == 2
    assert predicted_classes(np.array([[0.9, 0.1], [0.8, 0.2], [0.9, 0.7]]), "multi-label, binary-class") == 2
    assert one_class({"test_pred_classes": 1.0, "val_pred_classes": 2.0})
    assert not one_class({"test_pred_classes": float("nan"), "val_pred_classes": 2})
    assert one_class({"val_pred_classes": 1}) and not one_class({}) and not one_class({"test_acc": 0.73})


def test_fit_reports_how_many_classes_the_model_predicts(synthetic_2d):
    """A net whose output is a constant predicts one class: val rows and the test dict say so."""
    torch.manual_seed(0)
    net = CellNet(small_arch(), 1, synthetic_2d.info.n_outputs, spatial_dims=2)
    for p in net.parameters():  # every weight 0: the logits are the (zero) bias for every image
        torch.nn.init.zeros_(p)
    result = fit(net, synthetic_2d, FitConfig(max_epochs=1, lr=0.0, batch_size=16), evaluate_test=True)
    assert result.history[0]["val_pred_classes"] == 1 and result.test["test_pred_classes"] == 1
