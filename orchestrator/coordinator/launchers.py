"""How the coordinator runs a search's driver: the :class:`Launcher` interface and its two
implementations, :class:`LocalLauncher` (a subprocess joined to a Ray node or cluster) and
:class:`JobLauncher` (a Ray job at a dashboard address). The coordinator sees only the interface,
so scheduling is the same, and tested with a fake launcher, whichever way searches run."""
from __future__ import annotations

import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from medcore.errors import ConfigError, ResourceError
from orchestrator import registry
from orchestrator.manifest import last_error_line

PR_SET_PDEATHSIG = 1
STOP_SIGNAL = signal.SIGINT  # what stops a search's driver cleanly (see the package doc)


@dataclass
class Launch:
    """A started search: a local process or a Ray job."""

    name: str
    proc: subprocess.Popen | None = None
    job_id: str | None = None
    stopping: bool = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


class Launcher(Protocol):
    """What the coordinator does with a search's driver, however it runs."""

    def submission_id(self, name: str, attempt: int) -> str | None:
        """The id ``start`` will submit under, recorded before starting so that a resumed
        coordinator finds a search still running; None where nothing outlives the coordinator."""

    def start(self, name: str, kind: str, config: dict, log_path: Path, attempt: int,
              job_id: str | None = None) -> Launch:
        """Start search ``name`` of type ``kind`` with ``config``, logging to ``log_path``."""

    def poll(self, launch: Launch, log_path: Path) -> tuple[int, str] | None:
        """None while running, else (exit code, reason: the log's last error line; empty when
        it succeeded)."""

    def stop(self, launch: Launch) -> None:
        """Ask the driver to save its state and exit; sets ``launch.stopping``."""

    def kill(self, launch: Launch) -> None:
        """End a driver that did not stop in time."""


def die_with(parent: int, sig: int):
    """``preexec_fn``: send ``sig`` to this child when ``parent`` dies (Linux), even by SIGKILL.
    SIGINT is reset to its default first: a coordinator started in the background without job
    control has it ignored, and Python then never raises KeyboardInterrupt."""
    def preexec():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)
    return preexec


def auth_env() -> dict:
    """Ray 2.60 enables token auth by default; every process of the run uses the same mode."""
    from orchestrator.runtime import TOKEN_MODE

    return {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", TOKEN_MODE)}


def log_error_line(path: Path, limit: int = 65536) -> str:
    """The last ``medtune: error:`` line of a log file, else its last non-empty line."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return last_error_line(text)


def search_command(python: str, kind: str, config: dict) -> list[str]:
    return [python, "-u", "-m", "orchestrator.cli", "search", kind, "--config-json", json.dumps(config)]


class LocalLauncher:
    """Each search as a subprocess joined to the run's local Ray node."""

    def __init__(self, address: str):
        self.address = address

    def submission_id(self, name: str, attempt: int) -> None:
        return None  # a process dies with its coordinator: nothing to find again

    def start(self, name: str, kind: str, config: dict, log_path: Path, attempt: int, job_id=None) -> Launch:
        cmd = search_command(sys.executable, kind, config)
        env = {**os.environ, **auth_env(), "RAY_ADDRESS": self.address, "PYTHONUNBUFFERED": "1"}
        root = str(Path(__file__).resolve().parents[2])  # the folder holding the orchestrator package
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
        with open(log_path, "ab") as out:
            out.write(f"==== medtune coordinator: attempt {attempt}, {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                      f"{shlex.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    preexec_fn=die_with(os.getpid(), STOP_SIGNAL), start_new_session=True)
        return Launch(name, proc=proc)

    def poll(self, launch: Launch, log_path: Path) -> tuple[int, str] | None:
        """None while running, else (exit code, reason; empty when it succeeded)."""
        code = launch.proc.poll()
        if code is None:
            return None
        if code == 0:
            return 0, ""
        if code < 0:
            return code, f"killed by {signal.Signals(-code).name}"
        return code, log_error_line(log_path) or f"exit code {code}"

    def stop(self, launch: Launch) -> None:
        if launch.proc.poll() is None:
            launch.proc.send_signal(STOP_SIGNAL)  # the driver saves its state and exits 130
        launch.stopping = True

    def kill(self, launch: Launch) -> None:
        if launch.proc.poll() is None:
            launch.proc.kill()


def job_runtime_env() -> dict | None:
    """The runtime env of a search's Ray job: the plugin searches this coordinator knows
    (``MEDTUNE_SEARCHES``), so the job's driver resolves the same search names. The plugin's
    module must be importable on the cluster (installed there, like medtune itself)."""
    plugins = os.environ.get(registry.ENV, "").strip()
    return {"env_vars": {registry.ENV: plugins}} if plugins else None


class JobLauncher:
    """Each search as a Ray job on the cluster at a dashboard address (Jobs SDK)."""

    def __init__(self, address: str, run_id: str, python: str):
        self.address, self.run_id, self.python = address, run_id, python
        try:
            from ray.job_submission import JobSubmissionClient

            self.client = JobSubmissionClient(address)
        except Exception as exc:  # connection refused, wrong scheme, missing token, version mismatch ...
            text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            if "authentication" in text.lower():
                raise ResourceError(f"the Ray cluster at {address} requires token auth; set RAY_AUTH_MODE=token "
                                    f"(the token is read from ~/.ray/auth_token or RAY_AUTH_TOKEN)") from None
            raise ResourceError(f"no Ray job server answers at {address} ({text}); give the cluster's dashboard "
                                f"address, e.g. http://head:8265") from None

    def submission_id(self, name: str, attempt: int) -> str:
        return f"medtune-{self.run_id}-{name}-{attempt}"

    def status(self, job_id: str):
        try:
            return self.client.get_job_status(job_id)
        except RuntimeError:  # no such job
            return None

    def start(self, name: str, kind: str, config: dict, log_path: Path, attempt: int, job_id=None) -> Launch:
        job_id = job_id or self.submission_id(name, attempt)
        if self.status(job_id) is None:
            self.client.submit_job(entrypoint=shlex.join(search_command(self.python, kind, config)),
                                   submission_id=job_id, runtime_env=job_runtime_env(),
                                   metadata={"medtune_run": self.run_id, "medtune_search": name})
        return Launch(name, job_id=job_id)

    def poll(self, launch: Launch, log_path: Path) -> tuple[int, str] | None:
        status = self.status(launch.job_id)
        if status is None:
            return 1, f"job {launch.job_id} is unknown to the cluster at {self.address}"
        if not status.is_terminal():
            return None
        info = self.client.get_job_info(launch.job_id)
        try:
            logs = self.client.get_job_logs(launch.job_id)
        except RuntimeError:
            logs = ""
        with open(log_path, "a") as f:
            f.write(f"==== medtune coordinator: logs of job {launch.job_id} ({status})\n{logs}")
        if str(status) == "SUCCEEDED":
            return 0, ""
        code = info.driver_exit_code if info.driver_exit_code is not None else 1
        return code, last_error_line(logs) or (info.message or str(status))

    def stop(self, launch: Launch) -> None:
        try:
            self.client.stop_job(launch.job_id)  # SIGTERM to the driver (its state is saved every 2 s)
        except RuntimeError:
            pass
        launch.stopping = True

    def kill(self, launch: Launch) -> None:
        self.stop(launch)


def job_launcher(address: str, python: str | None) -> JobLauncher:
    """The Jobs SDK client for ``--address``; refused in one line before anything starts."""
    if not address.startswith(("http://", "https://")):
        raise ConfigError(f"--address must be the cluster's dashboard (job server) address, e.g. "
                          f"http://head:8265, got {address}")
    return JobLauncher(address, "", python or sys.executable)
