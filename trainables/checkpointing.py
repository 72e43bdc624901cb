"""Per-epoch checkpoints of :func:`trainables.fit.fit` through Ray Tune.

``fit`` knows nothing of Ray: it hands ``save_state(state, row)`` everything a killed trial
needs to continue, and takes it back as ``resume_state``. :class:`TuneCheckpointing` is that
``save_state`` for a Tune function trainable: each epoch's row and checkpoint go out in ONE
``tune.report`` (Tune attaches a checkpoint to a report, never alone), and
:func:`resume_state` reads the trial's latest checkpoint after Tune restarts it
(``FailureConfig(max_failures=...)``, ``Tuner.restore``)::

    ckpt = TuneCheckpointing(metrics=lambda row: {**base, **row})
    fit(net, data, cfg, save_state=ckpt, resume_state=resume_state())

Pass ``report=None`` then, or Tune sees every epoch twice. Keep a few checkpoints per trial
with ``CheckpointConfig(num_to_keep=...)`` on the driver.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import torch

STATE_FILE = "fit_state.pt"


def save_state_file(state: dict, directory) -> Path:
    """Write a ``fit`` state into ``directory`` (the checkpoint's one file)."""
    path = Path(directory) / STATE_FILE
    torch.save(state, path)
    return path


def load_state_file(directory) -> dict | None:
    """The ``fit`` state saved in ``directory``, or None if it holds none."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


class TuneCheckpointing:
    """``fit(save_state=...)`` for Tune: report the epoch's metrics with a checkpoint of the state.

    ``metrics(row)`` turns fit's row into the reported dict (default: the row itself).
    ``every`` checkpoints every n-th epoch (and the last, when early stopping ends the run);
    the other epochs report their metrics alone. With ``curve`` (a row key, e.g. ``val_auc``)
    each report also carries ``curve``: that key's value at every epoch so far, the learning
    curve a multi-fidelity scheduler reads rung scores from (complete even after a resume).
    """

    def __init__(self, metrics: Callable[[dict], dict] | None = None, every: int = 1, curve: str | None = None):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.metrics, self.every, self.curve = metrics, int(every), curve

    def __call__(self, state: dict, row: dict) -> None:
        from ray import tune

        reported = self.metrics(dict(row)) if self.metrics is not None else dict(row)
        if self.curve:
            reported["curve"] = learning_curve(state["history"], self.curve)
        if state["epoch"] % self.every and not state["stopped"]:
            tune.report(reported)
            return
        with tempfile.TemporaryDirectory() as d:
            save_state_file(state, d)
            tune.report(reported, checkpoint=tune.Checkpoint.from_directory(d))


def learning_curve(history: list[dict], key: str) -> list[float]:
    """``key``'s value at each epoch of a fit history (NaN where an epoch has none)."""
    return [float("nan") if h.get(key) is None else float(h[key]) for h in history]


def resume_state() -> dict | None:
    """The ``fit`` state of this trial's latest checkpoint (``tune.get_checkpoint()``), if any."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return load_state_file(os.fspath(d))
