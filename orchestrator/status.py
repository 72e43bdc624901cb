"""A run's live status: ``<out>/status.json``, rewritten atomically as the search goes.

Written by the search's driver (stage changes, and a Tune callback on trial events), read by
``medtune status`` and the coordinator while the search runs and after it ends.

Schema: ``search`` (type), ``state`` (running | done | failed | interrupted), ``stage`` (the
current one), ``stages`` (name -> {state}), ``experiments`` (Tune experiment name -> {stage,
state, done, running, pending, failed, best, metric, baseline, best_one_class, one_class}), ``error``,
``pid``, ``started``, ``updated``. ``baseline`` marks an experiment that trains the hand-made
reference (stage ``baseline``), whose best is not the search's; ``one_class`` counts trials whose
latest result predicts one class for every case, ``best_one_class`` says the best one does.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from orchestrator import atomic
from orchestrator.zoo_commands import ONE_CLASS

STATUS_FILE = "status.json"
RUNNING, DONE, FAILED, INTERRUPTED = "running", "done", "failed", "interrupted"
BASELINE_STAGE = "baseline"


def is_baseline_experiment(name: str, entry: dict) -> bool:
    """True for an experiment that trains a baseline (status files older than the flag: by its stage)."""
    return bool(entry.get("baseline")) or entry.get("stage") == BASELINE_STAGE or name.endswith("_baseline")


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
        from medcore.records import one_class

        now = time.time()
        if not force and now - self._last < 1.0:
            return
        self._last = now
        counts = {"done": 0, "running": 0, "pending": 0, "failed": 0}
        best, best_one_class, n_one_class = None, False, 0
        for t in trials:
            state = {"TERMINATED": "done", "RUNNING": "running", "ERROR": "failed"}.get(t.status, "pending")
            counts[state] += 1
            result = t.last_result or {}
            flagged = one_class(result)
            n_one_class += flagged
            value = result.get(self.metric) if self.metric else None
            if isinstance(value, (int, float)) and value == value:
                if best is None or (value > best if self.mode == "max" else value < best):
                    best, best_one_class = float(value), flagged
        entry = dict(counts, best=best, metric=self.metric, stage=self.stage, state=DONE if finished else RUNNING,
                     baseline=self.stage == BASELINE_STAGE, best_one_class=best_one_class, one_class=n_one_class)
        update_status(self.out, experiments={self.experiment: entry})
        return entry

    def on_trial_complete(self, iteration, trials, trial, **info):
        entry = self._write(trials, force=True)
        best = "" if entry["best"] is None else f", best {self.metric} {entry['best']:.4g}"
        best += " (baseline)" if best and entry["baseline"] else ""
        best += f" {ONE_CLASS}" if entry["best_one_class"] else ""
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
