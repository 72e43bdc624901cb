"""A run's live status: ``<out>/status.json``, rewritten atomically as the search goes.

Written by the search's driver (stage changes, and a Tune callback on trial events), read by
``medtune status`` and the coordinator while the search runs and after it ends.

Schema: ``search`` (type), ``state`` (running | done | failed | interrupted), ``stage`` (the
current one), ``stages`` (name -> {state}), ``experiments`` (Tune experiment name -> {stage,
state, done, running, pending, failed, best, metric}), ``error``, ``pid``, ``started``, ``updated``.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from orchestrator import atomic

STATUS_FILE = "status.json"
RUNNING, DONE, FAILED, INTERRUPTED = "running", "done", "failed", "interrupted"


def read_status(out: str | os.PathLike) -> dict | None:
    return atomic.read_json(Path(out) / STATUS_FILE)


def update_status(out: str | os.PathLike, **fields) -> dict:
    """Merge ``fields`` into the status file (``stages`` and ``experiments`` merged per entry)."""
    path = Path(out) / STATUS_FILE
    status = atomic.read_json(path, {}) or {}
    nested = {k: fields.pop(k) for k in ("stages", "experiments") if k in fields}
    status.update(fields)
    for key, entries in nested.items():
        merged = status.setdefault(key, {})
        for name, value in entries.items():
            merged.setdefault(name, {}).update(value)
    status["updated"] = time.time()
    atomic.write_json(path, status)
    return status


def _tune_callback_base():
    from ray.tune import Callback

    return Callback


class StatusCallback(_tune_callback_base()):
    """Counts one experiment's trials into ``status.json`` and prints a progress line per trial.

    Picklable (a path and names only): Tune saves it with the experiment and restores it on resume.
    """

    def __init__(self, out: str, experiment: str, stage: str | None = None, metric: str | None = None,
                 mode: str = "max"):
        self.out, self.experiment, self.stage = str(out), experiment, stage
        self.metric, self.mode = metric, mode
        self._last = 0.0

    def _write(self, trials, force: bool = False, finished: bool = False):
        now = time.time()
        if not force and now - self._last < 1.0:
            return
        self._last = now
        counts = {"done": 0, "running": 0, "pending": 0, "failed": 0}
        best = None
        for t in trials:
            state = {"TERMINATED": "done", "RUNNING": "running", "ERROR": "failed"}.get(t.status, "pending")
            counts[state] += 1
            value = (t.last_result or {}).get(self.metric) if self.metric else None
            if isinstance(value, (int, float)) and value == value:
                if best is None or (value > best if self.mode == "max" else value < best):
                    best = float(value)
        entry = dict(counts, best=best, metric=self.metric, stage=self.stage, state=DONE if finished else RUNNING)
        update_status(self.out, experiments={self.experiment: entry})
        return entry

    def on_trial_complete(self, iteration, trials, trial, **info):
        entry = self._write(trials, force=True)
        best = "" if entry["best"] is None else f", best {self.metric} {entry['best']:.4g}"
        print(f"[{self.experiment}] {entry['done']} done, {entry['failed']} failed, {entry['running']} running"
              f"{best}", file=sys.stderr, flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._write(trials, force=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._write(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._write(trials)

    def on_experiment_end(self, trials, **info):
        self._write(trials, force=True, finished=True)
