"""A search on a real two-node cluster survives losing a node and losing a trial's worker: the
lost trials are retried (Tune ``FailureConfig``), every trial ends ok, and the search finishes
(exit 0, ``summary.json``). It drives the test-only toy search (registered through
``MEDTUNE_SEARCHES``), whose trials sleep long enough to be caught running: what is under test is
the driver's retry and bookkeeping on a real cluster, not training (the real ODE search's
kill-and-resume is tested at the driver level, ``tests/orchestrator/test_cli.py``)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from tests.cluster.conftest import LocalCluster, Node

pytestmark = pytest.mark.cluster

N_TRIALS = 6
TOY = ["--n-trials", str(N_TRIALS), "--sleep", "4", "--cpus-per-trial", "1", "--no-reuse-workers"]
# (each trial sleeps 4 s, long enough to be caught running and killed; a fresh worker per trial:
# a reused one keeps every trial on the node where the first one landed, often the head, so the
# worker node would never run one)
# One step of a trial: Tune names a trial actor's tasks after the trainable (its class is ImplicitFunc).
TRIAL_STEP = "toy_trainable.train"


def start_search(cluster: LocalCluster, out: Path) -> subprocess.Popen:
    log = open(out.parent / "driver.log", "w")
    env = cluster.env(MEDTUNE_SEARCHES="toy=tests.orchestrator.toy_search:ToySearch")
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "search", "toy", *TOY, "--address",
                             cluster.address, "--out", str(out)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_training_on(cluster: LocalCluster, node_id: str, proc: subprocess.Popen, timeout: float = 240) -> dict:
    """The first trial step seen running on ``node_id`` for a second: a trial in the middle of
    its work there."""
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
    raise AssertionError(f"no trial ran on node {node_id} within {timeout}s")


def finish(proc: subprocess.Popen, out: Path, timeout: float = 300) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log = (out.parent / "driver.log").read_text()
    assert proc.returncode == 0, log[-4000:]


def check_outcome(out: Path) -> Counter:
    """Every trial ended ok and the summary was written; returns how often each trial index
    started (a retried trial starts twice)."""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_evaluated"] == summary["n_ok"] == N_TRIALS, summary
    starts = Counter(int(line) for line in (out / "runs.log").read_text().split())
    assert set(starts) == set(range(N_TRIALS)), starts
    return starts


def lost_machine(node: Node) -> None:
    """What losing the node's machine does: its raylet and every process of it die at once. (A
    raylet killed alone leaves its workers running for a moment: a trial in the middle of a
    short sleep can still report its result to the driver, which then never sees the loss.)"""
    raylet = node.raylet()
    doomed = [raylet, *raylet.children(recursive=True), *node.processes()]  # workers are the raylet's children
    for p in doomed:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def retried_trials(out: Path) -> list[Path]:
    """Trial folders with a recorded failure (Tune writes ``error.txt`` on each one)."""
    return [p.parent for p in (out / "tune" / "toy").glob("*/error.txt")]


def index_of(trial: Path) -> int:
    """The toy index a trial folder ran (its ``params.json``)."""
    return json.loads((trial / "params.json").read_text())["i"]


def test_losing_a_worker_node_mid_trial(two_nodes, tmp_path):
    cluster = two_nodes
    worker = cluster.workers[0]
    out = tmp_path / "run"
    proc = start_search(cluster, out)
    try:
        wait_for_training_on(cluster, worker.node_id, proc)
        lost_machine(worker)
        finish(proc, out)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    starts = check_outcome(out)
    lost = retried_trials(out)
    assert lost, "no trial recorded the lost node"
    for trial in lost:
        assert "Failure # 1" in (trial / "error.txt").read_text()
        assert starts[index_of(trial)] >= 2  # retried on the surviving node, and ended ok


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
    starts = check_outcome(out)
    lost = retried_trials(out)
    assert len(lost) == 1, lost
    text = (lost[0] / "error.txt").read_text()
    assert "Failure # 1" in text and f"pid: {task['worker_pid']}" in text, text
    assert starts[index_of(lost[0])] == 2  # retried once, and ended ok
    assert sum(starts.values()) == N_TRIALS + 1  # no other trial ran twice
