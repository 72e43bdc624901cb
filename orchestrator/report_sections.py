"""The findings at the head of each search in ``report.html``: what it picked against its baseline.

:func:`headline` turns a search's ``summary.json`` into a small table (one row per model: the
pick, its baseline, and for compression the fastest feasible point) with the metric, params,
FLOPs, latency and, where a search ran seeds, their spread; plus a one-line verdict, warnings
(a model that predicts one class for every case, :func:`medcore.records.one_class`) and the
baseline value the progress plot draws as a line. One reader per search type; a type without
one gets no headline (its raw summary is still in the report).
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from medcore.compression_genome import CONV_SCOPE, CONV_TYPE, LINEAR_SCOPE, LINEAR_TYPE, QUANTIZE
from medcore.records import one_class
from orchestrator.report_data import find_trial

ONE_CLASS_TABLE = "ONE CLASS"
ONE_CLASS_SENTENCE = "predicts one class for every case"

# (key, column header, kind): every headline row is a dict over these keys; empty columns are left out.
COLUMNS = (
    ("model", "model", "text"), ("val", "val", "metric"), ("search_val", "search-phase val", "metric"),
    ("test_auc", "test AUC", "metric"), ("test_acc", "test ACC", "metric"),
    ("test_balanced_accuracy", "test balanced ACC", "metric"), ("dice", "val Dice", "metric"),
    ("test_dice", "test Dice", "metric"), ("gain", "Dice gain", "metric"), ("params", "params", "count"),
    ("flops", "GFLOPs", "gflops"), ("f1_relative", "cost vs base", "ratio"), ("latency_ms", "latency (ms)", "ms"),
    ("size_mb", "size (MB)", "ms"), ("flags", "flags", "text"),
)


@dataclass
class Headline:
    rows: list[dict] = field(default_factory=list)
    verdict: str = ""
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # the baseline drawn on the progress plot: (value, label, the experiment metric it compares with)
    baseline: tuple[float, str] | None = None
    labels: dict = field(default_factory=dict)  # column header overrides (``val`` -> ``val AUC``)
    one_class_said: bool = False  # the summary's own warning already names the one-class models


def finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt(value, kind: str = "metric") -> str:
    """A cell: metrics to 4 digits, counts with thousands separators, FLOPs in G, a seed spread as
    mean ± sd (n); '–' for what was not measured."""
    if isinstance(value, dict) and "mean" in value:
        sd = value.get("sd")
        spread = f" ± {fmt(sd, kind)}" if finite(sd) and value.get("n", 1) > 1 else ""
        return f"{fmt(value['mean'], kind)}{spread} ({value.get('n')} seed{'s' if value.get('n') != 1 else ''})"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if kind == "text" or isinstance(value, str) or isinstance(value, bool):
        return str(value)
    if kind == "count":
        return f"{int(round(value)):,}"
    if kind == "gflops":
        return f"{value / 1e9:.3g}"
    if kind == "ratio":
        return f"{value:.3g}x"
    if kind == "ms":
        return f"{value:.3g}"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.4g}"


def spread(values) -> dict | None:
    vals = [float(v) for v in values if finite(v)]
    if not vals:
        return None
    return {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def _known(*sources: dict) -> dict:
    """The sources merged, later ones winning, a None never hiding an earlier value."""
    return {k: v for src in sources for k, v in (src or {}).items() if v is not None}


def _mean(v):
    return v["mean"] if isinstance(v, dict) else v


def _flag(row: dict, source: dict | None) -> dict:
    """Mark a headline row whose model predicts one class for every case (``_one_class``: the
    sentence under the table names it)."""
    if source is not None and one_class(source):
        row["flags"] = ONE_CLASS_TABLE if not row.get("flags") else f"{row['flags']}; {ONE_CLASS_TABLE}"
        row["_one_class"] = True
    return row


def _verdict(pick: dict, base: dict, key: str, label: str, lower_better: bool = False) -> str:
    a, b = _mean(pick.get(key)), _mean(base.get(key))
    if not (finite(a) and finite(b)):
        return ""
    d = a - b
    word = "ties" if abs(d) < 5e-4 else ("beats" if (d < 0 if lower_better else d > 0) else "trails")
    return f"{pick['model']} {word} {base['model']} on {label}: {a:.4f} vs {b:.4f} ({d:+.4f})."




# ---- one reader per search type -------------------------------------------------------------

def _ode(summary: dict, out: Path, ex: list) -> Headline:
    metric = summary.get("metric") or "val_auc"
    h = Headline(labels={"val": metric.replace("_", " ") + " (retrained)",
                         "search_val": f"{metric.replace('_', ' ')} (search phase, low fidelity)"})
    best, base = summary.get("pick") or summary.get("best"), summary.get("baseline")
    if best:
        arch = json.dumps(best.get("architecture"), sort_keys=True)
        retrained = next((t for t in summary.get("top") or []
                          if json.dumps(t.get("architecture"), sort_keys=True) == arch), {})
        src = _known(find_trial(ex, "ode_retrain", architecture=best.get("architecture")), retrained, best)
        val = best.get(metric) if finite(best.get(metric)) else retrained.get(metric)
        h.rows.append(_flag({"model": f"pick: {best.get('description') or 'best cell'}", "val": val,
                             "search_val": next((v for v in (best.get("search_val_metric"), best.get("val_metric"),
                                                 retrained.get("search_val_metric")) if v is not None), None),
                             "test_auc": best.get("test_auc"), "test_acc": best.get("test_acc"),
                             "params": best.get("params"), "flops": best.get("flops")}, src))
    else:
        h.warnings.append("no retrained model finished: the search has no pick yet")
    if base:
        row = {"model": f"baseline: {base.get('name')}", "val": base.get(metric), "test_auc": base.get("test_auc"),
               "test_acc": base.get("test_acc"), "params": base.get("params"), "flops": base.get("flops")}
        if base.get("status") not in (None, "ok"):
            row["flags"] = f"{base.get('status')}: {base.get('reason') or 'no result'}"
        h.rows.append(_flag(row, _known(find_trial(ex, "ode_baseline"), base)))
        if finite(base.get(metric)):
            h.baseline = (float(base[metric]), f"baseline {base.get('name')} ({metric}, full training)")
    if len(h.rows) == 2:
        h.verdict = _verdict(h.rows[0], h.rows[1], "val", f"{metric} (both fully trained)")
    if summary.get("warning"):  # the search's own one-class sentence
        h.warnings.append(str(summary["warning"]))
        h.one_class_said = True
    h.notes.append(f"{summary.get('n_evaluated', 0)} candidates trained, {summary.get('n_failed', 0)} failed, "
                   f"{summary.get('n_infeasible', 0)} infeasible (not trained), {summary.get('n_duplicates', 0)} "
                   f"duplicates; {summary.get('generations', 0)} generations")
    return h


def _compress(summary: dict, out: Path, ex: list) -> Headline:
    h = Headline(labels={"latency_ms": _latency_label(summary)})
    base = summary.get("base") or {}
    constraint = summary.get("constraint") or {}
    rows_src = []
    b = {"model": f"base: {base.get('model', 'network')}", "test_acc": base.get("accuracy"),
         "test_auc": base.get("auc"), "test_balanced_accuracy": base.get("balanced_accuracy"),
         "flops": base.get("flops"), "f1_relative": 1.0, "latency_ms": base.get("inference_ms"),
         "size_mb": base.get("size_mb"), "params": (base.get("train_metrics") or {}).get("params")}
    accurate, fast = summary.get("most_accurate"), summary.get("fastest_feasible")
    same = bool(accurate and fast and accurate.get("trial_id") == fast.get("trial_id"))
    for label, entry in (("most accurate" + (" and fastest feasible" if same else "") + " compressed", accurate),
                         ("fastest feasible", None if same else fast)):
        if entry:
            rows_src.append((_flag({"model": f"{label} ({_genome(entry)})", "test_acc": entry.get("accuracy"),
                                    "test_auc": entry.get("auc"),
                                    "test_balanced_accuracy": entry.get("balanced_accuracy"),
                                    "flops": entry.get("flops"), "f1_relative": entry.get("f1_relative"),
                                    "latency_ms": entry.get("inference_ms"), "size_mb": entry.get("size_mb")},
                                   _known(find_trial(ex, "compress_search", trial_id=entry.get("trial_id")), entry)),
                             entry))
    # the uncompressed evaluation's fields, else what the base's training measured (same model)
    measured = _known(base.get("train_metrics") or {}, find_trial(ex, "compress_base_eval"), base)
    h.rows = [_flag(b, measured)] + [r for r, _ in rows_src]
    if finite(base.get("accuracy")):
        h.baseline = (float(base["accuracy"]), "base model (test accuracy)")
    if summary.get("warning"):  # the search's own sentence (it counts every flagged point)
        h.warnings.append(str(summary["warning"]))
        h.one_class_said = True
    fast = summary.get("fastest_feasible")
    if fast and finite(fast.get("inference_ratio")):
        h.verdict = (f"fastest feasible point: {fast['inference_ratio']:.2f}x the base's inference time, "
                     f"test accuracy {fast.get('accuracy_delta', 0):+.4f}")
    hv = summary.get("hypervolume")
    h.notes.append(f"{summary.get('n_evaluated', 0)} points evaluated ({summary.get('n_failed', 0)} failed), "
                   f"{len(summary.get('pareto') or [])} in D*, hypervolume {fmt(hv)}"
                   + (f"; feasible iff test {constraint.get('metric')} >= {fmt(constraint.get('threshold'))}"
                      if constraint.get("metric") else ""))
    return h


def _latency_label(summary: dict) -> str:
    batch = (summary.get("config") or {}).get("inference_batch")
    return f"latency, batch {batch} (ms)" if batch else "latency (ms)"


def _genome(entry: dict) -> str:
    parts = []
    for k in (LINEAR_SCOPE, CONV_SCOPE, LINEAR_TYPE, CONV_TYPE, QUANTIZE):
        if k in entry and entry[k] is not None:
            parts.append(f"{k}={entry[k]:g}" if isinstance(entry[k], (int, float)) else f"{k}={entry[k]}")
    return " ".join(parts) or entry.get("trial_id", "")


def _strategy(summary: dict, out: Path, ex: list) -> Headline:
    metric = ((summary.get("config") or {}).get("fit") or {}).get("metric") or "val_auc"
    h = Headline(labels={"val": metric.replace("_", " ") + " (retrained)"})
    best, default = summary.get("best") or {}, summary.get("default") or {}
    retrained, dflt = best.get("retrained") or {}, default.get("retrained") or {}
    if best:
        h.rows.append(_flag({"model": f"pick: #{best.get('optuna_number')} {_recipe(best.get('strategy'))}",
                             "val": retrained.get(metric), "search_val": best.get("search_value"),
                             "test_auc": retrained.get("test_auc"), "test_acc": retrained.get("test_acc"),
                             "params": retrained.get("params")},
                            _known(find_trial(ex, "strategy_retrain", label="best"), retrained)))
        h.labels["search_val"] = "search value"
    if dflt or default.get("strategy"):
        h.rows.append(_flag({"model": f"baseline: default recipe {_recipe(default.get('strategy'))}",
                             "val": dflt.get(metric), "test_auc": dflt.get("test_auc"),
                             "test_acc": dflt.get("test_acc"), "params": dflt.get("params")},
                            _known(find_trial(ex, "strategy_retrain", label="default"), dflt)))
    value = _default_search_value(out)
    if value is not None:
        h.baseline = (value, "default recipe (search trial)")
    if len(h.rows) == 2:
        h.verdict = _verdict(h.rows[0], h.rows[1], "val", f"{metric} (both retrained)")
    saved = summary.get("trial_epochs_saved")
    h.notes.append(f"{summary.get('n_evaluated', 0)} trials ({summary.get('n_complete', 0)} complete, "
                   f"{summary.get('n_pruned', 0)} pruned, {summary.get('n_failed', 0)} failed), sampler "
                   f"{summary.get('sampler')}, scheduler {summary.get('scheduler')}; "
                   f"{f'{saved:.0%}' if finite(saved) else '–'} of the trial epochs saved by early stopping")
    return h


def _recipe(strategy) -> str:
    if not isinstance(strategy, dict):
        return ""
    lr = strategy.get("lr")
    parts = [strategy.get("init"), strategy.get("norm"), strategy.get("optimizer"),
             f"lr {lr:.1e}" if finite(lr) else None, strategy.get("augment")]
    return "(" + ", ".join(str(p) for p in parts if p) + ")"


def _default_search_value(out: Path) -> float | None:
    """The default recipe's own search value, from ``trials.csv`` (where it was one of the trials)."""
    import pandas as pd

    try:
        df = pd.read_csv(out / "trials.csv")
    except Exception:
        return None
    if "default_recipe" not in df or "value" not in df:
        return None
    hit = df[df["default_recipe"].astype(str) == "True"]["value"].dropna()
    return float(hit.iloc[0]) if len(hit) else None


def _darts(summary: dict, out: Path, ex: list) -> Headline:
    import pandas as pd

    h = Headline()
    best = summary.get("best") or {}
    backbone = best.get("backbone")
    try:
        stage3 = pd.read_csv(out / "stage3.csv")
        stage3 = stage3[stage3["status"] == "ok"]
    except Exception:
        stage3 = None
    s1 = next((r for r in summary.get("stage1") or [] if r.get("backbone") == backbone), {})
    if best:
        runs = None
        if stage3 is not None and "genotype" in stage3:
            key = json.dumps(best.get("genotype"), sort_keys=True)
            runs = stage3[(stage3["backbone"] == backbone) & (stage3["skip"] == "iac") & stage3["genotype"].map(
                lambda g: _same_genotype(g, key))]
        h.rows.append({"model": f"pick: IAC cell on {backbone} (epoch {best.get('epoch')})",
                       "dice": spread(runs["val_dice"]) if runs is not None and len(runs) else best.get("dice"),
                       "test_dice": spread(runs["test_dice"]) if runs is not None and len(runs) else None,
                       "gain": spread(runs["dice_gain"]) if runs is not None and len(runs) else best.get("gain"),
                       "params": _mean(spread(runs["skip_params"])) if runs is not None and len(runs) else None})
        if stage3 is not None:
            for kind, rs in stage3[(stage3["backbone"] == backbone) & (stage3["skip"] != "iac")].groupby("skip"):
                h.rows.append({"model": f"skip baseline: {kind}", "dice": spread(rs["val_dice"]),
                               "test_dice": spread(rs["test_dice"]), "gain": spread(rs["dice_gain"]),
                               "params": _mean(spread(rs["skip_params"]))})
    if s1:
        h.rows.append({"model": f"baseline: plain {backbone} U-Net (Stage I)", "dice": s1.get("val_dice"),
                       "test_dice": s1.get("test_dice"), "params": s1.get("params")})
        h.labels["params"] = "params (skip cell / U-Net)"
    if finite(summary.get("baseline_dice")):
        h.baseline = (float(summary["baseline_dice"]), f"plain {backbone} U-Net (val Dice)")
    if best and s1:
        h.verdict = _verdict(h.rows[0], h.rows[-1], "dice", "val Dice (mean over seeds)")
    tests = (summary.get("statistics") or {}).get("iac") if isinstance(summary.get("statistics"), dict) else None
    if isinstance(tests, dict):
        p = {k: tests[k] for k in ("ttest_p", "wilcoxon_p") if finite(tests.get(k))}
        if p:
            h.notes.append("IAC vs plain U-Net over runs: " + ", ".join(f"{k} {v:.3g}" for k, v in p.items()))
    h.notes.append(f"{summary.get('n_evaluated', 0)} Stage III runs, {summary.get('n_failed', 0)} failed")
    return h


def _same_genotype(value, key: str) -> bool:
    try:
        return json.dumps(json.loads(value) if isinstance(value, str) else value, sort_keys=True) == key
    except ValueError:
        return False


def _mednns(summary: dict, out: Path, ex: list) -> Headline:
    h = Headline(labels={"val": "T1 (recommended, transferred)", "test_acc": "scratch",
                         "test_auc": "ResNet baseline"})
    for entry in summary.get("loo") or []:
        rec = entry.get("recommended") or {}
        h.rows.append({"model": f"{entry.get('target')}: {rec.get('model_id', '?')} from {rec.get('source_dataset')}",
                       "val": entry.get("t1_acc"), "test_acc": entry.get("scratch_acc"),
                       "test_auc": entry.get("resnet_acc")})
    if summary.get("t1_beats_both"):
        h.verdict = f"the recommended model beats both scratch training and the ResNet on {summary['t1_beats_both']} " \
                    f"targets (test accuracy after {summary['loo'][0].get('epoch') if summary.get('loo') else '?'} " \
                    f"fine-tuning epochs)."
    h.notes.append(f"{summary.get('n_zoo', 0)} subnets in the zoo; test accuracy per target (leave one dataset out)")
    return h


READERS = {"ode": _ode, "compress": _compress, "strategy": _strategy, "darts": _darts, "mednns": _mednns}


def headline(kind: str | None, summary: dict, out: Path, experiments: list = ()) -> Headline | None:
    """The headline of one search from its summary; ``experiments`` (its Tune trials,
    :func:`orchestrator.report_data.search_experiments`) fill in what the summary left out."""
    reader = READERS.get(summary.get("search") or kind or "")
    if reader is None:
        return None
    h = reader(summary, out, list(experiments))
    flagged = [r["model"] for r in h.rows if r.get("_one_class")]
    if flagged and not h.one_class_said:
        h.warnings.append(f"{'; '.join(flagged)}: {'each ' if len(flagged) > 1 else ''}{ONE_CLASS_SENTENCE} on "
                          f"the test split, so its accuracy is only that class's share.")
    return h


def table_html(h: Headline, e) -> str:
    """The headline rows as an HTML table, leaving out columns no row measured."""
    cols = [(k, h.labels.get(k, label), kind) for k, label, kind in COLUMNS
            if any(r.get(k) not in (None, "") and not (isinstance(r.get(k), float) and math.isnan(r[k]))
                   for r in h.rows)]
    head = "".join(f"<th>{e(label)}</th>" for _, label, _ in cols)
    body = ""
    for r in h.rows:
        cells = []
        for k, _, kind in cols:
            text = fmt(r.get(k), kind)
            cls = ' class="flag"' if k == "flags" and text != "–" else ""
            cells.append(f"<td{cls}>{e(text)}</td>")
        body += f"<tr>{''.join(cells)}</tr>"
    return f'<table class="headline"><tr>{head}</tr>{body}</table>' if h.rows else ""
