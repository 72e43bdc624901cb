"""The coordinator proper: :class:`Coordinator` runs a run's searches in dependency order through
a :class:`~orchestrator.coordinator.launchers.Launcher`, recording every state change in
``run.json``; :func:`run` and :func:`resume` make or reopen the run folder, choose where Ray runs
(:func:`_drive`) and write the report at the end (:func:`_finish_run`)."""
from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from pathlib import Path

from medcore.errors import ConfigError, RunError
from orchestrator.coordinator import log
from orchestrator.coordinator.launchers import JobLauncher, Launch, Launcher, LocalLauncher, job_launcher
from orchestrator.coordinator.local_node import TEMP_PREFIX, LocalCluster
from orchestrator.manifest import (DONE, FAILED, INTERRUPTED, MANIFEST, PENDING, RUNNING, SEARCH_MANIFEST, SKIPPED,
                                   SPEC_COPY, Manifest, read_manifest)
from orchestrator.run_report import write_report
from orchestrator.runlock import RunLock

LOG_NAME = "driver.log"
POLL_S = 0.5
# How long a stopped search may take to save its state and exit, and how long a resumed run
# waits for a driver of the killed coordinator to release its folder.
STOP_WAIT_S = 120.0


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

    def __init__(self, run_dir: Path, spec, manifest: Manifest, launcher: Launcher, max_parallel: int = 0):
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
        job_id = self.launcher.submission_id(name, attempt)
        if job_id is not None:
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
        where = f"pid {launch.pid}" if launch.pid is not None else f"job {launch.job_id}"
        self._set(name, RUNNING, f"{where}, {'resumed' if resume else 'fresh'}, log {out / LOG_NAME}",
                  attempts=attempt, resume=resume, pid=launch.pid, job_id=launch.job_id,
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


def _drive(run_dir: Path, spec, manifest: Manifest, names: list[str], jobs: JobLauncher | None,
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

