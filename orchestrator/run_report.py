"""``RUN_DIR/report.html``: one self-contained page for a coordinator run.

Per search: its state (and why it failed), the scalar fields of its ``summary.json`` (or its
live ``status.json`` while unfinished), its csv tables (first rows, long cells shortened) and its
PNG plots inlined as base64; then the zoo's best models per dataset. Everything is read from
the run folder, so it works on a partially finished run, while it runs, and after.
"""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from orchestrator import atomic

REPORT = "report.html"
TABLE_ROWS = 15
CELL_CHARS = 60
ZOO_TOP = 5
# Zoo rankings shown per dataset: validation first (selecting on test leaks the test split);
# test accuracy for what only has test metrics (compressed networks).
ZOO_METRICS = ("val_auc", "test_acc")
ZOO_COLUMNS = ("model_id", "search", "stage", "status", "val_auc", "val_acc", "test_auc", "test_acc", "params",
               "flops", "latency_ms", "weights")

STYLE = """
body{font-family:sans-serif;margin:2em;max-width:1200px;color:#222}
h1{font-size:1.5em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-top:.5em}h3{font-size:1.05em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}th{background:#f4f4f4}
.state-done{color:#186a1e}.state-failed,.state-skipped{color:#b00020}.state-running,.state-pending{color:#8a5a00}
.synthetic{color:crimson;font-weight:bold}.note{color:#666;font-size:.85em}img{max-width:560px;margin:4px}
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


def _search_html(name: str, rec: dict) -> str:
    from orchestrator.status import read_status

    out = Path(rec["out"])
    state = rec.get("state", "?")
    parts = [f'<h2 id="{_e(name)}">{_e(name)} <span class="note">({_e(rec.get("type"))} on '
             f'{_e(rec.get("dataset"))})</span> — <span class="state-{_e(state)}">{_e(state)}</span></h2>']
    if rec.get("reason") and state != "done":
        parts.append(f"<p><b>reason:</b> {_e(rec['reason'])}</p>")
    summary = atomic.read_json(out / "summary.json")
    if summary:
        if summary.get("synthetic"):
            parts.append('<p class="synthetic">results from SYNTHETIC data</p>')
        parts.append(_kv_table(_summary_pairs(summary)))
    else:
        status = read_status(out) or {}
        pairs = [("driver state", status.get("state")), ("stage", status.get("stage"))]
        for exp, entry in (status.get("experiments") or {}).items():
            if "done" in entry:
                pairs.append((exp, f"{entry['done']} done, {entry.get('running', 0)} running, "
                                   f"{entry.get('failed', 0)} failed, best {entry.get('metric')} {entry.get('best')}"))
        parts.append('<p class="note">no summary yet; live status:</p>' + _kv_table(
            (k, v) for k, v in pairs if v is not None))
    if out.is_dir():
        parts += [_csv_html(p) for p in sorted(out.glob("*.csv"))]
        parts += [_png_html(p) for p in sorted(out.glob("*.png"))]
    return "\n".join(parts)


def _zoo_html(zoo_path: str | None) -> str:
    from orchestrator.zoo import best, read_zoo

    if not zoo_path:
        return ""
    parts = [f"<h2>Model zoo</h2><p class='note'>{_e(zoo_path)}</p>"]
    try:
        df = read_zoo(zoo_path, columns=["dataset", "search", "status", "synthetic"])
    except Exception as exc:
        return parts[0] + f"<p>zoo unreadable: {_e(exc)}</p>"
    if df.empty:
        return parts[0] + "<p>no models yet</p>"
    counts = df.groupby(["dataset", "search", "status"]).size().reset_index(name="models")
    parts.append(counts.to_html(index=False, border=0))
    for dataset in sorted(df["dataset"].unique()):
        synthetic = bool(df[df.dataset == dataset]["synthetic"].any())
        parts.append(f"<h3>{_e(dataset)}{' <span class=synthetic>(SYNTHETIC)</span>' if synthetic else ''}</h3>")
        for metric in ZOO_METRICS:
            top = best(zoo_path, metric, dataset=dataset, n=ZOO_TOP)
            if not top.empty:
                cols = [c for c in ZOO_COLUMNS if c in top.columns and (c == metric or top[c].notna().any())]
                parts.append(f"<p>best by {_e(metric)}:</p>" + _frame_html(top[cols], ZOO_TOP))
    return "\n".join(parts)


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/report.html`` from what the run folder holds now; returns its path."""
    from orchestrator.coordinator import read_manifest

    run_dir = Path(run_dir).expanduser().resolve()
    manifest = read_manifest(run_dir)
    searches = manifest["searches"]
    coordinator = manifest.get("coordinator") or {}
    overview = "".join(
        f'<tr><td><a href="#{_e(n)}">{_e(n)}</a></td><td>{_e(r.get("type"))}</td><td>{_e(r.get("dataset"))}</td>'
        f'<td class="state-{_e(r.get("state"))}">{_e(r.get("state"))}</td><td>{_e(r.get("reason") or "")}</td></tr>'
        for n, r in searches.items())
    body = [f"<h1>medtune run {_e(manifest.get('run'))}</h1>",
            f"<p class='note'>{_e(run_dir)} — coordinator {_e(coordinator.get('state', 'not started'))}"
            f"{' on ' + _e(manifest['address']) if manifest.get('address') else ' (local Ray)'}</p>",
            "<table><tr><th>search</th><th>type</th><th>dataset</th><th>state</th><th>reason</th></tr>"
            f"{overview}</table>"]
    body += [_search_html(n, r) for n, r in searches.items()]
    body.append(_zoo_html(manifest.get("zoo")))
    spec = run_dir / manifest.get("spec", "spec.yaml")
    if spec.exists():
        body.append(f"<h2>Spec</h2><pre>{_e(spec.read_text())}</pre>")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>medtune {_e(manifest.get('run'))}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>")
    return atomic.write_bytes(run_dir / REPORT, page.encode())

