"""The strategy search's tables, statistics and figures (:mod:`orchestrator.searches.strategy`).

From what the search left behind (the Tune outcomes, the Optuna study, the retrain's curves) to
the rows of ``trials.csv`` / ``curves.csv``, the retrain's figures in ``summary.json``, Optuna's
importances and the plots. Kept apart from the search so the search module holds the stages
and the searcher only; this module does not import it (the search imports this one).
"""
from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from medcore.records import FAILED, OK
from orchestrator import reports

# The Optuna trial states as written to trials.csv (``TrialState.name``).
PRUNED, COMPLETE, FAIL = "PRUNED", "COMPLETE", "FAIL"
# Per-epoch columns kept in curves.csv, besides the objectives.
CURVE_COLUMNS = ("epoch", "train_loss", "val_loss", "val_acc", "val_auc", "best_val_acc", "best_val_auc")


def network_label(source: dict) -> str:
    """The trained network in a few words (memory messages): its name, zoo id or meta-space pick."""
    if source.get("recommended"):
        return f"meta-space model {source['recommended']}"
    if source.get("from_zoo"):
        return f"zoo model {source['from_zoo']}"
    return str(source.get("model", "network"))


def is_final(row: dict) -> bool:
    """The retrain's last report (test of the val-selected weights), not an epoch row (NaN there)."""
    return bool(row.get("final") == True)  # noqa: E712 -- NaN in the epoch rows of a dataframe


def trial_rows(outcomes, study, numbers: dict, metrics: list[str], default: dict) -> tuple[list[dict], list[dict]]:
    """(rows of trials.csv, rows of curves.csv) of the search's Tune ``outcomes``: each trial's
    strategy, Optuna state and values from ``study`` (``numbers``: Tune trial id -> Optuna trial
    number), its status and last metrics; ``default``: the default recipe, flagged in its row."""
    by_number = {t.number: t for t in study.trials}
    rows, curves = [], []
    for o in outcomes:
        tid = o.trial_id
        number = numbers.get(tid)
        ot = by_number.get(number)
        strategy = dict(ot.params) if ot is not None else dict(o.config)
        m = o.metrics
        state = ot.state.name if ot is not None else (FAIL if o.failed else "UNKNOWN")
        status = FAILED if o.failed or m.get("status") == FAILED else OK
        df = o.metrics_dataframe
        epochs = int(df["epoch"].max()) if df is not None and "epoch" in df and len(df) else 0
        row = {"trial_id": tid, "optuna_number": number, "optuna_state": state, "status": status,
               "reason": o.reason if o.failed else m.get("reason", ""), "epochs": epochs,
               "default_recipe": strategy == default, **strategy,
               **{k: m.get(k) for k in ("best_val_acc", "best_val_auc", "best_epoch", "val_acc", "val_auc")},
               **{k: m.get(k) for k in metrics if k not in ("best_val_acc", "best_val_auc")}}
        if ot is not None and ot.state == TrialState.COMPLETE:
            row["value"] = ot.values[0] if len(ot.values) == 1 else None
            if len(ot.values) > 1:
                row.update({f"value_{k}": v for k, v in zip(metrics, ot.values)})
        rows.append(row)
        if df is not None and len(df):
            keep = [c for c in dict.fromkeys((*CURVE_COLUMNS, *metrics)) if c in df]
            for rec in df[keep].to_dict("records"):
                curves.append({"trial_id": tid, "optuna_number": number, **rec})
    rows.sort(key=lambda r: (r["optuna_number"] is None, r["optuna_number"] or 0))
    return rows, curves


def retrain_report(entry, metrics: list[str]) -> dict | None:
    """One retrained strategy in ``summary.json``: its final figures, the test ACC/AUC at epoch
    10, at every ``@epoch`` objective and at the last epoch, and its checkpoint. ``entry``: the
    retrain's ``report``, ``weights`` (checkpoint path or None) and per-epoch ``curve``, or None
    when it has none."""
    if entry is None:
        return None
    m, curve = entry["report"], entry["curve"]
    out = {k: m.get(k) for k in ("status", "reason", "val_acc", "val_auc", "test_acc", "test_auc", "best_epoch",
                                  "epoch", "params")}
    for k in sorted({int(key.split("@")[1]) for key in metrics if "@" in key and key.split("@")[1].isdigit()} | {10}):
        hit = [r for r in curve if r.get("epoch") == k and not is_final(r)]
        if hit:
            out[f"test_acc@{k}"], out[f"test_auc@{k}"] = hit[0].get("test_acc"), hit[0].get("test_auc")
    epochs = [r for r in curve if not is_final(r)]
    if epochs:
        out["test_acc@final"], out["test_auc@final"] = epochs[-1].get("test_acc"), epochs[-1].get("test_auc")
    out["checkpoint"] = entry["weights"]
    return out


# ---- importances and plots -------------------------------------------------------------------------
def param_importances(study, metrics: list[str]) -> dict:
    """Optuna's parameter importances (fANOVA) per objective; needs two COMPLETE trials that differ."""
    out: dict = {"evaluator": "optuna fANOVA"}
    try:
        if len(metrics) == 1:
            out["values"] = {metrics[0]: dict(optuna.importance.get_param_importances(study))}
        else:
            out["values"] = {m: dict(optuna.importance.get_param_importances(study, target=lambda t, i=i: t.values[i]))
                             for i, m in enumerate(metrics)}
    except (RuntimeError, ValueError) as exc:
        out["values"], out["error"] = {}, str(exc).splitlines()[0][:300]
    return out


def plot_learning_curves(rows, curves, best, metrics, metric: str, path: Path, synthetic: bool) -> Path:
    """Validation metric per epoch: the three best strategies vs the default recipe (dashed)."""
    plt = reports._plt()
    key = metric  # val_acc / val_auc per epoch
    done = [r for r in rows if r["optuna_state"] == COMPLETE and r["status"] == OK]
    score = (lambda r: r.get("value") if r.get("value") is not None else r.get(f"value_{metrics[-1]}") or 0.0)
    top = sorted((r for r in done if not r["default_recipe"]), key=score, reverse=True)[:3]
    if best is not None and best not in top:
        top = [best] + top[:2]
    by_trial: dict = {}
    for c in curves:
        by_trial.setdefault(c["trial_id"], []).append(c)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in rows:  # every other trial, faint: where ASHA stopped them
        pts = by_trial.get(r["trial_id"], [])
        if pts and r not in top and not r["default_recipe"]:
            ax.plot([p["epoch"] for p in pts], [p.get(key) for p in pts], color="0.85", lw=0.8)
    for i, r in enumerate(top):
        pts = by_trial.get(r["trial_id"], [])
        label = f"#{r['optuna_number']}: {r['init']}, {r['norm']}, {r['optimizer']} {r['lr']:.1e}, {r['augment']}"
        ax.plot([p["epoch"] for p in pts], [p.get(key) for p in pts], lw=2 if i == 0 else 1.2, label=label)
    for r in rows:
        if r["default_recipe"]:
            pts = by_trial.get(r["trial_id"], [])
            ax.plot([p["epoch"] for p in pts], [p.get(key) for p in pts], "k--", lw=1.5,
                    label=f"default recipe (#{r['optuna_number']})")
            break
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.legend(fontsize=7)
    reports._title(ax, "learning curves: best strategies vs the default recipe", synthetic)
    return reports.save_figure(fig, path, dpi=120)


def plot_importances(values: dict, path: Path, synthetic: bool) -> Path:
    """One bar chart per objective of :func:`param_importances`' values."""
    plt = reports._plt()
    fig, axes = plt.subplots(1, len(values), figsize=(5 * len(values), 3.5), squeeze=False)
    for ax, (objective, imp) in zip(axes[0], values.items()):
        names = list(imp)[::-1]
        ax.barh(names, [imp[n] for n in names], color="steelblue")
        ax.set_xlabel(f"importance for {objective}")
        reports._title(ax, "Optuna parameter importances (fANOVA)", synthetic)
    return reports.save_figure(fig, path, dpi=120)


def plot_pareto(rows, study, metrics, path: Path, synthetic: bool) -> Path:
    """Two objectives: every trial, the study's Pareto front and the default recipe."""
    plt = reports._plt()
    front = {t.number for t in study.best_trials}
    xs, ys = f"value_{metrics[0]}", f"value_{metrics[1]}"
    done = [r for r in rows if r.get(xs) is not None]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter([r[xs] for r in done], [r[ys] for r in done], c="0.6", s=18, label="trials")
    pf = sorted((r for r in done if r["optuna_number"] in front), key=lambda r: r[xs])
    ax.plot([r[xs] for r in pf], [r[ys] for r in pf], "o-", color="crimson", label="Pareto front (NSGA-II)")
    for r in done:
        if r["default_recipe"]:
            ax.scatter([r[xs]], [r[ys]], marker="*", s=120, c="k", label="default recipe")
    ax.set_xlabel(metrics[0])
    ax.set_ylabel(metrics[1])
    ax.legend(fontsize=7)
    reports._title(ax, "two objectives: early vs final accuracy", synthetic)
    return reports.save_figure(fig, path, dpi=120)
