"""``RUN_DIR/report.html``: one self-contained page for a coordinator run, findings first.

At the top, each search in a line (state, time, trials, what it found), then the run's timeline
(which search ran when, trials per minute, failures with their reasons). Per search: the pick
against its baseline (:mod:`orchestrator.report_sections`), its progress (best so far over
evaluations and over wall time, the baseline as a line), learning curves of its best trials and,
for compression, the Pareto front with the base model. Then the zoo's leaderboard per dataset
(models with weights first, each with its export command). The raw tables and every plot a search
wrote stay at the end, folded. Plots are embedded PNGs: the page needs no server. Everything is
read from the run folder (summaries, status files, Tune's trial folders), so it works on a
partially finished run, while it runs, and after; a section that cannot be read says why.
"""
from __future__ import annotations

import base64
import html
import math
import shlex
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import atomic
from orchestrator.manifest import read_manifest

REPORT = "report.html"
TABLE_ROWS = 15
CELL_CHARS = 60
LEADERBOARD_ROWS = 10
CURVE_TRIALS = 5
CURVE_PANELS = 3
# The metric a dataset's leaderboard ranks by: the first its models have. Validation first
# (selecting on test leaks the test split); test metrics for what has no validation metric.
RANK_METRICS = ("val_auc", "val_dice", "val_acc", "test_auc", "test_dice", "test_acc")
# Plots a search writes that belong with its findings (the rest are in the folded raw part).
FINDING_PLOTS = {"compress": ("objective_space.png", "confusion_matrices.png", "inference_vs_nonzero.png"),
                 "strategy": ("pareto_front.png",), "darts": ("dice_per_stage.png",),
                 "mednns": ("finetune_curves.png",)}

STYLE = """
body{font-family:sans-serif;margin:2em;max-width:1200px;color:#222}
h1{font-size:1.5em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-top:.5em}h3{font-size:1.05em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}th{background:#f4f4f4}
table.headline{font-size:.95em}table.headline td:first-child{font-weight:bold}
.state-done{color:#186a1e}.state-failed,.state-skipped{color:#b00020}.state-running,.state-pending{color:#8a5a00}
.synthetic{color:crimson;font-weight:bold}.note{color:#666;font-size:.85em}img{max-width:560px;margin:4px}
img.wide{max-width:100%}.verdict{font-size:1.05em}.warning,.flag{color:#b00020;font-weight:bold}
code{background:#f4f4f4;padding:0 3px;font-size:.85em}details{margin:.5em 0}summary{cursor:pointer}
"""


def _e(value) -> str:
    return html.escape(str(value))


def _short(value, limit: int = CELL_CHARS):
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _kv_table(pairs) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_short(v, 200))}</td></tr>" for k, v in pairs)
    return f"<table>{rows}</table>" if rows else ""


def _frame_html(df, limit: int = TABLE_ROWS) -> str:
    shown = df.head(limit).apply(lambda col: col.map(_short))
    note = f'<p class="note">first {limit} of {len(df)} rows</p>' if len(df) > limit else ""
    return shown.to_html(index=False, escape=True, border=0, na_rep="") + note


def _csv_html(path: Path) -> str:
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except Exception as exc:  # an empty or half-written table does not stop the report
        return f'<p class="note">{_e(path.name)}: unreadable ({_e(type(exc).__name__)})</p>'
    if "status" in df.columns:  # evaluated rows first (an ODE table starts with infeasible genomes)
        df = df.sort_values("status", key=lambda s: s != "ok", kind="stable")
    return f"<h3>{_e(path.name)} ({len(df)} rows)</h3>" + _frame_html(df)


def _png_html(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{_e(path.name)}" title="{_e(path.name)}">'


def _png_bytes_html(data: bytes, alt: str) -> str:
    return (f'<img class="wide" src="data:image/png;base64,{base64.b64encode(data).decode()}" alt="{_e(alt)}" '
            f'title="{_e(alt)}">')


def _guarded(what: str, build, *args) -> str:
    """One section; a file it cannot read gives a line saying so, never a missing report."""
    try:
        return build(*args)
    except Exception as exc:  # a half-written or unexpected file: the rest of the report still comes
        return f'<p class="note">{_e(what)} unavailable: {_e(type(exc).__name__)}: {_e(str(exc)[:200])}</p>'


def _summary_pairs(summary: dict):
    """Scalars of the summary, and one level into small dicts (``best.test_auc``)."""
    skip = {"config", "top", "pareto", "experiments", "out"}
    for key, value in summary.items():
        if key in skip:
            continue
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(v, (dict, list)):
                    yield f"{key}.{k}", v
        elif not isinstance(value, list):
            yield key, value


def _minutes(seconds) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _clock(ts) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "–"


# ---- one search, as the run folder tells it ----------------------------------------------------

@dataclass
class SearchView:
    name: str
    rec: dict
    out: Path
    summary: dict | None = None
    status: dict = field(default_factory=dict)
    experiments: list = field(default_factory=list)
    storage_note: str = ""
    headline: object = None
    headline_error: str = ""

    @classmethod
    def load(cls, name: str, rec: dict) -> "SearchView":
        from orchestrator.report_data import search_experiments
        from orchestrator.report_sections import headline
        from orchestrator.status import read_status

        out = Path(rec["out"])
        view = cls(name=name, rec=rec, out=out)
        summary = atomic.read_json(out / "summary.json") if out.is_dir() else None
        view.summary = summary if isinstance(summary, dict) else None
        status = read_status(out) if out.is_dir() else None
        view.status = status if isinstance(status, dict) else {}
        try:
            view.experiments, view.storage_note = search_experiments(out, view.status) if out.is_dir() else ([], "")
        except OSError as exc:
            view.storage_note = f"Tune folders unreadable: {exc}"
        if view.summary:
            try:
                view.headline = headline(rec.get("type"), view.summary, out, view.experiments)
            except Exception as exc:  # an older or half-written summary: its raw fields are still shown
                view.headline_error = f"{type(exc).__name__}: {str(exc)[:200]}"
        return view

    @property
    def state(self) -> str:
        return self.rec.get("state", "?")

    @property
    def start(self):
        return self.rec.get("started") or self.status.get("started")

    @property
    def end(self):
        if self.rec.get("ended"):
            return self.rec["ended"]
        if self.state == "running":
            return time.time()
        return self.status.get("updated") if self.start else None

    def trial_counts(self) -> tuple[int, int]:
        """(finished, failed) trials: the status file's counts, else Tune's trial folders."""
        entries = (self.status.get("experiments") or {}).values()
        if entries:
            return (sum(int(e.get("done", 0)) + int(e.get("failed", 0)) for e in entries),
                    sum(int(e.get("failed", 0)) for e in entries))
        trials = [t for e in self.experiments for t in e.trials]
        return sum(1 for t in trials if t.records or t.error), sum(1 for t in trials if t.error)

    def failure_reasons(self) -> Counter:
        """Failed evaluations by reason: the summary's counts, else the errored trials' last lines."""
        reasons = Counter()
        if self.summary and isinstance(self.summary.get("failure_reasons"), dict):
            reasons.update({str(k): int(v) for k, v in self.summary["failure_reasons"].items()})
        else:
            reasons.update(t.error for e in self.experiments for t in e.trials if t.error)
        return reasons


def _verdict_text(view: SearchView) -> str:
    h = view.headline
    if h is not None and h.verdict:
        return h.verdict
    if h is not None and h.rows:
        return h.rows[0]["model"]
    if not view.summary:
        stage = view.status.get("stage")
        return f"no summary yet{f' (stage {stage})' if stage else ''}"
    return ""


def _overview_html(views: list[SearchView]) -> str:
    rows = []
    for v in views:
        done, failed = v.trial_counts()
        duration = (v.end - v.start) if v.start and v.end else None
        warn = ' <span class="warning">(!)</span>' if v.headline is not None and v.headline.warnings else ""
        rows.append(
            f'<tr><td><a href="#{_e(v.name)}">{_e(v.name)}</a></td><td>{_e(v.rec.get("type"))}</td>'
            f'<td>{_e(v.rec.get("dataset"))}</td><td class="state-{_e(v.state)}">{_e(v.state)}</td>'
            f"<td>{_e(_minutes(duration))}</td><td>{done} ({failed} failed)</td>"
            f"<td>{_e(_verdict_text(v))}{warn}</td><td>{_e(v.rec.get('reason') or '')}</td></tr>")
    return ("<table><tr><th>search</th><th>type</th><th>dataset</th><th>state</th><th>time</th><th>trials</th>"
            f"<th>finding</th><th>reason</th></tr>{''.join(rows)}</table>")


def _timeline_html(views: list[SearchView], manifest: dict) -> str:
    from orchestrator.reports import plot_timeline

    starts = [v.start for v in views if v.start]
    if not starts:
        return "<h2>Timeline</h2><p>no search has started yet</p>"
    t0 = min([manifest.get("created") or min(starts), *starts])
    bars, rows = [], []
    for v in views:
        trials = [t for e in v.experiments for t in e.trials]
        bars.append({"name": v.name, "start": v.start, "end": v.end, "state": v.state,
                     "trials": [t.end for t in trials if t.end and not t.error],
                     "failures": [t.end for t in trials if t.end and t.error]})
        done, failed = v.trial_counts()
        duration = (v.end - v.start) if v.start and v.end else None
        rate = f"{done / (duration / 60):.2g}" if duration and duration > 0 and done else "–"
        reasons = v.failure_reasons()
        if v.state in ("failed", "skipped", "interrupted") and v.rec.get("reason"):
            reasons[f"search {v.state}: {v.rec['reason']}"] += 0
        if v.status.get("error") and v.state != "done":
            reasons[f"driver: {v.status['error']}"] += 0
        said = "; ".join(f"{n} x {r}" if n else r for r, n in reasons.most_common()) or "none"
        rows.append(f"<tr><td>{_e(v.name)}</td><td class='state-{_e(v.state)}'>{_e(v.state)}</td>"
                    f"<td>{_e(_clock(v.start))}</td><td>{_e(_minutes(duration))}</td><td>{done}</td><td>{failed}</td>"
                    f"<td>{_e(rate)}</td><td>{_e(_short(said, 400))}</td></tr>")
    plot = _guarded("timeline plot", lambda: _png_bytes_html(plot_timeline(bars, t0), "timeline"))
    return ("<h2>Timeline</h2>" + plot +
            "<table><tr><th>search</th><th>state</th><th>started</th><th>time</th><th>trials finished</th>"
            "<th>failed</th><th>trials / min</th><th>failures (reasons)</th></tr>" + "".join(rows) + "</table>")


def _progress_html(view: SearchView) -> str:
    from orchestrator.report_data import best_so_far, progress_experiment
    from orchestrator.reports import plot_progress

    exp = progress_experiment(view.experiments)
    if exp is None:
        why = view.storage_note or "no Tune experiment with a selection metric has trials yet"
        return f'<p class="note">progress: {_e(why)}</p>'
    points = best_so_far(exp, view.status.get("started") or view.start)
    if not points:
        return f'<p class="note">progress: no evaluation of {_e(exp.name)} has finished yet</p>'
    baseline = view.headline.baseline if view.headline is not None else None
    synthetic = bool((view.summary or {}).get("synthetic"))
    png = plot_progress(points, exp.metric, baseline, synthetic, title=f"{exp.name}: best {exp.metric} so far")
    best = [p["best"] for p in points if p["best"] is not None]
    tail = f", best {exp.metric} {best[-1]:.4f}" if best else ""
    return (f"<h3>Progress</h3><p class='note'>{len(points)} evaluations of {_e(exp.name)} finished"
            f"{_e(tail)}; read from Tune's trial folders</p>" + _png_bytes_html(png, f"{view.name} progress"))


def _curves_html(view: SearchView) -> str:
    from orchestrator.report_data import curve_metric, top_curves
    from orchestrator.reports import plot_curves

    panels = []
    for exp in view.experiments:
        curves = top_curves(exp, CURVE_TRIALS)
        if curves:
            metric = curve_metric(exp)
            label = "best" if len(exp.trials) > len(curves) else "all"
            panels.append((f"{exp.name}: {label} {len(curves)} of {len(exp.trials)} trials", metric, [
                (f"{t.name[:28]} ({t.value(exp.metric):.3f})" if t.value(exp.metric) is not None else t.name[:28], pts)
                for t, pts in curves]))
    if not panels:
        return ""
    synthetic = bool((view.summary or {}).get("synthetic"))
    return ("<h3>Learning curves</h3>" +
            _png_bytes_html(plot_curves(panels[-CURVE_PANELS:], synthetic), f"{view.name} learning curves"))


def _front_html(view: SearchView) -> str:
    """The search's own finding plots (compression: the Pareto front with the base model); for a
    compression search with no plot yet, the front drawn from its finished trials."""
    kind = (view.summary or {}).get("search") or view.rec.get("type")
    names = [n for n in FINDING_PLOTS.get(kind, ()) if (view.out / n).is_file()]
    if names:
        title = "Pareto front and confusion matrices" if kind == "compress" else "Findings plots"
        return f"<h3>{title}</h3>" + "".join(_png_html(view.out / n).replace("<img ", '<img class="wide" ', 1)
                                             for n in names)
    if kind != "compress":
        return ""
    return _live_front(view)


def _live_front(view: SearchView) -> str:
    import io

    from orchestrator.reports import plot_compression_front

    by_name = {e.name: e for e in view.experiments}
    search, base_eval = by_name.get("compress_search"), by_name.get("compress_base_eval")
    rows = [dict(t.last) for t in (search.trials if search else []) if t.records and "f1_relative" in t.last]
    if not rows:
        return ""
    base = dict(base_eval.trials[0].last) if base_eval and base_eval.trials and base_eval.trials[0].records else {}
    buf = plot_compression_front(rows, base, io.BytesIO(), bool(base.get("synthetic")))
    return ("<h3>Pareto front (from the trials finished so far)</h3>" +
            _png_bytes_html(buf.getvalue(), f"{view.name} objective space"))


def _search_html(view: SearchView) -> str:
    from orchestrator.report_sections import table_html

    state = view.state
    parts = [f'<h2 id="{_e(view.name)}">{_e(view.name)} <span class="note">({_e(view.rec.get("type"))} on '
             f'{_e(view.rec.get("dataset"))})</span> — <span class="state-{_e(state)}">{_e(state)}</span></h2>']
    if view.rec.get("reason") and state != "done":
        parts.append(f"<p><b>reason:</b> {_e(view.rec['reason'])}</p>")
    summary = view.summary
    if summary and summary.get("synthetic"):
        parts.append('<p class="synthetic">results from SYNTHETIC data</p>')
    h = view.headline
    if h is not None:
        parts += [f'<p class="warning">WARNING: {_e(w)}</p>' for w in h.warnings]
        if h.verdict:
            parts.append(f'<p class="verdict">{_e(h.verdict)}</p>')
        parts.append(table_html(h, _e))
        parts += [f'<p class="note">{_e(n)}</p>' for n in h.notes]
    elif view.headline_error:
        parts.append(f'<p class="note">headline unavailable ({_e(view.headline_error)}); the raw summary is '
                     f'at the end</p>')
    elif summary:
        parts.append('<p class="note">no headline for this search type; the raw summary is at the end</p>')
    else:
        status = view.status
        pairs = [("driver state", status.get("state")), ("stage", status.get("stage"))]
        for exp, entry in (status.get("experiments") or {}).items():
            if "done" in entry:
                pairs.append((exp, f"{entry['done']} done, {entry.get('running', 0)} running, "
                                   f"{entry.get('failed', 0)} failed, best {entry.get('metric')} {entry.get('best')}"))
        table = _kv_table((k, v) for k, v in pairs if v is not None)
        parts.append('<p class="note">no summary yet; live status:</p>' + (table or "<p class='note'>the search "
                                                                             "has written no status file</p>"))
    if view.out.is_dir():
        parts.append(_guarded("progress", _progress_html, view))
        parts.append(_guarded("learning curves", _curves_html, view))
        parts.append(_guarded("Pareto front", _front_html, view))
    return "\n".join(p for p in parts if p)


def _raw_html(view: SearchView) -> str:
    parts = [f"<h3>{_e(view.name)}</h3>"]
    if view.summary:
        parts.append(_kv_table(_summary_pairs(view.summary)))
    if view.out.is_dir():
        parts += [_csv_html(p) for p in sorted(view.out.glob("*.csv"))]
        parts += [_png_html(p) for p in sorted(view.out.glob("*.png"))]
    return "\n".join(parts)


# ---- the zoo ---------------------------------------------------------------------------------

def export_command(zoo_path: str, model_id: str) -> str:
    return f"medtune export --zoo {shlex.quote(str(zoo_path))} --out {shlex.quote('export/' + model_id)} {model_id}"


def _zoo_html(zoo_path: str | None) -> tuple[str, str]:
    """(the leaderboard per dataset, the raw model counts for the folded part)."""
    from medcore.records import one_class
    from orchestrator.report_sections import ONE_CLASS_TABLE, fmt
    from orchestrator.zoo import has_weights, is_baseline, read_zoo, weights_reason

    if not zoo_path:
        return "", ""
    head = f"<h2>Model zoo</h2><p class='note'>{_e(zoo_path)}</p>"
    try:
        df = read_zoo(zoo_path)
    except Exception as exc:
        return head + f"<p>zoo unreadable: {_e(exc)}</p>", ""
    if df.empty:
        return head + "<p>no models yet</p>", ""
    counts = df.groupby(["dataset", "search", "status"]).size().reset_index(name="models")
    raw = "<h3>zoo models per dataset, search and status</h3>" + counts.to_html(index=False, border=0)
    parts = [head, "<p class='note'>per dataset, models with stored weights first (each with its export "
                   "command), then by the validation metric; baselines are marked</p>"]
    for dataset in sorted(df["dataset"].unique()):
        sub = df[(df["dataset"] == dataset) & (df["status"] == "ok")].copy()
        synthetic = bool(df[df["dataset"] == dataset]["synthetic"].fillna(False).any())
        parts.append(f"<h3>{_e(dataset)}{' <span class=synthetic>(SYNTHETIC)</span>' if synthetic else ''}</h3>")
        metric = next((m for m in RANK_METRICS if m in sub and sub[m].notna().any()), None)
        if sub.empty or metric is None:
            parts.append("<p>no model with status ok and a metric yet</p>")
            continue
        sub["_weights"] = sub["weights"].map(has_weights)
        if "baseline" in sub:
            sub["_baseline"] = sub["baseline"].fillna(False).astype(bool)
        else:
            sub["_baseline"] = [is_baseline(r["search"], r["stage"], r.get("architecture")) for _, r in sub.iterrows()]
        sub = sub.sort_values(["_weights", metric, "model_id"], ascending=[False, False, True],
                              na_position="last", kind="stable")
        others = [m for m in ("val_auc", "val_acc", "test_auc", "test_acc", "val_dice", "test_dice", "dice")
                  if m != metric and m in sub and sub[m].notna().any()][:3]
        cols = [metric, *others]
        show = [c for c in ("params", "flops", "latency_ms") if c in sub and sub[c].notna().any()]
        names = {"params": "params", "flops": "GFLOPs", "latency_ms": "latency (ms)"}
        header = "".join(f"<th>{_e(c)}</th>" for c in ["#", "model", "search/stage", *cols,
                                                       *(names[c] for c in show), "flags", "weights / export"])
        rows = []
        for i, (_, r) in enumerate(sub.head(LEADERBOARD_ROWS).iterrows(), 1):
            flags = [f for f, on in (("BASELINE", r["_baseline"]), (ONE_CLASS_TABLE, one_class(r)),
                                     ("SYNTHETIC", bool(r.get("synthetic")))) if on]
            cells = [str(i), f"<code>{_e(r['model_id'])}</code>", _e(f"{r['search']}/{r['stage']}")]
            cells += [_e(fmt(r[c])) for c in cols]
            cells += [_e(fmt(r[c], {"params": "count", "flops": "gflops"}.get(c, "ms"))) for c in show]
            cells.append(f'<span class="flag">{_e(", ".join(flags))}</span>' if flags else "")
            cells.append(f"<code>{_e(export_command(zoo_path, r['model_id']))}</code>" if r["_weights"]
                         else f'<span class="note">{_e(weights_reason(r))}</span>')
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        more = len(sub) - LEADERBOARD_ROWS
        note = (f"<p class='note'>{more} more: <code>medtune zoo list --zoo {_e(shlex.quote(str(zoo_path)))} "
                f"--dataset {_e(dataset)}</code></p>") if more > 0 else ""
        parts.append(f"<p>ranked by {_e(metric)}; {int(sub['_weights'].sum())} of {len(sub)} models have weights</p>"
                     f"<table><tr>{header}</tr>{''.join(rows)}</table>{note}")
    return "\n".join(parts), raw


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/report.html`` from what the run folder holds now; returns its path."""
    run_dir = Path(run_dir).expanduser().resolve()
    manifest = read_manifest(run_dir)
    coordinator = manifest.get("coordinator") or {}
    views = [SearchView.load(n, r) for n, r in manifest["searches"].items()]
    body = [f"<h1>medtune run {_e(manifest.get('run'))}</h1>",
            f"<p class='note'>{_e(run_dir)} — coordinator {_e(coordinator.get('state', 'not started'))}"
            f"{' on ' + _e(manifest['address']) if manifest.get('address') else ' (local Ray)'}"
            f" — report written {_e(_clock(time.time()))}</p>",
            _overview_html(views), _guarded("timeline", _timeline_html, views, manifest)]
    body += [_guarded(f"search {v.name}", _search_html, v) for v in views]
    zoo, zoo_raw = _zoo_html(manifest.get("zoo"))
    body.append(zoo)
    raw = [_guarded(f"raw tables of {v.name}", _raw_html, v) for v in views] + [zoo_raw]
    spec = run_dir / manifest.get("spec", "spec.yaml")
    if spec.exists():
        raw.append(f"<h3>Spec</h3><pre>{_e(spec.read_text(errors='replace'))}</pre>")
    body.append("<h2>Raw tables</h2><details><summary>every summary field, csv table and plot the searches "
                "wrote</summary>" + "\n".join(raw) + "</details>")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>medtune {_e(manifest.get('run'))}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>")
    return atomic.write_bytes(run_dir / REPORT, page.encode())
