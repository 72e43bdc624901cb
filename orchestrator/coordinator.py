"""The coordinator: ``medtune run | status | report | resume`` over a YAML spec (:mod:`orchestrator.spec`).

Ray supports one Tune driver per process, and concurrent drivers on one cluster (what its
multi-tenancy test covers), so every search runs as its own driver process, ``medtune search
TYPE --config-json ...``, and the coordinator only starts, watches and records them:

- locally, it starts one Ray node for the whole run (``ray start --head --block`` with free
  ports and its own temp dir) and each search is a subprocess joined to it through
  ``RAY_ADDRESS``, so all searches share the machine's CPUs through one scheduler. The node runs
  under ``ray start --block`` rather than ``ray.init`` in this process because a SIGTERM to that
  one process drains and stops exactly this node, agents included (a killed ``ray.init`` driver
  leaves its dashboard and runtime-env agents behind), and ``ray stop`` would stop every Ray on
  the machine. The node and every search get ``PR_SET_PDEATHSIG``: a SIGKILLed coordinator takes
  them down. A search is stopped with SIGINT, the signal its driver turns into "save and exit
  130" (``ray.init`` replaces a driver's own SIGTERM handler with one that exits at once; Tune
  saves the experiment and searcher every 2 s either way, which is what resume relies on);
- inside ``ray job submit`` (Ray sets ``RAY_ADDRESS`` to the job's cluster; likewise a
  ``RAY_ADDRESS=host:port`` set by hand) no node is started: each search is a subprocess joined
  to that cluster, inheriting the job's runtime environment (its ``--working-dir`` package
  lives in that cluster's GCS, which a private node would not have), so trials spread over
  the cluster's nodes;
- with ``--address http://head:8265`` each search is a Ray job (Jobs SDK). Submission ids are
  ``medtune-<run>-<search>-<attempt>`` and recorded before submitting, so a resumed coordinator
  finds a job that is still running and waits for it instead of submitting it again. The run
  folder must be on storage that this machine and the cluster's head node share (NFS, a shared
  home), at the same path: the jobs write their results there and the coordinator reads them.

``RUN_DIR/run.json`` records the run (:mod:`orchestrator.manifest`): per search its state, pid
or job id, exit code, reason and folder. One coordinator per run folder (``RunLock``);
``medtune status`` and ``medtune report`` only read.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from medcore.errors import ConfigError, ResourceError, RunError
from orchestrator import registry
from orchestrator.manifest import (DONE, FAILED, INTERRUPTED, MANIFEST, PENDING, RUNNING, SEARCH_MANIFEST, SKIPPED,
                                   SPEC_COPY, Manifest, last_error_line, read_manifest)
from orchestrator.run_report import write_report
from orchestrator.runlock import RunLock

LOG_NAME = "driver.log"
POLL_S = 0.5
# How long a stopped search may take to save its state and exit, and how long a resumed run
# waits for a driver of the killed coordinator to release its folder.
STOP_WAIT_S = 120.0
PR_SET_PDEATHSIG = 1
STOP_SIGNAL = signal.SIGINT  # what stops a search's driver cleanly (see the module doc)
TEMP_PREFIX = "mtray"  # the local node's temp dir (short: Ray's socket paths live under it)


def log(message: str) -> None:
    """One progress line on stderr."""
    print(f"medtune run [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- processes ---------------------------------------------------------------------------

def _die_with(parent: int, sig: int):
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _auth_env() -> dict:
    """Ray 2.60 enables token auth by default; every process of the run uses the same mode."""
    from orchestrator.runtime import TOKEN_MODE

    return {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", TOKEN_MODE)}


class LocalCluster:
    """One Ray head node for the run, under ``ray start --block`` (see the module doc)."""

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
                                         env={**os.environ, **_auth_env()},
                                         preexec_fn=_die_with(os.getpid(), signal.SIGTERM),
                                         start_new_session=True)
        deadline = time.time() + self.start_timeout
        while "Ray runtime started" not in log_path.read_text(errors="replace"):
            if self.proc.poll() is not None or time.time() > deadline:
                last = _last_error_line(log_path) or f"exit code {self.proc.poll()}"
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


@dataclass
class Launch:
    """A started search: a local process or a Ray job."""

    name: str
    proc: subprocess.Popen | None = None
    job_id: str | None = None
    stopping: bool = False


def _last_error_line(path: Path, limit: int = 65536) -> str:
    """The last ``medtune: error:`` line of a log, else its last non-empty line."""
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

    def start(self, name: str, kind: str, config: dict, log_path: Path, attempt: int, job_id=None) -> Launch:
        cmd = search_command(sys.executable, kind, config)
        env = {**os.environ, **_auth_env(), "RAY_ADDRESS": self.address, "PYTHONUNBUFFERED": "1"}
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
        with open(log_path, "ab") as out:
            out.write(f"==== medtune coordinator: attempt {attempt}, {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                      f"{shlex.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    preexec_fn=_die_with(os.getpid(), STOP_SIGNAL), start_new_session=True)
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
        return code, _last_error_line(log_path) or f"exit code {code}"

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


# ---- the coordinator -----------------------------------------------------------------------

def _wait_for_folder(out: Path, timeout: float) -> bool:
    """True once no driver holds ``out``'s lock (a driver of a killed coordinator may still be
    saving its state after its stop signal)."""
    if not out.is_dir():
        return True
    deadline = time.time() + timeout
    while True:
        try:
            RunLock(out, "probe").acquire().release()
            return True
        except RunError:
            if time.time() > deadline:
                return False
            time.sleep(1.0)


class Coordinator:
    """Runs the unfinished searches of a run folder: dependencies first, at most ``max_parallel``
    at a time, each with its own driver, recording every state change in ``run.json``."""

    def __init__(self, run_dir: Path, spec, manifest: Manifest, launcher, max_parallel: int = 0):
        self.run_dir, self.spec, self.manifest, self.launcher = run_dir, spec, manifest, launcher
        self.max_parallel = max_parallel
        self.running: dict[str, Launch] = {}

    def _set(self, name: str, state: str, note: str = "", **fields) -> None:
        self.manifest.update(name, state=state, **fields)
        log(f"{name}: {state}{f' ({note})' if note else ''}")

    def _config(self, name: str, resume: bool) -> dict:
        entry = self.spec.entry(name)
        cfg = entry.run_config(self.manifest.searches[name]["out"], self.manifest.data["zoo"], resume)
        return cfg.to_dict()

    def _start(self, name: str) -> None:
        rec = self.manifest.searches[name]
        out = Path(rec["out"])
        # a driver of a SIGKILLed coordinator may still be saving: never start a second one on its folder
        if not _wait_for_folder(out, STOP_WAIT_S):
            reason = f"{out} is still in use by another driver"
            self._set(name, FAILED, reason, reason=reason, exit_code=None)
            return
        out.mkdir(parents=True, exist_ok=True)
        resume = (out / SEARCH_MANIFEST).exists()  # the driver's own manifest: a run to continue
        attempt = int(rec.get("attempts", 0)) + 1
        job_id = None
        if isinstance(self.launcher, JobLauncher):
            job_id = self.launcher.submission_id(name, attempt)
            self.manifest.update(name, job_id=job_id)  # recorded before submitting: a resume finds it
        try:
            launch = self.launcher.start(name, rec["type"], self._config(name, resume), out / LOG_NAME, attempt,
                                         job_id)
        except Exception as exc:  # a submission the cluster refused, a process that could not start
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            reason = f"could not start: {type(exc).__name__}: {first}"
            self._set(name, FAILED, reason, attempts=attempt, reason=reason, exit_code=None)
            return
        self.running[name] = launch
        where = f"pid {launch.proc.pid}" if launch.proc else f"job {launch.job_id}"
        self._set(name, RUNNING, f"{where}, {'resumed' if resume else 'fresh'}, log {out / LOG_NAME}",
                  attempts=attempt, resume=resume, pid=launch.proc.pid if launch.proc else None, job_id=launch.job_id,
                  exit_code=None, reason="", started=time.time(), ended=None)

    def attach(self, name: str) -> None:
        """Wait for a job of a previous coordinator that is still running on the cluster."""
        rec = self.manifest.searches[name]
        self.running[name] = Launch(name, job_id=rec["job_id"])
        log(f"{name}: running (job {rec['job_id']} still running; attached)")

    def _finish(self, name: str, code: int, reason: str) -> None:
        launch = self.running.pop(name)
        elapsed = time.time() - (self.manifest.searches[name].get("started") or time.time())
        if code == 0:
            self._set(name, DONE, f"{elapsed:.0f} s", exit_code=0, reason="", ended=time.time())
        elif launch.stopping:
            self._set(name, INTERRUPTED, f"exit {code}; `medtune resume` continues it", exit_code=code,
                      reason="stopped by the coordinator", ended=time.time())
        else:
            self._set(name, FAILED, f"exit {code}: {reason}", exit_code=code, reason=reason, ended=time.time())

    def _blocked_by(self, name: str) -> str | None:
        """The first dependency that failed or was skipped, if any."""
        for dep in self.manifest.searches[name]["after"]:
            if self.manifest.searches[dep]["state"] in (FAILED, SKIPPED, INTERRUPTED):
                return dep
        return None

    def _ready(self, name: str) -> bool:
        return all(self.manifest.searches[d]["state"] == DONE for d in self.manifest.searches[name]["after"])

    def execute(self, names: list[str]) -> None:
        """Run ``names`` (topological order) until each is done, failed or skipped."""
        pending = [n for n in names if n not in self.running]
        try:
            while pending or self.running:
                for name, launch in list(self.running.items()):
                    result = self.launcher.poll(launch, Path(self.manifest.searches[name]["out"]) / LOG_NAME)
                    if result is not None:
                        self._finish(name, *result)
                for name in list(pending):
                    dep = self._blocked_by(name)
                    if dep is not None:
                        state = self.manifest.searches[dep]["state"]
                        pending.remove(name)
                        reason = f"dependency {dep} {state}"
                        self._set(name, SKIPPED, reason, reason=reason, exit_code=None)
                    elif self._ready(name) and (not self.max_parallel or len(self.running) < self.max_parallel):
                        pending.remove(name)
                        self._start(name)
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            self.stop_all()
            raise

    def stop_all(self) -> None:
        """Ctrl+C / SIGTERM: every running search saves its state and stops (interrupted)."""
        if not self.running:
            return
        log(f"stopping {', '.join(self.running)} (each saves its state; `medtune resume` continues)")
        for launch in self.running.values():
            self.launcher.stop(launch)
        deadline = time.time() + STOP_WAIT_S
        while self.running and time.time() < deadline:
            for name, launch in list(self.running.items()):
                result = self.launcher.poll(launch, Path(self.manifest.searches[name]["out"]) / LOG_NAME)
                if result is not None:
                    self._finish(name, *result)
            time.sleep(POLL_S)
        for name, launch in list(self.running.items()):
            self.launcher.kill(launch)
            self._finish(name, -9, "did not stop in time")


def job_launcher(address: str, python: str | None) -> "JobLauncher":
    """The Jobs SDK client for ``--address``; refused in one line before anything starts."""
    if not address.startswith(("http://", "https://")):
        raise ConfigError(f"--address must be the cluster's dashboard (job server) address, e.g. "
                          f"http://head:8265, got {address}")
    return JobLauncher(address, "", python or sys.executable)


def _finish_run(run_dir: Path, manifest: Manifest) -> int:
    states = {n: r["state"] for n, r in manifest.searches.items()}
    manifest.data["coordinator"].update(state=DONE if all(s == DONE for s in states.values()) else FAILED,
                                        ended=time.time())
    manifest.save()
    try:
        report = write_report(run_dir)
        log(f"report: {report}")
    except Exception as exc:  # the run's outcome stands; the report can be rewritten with `medtune report`
        log(f"could not write the report ({type(exc).__name__}: {exc}); retry with `medtune report {run_dir}`")
    counts = {s: sum(v == s for v in states.values()) for s in dict.fromkeys(states.values())}
    log(f"finished: {', '.join(f'{n} {s}' for s, n in counts.items())}; results in {run_dir}")
    return 0 if all(s == DONE for s in states.values()) else 1


def _drive(run_dir: Path, spec, manifest: Manifest, names: list[str], jobs: "JobLauncher | None",
           max_parallel: int, attach: list[str] = ()) -> int:
    """Start the local node (or use the cluster's job server), run ``names`` (waiting also for the
    jobs in ``attach``), write the report. Ctrl+C / SIGTERM stop every search cleanly."""
    from contextlib import nullcontext

    from orchestrator.runtime import Terminated, job_cluster_address, sigterm_as_interrupt

    previous = (manifest.data.get("coordinator") or {}).get("ray_temp_dir")
    if previous and Path(previous).name.startswith(TEMP_PREFIX):  # a killed coordinator's node left it
        shutil.rmtree(previous, ignore_errors=True)
    manifest.data["coordinator"] = {"pid": os.getpid(), "host": socket.gethostname(), "state": RUNNING,
                                    "started": time.time(), "max_parallel": max_parallel}
    manifest.save()
    joined = None if jobs else job_cluster_address()
    if joined:
        where = "inside a Ray job" if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ else "RAY_ADDRESS is set"
        log(f"{where}: the searches run on that cluster ({joined}), not on a node of their own")
        manifest.data["coordinator"]["cluster"] = joined
        manifest.save()
    try:
        with sigterm_as_interrupt(), (nullcontext() if jobs or joined else LocalCluster(run_dir)) as cluster:
            if jobs:
                jobs.run_id = manifest.data["run"]
            elif not joined:
                manifest.data["coordinator"]["ray_temp_dir"] = cluster.temp_dir
                manifest.save()
            launcher = jobs or LocalLauncher(joined or cluster.address)
            coordinator = Coordinator(run_dir, spec, manifest, launcher, max_parallel)
            for name in attach:
                coordinator.attach(name)
            coordinator.execute(names)
    except KeyboardInterrupt as exc:
        code = 143 if isinstance(exc, Terminated) else 130
        manifest.data["coordinator"].update(state=INTERRUPTED, ended=time.time())
        manifest.save()
        print(f"medtune: {'terminated' if code == 143 else 'interrupted'}; finished searches are kept and the "
              f"others saved their state; `medtune resume {run_dir}` continues the run", file=sys.stderr)
        return code
    return _finish_run(run_dir, manifest)


def run(spec_path: str, out: str | None = None, address: str | None = None, max_parallel: int = 0,
        python: str | None = None) -> int:
    """``medtune run``: validate the spec, then run every search in a new run folder."""
    from orchestrator.spec import load_spec

    spec = load_spec(spec_path)
    if out is None and spec.storage is None:
        raise ConfigError("--out is required (the spec sets no `storage:`)")
    if max_parallel < 0:
        raise ConfigError(f"--max-parallel must be >= 0, got {max_parallel}")
    jobs = job_launcher(address, python) if address else None
    run_dir = Path(out if out is not None else spec.storage).expanduser().resolve()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {run_dir}: {exc.strerror}") from None
    with RunLock(run_dir, "coordinator"):
        if (run_dir / MANIFEST).exists():
            raise RunError(f"{run_dir} already holds a run; continue it with `medtune resume {run_dir}` "
                           f"or choose another --out")
        taken = [e.name for e in spec.searches if (run_dir / e.name / SEARCH_MANIFEST).exists()]
        if taken:
            raise RunError(f"{run_dir / taken[0]} already holds a search run; choose another --out")
        (run_dir / SPEC_COPY).write_text(spec.text)
        source = Path(spec_path).resolve()
        manifest = Manifest.create(run_dir, spec=SPEC_COPY, spec_source=str(source), spec_dir=str(source.parent),
                                   zoo=spec.zoo_path(run_dir), address=address,
                                   python=jobs.python if jobs else sys.executable)
        _plan(manifest, spec)
        manifest.save()
        log(f"run {manifest.data['run']}: {len(spec.searches)} search{'es' if len(spec.searches) != 1 else ''} "
            f"({', '.join(e.name for e in spec.searches)}) in {run_dir}")
        return _drive(run_dir, spec, manifest, [e.name for e in spec.searches], jobs, max_parallel)


def _plan(manifest: Manifest, spec) -> None:
    """The spec's searches into the manifest in topological order, keeping what is recorded."""
    old = manifest.searches
    manifest.data["searches"] = {e.name: {
        **{"state": PENDING, "attempts": 0, "reason": "", "exit_code": None, "pid": None, "job_id": None},
        **old.get(e.name, {}),
        "type": e.type, "after": list(e.after), "dataset": e.config.dataset,
        "out": str(manifest.run_dir / e.name)} for e in spec.searches}


def resume(run_dir: str, address: str | None = None, max_parallel: int | None = None, python: str | None = None) -> int:
    """``medtune resume``: run again what is not done; a job still running is waited for."""
    from orchestrator.spec import load_spec

    run_dir = Path(run_dir).expanduser().resolve()
    read_manifest(run_dir)
    with RunLock(run_dir, "coordinator"):
        manifest = Manifest(run_dir, read_manifest(run_dir))
        if all(r["state"] == DONE for r in manifest.searches.values()):
            print(f"nothing to resume: all {len(manifest.searches)} searches in {run_dir} are done")
            if not (run_dir / "report.html").exists():  # stopped after its last search, before the report
                return _finish_run(run_dir, manifest)
            return 0
        # spec.yaml may be edited to fix a failed search; relative paths resolve as in the
        # folder of the spec the run started from
        spec = load_spec(run_dir / SPEC_COPY, base_dir=manifest.data.get("spec_dir") or run_dir)
        if {e.name for e in spec.searches} != set(manifest.searches):
            raise RunError(f"{run_dir / SPEC_COPY} lists other searches than the run "
                           f"({', '.join(manifest.searches)}); only their settings may change")
        address = address if address is not None else manifest.data.get("address")
        if max_parallel is None:
            max_parallel = (manifest.data.get("coordinator") or {}).get("max_parallel", 0)
        jobs = job_launcher(address, python or manifest.data.get("python")) if address else None
        _plan(manifest, spec)
        manifest.data.update(address=address, python=jobs.python if jobs else sys.executable)
        attach = []
        for name, rec in manifest.searches.items():
            if jobs and rec["state"] == RUNNING and rec.get("job_id"):
                status = jobs.status(rec["job_id"])
                if status is not None and not status.is_terminal():
                    attach.append(name)
                elif status is not None and str(status) == "SUCCEEDED":
                    rec.update(state=DONE, exit_code=0, reason="", ended=time.time())
                    log(f"{name}: done (job {rec['job_id']} finished while no coordinator ran)")
        todo = [n for n, r in manifest.searches.items() if r["state"] != DONE and n not in attach]
        for name in todo:
            manifest.searches[name]["state"] = PENDING
        manifest.save()
        log(f"resuming run {manifest.data['run']}: {', '.join(attach + todo)}")
        return _drive(run_dir, spec, manifest, todo, jobs, max_parallel, attach)


# ---- status --------------------------------------------------------------------------------

def _alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_status(run_dir: str | Path) -> dict:
    """The run's state from ``run.json`` and every search's ``status.json`` (read only: works
    while the coordinator runs and after)."""
    from orchestrator.status import is_baseline_experiment, read_status

    run_dir = Path(run_dir).expanduser().resolve()
    manifest = read_manifest(run_dir)
    coordinator = dict(manifest.get("coordinator") or {})
    if coordinator.get("state") == RUNNING and coordinator.get("host") == socket.gethostname() \
            and not _alive(coordinator.get("pid")):
        coordinator["state"] = "gone"
    searches = []
    for name, rec in manifest["searches"].items():
        st = read_status(rec["out"]) or {}
        trials = {"done": 0, "running": 0, "pending": 0, "failed": 0}
        best = baseline = None  # the latest stage's best; a baseline experiment's is shown as the baseline
        one_class = 0
        for exp, entry in (st.get("experiments") or {}).items():
            for k in trials:
                trials[k] += int(entry.get(k) or 0)
            one_class += int(entry.get("one_class") or 0)
            if entry.get("best") is not None:
                found = {"experiment": exp, "metric": entry.get("metric"), "value": entry["best"],
                         "one_class": bool(entry.get("best_one_class"))}
                if is_baseline_experiment(exp, entry):
                    baseline = found
                else:
                    best = found
        searches.append({"name": name, "type": rec["type"], "dataset": rec.get("dataset"), "state": rec["state"],
                         "reason": rec.get("reason", ""), "exit_code": rec.get("exit_code"),
                         "stage": st.get("stage"), "driver_state": st.get("state"), "trials": trials, "best": best,
                         "baseline": baseline, "one_class_trials": one_class,
                         "pid": rec.get("pid"), "job_id": rec.get("job_id"), "out": rec["out"],
                         "log": str(Path(rec["out"]) / LOG_NAME)})
    return {"run": manifest.get("run"), "run_dir": str(run_dir), "zoo": manifest.get("zoo"),
            "coordinator": coordinator, "searches": searches}


def format_status(status: dict) -> str:
    """The status table; a search's best leaves out its baseline experiment (shown beside it)."""
    from orchestrator.zoo_commands import ONE_CLASS

    c = status["coordinator"]
    state = c.get("state", "not started")
    if state == "gone":
        state = f"not running (pid {c.get('pid')} is gone); `medtune resume {status['run_dir']}` continues"
    elif state == RUNNING:
        state = f"running (pid {c.get('pid')})"
    lines = [f"run {status['run']} in {status['run_dir']}: coordinator {state}"]
    header = ("search", "type", "state", "stage", "done", "running", "failed", "best so far")
    rows = []
    for s in status["searches"]:
        best, baseline = s["best"], s.get("baseline")
        best_text = f"{best['metric']} {best['value']:.4g} ({best['experiment']})" if best else "-"
        best_text += f" {ONE_CLASS}" if best and best.get("one_class") else ""
        if baseline:
            best_text += (f"; baseline {baseline['value']:.4g}{f' {ONE_CLASS}' if baseline.get('one_class') else ''}"
                          f" ({baseline['experiment']})")
        stage = s["stage"] or ("-" if s["driver_state"] in (None, DONE) else s["driver_state"])
        t = s["trials"]
        rows.append((s["name"], s["type"], s["state"], stage or "-", str(t["done"]), str(t["running"]),
                     str(t["failed"]), best_text))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    for s in status["searches"]:
        if s["reason"] and s["state"] != DONE:
            lines.append(f"{s['name']}: {s['state']}: {s['reason']}")
        if s.get("one_class_trials"):
            n = s["one_class_trials"]
            lines.append(f"{s['name']}: {n} trial{'s' if n != 1 else ''} predict{'s' if n == 1 else ''} one class "
                         f"for every case")
    return "\n".join(lines)


# ---- CLI -----------------------------------------------------------------------------------

def _cmd_run(args) -> int:
    return run(args.spec, args.out, args.address, args.max_parallel, args.job_python)


def _cmd_resume(args) -> int:
    return resume(args.run_dir, args.address, args.max_parallel, args.job_python)


def _cmd_status(args) -> int:
    status = run_status(args.run_dir)
    print(json.dumps(status, indent=2, default=str) if args.json else format_status(status))
    return 0


def _cmd_report(args) -> int:
    read_manifest(args.run_dir)
    print(write_report(args.run_dir))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the searches of a YAML spec (each its own driver), then write the report")
    p.add_argument("spec", help="YAML spec: searches, their configs and `after:` dependencies")
    p.add_argument("--out", help="run folder (default: the spec's `storage:`)")
    p.add_argument("--address", help="a Ray cluster's dashboard address (http://head:8265): each search is a Ray "
                                     "job; the run folder must be on storage the cluster shares. Default: one "
                                     "local Ray node for the run")
    p.add_argument("--max-parallel", type=int, default=0, help="searches at a time (0: every ready search)")
    p.add_argument("--job-python", help="python that runs `orchestrator.cli` on the cluster (default: this one)")
    p.set_defaults(handler=_cmd_run)

    p = sub.add_parser("resume", help="continue a run: searches not done run again (resumed where they stopped)")
    p.add_argument("run_dir")
    p.add_argument("--address", help="default: the run's")
    p.add_argument("--max-parallel", type=int, help="default: the run's")
    p.add_argument("--job-python", help="default: the run's")
    p.set_defaults(handler=_cmd_resume)

    p = sub.add_parser("status", help="state of each search of a run (while it runs or after)")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true", help="machine-readable")
    p.set_defaults(handler=_cmd_status)

    p = sub.add_parser("report", help="write RUN_DIR/report.html (self-contained; partial runs too)")
    p.add_argument("run_dir")
    p.set_defaults(handler=_cmd_report)
