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


def plot_compression_front(rows: list[dict], base: dict, path: Path, synthetic: bool) -> Path:
    """Paper Fig. 2 (left): objective space, feasible / infeasible points, D*, base marked."""
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
        ax.axhline(0.96 * base["accuracy"], ls="--", lw=0.8, color="black", label="accuracy constraint")
    ax.set_xlabel("f1: FLOPs x non-zero rate / base FLOPs")
    ax.set_ylabel("test accuracy (1 - f2)")
    ax.legend(fontsize=7)
    _title(ax, "Compression search: objective space", synthetic)
    return save_figure(fig, path, dpi=120)


def plot_time_vs_nonzero(rows: list[dict], base: dict, path: Path, synthetic: bool) -> Path:
    """Paper Fig. 2 (right): inference time against non-zero weight rate, quantized marked."""
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
    ax.set_ylabel("inference time, batch 128, CPU (ms)")
    ax.legend(fontsize=7)
    _title(ax, "Inference time vs sparsity", synthetic)
    return save_figure(fig, path, dpi=120)


def plot_confusions(base, best, path: Path, synthetic: bool) -> Path:
    """Paper Fig. 3: test confusion matrices of the base and the most accurate compressed model."""
    import numpy as np

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
    for ax, matrix, name in ((axes[0], base, "base model"), (axes[1], best, "most accurate compressed")):
        m = np.asarray(matrix)
        if m.ndim == 3:  # multi-label: one 2x2 matrix per label, summed
            m = m.sum(0)
        ax.imshow(m, cmap="Blues")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        _title(ax, name, synthetic)
    return save_figure(fig, path, dpi=120)
