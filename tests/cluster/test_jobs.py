"""Searches as Ray jobs on a token-auth cluster (Ray 2.60): with the token a submitted search
succeeds; without it, or with a wrong one, the submission is refused; and a driver pointed at
the cluster without ``RAY_AUTH_MODE=token``, or with a wrong token, stops at once with one line
saying so."""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time

import pytest

from tests.cluster.conftest import RAY, REPO, SAMPLE_ROOT, LocalCluster, base_env, connected
from tests.conftest import release_shared_ray

pytestmark = pytest.mark.cluster

TINY = ["--dataset", "adrenalmnist3d", "--data-root", str(SAMPLE_ROOT), "--budget", "4", "--pop-size", "4",
        "--max-epochs", "1", "--fraction", "0.1", "--max-gflops", "0.05", "--top-k", "0"]
EXCLUDES = [".venv", ".git", "results", "runs", "*.egg-info", ".pytest_cache", "__pycache__"]
# The jobs carry the test-only toy search (instant trials): what is under test is auth and where a
# job's trials run, not training.
TOY = "toy=tests.orchestrator.toy_search:ToySearch"


def submit(url: str, env: dict, entrypoint: list[str], submission_id: str) -> subprocess.CompletedProcess:
    runtime_env = {"excludes": EXCLUDES, "env_vars": {"MEDTUNE_SEARCHES": TOY}}
    return subprocess.run([RAY, "job", "submit", "--address", url, "--no-wait", "--submission-id", submission_id,
                           "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env),
                           "--", *entrypoint], env=env, capture_output=True, text=True, timeout=120)


def test_a_search_job_needs_the_token(token_head, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(token_head.dashboard_url, headers={"Authorization": f"Bearer {token_head.token}"})
    out = tmp_path / "job"
    entry = [sys.executable, "-m", "orchestrator.cli", "search", "toy", "--n-trials", "2", "--out", str(out)]

    refused = {
        "no token": submit(token_head.dashboard_url, base_env(RAY_AUTH_MODE="disabled"), entry, "no-token"),
        "wrong token": submit(token_head.dashboard_url, token_head.env(RAY_AUTH_TOKEN=secrets.token_hex(32)), entry,
                              "wrong-token"),
    }
    for what, proc in refused.items():
        text = proc.stdout + proc.stderr
        assert proc.returncode != 0 and ("401" in text or "403" in text or "authentication" in text.lower()), \
            (what, text[-2000:])
    assert client.list_jobs() == []  # nothing was submitted without the right token

    proc = submit(token_head.dashboard_url, token_head.env(), entry, "with-token")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    deadline = time.time() + 240
    while not client.get_job_status("with-token").is_terminal():
        assert time.time() < deadline, client.get_job_logs("with-token")[-3000:]
        time.sleep(1)
    status = client.get_job_status("with-token")
    assert status == JobStatus.SUCCEEDED, client.get_job_logs("with-token")[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["search"] == "toy" and summary["n_evaluated"] == summary["n_ok"] == 2, summary
    assert [j.submission_id for j in client.list_jobs()] == ["with-token"]


@pytest.mark.parametrize("auth,message", [
    ("no token mode", "requires token auth; set RAY_AUTH_MODE=token"),
    ("wrong token", "refused this machine's auth token; set RAY_AUTH_TOKEN"),
])
def test_a_driver_without_the_right_token_is_refused_in_one_line(token_head, tmp_path, auth, message):
    env = base_env() if auth == "no token mode" else token_head.env(RAY_AUTH_TOKEN=secrets.token_hex(32))
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "search", "ode", *TINY, "--address",
                           token_head.address, "--out", str(tmp_path / "run")],
                          env=env, capture_output=True, text=True, timeout=120)
    took = time.time() - started
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("medtune: error: ") and message in lines[0], lines
    # the probe answers at once; ray.init alone would first spend its connection retries
    assert took < 30, took
    assert not (tmp_path / "run" / "run.json").exists()  # refused before the run existed


def test_the_token_probe_passes_a_cluster_without_token_auth(monkeypatch):
    import ray

    from orchestrator.runtime import check_reachable
    from tests.cluster.conftest import _reload_auth

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    _reload_auth()
    release_shared_ray()
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        port = ray.get_runtime_context().gcs_address.rsplit(":", 1)[1]
        monkeypatch.delenv("RAY_AUTH_MODE")
        check_reachable(f"127.0.0.1:{port}")  # raises ResourceError if it took the cluster for a token one
    finally:
        ray.shutdown()
        monkeypatch.undo()
        _reload_auth()


def test_a_coordinator_runs_each_search_as_a_ray_job(token_head, tmp_path):
    """``medtune run --address http://HEAD:8265``: the coordinator submits each search as a Ray
    job (with its plugin searches in the job's environment); the job's logs land in driver.log
    and the run finishes with its report."""
    import yaml

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"searches": [{"name": "a", "type": "toy", "n_trials": 2,
                                                  "resources": {"cpus_per_trial": 1, "max_concurrent": 1}}]}))
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(spec), "--out", str(tmp_path / "run"),
                           "--address", token_head.dashboard_url], capture_output=True, text=True,
                          env=token_head.env(MEDTUNE_SEARCHES=TOY), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads((tmp_path / "run" / "run.json").read_text())["searches"]["a"]
    assert rec["state"] == "done" and rec["job_id"].startswith("medtune-run-") and rec["job_id"].endswith("-a-1")
    assert "logs of job" in (tmp_path / "run" / "a" / "driver.log").read_text()
    assert json.loads((tmp_path / "run" / "a" / "summary.json").read_text())["n_ok"] == 2
    assert (tmp_path / "run" / "report.html").exists()


@pytest.fixture(scope="module")
def head_and_worker():
    """A head with no CPUs (the dashboard, job drivers and Tune drivers need none) and a 2-CPU
    worker node: every trial has to run on the worker."""
    cluster = LocalCluster(token=secrets.token_hex(32))
    try:
        cluster.start_node(head=True, num_cpus=0, dashboard=True)
        cluster.start_node(head=False, num_cpus=2)
        with connected(cluster):
            cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.timeout(900)
def test_a_spec_submitted_as_a_job_trains_on_the_jobs_cluster(head_and_worker, tmp_path):
    """The README's cluster recipe: ``ray job submit --working-dir . -- medtune run spec.yaml``.
    Inside the job the coordinator starts no Ray node of its own: its searches join the job's
    cluster with the job's runtime environment (the working-dir package lives in that cluster's
    GCS), so the trials run on the worker node."""
    import yaml
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_actors

    cluster = head_and_worker
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"searches": [{
        "name": "toy_job", "type": "toy", "n_trials": 4, "sleep": 0.5,
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2}}]}))
    out = tmp_path / "run"
    entry = [sys.executable, "-m", "orchestrator.cli", "run", str(spec), "--out", str(out)]
    proc = submit(cluster.dashboard_url, cluster.env(), entry, "spec-job")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    client = JobSubmissionClient(cluster.dashboard_url, headers={"Authorization": f"Bearer {cluster.token}"})
    deadline = time.time() + 600
    while not client.get_job_status("spec-job").is_terminal():
        assert time.time() < deadline, client.get_job_logs("spec-job")[-3000:]
        time.sleep(1)
    logs = client.get_job_logs("spec-job")
    assert client.get_job_status("spec-job") == JobStatus.SUCCEEDED, logs[-3000:]
    assert "inside a Ray job: the searches run on that cluster" in logs
    assert json.loads((out / "run.json").read_text())["searches"]["toy_job"]["state"] == "done"
    assert json.loads((out / "toy_job" / "summary.json").read_text())["n_ok"] == 4
    with connected(cluster):
        actors = list_actors(address=cluster.dashboard_url, detail=True, limit=1000, raise_on_missing_output=False)
    # trial actors hold a CPU of their placement group; the job's supervisor and drivers hold none
    trials = [a for a in actors if any(k.startswith("CPU") for k in a.get("required_resources") or {})]
    assert trials, [(a["class_name"], a.get("required_resources")) for a in actors]
    assert {a["node_id"] for a in trials} == {cluster.workers[0].node_id}
