"""Result tables and PNG plots. Every artefact made from synthetic data says so."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

SYNTHETIC_BANNER = "SYNTHETIC DATA (not a real MedMNIST result)"


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # headless: workers and CI have no display
    import matplotlib.pyplot as plt

    return plt


def _title(ax, text: str, synthetic: bool):
    ax.set_title(f"{text}\n{SYNTHETIC_BANNER}" if synthetic else text, fontsize=10,
                 color="crimson" if synthetic else "black")


def write_table(records: list[dict], path: Path, synthetic: bool) -> Path:
    """One row per record; nested values as JSON text; a ``synthetic`` column on every row."""
    rows = []
    for r in records:
        rows.append({k: (json.dumps(v) if isinstance(v, (list, dict, tuple)) else v) for k, v in r.items()})
    df = pd.DataFrame(rows)
    df["synthetic"] = synthetic
    df.to_csv(path, index=False)
    return path


def write_json(obj: dict, path: Path) -> Path:
    path.write_text(json.dumps(_finite(obj), indent=2, sort_keys=False))
    return path


def _finite(obj):
    """JSON has no inf/NaN: write null instead."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def plot_best_per_generation(points: list[tuple[int, float]], path: Path, metric: str, synthetic: bool) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    gens = [g for g, f in points if math.isfinite(f)]
    vals = [f for g, f in points if math.isfinite(f)]
    ax.step(gens, vals, where="post", marker="o")
    ax.set_xlabel("generation (0 = opposition-based initialisation)")
    ax.set_ylabel(f"best {metric} so far")
    _title(ax, "ODE: best fitness per generation", synthetic)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_metric_vs_params(search: list[dict], final: list[dict], path: Path, synthetic: bool,
                          metric: str = "test_auc") -> Path:
    """Test AUC against parameter count: every evaluated model, the retrained top-k marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    pts = [(r["params"], r[metric]) for r in search if _ok(r.get(metric)) and r.get("params")]
    if pts:
        ax.scatter(*zip(*pts), s=14, alpha=0.6, label="search (low fidelity)")
    top = [(r["params"], r[metric]) for r in final if _ok(r.get(metric)) and r.get("params")]
    if top:
        ax.scatter(*zip(*top), s=60, marker="*", color="crimson", label="top-k retrained")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(metric.replace("_", " "))
    ax.legend(fontsize=8)
    _title(ax, f"{metric} vs parameters", synthetic)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _ok(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)
