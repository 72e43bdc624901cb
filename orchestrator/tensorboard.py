"""TensorBoard curves that end at a trial's last epoch.

Every trainable reports once per epoch and then once more at the end with its test metrics,
repeating its epoch number and the val-selected (best) epoch's validation scores. Tune's
``TBXLoggerCallback`` draws that final report as one more point, so every curve ended on a
jump back to the best epoch's value. :class:`EpochTBXLogger` logs the final report's new
values only (test metrics, params, ...): the curves end where training ended.
"""
from __future__ import annotations

from ray.tune.logger import TBXLoggerCallback

# Keys of per-epoch curves; in a report that repeats the last epoch they are the best epoch's values.
CURVE_PREFIXES = ("val_", "best_val_", "train_", "best_epoch")


def final_report_values(result: dict) -> dict:
    """``result`` without the per-epoch curve keys (the final report's new values, and Tune's own)."""
    return {k: v for k, v in result.items() if not k.startswith(CURVE_PREFIXES)}


class EpochTBXLogger(TBXLoggerCallback):
    """Tune's TensorBoard logger, except that a report repeating the trial's previous epoch
    (its final report) adds no point to the per-epoch curves."""

    def __init__(self):
        super().__init__()
        self._last_epoch: dict = {}

    def log_trial_result(self, iteration: int, trial, result: dict):
        epoch = result.get("epoch")
        repeated = epoch is not None and self._last_epoch.get(trial.trial_id) == epoch
        self._last_epoch[trial.trial_id] = epoch
        super().log_trial_result(iteration, trial, final_report_values(result) if repeated else result)
