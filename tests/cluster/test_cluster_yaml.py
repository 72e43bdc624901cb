"""``cluster.yaml`` is a config ``ray up`` accepts: Ray's own schema and default-merging pass, the
head and an autoscaling GPU worker type are there, and every node gets the repo, the shared
storage, torch and medtune (in that order) and starts Ray with token auth. No Ray is started, so
these tests carry no ``cluster`` mark: they are in the fast tier (``make test-fast``)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.cluster.conftest import REPO

VENV_BIN = "/home/ubuntu/medtune/.venv/bin"


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def config(raw):
    """The config as ``ray up`` sees it: defaults merged, setup commands merged per node kind,
    checked against Ray's schema (``ray/autoscaler/ray-schema.json``) before and after."""
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(raw, schema)
    prepared = prepare_config(raw)
    validate_config(prepared)
    return prepared


def test_ray_accepts_the_config(config):
    assert config["cluster_name"] == "medtune"
    assert config["head_node_type"] in config["available_node_types"]


def test_an_autoscaling_gpu_worker_type(config):
    types = config["available_node_types"]
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpu = [t for t in workers.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu, workers
    for t in gpu:
        assert 0 <= t["min_workers"] < t["max_workers"] <= config["max_workers"]
        assert t["node_config"]["InstanceType"]
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0


def test_every_node_gets_the_repo_and_installs_torch_then_medtune(config):
    mounts = config["file_mounts"]
    repo_path = VENV_BIN.rsplit("/.venv", 1)[0]
    assert (REPO / mounts[repo_path] / "pyproject.toml").exists()  # the local side is this repo
    for kind in ("head_setup_commands", "worker_setup_commands"):
        commands = config[kind]
        torch = _first(commands, r"pip install .*\btorch==")
        medtune = _first(commands, rf"pip install .*-e {re.escape(repo_path)}(\s|$)")
        assert torch < medtune, (kind, commands)
        assert all(c.count("pip install") == 0 or f"{VENV_BIN}/pip" in c for c in commands)
        assert f'"ray[default,tune]=={ray.__version__}"' in commands[medtune]  # nodes match this client
    head_torch = config["head_setup_commands"][_first(config["head_setup_commands"], r"\btorch==")]
    worker_torch = config["worker_setup_commands"][_first(config["worker_setup_commands"], r"\btorch==")]
    assert "whl/cpu" in head_torch and "whl/cpu" not in worker_torch  # CUDA build only where the GPUs are


def test_shared_storage_is_mounted_on_every_node(config):
    for kind in ("head_setup_commands", "worker_setup_commands"):
        assert any(re.search(r"mount -t (nfs|nfs4|efs) .* /mnt/shared", c) for c in config[kind]), config[kind]


def test_ray_starts_with_token_auth_and_a_local_dashboard(config):
    head, worker = config["head_start_ray_commands"], config["worker_start_ray_commands"]
    start_head = next(c for c in head if "ray start" in c)
    start_worker = next(c for c in worker if "ray start" in c)
    assert "RAY_AUTH_MODE=token" in start_head and "RAY_AUTH_MODE=token" in start_worker
    assert "--head" in start_head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in start_head
    assert "--dashboard-host=127.0.0.1" in start_head
    assert "--address=$RAY_HEAD_IP:6379" in start_worker
    assert "/home/ubuntu/.ray/auth_token" in config["file_mounts"]  # one token for every node


def _first(commands: list[str], pattern: str) -> int:
    hits = [i for i, c in enumerate(commands) if re.search(pattern, c)]
    assert hits, (pattern, commands)
    return hits[0]
