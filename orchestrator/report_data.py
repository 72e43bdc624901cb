"""What the run report reads from a run folder besides the summaries: Tune's trial folders.

Every search runs its trials through Tune, whose experiment folders (``<storage>/<experiment>/
<trial>/result.json``, one JSON line per report, ``error.txt`` when a trial errored) hold the
timestamps, metrics and failures of every evaluation, also while the search still runs and
before any ``summary.json`` exists. Nothing here writes; a half-written line is skipped.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import atomic
from orchestrator.manifest import last_error_line

# Metric names where lower is better (the status file records the metric, not its mode).
LOWER_HINTS = ("loss", "latency", "error", "_ms", "flops", "params", "size_mb")


@dataclass
class Trial:
    """One Tune trial as its folder tells it."""

    experiment: str
    name: str
    records: list[dict] = field(default_factory=list)
    error: str = ""
    start: float | None = None
    end: float | None = None
    folder: Path | None = None

    @property
    def params(self) -> dict:
        """The trial's config (``params.json``), read when first asked for."""
        if not hasattr(self, "_params"):
            data = atomic.read_json(self.folder / "params.json") if self.folder else None
            self._params = data if isinstance(data, dict) else {}
        return self._params

    @property
    def last(self) -> dict:
        return self.records[-1] if self.records else {}

    def value(self, metric: str | None):
        """The trial's final value of ``metric`` (None when it reported no finite one)."""
        v = self.last.get(metric) if metric else None
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


@dataclass
class Experiment:
    name: str
    metric: str | None
    stage: str | None
    trials: list[Trial]

    @property
    def mode(self) -> str:
        return mode_of(self.metric)


def mode_of(metric: str | None) -> str:
    return "min" if metric and any(h in metric for h in LOWER_HINTS) else "max"


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _records(path: Path) -> list[dict]:
    out = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:  # the line Tune is writing now
            continue
        if isinstance(rec, dict):
            rec.pop("config", None)  # the trial's config, repeated on every line
            out.append(rec)
    return out


def read_trial(folder: Path, experiment: str) -> Trial:
    trial = Trial(experiment=experiment, name=folder.name, records=_records(folder / "result.json"), folder=folder)
    error = folder / "error.txt"
    if error.is_file():
        try:
            trial.error = last_error_line(error.read_text(errors="replace"))[:300] or "trial errored"
        except OSError:
            trial.error = "trial errored"
    stamps = [(r["timestamp"], r.get("time_this_iter_s") or 0.0) for r in trial.records
              if _finite(r.get("timestamp"))]
    if stamps:
        trial.start = stamps[0][0] - float(stamps[0][1] if _finite(stamps[0][1]) else 0.0)
        trial.end = float(stamps[-1][0])
    params = folder / "params.json"
    if trial.start is None and params.exists():
        trial.start = params.stat().st_mtime
    if trial.error and error.is_file():
        trial.end = max(trial.end or 0.0, error.stat().st_mtime)
    return trial


def read_experiment(path: Path, name: str, metric: str | None = None, stage: str | None = None) -> Experiment:
    trials = []
    if path.is_dir():
        for folder in sorted(path.iterdir()):
            if folder.is_dir() and ((folder / "result.json").exists() or (folder / "params.json").exists()
                                    or (folder / "error.txt").exists()):
                trials.append(read_trial(folder, name))
    return Experiment(name=name, metric=metric, stage=stage, trials=trials)


def storage_of(out: Path) -> tuple[Path | None, str]:
    """The search's Tune storage folder (its run manifest's ``storage``, else ``<out>/tune``), or
    (None, why) where it is a URI the report does not read."""
    manifest = atomic.read_json(out / "run.json") or {}
    storage = (manifest.get("config") or {}).get("storage") if isinstance(manifest, dict) else None
    if storage and "://" in str(storage):
        return None, f"Tune storage {storage} is remote; the report reads local folders only"
    return (Path(storage).expanduser() if storage else out / "tune"), ""


def search_experiments(out: Path, status: dict | None) -> tuple[list[Experiment], str]:
    """The search's Tune experiments in the order it ran them (its ``status.json`` lists them with
    their metric), then any other experiment folder in its storage; and a note when unreadable."""
    storage, note = storage_of(out)
    if storage is None:
        return [], note
    entries = dict((status or {}).get("experiments") or {})
    if storage.is_dir():
        for folder in sorted(storage.iterdir()):
            if folder.is_dir() and folder.name not in entries:
                entries[folder.name] = {}
    return [read_experiment(storage / name, name, e.get("metric"), e.get("stage")) for name, e in entries.items()
            if (storage / name).is_dir()], ""


def progress_experiment(experiments: list[Experiment]) -> Experiment | None:
    """The experiment that is the search itself: the one with a metric and the most trials."""
    scored = [e for e in experiments if e.metric and e.trials]
    return max(scored, key=lambda e: len(e.trials), default=None)


def best_so_far(exp: Experiment, t0: float | None = None) -> list[dict]:
    """One entry per finished evaluation, in the order they finished: its value, the best so far,
    minutes since ``t0`` (the search's start, else the first trial's), and its error."""
    done = [t for t in exp.trials if t.end is not None and (t.records or t.error)]
    done.sort(key=lambda t: (t.end, t.name))
    if t0 is None:
        starts = [t.start for t in exp.trials if t.start is not None]
        t0 = min(starts) if starts else (done[0].end if done else 0.0)
    out, best = [], None
    better = (lambda a, b: a < b) if exp.mode == "min" else (lambda a, b: a > b)
    for i, t in enumerate(done, 1):
        v = None if t.error else t.value(exp.metric)
        if v is not None and (best is None or better(v, best)):
            best = v
        out.append({"evaluation": i, "trial": t.name, "value": v, "best": best, "minutes": (t.end - t0) / 60.0,
                    "error": t.error})
    return out


def curve_metric(exp: Experiment) -> str | None:
    """The per-epoch metric to draw: ``val_auc`` for an experiment selected on ``best_val_auc``."""
    if not exp.metric:
        return None
    plain = exp.metric[5:] if exp.metric.startswith("best_") else exp.metric
    for key in (plain, exp.metric):
        if any(_finite(r.get(key)) for t in exp.trials for r in t.records):
            return key
    return None


def top_curves(exp: Experiment, k: int = 5) -> list[tuple[Trial, list[tuple[float, float]]]]:
    """The ``k`` best trials' curves (epoch, value) of :func:`curve_metric`, best first; only trials
    that reported more than once (a single point is no curve)."""
    key = curve_metric(exp)
    if key is None:
        return []
    curves = []
    for t in exp.trials:
        pts = []
        for i, r in enumerate(t.records):
            x = r.get("epoch", r.get("training_iteration", i + 1))
            # epochs in order only: a final report that repeats the selected epoch is no new point
            if _finite(r.get(key)) and _finite(x) and (not pts or x > pts[-1][0]):
                pts.append((float(x), float(r[key])))
        if len(pts) > 1:
            curves.append((t, pts))
    sign = 1.0 if exp.mode == "min" else -1.0

    def rank(curve):
        v = curve[0].value(exp.metric)
        return (v is None, sign * v if v is not None else 0.0, curve[0].name)

    return sorted(curves, key=rank)[:k]


def find_trial(experiments: list[Experiment], experiment: str, trial_id=None, **params) -> dict:
    """The last report of one trial of ``experiment``: the one with ``trial_id``, else the one whose
    config has ``params`` (JSON-equal), else the experiment's only trial; {} when none matches.
    The report reads what a summary left out (``test_pred_classes``) from there."""
    exp = next((e for e in experiments if e.name == experiment), None)
    if exp is None:
        return {}
    if trial_id is not None:
        hit = [t for t in exp.trials if t.last.get("trial_id") == trial_id or t.name.endswith(f"_{trial_id}")]
    elif params:
        want = {k: json.dumps(v, sort_keys=True) for k, v in params.items()}
        hit = [t for t in exp.trials if all(json.dumps(t.params.get(k), sort_keys=True) == v for k, v in want.items())]
    else:
        hit = exp.trials if len(exp.trials) == 1 else []
    return dict(hit[0].last) if len(hit) == 1 else {}
