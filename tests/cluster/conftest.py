"""Real multi-node Ray clusters on this machine, started with ``ray start`` and torn down after.

Every node is started with ``--node-ip-address 127.0.0.1`` (dashboard on 127.0.0.1) on free
ports found by binding port 0, under its own short temp dir (Unix socket paths must stay under
107 characters), with token auth and a token made for the test (``RAY_AUTH_TOKEN``, so
``~/.ray/auth_token`` is never read or written). Teardown SIGKILLs only this cluster's
processes (found by temp dir or GCS address on their command line, and their children):
never ``ray stop``, which would stop every Ray on the machine, other test sessions' included.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.conftest import release_shared_ray

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
SAMPLE_ROOT = REPO / "orchestrator" / "sample_data"
# Variables that could point a subprocess at another Ray or change how it authenticates.
_RAY_VARS = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
# Test-session settings a real driver does not have.
_TEST_VARS = ("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS",)


def pytest_configure(config):
    config.addinivalue_line("markers", "cluster: starts a local multi-node Ray cluster with `ray start`")


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free a moment ago (all bound at once, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def base_env(**extra) -> dict:
    """This process's environment without Ray's address/auth variables and the test session's
    Tune settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _RAY_VARS + _TEST_VARS}
    env.update({"RAY_DEDUP_LOGS": "0", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)})
    env.update(extra)
    return env


def _cmdlines():
    for p in psutil.process_iter(["cmdline"]):
        try:
            yield p, p.info["cmdline"] or ()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


@dataclass
class Node:
    temp_dir: str
    node_manager_port: int
    node_id: str = ""

    def processes(self) -> list[psutil.Process]:
        """Every live process whose command line names this node's temp dir."""
        return [p for p, args in _cmdlines() if any(self.temp_dir in a for a in args)]

    def raylet(self) -> psutil.Process:
        found = [p for p in self.processes() if p.name() == "raylet"]
        assert len(found) == 1, [(p.pid, p.name()) for p in self.processes()]
        return found[0]


@dataclass
class LocalCluster:
    """A head and worker nodes started with ``ray start`` on this machine."""

    token: str
    port: int = 0
    dashboard_port: int = 0
    head: Node | None = None
    workers: list[Node] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self, **extra) -> dict:
        """Environment of a client of this cluster (driver, ``ray job submit``), with the token."""
        return base_env(**{"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, **extra})

    def start_node(self, head: bool, num_cpus: int = 1, dashboard: bool = False) -> Node:
        temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")
        nm, om, agent_listen, agent_grpc, metrics, runtime_env, client = free_ports(7)
        args = [RAY, "start", "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus), "--num-gpus", "0",
                "--temp-dir", temp_dir, "--node-manager-port", str(nm), "--object-manager-port", str(om),
                "--dashboard-agent-listen-port", str(agent_listen), "--dashboard-agent-grpc-port", str(agent_grpc),
                "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env),
                "--min-worker-port", "0", "--max-worker-port", "0", "--object-store-memory", str(300 * 2**20),
                "--disable-usage-stats"]
        if head:
            self.port, self.dashboard_port = free_ports(2)
            args += ["--head", "--port", str(self.port), "--ray-client-server-port", str(client),
                     "--include-dashboard", str(dashboard).lower(), "--dashboard-host", "127.0.0.1",
                     "--dashboard-port", str(self.dashboard_port)]
        else:
            args += ["--address", self.address]
        node = Node(temp_dir, nm)
        if head:
            self.head = node
        else:
            self.workers.append(node)
        # a cold first start (fresh venv, busy disk) can take the raylet past Ray's 30 s default
        # registration wait: measured in CI, "GCS cannot find the node ... before the timeout"
        proc = subprocess.run(args, env=self.env(RAY_raylet_start_wait_time_s="120"), capture_output=True,
                              text=True, timeout=240)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return node

    def wait_for_nodes(self, timeout: float = 90) -> None:
        """Wait until every node started here is alive (matched by node manager port); record
        each node's id. Needs this process connected (:func:`connected`)."""
        import ray

        nodes = [self.head, *self.workers]
        deadline = time.time() + timeout
        while time.time() < deadline:
            by_port = {x["NodeManagerPort"]: x["NodeID"] for x in ray.nodes() if x["Alive"]}
            if all(n.node_manager_port in by_port for n in nodes):
                for n in nodes:
                    n.node_id = by_port[n.node_manager_port]
                return
            time.sleep(0.5)
        raise AssertionError(f"nodes not alive after {timeout}s: {ray.nodes()}")

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster: those naming one of its temp dirs or its GCS
        address on their command line (the Ray client server names only the latter), and their
        children (trial workers, job drivers)."""
        dirs = [n.temp_dir for n in (self.head, *self.workers) if n is not None]
        gcs = f":{self.port}"
        found = {}
        for p, args in _cmdlines():
            if any(d in a for a in args for d in dirs) or (
                    self.port and any("address" in a and a.endswith(gcs) for a in args)):
                found[p.pid] = p
                try:
                    found.update((c.pid, c) for c in p.children(recursive=True))
                except psutil.NoSuchProcess:
                    pass
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self) -> None:
        """SIGKILL every process of this cluster, then remove its temp dirs."""
        for _ in range(3):  # a worker may be spawned while we kill
            procs = self.processes()
            if not procs:
                break
            for p in procs:
                try:
                    p.send_signal(signal.SIGKILL)
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(procs, timeout=15)
        for n in (self.head, *self.workers):
            if n is not None:
                shutil.rmtree(n.temp_dir, ignore_errors=True)


def _restore_env(saved: dict) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    _reload_auth()


def _reload_auth() -> None:
    """Ray caches the auth mode and token per process; make it read the environment again."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextmanager
def connected(cluster: LocalCluster):
    """This process as a driver of ``cluster`` (for ``ray.nodes`` and the state API)."""
    import ray

    release_shared_ray()
    saved = {k: os.environ.get(k) for k in _RAY_VARS}
    for k in _RAY_VARS:
        os.environ.pop(k, None)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=cluster.token)
    _reload_auth()
    try:
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        try:
            yield ray
        finally:
            ray.shutdown()
    finally:
        _restore_env(saved)


@pytest.fixture(scope="module")
def two_node_cluster():
    """A head (with the dashboard, for the state API) and one worker node, 1 CPU each, with this
    process connected as a driver. Shared by a module's tests through :func:`two_nodes`."""
    cluster = LocalCluster(token=secrets.token_hex(32))
    try:
        cluster.start_node(head=True, dashboard=True)
        cluster.start_node(head=False)
        with connected(cluster):
            cluster.wait_for_nodes()
            yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def two_nodes(two_node_cluster):
    """The module's two-node cluster with both nodes alive: a worker node an earlier test
    killed is replaced by a fresh one."""
    import ray

    cluster = two_node_cluster
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    for node in list(cluster.workers):
        if node.node_id not in alive:
            for p in node.processes():
                p.kill()
            shutil.rmtree(node.temp_dir, ignore_errors=True)
            cluster.workers.remove(node)
            cluster.start_node(head=False)
    cluster.wait_for_nodes()
    return cluster


@pytest.fixture(scope="module")
def token_head():
    """A single head node (2 CPUs) with the dashboard on 127.0.0.1, for job submission."""
    cluster = LocalCluster(token=secrets.token_hex(32))
    try:
        cluster.start_node(head=True, num_cpus=2, dashboard=True)
        yield cluster
    finally:
        cluster.stop()
