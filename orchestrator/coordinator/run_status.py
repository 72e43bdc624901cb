"""``medtune status``: a run's state from its ``run.json`` and every search's ``status.json``,
read only, so it works while the coordinator runs and after (and tells a coordinator that is
gone from one that runs)."""
from __future__ import annotations

import os
import socket
from pathlib import Path

from orchestrator.coordinator.core import LOG_NAME
from orchestrator.manifest import DONE, RUNNING, read_manifest


def _alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_status(run_dir: str | Path) -> dict:
    """The run's state from ``run.json`` and every search's ``status.json`` (read only: works
    while the coordinator runs and after)."""
    from orchestrator.status import is_baseline_experiment, read_status

    run_dir = Path(run_dir).expanduser().resolve()
    manifest = read_manifest(run_dir)
    coordinator = dict(manifest.get("coordinator") or {})
    if coordinator.get("state") == RUNNING and coordinator.get("host") == socket.gethostname() \
            and not _alive(coordinator.get("pid")):
        coordinator["state"] = "gone"
    searches = []
    for name, rec in manifest["searches"].items():
        st = read_status(rec["out"]) or {}
        trials = {"done": 0, "running": 0, "pending": 0, "failed": 0}
        best = baseline = None  # the latest stage's best; a baseline experiment's is shown as the baseline
        one_class = 0
        for exp, entry in (st.get("experiments") or {}).items():
            for k in trials:
                trials[k] += int(entry.get(k) or 0)
            one_class += int(entry.get("one_class") or 0)
            if entry.get("best") is not None:
                found = {"experiment": exp, "metric": entry.get("metric"), "value": entry["best"],
                         "one_class": bool(entry.get("best_one_class"))}
                if is_baseline_experiment(exp, entry):
                    baseline = found
                else:
                    best = found
        searches.append({"name": name, "type": rec["type"], "dataset": rec.get("dataset"), "state": rec["state"],
                         "reason": rec.get("reason", ""), "exit_code": rec.get("exit_code"),
                         "stage": st.get("stage"), "driver_state": st.get("state"), "trials": trials, "best": best,
                         "baseline": baseline, "one_class_trials": one_class,
                         "pid": rec.get("pid"), "job_id": rec.get("job_id"), "out": rec["out"],
                         "log": str(Path(rec["out"]) / LOG_NAME)})
    return {"run": manifest.get("run"), "run_dir": str(run_dir), "zoo": manifest.get("zoo"),
            "coordinator": coordinator, "searches": searches}


def format_status(status: dict) -> str:
    """The status table; a search's best leaves out its baseline experiment (shown beside it)."""
    from orchestrator.zoo_commands import ONE_CLASS

    c = status["coordinator"]
    state = c.get("state", "not started")
    if state == "gone":
        state = f"not running (pid {c.get('pid')} is gone); `medtune resume {status['run_dir']}` continues"
    elif state == RUNNING:
        state = f"running (pid {c.get('pid')})"
    lines = [f"run {status['run']} in {status['run_dir']}: coordinator {state}"]
    header = ("search", "type", "state", "stage", "done", "running", "failed", "best so far")
    rows = []
    for s in status["searches"]:
        best, baseline = s["best"], s.get("baseline")
        best_text = f"{best['metric']} {best['value']:.4g} ({best['experiment']})" if best else "-"
        best_text += f" {ONE_CLASS}" if best and best.get("one_class") else ""
        if baseline:
            best_text += (f"; baseline {baseline['value']:.4g}{f' {ONE_CLASS}' if baseline.get('one_class') else ''}"
                          f" ({baseline['experiment']})")
        stage = s["stage"] or ("-" if s["driver_state"] in (None, DONE) else s["driver_state"])
        t = s["trials"]
        rows.append((s["name"], s["type"], s["state"], stage or "-", str(t["done"]), str(t["running"]),
                     str(t["failed"]), best_text))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    for s in status["searches"]:
        if s["reason"] and s["state"] != DONE:
            lines.append(f"{s['name']}: {s['state']}: {s['reason']}")
        if s.get("one_class_trials"):
            n = s["one_class_trials"]
            lines.append(f"{s['name']}: {n} trial{'s' if n != 1 else ''} predict{'s' if n == 1 else ''} one class "
                         f"for every case")
    return "\n".join(lines)
