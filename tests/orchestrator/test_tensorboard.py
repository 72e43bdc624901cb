"""TensorBoard curves end at a trial's last epoch, not on a repeated best-epoch point."""
from __future__ import annotations

import pytest


class FakeTrial:
    """What Tune's TensorBoard logger reads of a trial (hashable, like Tune's own)."""

    def __init__(self, path):
        self.init_local_path = lambda: None
        self.trial_id, self.local_path, self.config, self.evaluated_params, self.last_result = \
            "t1", str(path), {"lr": 0.1}, {}, {}


def _scalars(logdir) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_the_final_report_adds_test_metrics_but_no_point_to_the_epoch_curves(tmp_path):
    pytest.importorskip("tensorboard")
    from orchestrator.tensorboard import EpochTBXLogger

    trial = FakeTrial(tmp_path)
    logger = EpochTBXLogger()
    logger.log_trial_start(trial)
    epochs = [(1, 0.70, 0.60), (2, 0.80, 0.55), (3, 0.75, 0.58)]  # epoch 2 is the best
    for i, (epoch, auc, loss) in enumerate(epochs, 1):
        logger.log_trial_result(i, trial, {"training_iteration": i, "epoch": epoch, "val_auc": auc,
                                           "val_loss": loss, "best_val_auc": max(a for _, a, _ in epochs[:i])})
    # the trainable's final report: the same epoch, the best epoch's val scores, the test metrics
    logger.log_trial_result(4, trial, {"training_iteration": 4, "epoch": 3, "val_auc": 0.80, "val_loss": 0.55,
                                       "best_val_auc": 0.80, "test_auc": 0.77, "params": 1234})
    logger.log_trial_end(trial)
    scalars = _scalars(tmp_path)
    assert [v for _, v in scalars["ray/tune/val_auc"]] == pytest.approx([0.70, 0.80, 0.75])  # ends at epoch 3
    assert [s for s, _ in scalars["ray/tune/val_loss"]] == [1, 2, 3]
    assert scalars["ray/tune/test_auc"] == [(4, pytest.approx(0.77))]


def test_the_progress_table_shows_the_selection_metric_first(monkeypatch):
    import os

    from orchestrator.search import progress_reporter

    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    assert progress_reporter(None) is None and "RAY_AIR_NEW_OUTPUT" not in os.environ
    reporter = progress_reporter("val_auc", "max")
    assert list(reporter._metric_columns)[0] == "val_auc"
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "0"  # Tune's newer output ignores a reporter's columns
    assert list(progress_reporter("val_loss", "min")._metric_columns) == ["val_loss", "epoch", "status"]


def test_trials_are_listed_best_first_and_those_that_never_reported_last():
    """A trial a time budget stopped before its first report has no metric: Tune's own sort
    raised TypeError on it and ended the search."""
    from types import SimpleNamespace

    from orchestrator.search import best_first

    trials = [SimpleNamespace(name=n, last_result=r) for n, r in
              (("a", {"val_auc": 0.5}), ("never", {}), ("b", {"val_auc": 0.9}), ("nan", {"val_auc": float("nan")}))]
    assert [t.name for t in best_first(trials, "val_auc", "max")] == ["b", "a", "never", "nan"]
    assert [t.name for t in best_first(trials, "val_auc", "min")][:2] == ["a", "b"]
