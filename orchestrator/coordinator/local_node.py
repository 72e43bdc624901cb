"""The run's own Ray head node on this machine, under ``ray start --block`` (why a node of its
own and not ``ray.init``: see the package doc)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from medcore.errors import ResourceError
from orchestrator.coordinator import log
from orchestrator.coordinator.launchers import auth_env, die_with, log_error_line

TEMP_PREFIX = "mtray"  # the local node's temp dir (short: Ray's socket paths live under it)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class LocalCluster:
    """One Ray head node for the run, under ``ray start --block`` (see the package doc)."""

    def __init__(self, run_dir: Path, start_timeout: float = 180.0):
        self.run_dir, self.start_timeout = run_dir, start_timeout
        self.proc: subprocess.Popen | None = None
        self.address: str | None = None
        self.temp_dir: str | None = None

    def __enter__(self) -> "LocalCluster":
        try:
            return self._start()
        except BaseException:  # also Ctrl+C / SIGTERM while the node starts
            self.__exit__()
            raise

    def _start(self) -> "LocalCluster":
        from orchestrator.runtime import ensure_auth_token

        made = ensure_auth_token()  # `ray start` does not create one (ray.init does)
        if made:
            log(f"made Ray's auth token {made} (mode 0600; token auth, Ray's default)")
        ray = Path(sys.executable).with_name("ray")
        # short temp dir: Ray's socket paths live under it (and it keeps this node out of the
        # machine's "latest cluster" file that a plain ray.init() elsewhere would join)
        self.temp_dir = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir="/tmp" if os.path.isdir("/tmp") else None)
        port = _free_port()
        cmd = [str(ray), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
               "--ray-client-server-port", str(_free_port()), "--dashboard-agent-listen-port", str(_free_port()),
               "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", self.temp_dir]
        log_path = self.run_dir / "ray.log"
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, **auth_env()},
                                         preexec_fn=die_with(os.getpid(), signal.SIGTERM),
                                         start_new_session=True)
        deadline = time.time() + self.start_timeout
        while "Ray runtime started" not in log_path.read_text(errors="replace"):
            if self.proc.poll() is not None or time.time() > deadline:
                last = log_error_line(log_path) or f"exit code {self.proc.poll()}"
                raise ResourceError(f"could not start a local Ray node ({last}); see {log_path}")
            time.sleep(0.25)
        self.address = f"127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # ray start --block drains, then stops this node's processes
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
