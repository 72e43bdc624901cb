"""``report.html`` findings first: a small fake run folder in the shapes the searches write (copied
from a tiny demo run: coordinator ``run.json``, per search ``summary.json`` / ``status.json`` /
``run.json`` and Tune trial folders with ``result.json`` lines), no training and no Ray."""
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from medcore.records import ModelRecord
from orchestrator import reports, zoo
from orchestrator.report_data import Experiment, Trial, best_so_far, search_experiments, top_curves
from orchestrator.run_report import export_command, write_report

T0 = 1796175258.0
ARCH = {"nodes": [], "edges": [[0, 6]], "n_stacks": 1, "n_modules": 1, "n_f_init": 32}


def trial(exp_dir: Path, name: str, records: list[dict], params: dict | None = None, error: str | None = None):
    folder = exp_dir / name
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(params or {}))
    tid = "_".join(name.split("_")[-2:])
    lines = [json.dumps({"trial_id": tid, "time_this_iter_s": 2.0, **r, "config": params or {}}) for r in records]
    (folder / "result.json").write_text("\n".join(lines) + ("\n" if lines else ""))
    if error:
        (folder / "error.txt").write_text(f"Failure # 1\nTraceback (most recent call last):\n  ...\n{error}\n")


def ode_search(out: Path) -> None:
    """A finished ODE search: 4 candidates (one errored), one retrained pick and the tiny_cnn baseline."""
    tune = out / "tune"
    for i, (auc, err) in enumerate([(0.596, None), (0.554, None), (None, "RuntimeError: CUDA out of memory"),
                                    (0.7099, None)]):
        recs = [] if err else [{"epoch": 1, "val_auc": auc, "best_val_auc": auc, "timestamp": T0 + 60 + 20 * i}]
        trial(tune / "ode_search", f"cand{i:04d}_a1b2c_0000{i}", recs, {"candidate": i}, err)
    trial(tune / "ode_retrain", "train_c9447_00000", [
        {"epoch": 1, "val_auc": 0.70, "best_val_auc": 0.70, "val_pred_classes": 1, "timestamp": T0 + 150},
        {"epoch": 2, "val_auc": 0.7312, "best_val_auc": 0.7312, "val_pred_classes": 1, "timestamp": T0 + 160},
        {"epoch": 2, "val_auc": 0.7312, "best_val_auc": 0.7312, "test_auc": 0.5867, "test_pred_classes": 1,
         "done_training": True, "timestamp": T0 + 161}], {"architecture": ARCH})
    trial(tune / "ode_baseline", "train_d0001_00000", [
        {"epoch": 1, "val_auc": 0.74, "best_val_auc": 0.74, "timestamp": T0 + 170},
        {"epoch": 2, "val_auc": 0.7455, "best_val_auc": 0.7455, "test_pred_classes": 2, "timestamp": T0 + 175}],
        {"baseline": "tiny_cnn"})
    (out / "run.json").write_text(json.dumps({"search": "ode", "run": "ode-r1", "config": {"storage": None}}))
    (out / "status.json").write_text(json.dumps({"search": "ode", "state": "done", "started": T0 + 10, "experiments": {
        "ode_search": {"done": 3, "failed": 1, "metric": "best_val_auc", "stage": "search", "best": 0.7099},
        "ode_retrain": {"done": 1, "failed": 0, "metric": "best_val_auc", "stage": "retrain"},
        "ode_baseline": {"done": 1, "failed": 0, "metric": "best_val_auc", "stage": "baseline"}}}))
    (out / "summary.json").write_text(json.dumps({
        "search": "ode", "dataset": "adrenalmnist3d", "synthetic": False, "n_evaluated": 4, "n_ok": 3, "n_failed": 1,
        "failure_reasons": {"out of memory": 1}, "n_infeasible": 14, "n_duplicates": 1, "generations": 2,
        "metric": "val_auc", "best": {"architecture": ARCH, "description": "S1M1F32 ops[-] edges[0>6]",
                                      "val_metric": 0.7099, "test_acc": 0.7685, "test_auc": 0.5867, "params": 961,
                                      "flops": 37933120},
        "baseline": {"name": "tiny_cnn", "status": "ok", "reason": "", "test_auc": 0.6868, "test_acc": 0.7685,
                     "params": 17641, "flops": 37933120, "val_acc": 0.7755, "val_auc": 0.7455, "epochs": 2},
        "top": [{"rank": 1, "candidate": 3, "architecture": ARCH, "search_val_metric": 0.7099, "status": "ok",
                 "val_acc": 0.7755, "val_auc": 0.7312, "test_acc": 0.7685, "test_auc": 0.5867, "params": 961}],
        "config": {"dataset": "adrenalmnist3d"}, "out": str(out), "wall_time_s": 170.8}))
    (out / "candidates.csv").write_text("candidate,status,fitness\n0,ok,0.596\n1,ok,0.554\n2,failed,\n3,ok,0.7099\n")


def compress_search(out: Path) -> None:
    """A finished compression search whose base and points call every test volume negative."""
    tune = out / "tune"
    base = {"accuracy": 0.7685, "auc": 0.7258, "test_pred_classes": 1, "inference_ms": 285.35, "flops": 422676480.0,
            "f1_relative": 1.0, "f2_error": 0.2315, "g_accuracy": -0.03, "feasible": True, "status": "ok",
            "nonzero_rate": 1.0, "accuracy_threshold": 0.7377}
    trial(tune / "compress_base_eval", "compress_aa000_00000", [{**base, "timestamp": T0 + 200}])
    point = {"accuracy": 0.7685, "auc": 0.7099, "test_pred_classes": 1, "f1_relative": 0.25, "f2_error": 0.2315,
             "g_accuracy": -0.03, "feasible": True, "status": "ok", "inference_ms": 88.39, "flops": 105669120.0,
             "nonzero_rate": 1.0, "quantized": True}
    trial(tune / "compress_search", "compress_177ff328", [{**point, "timestamp": T0 + 210}])
    (out / "run.json").write_text(json.dumps({"search": "compress", "config": {"inference_batch": 32}}))
    (out / "status.json").write_text(json.dumps({"search": "compress", "state": "done", "started": T0 + 10,
                                                 "experiments": {"compress_search": {"done": 1, "metric": "accuracy"}}}))
    entry = {"trial_id": "177ff328", "x1": 0, "x2": 1, "x5": 1, "x6": 1, "x7": 1, **point}
    (out / "summary.json").write_text(json.dumps({
        "search": "compress", "dataset": "adrenalmnist3d", "synthetic": False, "n_evaluated": 1, "n_ok": 1,
        "n_failed": 0, "base": {"accuracy": 0.7685, "auc": 0.7258, "flops": 422676480.0, "inference_ms": 285.35,
                                "size_mb": 57.47, "model": "resnet10", "train_metrics": {"params": 14356033}},
        "pareto": [entry], "hypervolume": 0.7382, "most_accurate": entry,
        "fastest_feasible": {"inference_ratio": 0.3098, "accuracy_delta": 0.0, **entry},
        "config": {"inference_batch": 32}}))


def live_search(out: Path) -> None:
    """A search still running: status and two finished trials (one failed), no summary."""
    trial(out / "tune" / "ode_search", "cand0000_bb000_00000", [{"epoch": 1, "best_val_auc": 0.61,
                                                                 "timestamp": T0 + 40}], {"candidate": 0})
    trial(out / "tune" / "ode_search", "cand0001_bb000_00001", [], {"candidate": 1},
          error="ValueError: the cell has no path from input to output")
    (out / "status.json").write_text(json.dumps({"search": "ode", "state": "running", "stage": "search",
                                                 "started": T0 + 20, "experiments": {"ode_search": {
                                                     "done": 1, "running": 1, "failed": 1, "best": 0.61,
                                                     "metric": "best_val_auc"}}}))


def write_zoo(path: Path, run_dir: Path) -> None:
    weights = run_dir / "weights"
    weights.mkdir()
    records = [
        ModelRecord("ode", "baseline", "baseline", {"model": "tiny_cnn"}, [], "ok",
                    {"val_auc": 0.7455, "test_auc": 0.6868, "params": 17641, "test_pred_classes": 2},
                    weights=str(weights), trial_id="d0001_00000"),
        ModelRecord("ode", "retrain", "cell3d", ARCH, [], "ok",
                    {"val_auc": 0.7312, "test_auc": 0.5867, "params": 961, "test_pred_classes": 1},
                    weights=str(weights), trial_id="c9447_00000"),
        ModelRecord("ode", "search", "cell3d", ARCH, [], "ok", {"val_auc": 0.7999, "params": 961},
                    trial_id="a1b2c_00003"),
    ]
    rows = zoo.rows_from_records(records, dataset="adrenalmnist3d", size=28, spatial_dims=3, task="binary-class",
                                 input_shape=[1, 28, 28, 28], run="ode-r1", synthetic=False)
    zoo.write_rows(path, rows, writer_id="ode-r1-ode")


def fake_run(run_dir: Path) -> Path:
    run_dir.mkdir()
    searches = {}
    for name, kind, state, build, started, ended in (
            ("ode_a", "ode", "done", ode_search, T0 + 10, T0 + 190), ("compress_a", "compress", "done",
                                                                      compress_search, T0 + 10, T0 + 215),
            ("live", "ode", "running", live_search, T0 + 20, None), ("later", "ode", "pending", None, None, None)):
        out = run_dir / name
        if build:
            out.mkdir()
            build(out)
        searches[name] = {"state": state, "type": kind, "dataset": "adrenalmnist3d", "after": [], "out": str(out),
                          "reason": "", "attempts": 1, "started": started, "ended": ended}
    write_zoo(run_dir / "zoo", run_dir)
    (run_dir / "spec.yaml").write_text("searches: []\n")
    (run_dir / "run.json").write_text(json.dumps({"run": "run-1", "created": T0, "spec": "spec.yaml",
                                                  "zoo": str(run_dir / "zoo"), "searches": searches,
                                                  "coordinator": {"state": "running", "pid": os.getpid()}}))
    return run_dir


def text_of(page: str) -> str:
    """What a reader sees: tags dropped, entities kept readable, whitespace collapsed."""
    import html

    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", re.sub(r"<img[^>]*>", " ", page))))


def test_the_report_leads_with_the_pick_against_its_baseline(tmp_path):
    page = write_report(fake_run(tmp_path / "run")).read_text()
    text = text_of(page)
    # ODE: the retrained pick's val AUC (not its search-phase score) beside the baseline's
    assert "pick: S1M1F32 ops[-] edges[0>6] trails baseline: tiny_cnn on val_auc (both fully trained): " \
           "0.7312 vs 0.7455 (-0.0143)." in text
    assert "val auc (search phase, low fidelity)" in text and "0.7099" in text and "17,641" in text
    # the pick predicts one class (its retrain trial says so); the baseline does not
    assert re.search(r"pick: S1M1F32[^<]*</td>(<td>[^<]*</td>)*<td class=\"flag\">ONE CLASS</td>", page)
    assert "pick: S1M1F32 ops[-] edges[0>6]: predicts one class for every case on the test split" in text
    # compression: base and the compressed point, both one class, latency at the run's batch
    assert "latency, batch 32 (ms)" in text and "285" in text and "88.4" in text and "0.25x" in text
    assert "base: resnet10; most accurate and fastest feasible compressed (x1=0 x2=1 x5=1 x6=1 x7=1): each " \
           "predicts one class for every case" in text
    assert "fastest feasible point: 0.31x the base's inference time, test accuracy +0.0000" in text
    # findings come before the raw tables, which are folded
    assert page.index("Progress") < page.index("<details>") < page.index("candidates.csv (4 rows)")
    assert "ode_a progress" in page and "timeline" in page and "data:image/png;base64," in page


def test_progress_timeline_and_a_live_search(tmp_path):
    run_dir = fake_run(tmp_path / "run")
    text = text_of(write_report(run_dir).read_text())
    assert "4 evaluations of ode_search finished, best best_val_auc 0.7099" in text
    assert "no summary yet; live status:" in text and "2 evaluations of ode_search finished, best best_val_auc 0.61" \
        in text
    # timeline: trials per minute and failures with their reasons
    assert re.search(r"ode_a done \S+ \S+ 3\.0 min 6 1 2 1 x out of memory", text), text
    assert "1 x ValueError: the cell has no path from input to output" in text
    assert "later pending – – 0 0 – none" in text


def test_zoo_leaderboard_puts_weights_first_with_export_commands(tmp_path):
    run_dir = fake_run(tmp_path / "run")
    page = write_report(run_dir).read_text()
    board = page[page.index("<h2>Model zoo</h2>"):page.index("<h2>Raw tables</h2>")]
    ids = re.findall(r"<td>\d+</td><td><code>([0-9a-f]{16})</code></td><td>([a-z]+/[a-z]+)</td>", board)
    # the searched model has the best val AUC but no weights: it comes after both models with weights
    assert [stage for _, stage in ids] == ["ode/baseline", "ode/retrain", "ode/search"]
    for model_id, _ in ids[:2]:
        assert html_escape(export_command(str(run_dir / "zoo"), model_id)) in board
    assert export_command(str(run_dir / "zoo"), "abc") == f"medtune export --zoo {run_dir / 'zoo'} --out export/abc abc"
    assert board.count("BASELINE") == 1 and board.count("ONE CLASS") == 1 and "no stored weights" in board


def html_escape(text: str) -> str:
    import html

    return html.escape(text)


def test_a_run_with_nothing_started_and_a_half_written_summary(tmp_path):
    run_dir = fake_run(tmp_path / "run")
    (run_dir / "ode_a" / "summary.json").write_text('{"search": "ode", "best": ')  # being written
    (run_dir / "compress_a" / "summary.json").write_text(json.dumps({"search": "compress", "base": "oops"}))
    page = write_report(run_dir).read_text()
    ode, compress = page[page.index('id="ode_a"'):page.index('id="compress_a"')], page[page.index('id="compress_a"'):]
    assert "no summary yet; live status:" in ode  # the half-written one reads as not there yet
    assert "4 evaluations of ode_search finished" in text_of(ode)  # its trials still show its progress
    assert "headline unavailable (AttributeError" in compress and "the raw summary is at the end" in compress


def test_best_so_far_and_curves_from_trials():
    exp = Experiment("e", "best_val_auc", "search", [
        Trial("e", "t2", [{"best_val_auc": 0.6}], start=100.0, end=160.0),
        Trial("e", "t1", [{"best_val_auc": 0.7}], start=100.0, end=130.0),
        Trial("e", "t3", [], error="boom", start=100.0, end=190.0),
        Trial("e", "t4", [{"epoch": 1, "val_auc": 0.5, "best_val_auc": 0.5},
                          {"epoch": 2, "val_auc": 0.8, "best_val_auc": 0.8},
                          {"epoch": 2, "val_auc": 0.8, "best_val_auc": 0.8, "test_auc": 0.7}], start=100.0, end=220.0),
    ])
    points = best_so_far(exp, t0=100.0)
    assert [p["trial"] for p in points] == ["t1", "t2", "t3", "t4"]
    assert [p["best"] for p in points] == [0.7, 0.7, 0.7, 0.8] and points[2]["error"] == "boom"
    assert [round(p["minutes"], 2) for p in points] == [0.5, 1.0, 1.5, 2.0]
    (t, pts), = top_curves(exp)  # one point is no curve; the repeated final epoch is not a new point
    assert t.name == "t4" and pts == [(1.0, 0.5), (2.0, 0.8)]
    lower = Experiment("e", "val_loss", None, [Trial("e", "a", [{"val_loss": 0.3}], end=1.0),
                                               Trial("e", "b", [{"val_loss": 0.2}], end=2.0)])
    assert [p["best"] for p in best_so_far(lower)] == [0.3, 0.2]


def test_experiments_are_read_in_the_order_the_status_lists_them(tmp_path):
    ode_search(tmp_path)
    exps, note = search_experiments(tmp_path, json.loads((tmp_path / "status.json").read_text()))
    assert note == "" and [e.name for e in exps] == ["ode_search", "ode_retrain", "ode_baseline"]
    assert [len(e.trials) for e in exps] == [4, 1, 1]
    assert exps[0].trials[2].error == "RuntimeError: CUDA out of memory"
    (tmp_path / "run.json").write_text(json.dumps({"config": {"storage": "s3://bucket/tune"}}))
    assert search_experiments(tmp_path, {})[1].startswith("Tune storage s3://bucket/tune is remote")


# ---- plots: labels from the run, scikit-learn's confusion display ----------------------------

@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions draw, kept open instead of written."""
    kept = []
    monkeypatch.setattr(reports, "save_figure", lambda fig, path, dpi=120: kept.append(fig) or path)
    yield kept
    for fig in kept:
        reports._plt().close(fig)


def test_inference_plot_names_the_batch_the_run_timed(tmp_path, figures):
    rows = [{"status": "ok", "nonzero_rate": 0.5, "inference_ms": 10.0, "quantized": False}]
    base = {"inference_ms": 20.0}
    (tmp_path / "run.json").write_text(json.dumps({"config": {"inference_batch": 32}}))
    reports.plot_time_vs_nonzero(rows, base, tmp_path / "inference_vs_nonzero.png", False)
    reports.plot_time_vs_nonzero(rows, base, tmp_path / "inference_vs_nonzero.png", False, batch=8)
    reports.plot_time_vs_nonzero(rows, base, tmp_path / "elsewhere" / "plot.png", False)  # no manifest
    assert [f.axes[0].get_ylabel() for f in figures] == [
        "inference time, batch 32, CPU (ms)", "inference time, batch 8, CPU (ms)", "inference time, CPU (ms)"]


def test_confusion_matrices_through_sklearn_flag_one_class(tmp_path, figures):
    reports.plot_confusions([[229, 0], [69, 0]], [[200, 29], [30, 39]], tmp_path / "c.png", False,
                            class_names=["normal", "hyperplasia"])
    base_ax, best_ax = figures[0].axes[:2]
    assert "predicts one class for every case" in base_ax.get_title()
    assert "predicts one class" not in best_ax.get_title()
    assert {t.get_text() for t in base_ax.texts} == {"229", "0", "69"}
    assert [t.get_text() for t in base_ax.get_xticklabels()] == ["normal", "hyperplasia"]
    assert reports.predicted_classes([[[5, 0], [3, 0]], [[4, 0], [1, 0]]]) == 1


def test_compression_front_draws_the_constraint_only_on_its_axis(tmp_path, figures):
    rows = [{"status": "ok", "f1_relative": 0.3, "accuracy": 0.8, "f2_error": 0.2, "g_accuracy": -0.01,
             "feasible": True}]
    base = {"accuracy": 0.8, "accuracy_threshold": 0.768}
    reports.plot_compression_front(rows, base, tmp_path / "a.png", False)
    reports.plot_compression_front(rows, base, tmp_path / "b.png", False, constraint={"metric": "auc",
                                                                                      "threshold": 0.7})
    labels = [[t.get_text() for t in f.axes[0].get_legend().get_texts()] for f in figures]
    assert "accuracy constraint (0.768)" in labels[0]
    assert "constraint on test auc (not this axis)" in labels[1] and not any("accuracy constraint" in t
                                                                             for t in labels[1])


# ---- the page in a real browser -------------------------------------------------------------

BROWSERS = ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome", "firefox")


def test_report_renders_in_a_headless_browser(tmp_path):
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no headless browser on PATH")
    report = write_report(fake_run(tmp_path / "run"))
    profile = tmp_path / "profile"
    if "firefox" in Path(browser).name:
        cmd = [browser, "--headless", "--screenshot", str(tmp_path / "shot.png"), report.as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and (tmp_path / "shot.png").stat().st_size > 0, proc.stderr[-2000:]
        return
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
           "--virtual-time-budget=5000", "--dump-dom", report.as_uri()]
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = text_of(proc.stdout)
    for needle in ("0.7312 vs 0.7455 (-0.0143)", "ONE CLASS", "latency, batch 32 (ms)",
                   "fastest feasible point: 0.31x the base's inference time", "predicts one class for every case",
                   "medtune export --zoo", "4 evaluations of ode_search finished"):
        assert needle in dom, needle
    # every plot is embedded and decodes: the browser reports no broken image
    images = re.findall(r'<img[^>]+src="data:image/png;base64,', proc.stdout)
    assert len(images) >= 5 and time.time() - start < 120


# ---- headlines of the other searches (summaries as they write them) ---------------------------

def test_strategy_headline_reads_the_pick_against_the_default_recipe(tmp_path):
    from orchestrator.report_sections import headline

    best = {"init": "kaiming_normal", "norm": "group", "optimizer": "sgd", "lr": 0.0153, "augment": "intensity"}
    summary = {"search": "strategy", "sampler": "TPE", "scheduler": "ASHA", "n_evaluated": 3, "n_complete": 3,
               "n_pruned": 0, "n_failed": 0, "trial_epochs_saved": 0.25, "config": {"fit": {"metric": "val_acc"}},
               "best": {"strategy": best, "trial_id": "d67d5cab", "optuna_number": 2, "search_value": 0.9375,
                        "retrained": {"status": "ok", "val_acc": 0.9375, "test_acc": 1.0, "test_auc": 1.0,
                                      "params": 5977}},
               "default": {"strategy": {"init": "default", "norm": "keep", "optimizer": "adam", "lr": 0.001,
                                        "augment": "none"},
                           "retrained": {"status": "ok", "val_acc": 0.5, "test_acc": 0.5, "test_auc": 1.0,
                                         "params": 5977, "test_pred_classes": 1}}}
    (tmp_path / "trials.csv").write_text("trial_id,default_recipe,value\na,False,0.9\nb,True,0.55\n")
    h = headline("strategy", summary, tmp_path)
    assert h.verdict == ("pick: #2 (kaiming_normal, group, sgd, lr 1.5e-02, intensity) beats baseline: default "
                         "recipe (default, keep, adam, lr 1.0e-03, none) on val_acc (both retrained): 0.9375 vs "
                         "0.5000 (+0.4375).")
    assert [r.get("flags") for r in h.rows] == [None, "ONE CLASS"] and h.baseline == (0.55, "default recipe "
                                                                                          "(search trial)")
    assert "25% of the trial epochs saved by early stopping" in h.notes[0]
    assert "predicts one class for every case" in h.warnings[0]


def test_darts_headline_has_the_seed_spread(tmp_path):
    from orchestrator.report_sections import headline, table_html

    genotype = {"edges": [["conv_3x3", 0]]}
    rows = [("iac", genotype, 0, 0.80, 0.78, 0.05), ("iac", genotype, 1, 0.84, 0.80, 0.09),
            ("iac", {"edges": [["skip", 0]]}, 0, 0.99, 0.99, 0.2), ("plain", None, 0, 0.70, 0.69, -0.05),
            ("plain", None, 1, 0.72, 0.70, -0.03)]
    (tmp_path / "stage3.csv").write_text("backbone,skip,seed,genotype,status,val_dice,test_dice,dice_gain,skip_params\n"
                                         + "".join(f"unet,{k},{s},\"{json.dumps(g).replace(chr(34), chr(34) * 2)}\","
                                                   f"ok,{v},{t},{d},1200\n" if g else
                                                   f"unet,{k},{s},,ok,{v},{t},{d},300\n" for k, g, s, v, t, d in rows))
    summary = {"search": "darts", "baseline_dice": 0.75, "n_evaluated": 5, "n_failed": 0,
               "best": {"genotype": genotype, "epoch": 3, "dice": 0.82, "backbone": "unet", "runs": 2, "gain": 0.07},
               "stage1": [{"backbone": "unet", "val_dice": 0.75, "test_dice": 0.74, "params": 480000}],
               "statistics": {"iac": {"n": 2, "ttest_p": 0.1234, "wilcoxon_p": None}}}
    h = headline("darts", summary, tmp_path)
    assert [r["model"] for r in h.rows] == ["pick: IAC cell on unet (epoch 3)", "skip baseline: plain",
                                            "baseline: plain unet U-Net (Stage I)"]
    page = table_html(h, str)
    assert "0.8200 ± 0.0283 (2 seeds)" in page and "0.7100 ± 0.0141 (2 seeds)" in page and "480,000" in page
    assert h.verdict == "pick: IAC cell on unet (epoch 3) beats baseline: plain unet U-Net (Stage I) on val Dice " \
                        "(mean over seeds): 0.8200 vs 0.7500 (+0.0700)."
    assert h.baseline == (0.75, "plain unet U-Net (val Dice)") and "ttest_p 0.123" in h.notes[0]


def test_mednns_headline_per_target():
    from orchestrator.report_sections import headline

    summary = {"search": "mednns", "n_zoo": 24, "t1_beats_both": "1 of 2", "loo": [
        {"target": "breastmnist", "recommended": {"model_id": "95a5", "source_dataset": "pneumoniamnist"},
         "epoch": 1, "t1_acc": 0.8, "scratch_acc": 0.5, "resnet_acc": 0.7},
        {"target": "retinamnist", "recommended": {"model_id": "1b22", "source_dataset": "breastmnist"},
         "epoch": 1, "t1_acc": 0.31, "scratch_acc": 0.12, "resnet_acc": 0.37}]}
    h = headline("mednns", summary, Path("."))
    assert [(r["model"], r["val"], r["test_auc"]) for r in h.rows] == [
        ("breastmnist: 95a5 from pneumoniamnist", 0.8, 0.7), ("retinamnist: 1b22 from breastmnist", 0.31, 0.37)]
    assert h.verdict.startswith("the recommended model beats both scratch training and the ResNet on 1 of 2")
    assert headline("unknown", {"search": "unknown"}, Path(".")) is None


def test_ode_headline_reads_the_summarys_pick_and_warning(tmp_path):
    """The summary as the ODE search writes it now: ``pick`` with its retrained scores and
    ``search_val_metric``, and its own one-class sentence (shown once, not repeated)."""
    from orchestrator.report_sections import headline

    pick = {"architecture": ARCH, "description": "S1M1F32", "val_auc": 0.716, "test_auc": 0.58, "test_acc": 0.77,
            "params": 961, "flops": 37933120, "test_pred_classes": 1, "one_class": True,
            "search_val_metric": 0.8236}
    summary = {"search": "ode", "metric": "val_auc", "pick": pick, "best": pick,
               "baseline": {"name": "tiny_cnn", "status": "ok", "val_auc": 0.8236, "test_pred_classes": 2},
               "warning": "the pick predicts one class for every case on the test split"}
    h = headline("ode", summary, tmp_path)
    assert (h.rows[0]["val"], h.rows[0]["search_val"], h.rows[0]["flags"]) == (0.716, 0.8236, "ONE CLASS")
    assert h.verdict.endswith("0.7160 vs 0.8236 (-0.1076).") and "flags" not in h.rows[1]
    assert h.warnings == ["the pick predicts one class for every case on the test split"]
