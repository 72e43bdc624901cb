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

import pandas as pd
import pytest

from tests.cluster.conftest import RAY, REPO, SAMPLE_ROOT, base_env

pytestmark = pytest.mark.cluster

TINY = ["--dataset", "adrenalmnist3d", "--data-root", str(SAMPLE_ROOT), "--budget", "4", "--pop-size", "4",
        "--max-epochs", "1", "--fraction", "0.1", "--max-gflops", "0.05", "--top-k", "0"]
EXCLUDES = [".venv", ".git", "results", "runs", "*.egg-info", ".pytest_cache", "__pycache__"]


def submit(url: str, env: dict, entrypoint: list[str], submission_id: str) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, "job", "submit", "--address", url, "--no-wait", "--submission-id", submission_id,
                           "--working-dir", str(REPO), "--runtime-env-json", json.dumps({"excludes": EXCLUDES}),
                           "--", *entrypoint], env=env, capture_output=True, text=True, timeout=120)


def test_a_search_job_needs_the_token(token_head, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(token_head.dashboard_url, headers={"Authorization": f"Bearer {token_head.token}"})
    out = tmp_path / "job"
    entry = [sys.executable, "-m", "orchestrator.cli", "search", "ode", *TINY, "--out", str(out)]

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
    table = pd.read_csv(out / "candidates.csv")
    assert summary["n_evaluated"] == table.status.isin(["ok", "failed"]).sum() > 0
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
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        port = ray.get_runtime_context().gcs_address.rsplit(":", 1)[1]
        monkeypatch.delenv("RAY_AUTH_MODE")
        check_reachable(f"127.0.0.1:{port}")  # raises ResourceError if it took the cluster for a token one
    finally:
        ray.shutdown()
        monkeypatch.undo()
        _reload_auth()
