"""A search on a real two-node cluster survives losing a node and losing a trial's worker: the
lost trials are retried (Tune ``FailureConfig``), every candidate ends ok or failed with its
reason, and the search finishes (exit 0, ``summary.json``)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.cluster.conftest import SAMPLE_ROOT, LocalCluster

pytestmark = pytest.mark.cluster

TINY = ["--dataset", "adrenalmnist3d", "--data-root", str(SAMPLE_ROOT), "--budget", "6", "--pop-size", "4",
        "--max-epochs", "2", "--fraction", "0.3", "--max-gflops", "0.05", "--top-k", "0", "--cpus-per-trial", "1",
        "--no-reuse-workers"]
# (a third of train: each epoch, one Tune step, runs long enough to be caught running and killed; a
# fresh worker per trial: a reused one keeps every trial on the node where the first one landed,
# often the head, so the worker node would never train)
# One step of a trial: Tune names a trial actor's tasks after the trainable (its class is ImplicitFunc).
TRIAL_STEP = "train_candidate.train"


def start_search(cluster: LocalCluster, out: Path) -> subprocess.Popen:
    log = open(out.parent / "driver.log", "w")
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "search", "ode", *TINY, "--address",
                             cluster.address, "--out", str(out)], env=cluster.env(), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_training_on(cluster: LocalCluster, node_id: str, proc: subprocess.Popen, timeout: float = 240) -> dict:
    """The first trial step seen running on ``node_id`` for a second: a trial in the middle of
    training there."""
    from ray.util.state import list_tasks

    deadline, seen = time.time() + timeout, {}
    while time.time() < deadline:
        assert proc.poll() is None, "the search ended before a trial ran on the node"
        running = list_tasks(address=cluster.dashboard_url, detail=True, raise_on_missing_output=False,
                             filters=[("state", "=", "RUNNING"), ("node_id", "=", node_id)])
        for task in running:
            if task["name"] == TRIAL_STEP:
                first = seen.setdefault(task["task_id"], time.time())
                if time.time() - first >= 1.0:
                    return task
        time.sleep(0.5)
    raise AssertionError(f"no trial trained on node {node_id} within {timeout}s")


def finish(proc: subprocess.Popen, out: Path, timeout: float = 300) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log = (out.parent / "driver.log").read_text()
    assert proc.returncode == 0, log[-4000:]


def check_outcome(out: Path) -> pd.DataFrame:
    """Every candidate ok or failed with a reason, the summary written; returns the evaluated rows
    of candidates.csv."""
    table = pd.read_csv(out / "candidates.csv", keep_default_na=False)
    summary = json.loads((out / "summary.json").read_text())
    evaluated = table[table.status.isin(["ok", "failed"])]
    assert set(table.status) <= {"ok", "failed", "infeasible", "duplicate"}, table.status.tolist()
    assert (evaluated[evaluated.status == "failed"].reason != "").all()
    assert summary["n_evaluated"] == len(evaluated) == 6  # the whole budget was spent
    return evaluated


def retried_trials(out: Path) -> list[Path]:
    """Trial folders with a recorded failure (Tune writes ``error.txt`` on each one)."""
    return [p.parent for p in (out / "tune" / "ode_search").glob("*/error.txt")]


def status_of(trial: Path, evaluated: pd.DataFrame) -> str:
    """The candidates.csv status of the candidate a trial folder (``cand0031_<trial id>``) trained."""
    row = evaluated[evaluated.candidate == int(trial.name[4:8])]
    assert len(row) == 1, row
    return row.status.iloc[0]


def test_losing_a_worker_node_mid_trial(two_nodes, tmp_path):
    cluster = two_nodes
    worker = cluster.workers[0]
    out = tmp_path / "run"
    proc = start_search(cluster, out)
    try:
        wait_for_training_on(cluster, worker.node_id, proc)
        worker.raylet().send_signal(signal.SIGKILL)  # the node's workers go down with it
        finish(proc, out)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    evaluated = check_outcome(out)
    lost = retried_trials(out)
    assert lost, "no trial recorded the lost node"
    for trial in lost:
        assert "Failure # 1" in (trial / "error.txt").read_text()
        assert status_of(trial, evaluated) == "ok"  # retried on the surviving node, and trained


def test_losing_a_trial_worker_process(two_nodes, tmp_path):
    cluster = two_nodes
    out = tmp_path / "run"
    proc = start_search(cluster, out)
    try:
        task = wait_for_training_on(cluster, cluster.head.node_id, proc)
        os.kill(task["worker_pid"], signal.SIGKILL)
        finish(proc, out)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    evaluated = check_outcome(out)
    lost = retried_trials(out)
    assert len(lost) == 1, lost
    text = (lost[0] / "error.txt").read_text()
    assert "Failure # 1" in text and f"pid: {task['worker_pid']}" in text, text
    assert status_of(lost[0], evaluated) == "ok"  # retried, and trained
