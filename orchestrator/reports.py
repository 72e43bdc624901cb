"""Result tables and PNG plots. Every artefact made from synthetic data says so."""
from __future__ import annotations

import json
import math
from pathlib import Path


SYNTHETIC_BANNER = "SYNTHETIC DATA (not a real MedMNIST result)"


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # headless: workers and CI have no display
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int = 120):
    """Lay out, write and close a figure; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


def _title(ax, text: str, synthetic: bool):
    ax.set_title(f"{text}\n{SYNTHETIC_BANNER}" if synthetic else text, fontsize=10,
                 color="crimson" if synthetic else "black")


def write_table(records: list[dict], path: Path, synthetic: bool) -> Path:
    """One row per record; nested values as JSON text; a ``synthetic`` column on every row."""
    import pandas as pd

    rows = []
    for r in records:
        rows.append({k: (json.dumps(v) if isinstance(v, (list, dict, tuple)) else v) for k, v in r.items()})
    df = pd.DataFrame(rows)
    df["synthetic"] = synthetic
    df.to_csv(path, index=False)
    return path


def plot_best_per_generation(points: list[tuple[int, float]], path: Path, metric: str, synthetic: bool) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    gens = [g for g, f in points if math.isfinite(f)]
    vals = [f for g, f in points if math.isfinite(f)]
    ax.step(gens, vals, where="post", marker="o")
    ax.set_xlabel("generation (0 = opposition-based initialisation)")
    ax.set_ylabel(f"best {metric} so far")
    _title(ax, "ODE: best fitness per generation", synthetic)
    return save_figure(fig, path, dpi=120)


def plot_metric_vs_params(search: list[dict], final: list[dict], path: Path, synthetic: bool,
                          metric: str = "test_auc", baselines=()) -> Path:
    """Test AUC against parameter count: every evaluated model, the retrained top-k marked,
    and each hand-made baseline (``{"name", "params", metric}``) as a labelled diamond."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    pts = [(r["params"], r[metric]) for r in search if _ok(r.get(metric)) and r.get("params")]
    if pts:
        ax.scatter(*zip(*pts), s=14, alpha=0.6, label="search (low fidelity)")
    top = [(r["params"], r[metric]) for r in final if _ok(r.get(metric)) and r.get("params")]
    if top:
        ax.scatter(*zip(*top), s=60, marker="*", color="crimson", label="top-k retrained")
    for b in baselines:
        if _ok(b.get(metric)) and b.get("params"):
            ax.scatter([b["params"]], [b[metric]], s=60, marker="D", color="black",
                       label=f"baseline {b['name']} (same budget)")
            ax.annotate(b["name"], (b["params"], b[metric]), textcoords="offset points", xytext=(5, -10), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(metric.replace("_", " "))
    ax.legend(fontsize=8)
    _title(ax, f"{metric} vs parameters", synthetic)
    return save_figure(fig, path, dpi=120)


def _ok(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def plot_compression_front(rows: list[dict], base: dict, path: Path, synthetic: bool,
                           constraint: dict | None = None) -> Path:
    """Paper Fig. 2 (left): objective space, feasible / infeasible points, D*, base marked. The
    constraint line is drawn where it is on this axis (test accuracy): ``constraint`` (the
    summary's ``{"metric", "threshold"}``), else the run's ``constraint_metric`` (:func:`run_config`)
    with the threshold the trials reported, else the paper's 0.96 x base accuracy."""
    from searchers.pareto import feasible_nondominated_indices
    import numpy as np

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ok = [r for r in rows if r["status"] == "ok"]
    for feas, color, label in ((True, "tab:blue", "feasible"), (False, "tab:gray", "infeasible")):
        pts = [(r["f1_relative"], r["accuracy"]) for r in ok if bool(r.get("feasible")) == feas]
        if pts:
            ax.scatter(*zip(*pts), s=16, alpha=0.6, color=color, label=label)
    if ok:
        F = np.array([[r["f1_relative"], r["f2_error"]] for r in ok])
        G = np.array([r["g_accuracy"] for r in ok])
        front = sorted((ok[i]["f1_relative"], ok[i]["accuracy"]) for i in feasible_nondominated_indices(F, G))
        if front:
            ax.plot(*zip(*front), "o-", color="crimson", ms=5, label="D* (feasible non-dominated)")
    if _ok(base.get("accuracy")):
        ax.scatter([1.0], [base["accuracy"]], marker="*", s=150, color="black", label="base model")
        constraint = constraint or {}
        metric = constraint.get("metric") or run_config(path).get("constraint_metric") or "accuracy"
        threshold = constraint.get("threshold")
        if not _ok(threshold):
            threshold = base.get("accuracy_threshold")
        if not _ok(threshold):
            threshold = 0.96 * base["accuracy"]
        if metric == "accuracy":
            ax.axhline(threshold, ls="--", lw=0.8, color="black", label=f"accuracy constraint ({threshold:.3g})")
        else:  # the constraint is on another metric: no line on the accuracy axis
            ax.plot([], [], " ", label=f"constraint on test {metric} (not this axis)")
    ax.set_xlabel("f1: FLOPs x non-zero rate / base FLOPs")
    ax.set_ylabel("test accuracy (1 - f2)")
    ax.legend(fontsize=7)
    _title(ax, "Compression search: objective space", synthetic)
    return save_figure(fig, path, dpi=120)


def run_config(path) -> dict:
    """The config of the search whose output ``path`` is: its run manifest (``run.json``) beside
    it; empty when there is none (a plot drawn elsewhere), so callers fall back to what they were given."""
    try:
        manifest = json.loads((Path(path).parent / "run.json").read_text())
    except (OSError, ValueError, TypeError):
        return {}
    config = manifest.get("config") if isinstance(manifest, dict) else None
    return config if isinstance(config, dict) else {}


def timed_batch(path, batch: int | None = None) -> int | None:
    """The batch the inference times were measured at: ``batch`` when given, else the run's
    ``inference_batch`` (:func:`run_config`), else None (the label then names no batch)."""
    if batch:
        return int(batch)
    value = run_config(path).get("inference_batch")
    return int(value) if isinstance(value, (int, float)) and value > 0 else None


def plot_time_vs_nonzero(rows: list[dict], base: dict, path: Path, synthetic: bool, batch: int | None = None,
                         device: str = "CPU") -> Path:
    """Paper Fig. 2 (right): inference time against non-zero weight rate, quantized marked. The
    axis names the batch the run timed (:func:`timed_batch`), never a fixed one."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for q, marker, label in ((False, "o", "float"), (True, "s", "int8 quantized")):
        pts = [(r["nonzero_rate"], r["inference_ms"]) for r in rows
               if r["status"] == "ok" and bool(r.get("quantized")) == q and _ok(r.get("inference_ms"))]
        if pts:
            ax.scatter(*zip(*pts), s=16, marker=marker, alpha=0.7, label=label)
    if _ok(base.get("inference_ms")):
        ax.scatter([base.get("nonzero_rate", 1.0)], [base["inference_ms"]], marker="*", s=150, color="black",
                   label="base model")
    ax.set_xlabel("non-zero weight rate")
    timed = timed_batch(path, batch)
    ax.set_ylabel(f"inference time, {f'batch {timed}, ' if timed else ''}{device} (ms)")
    ax.legend(fontsize=7)
    _title(ax, "Inference time vs sparsity", synthetic)
    return save_figure(fig, path, dpi=120)


def predicted_classes(matrix) -> int:
    """How many classes a confusion matrix (rows = true, columns = predicted) has predictions in."""
    import numpy as np

    m = np.asarray(matrix)
    if m.ndim == 3:  # multi-label: per label, predicted positive or negative
        m = m.sum(0)
    return int((m.sum(0) > 0).sum()) if m.ndim == 2 else 0


def plot_confusions(base, best, path: Path, synthetic: bool, class_names=None) -> Path:
    """Paper Fig. 3: test confusion matrices of the base and the most accurate compressed model,
    drawn by scikit-learn's ``ConfusionMatrixDisplay``; a model whose predictions all fall in one
    class says so in its title (:func:`medcore.records.one_class`)."""
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay

    from medcore.records import one_class

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
    for ax, matrix, name in ((axes[0], base, "base model"), (axes[1], best, "most accurate compressed")):
        m = np.asarray(matrix)
        if m.ndim == 3:  # multi-label: one 2x2 matrix per label, summed
            m = m.sum(0)
            name += " (labels summed)"
        labels = list(class_names) if class_names is not None and len(class_names) == len(m) else None
        ConfusionMatrixDisplay(m.astype(int), display_labels=labels).plot(
            ax=ax, cmap="Blues", colorbar=False, values_format="d")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if one_class({"test_pred_classes": predicted_classes(m)}):
            name += "\npredicts one class for every case"
        _title(ax, name, synthetic)
    return save_figure(fig, path, dpi=120)


# ---- the run report's plots (orchestrator.run_report): drawn into memory, embedded as PNG -----

def figure_png(fig, dpi: int = 100) -> bytes:
    """A figure as PNG bytes (closed afterwards)."""
    import io

    buf = io.BytesIO()
    save_figure(fig, buf, dpi=dpi)
    return buf.getvalue()


def plot_progress(points: list[dict], metric: str, baseline=None, synthetic: bool = False,
                  title: str = "search progress") -> bytes:
    """Best-so-far over evaluations (left) and over wall time (right): ``points`` from
    :func:`orchestrator.report_data.best_so_far`; each evaluation faint, failures as red x on the
    axis; ``baseline`` (value, label) as a horizontal line."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.3), sharey=True)
    values = [p["value"] for p in points if _ok(p["value"])]
    floor = min(values + ([baseline[0]] if baseline else [])) if values or baseline else 0.0
    for ax, x, xlabel in ((axes[0], "evaluation", "evaluations finished"),
                          (axes[1], "minutes", "wall time since the search started (min)")):
        seen = [(p[x], p["value"]) for p in points if _ok(p["value"])]
        if seen:
            ax.scatter(*zip(*seen), s=10, color="0.6", alpha=0.7, label="each evaluation")
        best = [(p[x], p["best"]) for p in points if _ok(p["best"])]
        if best:
            ax.step(*zip(*best), where="post", color="tab:blue", lw=1.8, label="best so far")
        failed = [p[x] for p in points if p["error"]]
        if failed:
            ax.scatter(failed, [floor] * len(failed), marker="x", color="crimson", s=22, label="failed")
        if baseline and _ok(baseline[0]):
            ax.axhline(baseline[0], ls="--", color="black", lw=1, label=baseline[1])
        ax.set_xlabel(xlabel)
    from matplotlib.ticker import MaxNLocator

    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel(metric)
    axes[0].legend(fontsize=7, loc="lower right")
    _title(axes[0], title, synthetic)
    _title(axes[1], "the same, over wall time", synthetic)
    return figure_png(fig)


def plot_curves(panels: list[tuple[str, str, list]], synthetic: bool = False) -> bytes:
    """Learning curves: one panel per experiment, ``(title, metric, [(label, [(epoch, value)])])``."""
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.3), squeeze=False)
    for ax, (title, metric, curves) in zip(axes[0], panels):
        for i, (label, pts) in enumerate(curves):
            ax.plot(*zip(*pts), marker="o", ms=2.5, lw=2 if i == 0 else 1.1, label=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend(fontsize=6)
        _title(ax, title, synthetic)
    return figure_png(fig)


STATE_COLORS = {"done": "tab:green", "failed": "crimson", "skipped": "0.7", "running": "tab:orange",
                "pending": "0.85", "interrupted": "tab:purple"}


def plot_timeline(bars: list[dict], t0: float) -> bytes:
    """Which search ran when: one bar per search (``name``, ``start``, ``end``, ``state``), its
    trials' ends as ticks (``trials``) and failed trials as red x (``failures``); minutes since ``t0``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(bars) + 1.2))
    ends = [(b.get("end") or b["start"]) for b in bars if b.get("start") is not None]
    shortest = max((max(ends) - t0) / 60 * 0.004, 0.01) if ends else 0.01  # a 5 s search still shows
    for i, b in enumerate(bars):
        if b.get("start") is None:
            continue
        start, end = (b["start"] - t0) / 60, ((b.get("end") or b["start"]) - t0) / 60
        ax.barh(i, max(end - start, shortest), left=start, height=0.5, color=STATE_COLORS.get(b.get("state"), "0.5"),
                alpha=0.6, label=b.get("state"))
        ticks = [(t - t0) / 60 for t in b.get("trials", [])]
        if ticks:
            ax.scatter(ticks, [i] * len(ticks), marker="|", color="black", s=60, lw=0.8)
        fails = [(t - t0) / 60 for t in b.get("failures", [])]
        if fails:
            ax.scatter(fails, [i] * len(fails), marker="x", color="crimson", s=30)
    ax.set_yticks(range(len(bars)), [b["name"] for b in bars])
    ax.invert_yaxis()
    ax.set_xlabel("minutes since the run started (| a trial finished, x a trial failed)")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    if unique:
        ax.legend(unique.values(), unique.keys(), fontsize=7, loc="lower right")
    return figure_png(fig)
