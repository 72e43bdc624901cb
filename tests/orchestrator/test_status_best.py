"""`medtune status`: a search's "best so far" never names its baseline experiment, and a best that
predicts one class for every case is flagged (fast: fake trials and status files, no Ray started)."""
import json
import os
import socket
from types import SimpleNamespace

from orchestrator.coordinator.run_status import format_status, run_status
from orchestrator.status import StatusCallback, read_status


def trial(status, **result):
    return SimpleNamespace(status=status, last_result=result)


def test_status_callback_marks_baseline_experiments_and_one_class_trials(tmp_path, capsys):
    trials = [trial("TERMINATED", best_val_auc=0.9, val_pred_classes=1),
              trial("TERMINATED", best_val_auc=0.7, val_pred_classes=2, test_pred_classes=1),
              trial("RUNNING", best_val_auc=0.6, val_pred_classes=2), trial("PENDING")]
    StatusCallback(str(tmp_path), "ode_retrain", "retrain", "best_val_auc").on_trial_complete(0, trials, trials[0])
    StatusCallback(str(tmp_path), "ode_baseline", "baseline", "best_val_auc").on_trial_complete(0, trials[2:],
                                                                                               trials[2])
    entries = read_status(tmp_path)["experiments"]
    assert entries["ode_retrain"] == {"done": 2, "running": 1, "pending": 1, "failed": 0, "best": 0.9,
                                      "metric": "best_val_auc", "stage": "retrain", "state": "running",
                                      "baseline": False, "best_one_class": True, "one_class": 2}
    assert entries["ode_baseline"]["baseline"] is True and entries["ode_baseline"]["best_one_class"] is False
    err = capsys.readouterr().err.splitlines()
    assert err == ["[ode_retrain] 2 done, 0 failed, 1 running, best best_val_auc 0.9 ONE CLASS",
                   "[ode_baseline] 0 done, 0 failed, 1 running, best best_val_auc 0.6 (baseline)"]


def fake_run(run_dir, experiments):
    out = run_dir / "a"
    out.mkdir(parents=True)
    (out / "status.json").write_text(json.dumps({"state": "done", "stage": None, "experiments": experiments}))
    searches = {"a": {"type": "ode", "after": [], "dataset": "adrenalmnist3d", "out": str(out), "state": "done",
                      "reason": "", "exit_code": 0, "attempts": 1, "pid": None, "job_id": None}}
    coordinator = {"pid": os.getpid(), "host": socket.gethostname(), "state": "done"}
    (run_dir / "run.json").write_text(json.dumps({"run": "r1", "zoo": str(run_dir / "zoo"), "spec": "spec.yaml",
                                                  "searches": searches, "coordinator": coordinator}))
    return run_dir


def entry(best, **extra):
    return {"done": 4, "running": 0, "pending": 0, "failed": 0, "best": best, "metric": "best_val_auc", **extra}


def test_best_so_far_is_never_the_baseline(tmp_path):
    # the baseline ran last and scored highest; the old status file has no "baseline" flag (stage only)
    run_dir = fake_run(tmp_path / "run", {"ode_search": entry(0.81, stage="search"),
                                          "ode_retrain": entry(0.716, stage="retrain"),
                                          "ode_baseline": entry(0.8236, stage="baseline")})
    status = run_status(run_dir)
    [s] = status["searches"]
    assert s["best"] == {"experiment": "ode_retrain", "metric": "best_val_auc", "value": 0.716, "one_class": False}
    assert s["baseline"]["experiment"] == "ode_baseline" and s["baseline"]["value"] == 0.8236
    text = format_status(status)
    assert "best_val_auc 0.716 (ode_retrain); baseline 0.8236 (ode_baseline)" in text
    assert "ONE CLASS" not in text and "predict" not in text


def test_one_class_best_is_flagged_in_status(tmp_path):
    run_dir = fake_run(tmp_path / "run", {
        "ode_search": entry(0.8, stage="search", baseline=False, best_one_class=True, one_class=3),
        "ode_baseline": entry(0.7, stage="baseline", baseline=True, best_one_class=True, one_class=1)})
    text = format_status(run_status(run_dir))
    assert "best_val_auc 0.8 (ode_search) ONE CLASS; baseline 0.7 ONE CLASS (ode_baseline)" in text
    assert text.splitlines()[-1] == "a: 4 trials predict one class for every case"
    # only a baseline has a best: the search has none yet
    run_dir = fake_run(tmp_path / "run2", {"ode_baseline": entry(0.7, stage="baseline")})
    [s] = run_status(run_dir)["searches"]
    assert s["best"] is None and s["baseline"]["value"] == 0.7
    assert "-; baseline 0.7 (ode_baseline)" in format_status(run_status(run_dir))
